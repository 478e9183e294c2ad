"""When the gateway took a job into its queue (the job became QUEUED).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("queue_time", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("jobs", "queue_time")
