"""What the last status check of a submission said: progress, the provider's own state
word, its place in the provider's own queue.

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
    op.add_column("provider_submissions", sa.Column("progress", sa.Float()))
    op.add_column(
        "provider_submissions",
        sa.Column("provider_state", sa.Text(), server_default="", nullable=False),
    )
    op.add_column("provider_submissions", sa.Column("provider_queue_position", sa.Integer()))


def downgrade() -> None:
    for column in ("provider_queue_position", "provider_state", "progress"):
        op.drop_column("provider_submissions", column)
