"""A running attempt's last check that found it still running (`last_running_at`): with the
check that found it done, it brackets when the task really ended.

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "provider_submissions", sa.Column("last_running_at", sa.DateTime(timezone=True))
    )


def downgrade() -> None:
    op.drop_column("provider_submissions", "last_running_at")
