from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from pixsim_common.db import create_engine, create_sessionmaker
from pixsim_common.migrations import create_messaging_schema
from pixsim_common.tracing import configure_tracing
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
