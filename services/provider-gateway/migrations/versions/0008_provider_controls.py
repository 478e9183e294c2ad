"""Operator controls and circuit breaking: each provider's pause and circuit (one row per
provider, made when first needed), and each account's run of failed calls.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "provider_states",
        sa.Column("provider_id", sa.Text(), primary_key=True),
        sa.Column("paused", sa.Boolean(), nullable=False, server_default="false"),
        sa.Column("pause_time", sa.DateTime(timezone=True)),
        sa.Column("pause_reason", sa.Text(), nullable=False, server_default=""),
        sa.Column("circuit", sa.Text(), nullable=False, server_default="CLOSED"),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("open_count", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("circuit_open_until", sa.DateTime(timezone=True)),
        sa.Column("probe_until", sa.DateTime(timezone=True)),
        sa.Column(
            "update_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.CheckConstraint(
            "circuit IN ('CLOSED', 'OPEN', 'HALF_OPEN')", name="provider_states_circuit"
        ),
    )
    op.add_column(
        "provider_accounts",
        sa.Column("consecutive_failures", sa.Integer(), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_column("provider_accounts", "consecutive_failures")
    op.drop_table("provider_states")
