"""A job's start and run deadlines (CreateJob's `start_deadline` and `run_deadline`).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("start_deadline_time", sa.DateTime(timezone=True)))
    op.add_column("jobs", sa.Column("run_deadline_time", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("jobs", "run_deadline_time")
    op.drop_column("jobs", "start_deadline_time")
