"""Alembic support shared by every service's `migrations/`.

A service's `migrations/env.py` is:

    from pixsim_common.migrations import run_env
    from pixsim_job.repository import metadata
    run_env(metadata)

and its first revision calls `create_messaging_tables()` for the outbox and the inbox.
"""

from __future__ import annotations

import asyncio

from alembic import context, op
from sqlalchemy import MetaData, pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from pixsim_common.consumer import inbox_table
from pixsim_common.outbox import NOTIFY_TRIGGER_DDL, outbox_table


def create_messaging_schema(connection: Connection) -> None:
    """The `outbox` (with its NOTIFY trigger) and the `inbox`."""
    outbox_table.create(connection)
    for statement in NOTIFY_TRIGGER_DDL:
        connection.execute(text(statement))
    inbox_table.create(connection)


def create_messaging_tables() -> None:
    """`create_messaging_schema` for a service's first migration."""
    create_messaging_schema(op.get_bind())


def add_outbox_set_aside() -> None:
    """For a revision after the first: the outbox columns of rows set aside for good
    (`failed_at`, `error`), which leave the unsent index. A first revision run today makes
    them already, so each step is a no-op there."""
    op.execute(
        "ALTER TABLE outbox ADD COLUMN IF NOT EXISTS failed_at timestamptz,"
        " ADD COLUMN IF NOT EXISTS error text"
    )
    op.execute("DROP INDEX IF EXISTS outbox_unsent")
    op.execute(
        "CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL AND failed_at IS NULL"
    )


def drop_messaging_tables() -> None:
    op.drop_table("inbox")
    op.drop_table("outbox")
    op.execute("DROP FUNCTION IF EXISTS pixsim_outbox_notify()")


def run_env(target_metadata: MetaData | None) -> None:
    """The body of env.py: online migrations over asyncpg with the URL `run_migrations` gave."""
    config = context.config
    url = config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL: use pixsim_common.db.run_migrations")

    def migrate(connection: Connection) -> None:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            # The outbox and inbox belong to the kit, not to the service's metadata:
            # autogenerate must not propose dropping them.
            include_object=lambda _obj, _name, kind, reflected, compare_to: (
                not (kind == "table" and reflected and compare_to is None)
            ),
        )
        with context.begin_transaction():
            # Replicas starting together (init containers) migrate one at a time; the lock
            # ends with the transaction, and the next one finds the work done.
            connection.execute(text("SELECT pg_advisory_xact_lock(7305917310)"))
            context.run_migrations()

    async def run() -> None:
        engine = create_async_engine(url, poolclass=pool.NullPool)
        async with engine.connect() as connection:
            await connection.run_sync(migrate)
            await connection.commit()
        await engine.dispose()

    asyncio.run(run())
