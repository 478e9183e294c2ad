"""Submissions carry their job's priority and their turn in their owner's queue.

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
    op.add_column(
        "provider_submissions",
        sa.Column("priority", sa.Text(), server_default="NORMAL", nullable=False),
    )
    op.add_column(
        "provider_submissions",
        sa.Column(
            "turn_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
    )
    # Rows from before waited in arrival order: their turn is their arrival.
    op.execute("UPDATE provider_submissions SET turn_at = create_time")


def downgrade() -> None:
    op.drop_column("provider_submissions", "turn_at")
    op.drop_column("provider_submissions", "priority")
