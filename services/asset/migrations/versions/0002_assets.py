"""Assets, their variants and their lineage, with the unique indexes that deduplicate.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

LIVE = sa.text("deleted_at IS NULL")


def upgrade() -> None:
    op.create_table(
        "assets",
        sa.Column("id", sa.UUID(as_uuid=False), server_default=sa.text("gen_random_uuid()"),
                  nullable=False),
        sa.Column("owner_id", sa.Text(), nullable=False),
        sa.Column("media_type", sa.Integer(), nullable=False),
        sa.Column("display_name", sa.Text(), server_default="", nullable=False),
        sa.Column("provider_id", sa.Text(), nullable=True),
        sa.Column("provider_asset_id", sa.Text(), nullable=True),
        sa.Column("source_job_id", sa.UUID(as_uuid=False), nullable=True),
        sa.Column("remote_uri", sa.Text(), server_default="", nullable=False),
        sa.Column("storage_uri", sa.Text(), nullable=False),
        sa.Column("sync_status", sa.Text(), nullable=False),
        sa.Column("sync_error", sa.Text(), server_default="", nullable=False),
        sa.Column("sha256", sa.Text(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("mime_type", sa.Text(), nullable=False),
        sa.Column("width", sa.Integer(), server_default="0", nullable=False),
        sa.Column("height", sa.Integer(), server_default="0", nullable=False),
        sa.Column("duration_seconds", sa.Float(), server_default="0", nullable=False),
        sa.Column("codec", sa.Text(), server_default="", nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("assets_one_file_per_owner", "assets", ["owner_id", "sha256"], unique=True,
                    postgresql_where=LIVE)
    op.create_index("assets_one_per_provider_result", "assets",
                    ["owner_id", "provider_id", "provider_asset_id"], unique=True,
                    postgresql_where=sa.text("deleted_at IS NULL AND provider_asset_id IS NOT NULL"))
    op.create_index("assets_by_owner_newest", "assets",
                    ["owner_id", sa.text("create_time DESC"), sa.text("id DESC")],
                    postgresql_where=LIVE)
    op.create_index("assets_by_source_job", "assets", ["source_job_id"])
    op.create_table(
        "asset_variants",
        sa.Column("asset_id", sa.UUID(as_uuid=False), sa.ForeignKey("assets.id"), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("storage_uri", sa.Text(), nullable=False),
        sa.Column("mime_type", sa.Text(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("asset_id", "kind"),
    )
    op.create_table(
        "asset_lineage",
        sa.Column("child_id", sa.UUID(as_uuid=False), sa.ForeignKey("assets.id"), nullable=False),
        sa.Column("parent_id", sa.UUID(as_uuid=False), sa.ForeignKey("assets.id"), nullable=False),
        sa.Column("role", sa.Integer(), nullable=False),
        sa.Column("operation_type", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("child_id", "parent_id", "role"),
    )
    op.create_index("asset_lineage_by_parent", "asset_lineage", ["parent_id"])


def downgrade() -> None:
    op.drop_table("asset_lineage")
    op.drop_table("asset_variants")
    op.drop_table("assets")
