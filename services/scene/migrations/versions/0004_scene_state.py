"""A scene's state: its typed variables, and each connection's condition and effects.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "scenes",
        sa.Column("variables", postgresql.JSONB(), server_default="[]", nullable=False),
    )
    op.add_column(
        "scene_connections",
        sa.Column("condition", sa.Text(), server_default="", nullable=False),
    )
    op.add_column(
        "scene_connections",
        sa.Column("effects", postgresql.JSONB(), server_default="[]", nullable=False),
    )


def downgrade() -> None:
    op.drop_column("scene_connections", "effects")
    op.drop_column("scene_connections", "condition")
    op.drop_column("scenes", "variables")
