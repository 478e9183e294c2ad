"""Scene sizes kept on the scene row, deleted assets remembered per owner, and outbox rows
that can never be published set aside.

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
    op.add_column("scenes", sa.Column("node_count", sa.Integer(), server_default="0", nullable=False))
    op.add_column("scenes", sa.Column("edge_count", sa.Integer(), server_default="0", nullable=False))
    op.execute(
        "UPDATE scenes SET"
        " node_count = (SELECT count(*) FROM scene_assets a WHERE a.scene_id = scenes.id),"
        " edge_count = (SELECT count(*) FROM scene_connections c WHERE c.scene_id = scenes.id)"
    )
    op.drop_constraint("deleted_assets_pkey", "deleted_assets", type_="primary")
    op.create_primary_key("deleted_assets_pkey", "deleted_assets", ["asset_id", "owner_id"])
    add_outbox_set_aside()


def downgrade() -> None:
    op.drop_constraint("deleted_assets_pkey", "deleted_assets", type_="primary")
    op.execute(
        "DELETE FROM deleted_assets a USING deleted_assets b"
        " WHERE a.asset_id = b.asset_id AND a.ctid < b.ctid"
    )
    op.create_primary_key("deleted_assets_pkey", "deleted_assets", ["asset_id"])
    op.drop_column("scenes", "edge_count")
    op.drop_column("scenes", "node_count")
