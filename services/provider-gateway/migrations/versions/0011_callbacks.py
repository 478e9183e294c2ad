"""Completion callbacks: an attempt found by its provider's task id.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "provider_submissions_task",
        "provider_submissions",
        ["provider_id", "provider_job_id"],
        postgresql_where=sa.text("provider_job_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("provider_submissions_task", table_name="provider_submissions")
