"""Scenes, their assets and connections, and the record of deleted assets.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "scenes",
        sa.Column("id", sa.UUID(as_uuid=False), nullable=False),
        sa.Column("owner_id", sa.Text(), nullable=False),
        sa.Column("display_name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), server_default="", nullable=False),
        sa.Column("tags", postgresql.ARRAY(sa.Text()), server_default="{}", nullable=False),
        sa.Column("is_template", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("start_scene_asset_id", sa.UUID(as_uuid=False), nullable=True),
        sa.Column("version", sa.BigInteger(), server_default="1", nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("scenes_by_owner_newest", "scenes",
                    ["owner_id", sa.text("create_time DESC"), sa.text("id DESC")])
    op.create_index("scenes_by_tag", "scenes", ["tags"], postgresql_using="gin")
    op.create_table(
        "scene_assets",
        sa.Column("id", sa.UUID(as_uuid=False), nullable=False),
        sa.Column("scene_id", sa.UUID(as_uuid=False),
                  sa.ForeignKey("scenes.id", ondelete="CASCADE"), nullable=False),
        sa.Column("asset_id", sa.UUID(as_uuid=False), nullable=True),
        sa.Column("order", sa.Integer(), server_default="0", nullable=False),
        sa.Column("position_x", sa.Float(), server_default="0", nullable=False),
        sa.Column("position_y", sa.Float(), server_default="0", nullable=False),
        sa.Column("metadata", postgresql.JSONB(), server_default="{}", nullable=False),
        sa.Column("detached", sa.Boolean(), server_default="false", nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("scene_assets_by_scene", "scene_assets", ["scene_id"])
    op.create_index("scene_assets_by_asset", "scene_assets", ["asset_id"])
    op.create_table(
        "scene_connections",
        sa.Column("id", sa.UUID(as_uuid=False), nullable=False),
        sa.Column("scene_id", sa.UUID(as_uuid=False),
                  sa.ForeignKey("scenes.id", ondelete="CASCADE"), nullable=False),
        sa.Column("from_id", sa.UUID(as_uuid=False),
                  sa.ForeignKey("scene_assets.id", ondelete="CASCADE"), nullable=False),
        sa.Column("to_id", sa.UUID(as_uuid=False),
                  sa.ForeignKey("scene_assets.id", ondelete="CASCADE"), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("label", sa.Text(), server_default="", nullable=False),
        sa.Column("metadata", postgresql.JSONB(), server_default="{}", nullable=False),
        sa.Column("order", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("from_id", "to_id", "type", name="scene_connections_one_per_type",
                            deferrable=True, initially="DEFERRED"),
    )
    op.create_index("scene_connections_by_scene", "scene_connections", ["scene_id"])
    op.create_table(
        "deleted_assets",
        sa.Column("asset_id", sa.UUID(as_uuid=False), nullable=False),
        sa.Column("owner_id", sa.Text(), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.PrimaryKeyConstraint("asset_id"),
    )


def downgrade() -> None:
    op.drop_table("deleted_assets")
    op.drop_table("scene_connections")
    op.drop_table("scene_assets")
    op.drop_table("scenes")
