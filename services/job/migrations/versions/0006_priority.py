"""A job's priority among its owner's waiting jobs.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("priority", sa.Text(), server_default="NORMAL", nullable=False))


def downgrade() -> None:
    op.drop_column("jobs", "priority")
