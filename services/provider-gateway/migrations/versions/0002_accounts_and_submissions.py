"""provider accounts, submissions, cancelled jobs

Revision ID: 0002
Revises: 0001
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('cancelled_jobs',
    sa.Column('job_id', sa.UUID(as_uuid=False), nullable=False),
    sa.Column('cancel_time', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('job_id')
    )
    op.create_table('provider_accounts',
    sa.Column('id', sa.UUID(as_uuid=False), nullable=False),
    sa.Column('provider_id', sa.Text(), nullable=False),
    sa.Column('label', sa.Text(), server_default='', nullable=False),
    sa.Column('credentials_key_id', sa.Text(), nullable=False),
    sa.Column('credentials', sa.LargeBinary(), nullable=False),
    sa.Column('credits', sa.BigInteger(), nullable=False),
    sa.Column('max_concurrency', sa.Integer(), nullable=False),
    sa.Column('in_flight', sa.Integer(), server_default='0', nullable=False),
    sa.Column('priority', sa.Integer(), server_default='0', nullable=False),
    sa.Column('state', sa.Text(), server_default='ACTIVE', nullable=False),
    sa.Column('cooldown_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('create_time', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('update_time', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('credits >= 0', name='credits_not_negative'),
    sa.CheckConstraint('in_flight >= 0 AND in_flight <= max_concurrency', name='slots_in_range'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('provider_accounts_selectable', 'provider_accounts', ['provider_id', 'priority'], unique=False)
    op.create_table('provider_submissions',
    sa.Column('id', sa.UUID(as_uuid=False), nullable=False),
    sa.Column('job_id', sa.UUID(as_uuid=False), nullable=False),
    sa.Column('user_id', sa.Text(), nullable=False),
    sa.Column('provider_id', sa.Text(), nullable=False),
    sa.Column('operation_type', sa.Integer(), nullable=False),
    sa.Column('request', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('payload', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('job_retry_count', sa.Integer(), nullable=False),
    sa.Column('retry_attempt', sa.Integer(), nullable=False),
    sa.Column('previous_submission_id', sa.UUID(as_uuid=False), nullable=True),
    sa.Column('state', sa.Text(), nullable=False),
    sa.Column('account_id', sa.UUID(as_uuid=False), nullable=True),
    sa.Column('reserved_credits', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('provider_job_id', sa.Text(), nullable=True),
    sa.Column('response', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('error_code', sa.Text(), server_default='', nullable=False),
    sa.Column('error_message', sa.Text(), server_default='', nullable=False),
    sa.Column('available_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('next_poll_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('poll_count', sa.Integer(), server_default='0', nullable=False),
    sa.Column('lease_owner', sa.Text(), nullable=True),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('deadline_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('provider_cancel_pending', sa.Boolean(), server_default='false', nullable=False),
    sa.Column('create_time', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('submit_time', sa.DateTime(timezone=True), nullable=True),
    sa.Column('complete_time', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('job_id', 'job_retry_count', 'retry_attempt', name='one_row_per_attempt')
    )
    op.create_index('provider_submissions_served', 'provider_submissions', ['submit_time'], unique=False)
    op.create_index('provider_submissions_job', 'provider_submissions', ['job_id', 'create_time'], unique=False)
    op.create_index('provider_submissions_polling', 'provider_submissions', ['next_poll_at'], unique=False, postgresql_where=sa.text("state IN ('RUNNING', 'SUBMITTING')"))
    op.create_index('provider_submissions_waiting', 'provider_submissions', ['available_at'], unique=False, postgresql_where=sa.text("state = 'WAITING'"))


def downgrade() -> None:
    op.drop_index('provider_submissions_waiting', table_name='provider_submissions', postgresql_where=sa.text("state = 'WAITING'"))
    op.drop_index('provider_submissions_polling', table_name='provider_submissions', postgresql_where=sa.text("state IN ('RUNNING', 'SUBMITTING')"))
    op.drop_index('provider_submissions_served', table_name='provider_submissions')
    op.drop_index('provider_submissions_job', table_name='provider_submissions')
    op.drop_table('provider_submissions')
    op.drop_index('provider_accounts_selectable', table_name='provider_accounts')
    op.drop_table('provider_accounts')
    op.drop_table('cancelled_jobs')
