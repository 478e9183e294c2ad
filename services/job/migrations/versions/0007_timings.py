"""A job's timings: when the gateway took it into its queue (it became QUEUED), sent it,
the provider accepted it, and the gateway saw the provider finish.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None
TIMES = ("queue_time", "dispatch_time", "provider_start_time", "provider_end_time")


def upgrade() -> None:
    for column in TIMES:
        op.add_column("jobs", sa.Column(column, sa.DateTime(timezone=True)))


def downgrade() -> None:
    for column in TIMES:
        op.drop_column("jobs", column)
