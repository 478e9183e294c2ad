"""The fingerprint of the request a job was created from (a request_id reused with another
request is refused), and outbox rows that can never be published set aside.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

from pixsim_common.migrations import add_outbox_set_aside

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Jobs from before have none: a repeat of their key is taken as the same request.
    op.add_column("jobs", sa.Column("request_hash", sa.Text(), nullable=True))
    add_outbox_set_aside()


def downgrade() -> None:
    op.drop_column("jobs", "request_hash")
