"""Jobs carry their caller's labels, found by containment (`labels @> ...`).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "jobs", sa.Column("labels", postgresql.JSONB(), server_default="{}", nullable=False)
    )
    op.create_index(
        "jobs_labels",
        "jobs",
        ["labels"],
        postgresql_using="gin",
        postgresql_ops={"labels": "jsonb_path_ops"},
    )


def downgrade() -> None:
    op.drop_index("jobs_labels", "jobs")
    op.drop_column("jobs", "labels")
