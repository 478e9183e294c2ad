"""A scene's IFID: the story's identifier in Twine's formats, kept from an imported story so
that its exports keep it too.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("scenes", sa.Column("ifid", postgresql.UUID(as_uuid=False)))


def downgrade() -> None:
    op.drop_column("scenes", "ifid")
