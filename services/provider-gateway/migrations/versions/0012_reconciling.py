"""Reconciling: when an attempt's task began to be followed past the gateway's own bound.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "provider_submissions", sa.Column("reconcile_from", sa.DateTime(timezone=True))
    )


def downgrade() -> None:
    op.drop_column("provider_submissions", "reconcile_from")
