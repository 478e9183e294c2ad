"""Stored files and the references that hold them, so a file nothing names is deleted;
and outbox rows that can never be published set aside.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

from pixsim_common.migrations import add_outbox_set_aside

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "blobs",
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("refs", sa.Integer(), server_default="0", nullable=False),
        sa.Column("orphaned_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("update_time", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.PrimaryKeyConstraint("uri"),
        sa.CheckConstraint("refs >= 0", name="blob_refs_not_negative"),
    )
    op.create_index("blobs_orphaned", "blobs", ["orphaned_at"],
                    postgresql_where=sa.text("refs = 0"))
    # What exists holds its files; files only deleted assets named are orphaned now (until
    # today deletion kept every file).
    op.execute(
        """INSERT INTO blobs (uri, refs, orphaned_at)
        SELECT uri, sum(live), CASE WHEN sum(live) = 0 THEN now() END FROM (
            SELECT storage_uri AS uri, (deleted_at IS NULL)::int AS live FROM assets
            UNION ALL
            SELECT v.storage_uri, (a.deleted_at IS NULL)::int FROM asset_variants v
            JOIN assets a ON a.id = v.asset_id
        ) AS held GROUP BY uri"""
    )
    add_outbox_set_aside()


def downgrade() -> None:
    op.drop_table("blobs")
