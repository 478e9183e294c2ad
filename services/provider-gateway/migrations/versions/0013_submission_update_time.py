"""A submission's update_time: its last change (AIP-148).

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "provider_submissions",
        sa.Column(
            "update_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    # The last change an existing attempt is known to have had.
    op.execute(
        "UPDATE provider_submissions"
        " SET update_time = coalesce(complete_time, submit_time, create_time)"
    )


def downgrade() -> None:
    op.drop_column("provider_submissions", "update_time")
