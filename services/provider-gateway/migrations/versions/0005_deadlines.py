"""A job's start and run deadlines, carried on every attempt of its chain.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for column in ("start_deadline_at", "run_deadline_at"):
        op.add_column("provider_submissions", sa.Column(column, sa.DateTime(timezone=True)))
    # The expiry sweep looks only at waiting rows that have a deadline.
    op.create_index(
        "provider_submissions_expiring",
        "provider_submissions",
        [sa.text("least(start_deadline_at, run_deadline_at)")],
        postgresql_where=sa.text(
            "state = 'WAITING'"
            " AND (start_deadline_at IS NOT NULL OR run_deadline_at IS NOT NULL)"
        ),
    )


def downgrade() -> None:
    op.drop_index("provider_submissions_expiring", "provider_submissions")
    for column in ("run_deadline_at", "start_deadline_at"):
        op.drop_column("provider_submissions", column)
