"""Account health: the balance the provider last reported for each account, when, and when
the account was last checked.

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
    op.add_column("provider_accounts", sa.Column("provider_credits", sa.BigInteger()))
    op.add_column(
        "provider_accounts", sa.Column("provider_credits_time", sa.DateTime(timezone=True))
    )
    op.add_column("provider_accounts", sa.Column("check_time", sa.DateTime(timezone=True)))


def downgrade() -> None:
    for column in ("check_time", "provider_credits_time", "provider_credits"):
        op.drop_column("provider_accounts", column)
