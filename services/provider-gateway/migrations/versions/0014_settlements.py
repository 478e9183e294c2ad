"""Each attempt's cost, settled once: the price of a credit it was reserved at, what it is
counted as having cost (credits, money in millionths), how that was decided, and when; and
status checks in a row that found no such task.

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "provider_submissions",
        sa.Column("credit_price_micros", sa.BigInteger(), nullable=False, server_default="0"),
    )
    op.add_column("provider_submissions", sa.Column("settled_credits", sa.BigInteger()))
    op.add_column("provider_submissions", sa.Column("settled_micros", sa.BigInteger()))
    op.add_column(
        "provider_submissions",
        sa.Column("billing", sa.Text(), nullable=False, server_default=""),
    )
    op.add_column(
        "provider_submissions", sa.Column("settle_time", sa.DateTime(timezone=True))
    )
    op.add_column(
        "provider_submissions",
        sa.Column("unknown_polls", sa.Integer(), nullable=False, server_default="0"),
    )
    # Attempts that ended before settlements existed had their reservations taken as spent.
    op.execute(
        "UPDATE provider_submissions SET settled_credits = reserved_credits, settled_micros = 0,"
        " billing = 'ASSUMED', settle_time = coalesce(complete_time, update_time)"
        " WHERE state IN ('SUCCEEDED', 'FAILED', 'CANCELLED')"
    )


def downgrade() -> None:
    for name in (
        "unknown_polls",
        "settle_time",
        "billing",
        "settled_micros",
        "settled_credits",
        "credit_price_micros",
    ):
        op.drop_column("provider_submissions", name)
