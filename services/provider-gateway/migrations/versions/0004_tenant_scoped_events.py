"""Jobs' attempts and cancellations are the owner's: a crafted event naming someone else's
job under another user starts a chain of its own and cancels nothing. Outbox rows that can
never be published are set aside.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

from pixsim_common.migrations import add_outbox_set_aside

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_constraint("one_row_per_attempt", "provider_submissions", type_="unique")
    op.create_unique_constraint(
        "one_row_per_attempt",
        "provider_submissions",
        ["job_id", "user_id", "job_retry_count", "retry_attempt"],
    )
    # Cancellations from before are kept under the owner of the job's attempts, if known.
    op.add_column("cancelled_jobs", sa.Column("user_id", sa.Text(), server_default="", nullable=False))
    op.execute(
        "UPDATE cancelled_jobs c SET user_id = s.user_id FROM provider_submissions s"
        " WHERE s.job_id = c.job_id"
    )
    op.drop_constraint("cancelled_jobs_pkey", "cancelled_jobs", type_="primary")
    op.create_primary_key("cancelled_jobs_pkey", "cancelled_jobs", ["job_id", "user_id"])
    add_outbox_set_aside()


def downgrade() -> None:
    op.drop_constraint("cancelled_jobs_pkey", "cancelled_jobs", type_="primary")
    op.execute(
        "DELETE FROM cancelled_jobs a USING cancelled_jobs b"
        " WHERE a.job_id = b.job_id AND a.ctid < b.ctid"
    )
    op.create_primary_key("cancelled_jobs_pkey", "cancelled_jobs", ["job_id"])
    op.drop_column("cancelled_jobs", "user_id")
    op.drop_constraint("one_row_per_attempt", "provider_submissions", type_="unique")
    op.create_unique_constraint(
        "one_row_per_attempt", "provider_submissions", ["job_id", "job_retry_count", "retry_attempt"]
    )
