"""Costs: each job's estimate, hold and settled cost, every user's usage by day, provider
and operation, and their budgets.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for name, kind in (
        ("settled_credits", sa.BigInteger()),
        ("settled_micros", sa.BigInteger()),
        ("settled_attempts", sa.Integer()),
        ("estimated_credits", sa.BigInteger()),
        ("estimated_micros", sa.BigInteger()),
        ("hold_micros", sa.BigInteger()),
    ):
        op.add_column("jobs", sa.Column(name, kind, nullable=False, server_default="0"))
    op.add_column(
        "jobs", sa.Column("cost_final", sa.Boolean(), nullable=False, server_default="false")
    )
    op.create_index(
        "jobs_holding", "jobs", ["user_id"], postgresql_where=sa.text("hold_micros > 0")
    )
    op.create_table(
        "budgets",
        sa.Column("user_id", sa.Text(), primary_key=True),
        sa.Column("period", sa.Text(), nullable=False),
        sa.Column("limit_micros", sa.BigInteger(), nullable=False),
        sa.Column(
            "update_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    op.create_table(
        "usage_daily",
        sa.Column("user_id", sa.Text(), primary_key=True),
        sa.Column("day", sa.Date(), primary_key=True),
        sa.Column("provider_id", sa.Text(), primary_key=True),
        sa.Column("operation_type", sa.Integer(), primary_key=True),
        sa.Column("jobs", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("credits", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("micros", sa.BigInteger(), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_table("usage_daily")
    op.drop_table("budgets")
    op.drop_index("jobs_holding", "jobs")
    for name in (
        "hold_micros",
        "estimated_micros",
        "estimated_credits",
        "cost_final",
        "settled_attempts",
        "settled_micros",
        "settled_credits",
    ):
        op.drop_column("jobs", name)
