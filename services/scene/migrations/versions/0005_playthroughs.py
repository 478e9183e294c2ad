"""Playthroughs: a player's way through a scene, and the steps taken (so a step sent again is
recognised, not taken twice).

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
    op.create_table(
        "playthroughs",
        sa.Column("id", postgresql.UUID(as_uuid=False), primary_key=True),
        sa.Column("owner_id", sa.Text(), nullable=False),
        sa.Column(
            "scene_id",
            postgresql.UUID(as_uuid=False),
            sa.ForeignKey("scenes.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("scene_version", sa.BigInteger(), nullable=False),
        sa.Column("request_id", postgresql.UUID(as_uuid=False)),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("failure_reason", sa.Text(), server_default="", nullable=False),
        sa.Column("step", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("current_id", postgresql.UUID(as_uuid=False), nullable=False),
        sa.Column("variables", postgresql.JSONB(), server_default="{}", nullable=False),
        sa.Column(
            "create_time", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "update_time", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.UniqueConstraint("owner_id", "request_id", name="playthroughs_one_per_request"),
    )
    op.create_index(
        "playthroughs_by_owner_newest",
        "playthroughs",
        ["owner_id", sa.text("create_time DESC"), sa.text("id DESC")],
    )
    op.create_index("playthroughs_by_scene", "playthroughs", ["scene_id"])
    op.create_table(
        "playthrough_steps",
        sa.Column(
            "playthrough_id",
            postgresql.UUID(as_uuid=False),
            sa.ForeignKey("playthroughs.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("connection_id", postgresql.UUID(as_uuid=False), nullable=False),
        sa.Column(
            "create_time", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("playthrough_id", "step"),
    )


def downgrade() -> None:
    op.drop_table("playthrough_steps")
    op.drop_table("playthroughs")
