"""The provider that produced a job's asset: its own, or one of its fallbacks.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "jobs", sa.Column("asset_provider_id", sa.Text(), nullable=False, server_default="")
    )


def downgrade() -> None:
    op.drop_column("jobs", "asset_provider_id")
