"""Cross-provider fallback: each attempt carries the providers its job may go on with (in
order), the attempt its current provider began at (retries are counted per provider), and
the providers passed over before anything was sent to them.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "provider_submissions",
        sa.Column("fallbacks", JSONB(), nullable=False, server_default="[]"),
    )
    op.add_column(
        "provider_submissions",
        sa.Column("provider_first_attempt", sa.Integer(), nullable=False, server_default="0"),
    )
    op.add_column(
        "provider_submissions",
        sa.Column("passed_over", JSONB(), nullable=False, server_default="[]"),
    )


def downgrade() -> None:
    for column in ("passed_over", "provider_first_attempt", "fallbacks"):
        op.drop_column("provider_submissions", column)
