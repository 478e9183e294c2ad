"""The jobs table, its idempotency index and its change notifications.

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
        "jobs",
        sa.Column("id", sa.UUID(as_uuid=False), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("operation_type", sa.Integer(), nullable=False),
        sa.Column("provider_id", sa.Text(), nullable=False),
        sa.Column("request", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("error_code", sa.Text(), server_default="", nullable=False),
        sa.Column("error_message", sa.Text(), server_default="", nullable=False),
        sa.Column("retry_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("asset_id", sa.Text(), server_default="", nullable=False),
        sa.Column("request_id", sa.Text(), nullable=True),
        sa.Column("create_time", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.Column("start_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("complete_time", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("jobs_idempotency", "jobs", ["user_id", "request_id"], unique=True,
                    postgresql_where=sa.text("request_id IS NOT NULL"))
    op.create_index("jobs_by_user_newest", "jobs",
                    ["user_id", sa.text("create_time DESC"), sa.text("id DESC")])
    op.execute(
        """CREATE OR REPLACE FUNCTION pixsim_job_notify() RETURNS trigger AS $$
        BEGIN PERFORM pg_notify('pixsim_job_changed', NEW.id::text); RETURN NULL; END $$
        LANGUAGE plpgsql"""
    )
    op.execute(
        """CREATE TRIGGER jobs_notify AFTER INSERT OR UPDATE ON jobs
        FOR EACH ROW EXECUTE FUNCTION pixsim_job_notify()"""
    )


def downgrade() -> None:
    op.drop_table("jobs")
    op.execute("DROP FUNCTION IF EXISTS pixsim_job_notify()")
