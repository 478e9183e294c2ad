from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from pixsim_common.db import create_engine, create_sessionmaker
from pixsim_common.migrations import create_messaging_schema
from pixsim_common.tracing import configure_tracing
from pixsim_local.infra import Infra
from pixsim_local.postgres import ServiceDatabase
from pixsim_local.pytest_plugin import DatabaseFactory

configure_tracing("pixsim-tests", "none")


@dataclass
class MessagingDatabase:
    database: ServiceDatabase
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]


@pytest_asyncio.fixture(loop_scope="session")
async def messaging_db(new_database: DatabaseFactory) -> AsyncIterator[MessagingDatabase]:
    """A fresh database with the outbox, the inbox and a `effects` table for handlers."""
    database = await new_database("kit")
    engine = create_engine(database.url, pool_size=5)
    async with engine.begin() as connection:
        await connection.run_sync(create_messaging_schema)
        await connection.execute(
            text("CREATE TABLE effects (event_id text NOT NULL, job_id text NOT NULL)")
        )
    yield MessagingDatabase(database, engine, create_sessionmaker(engine))
    await engine.dispose()


@contextlib.asynccontextmanager
async def database_away(db: MessagingDatabase, infra: Infra) -> AsyncIterator[None]:
    """The service's database refuses connections (and drops the open ones) meanwhile."""
    admin = await asyncpg.connect(infra.postgres.admin_url)
    name = db.database.name
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        yield
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
