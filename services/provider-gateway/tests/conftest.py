from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixsim_common.db import create_engine, create_sessionmaker, run_migrations
from pixsim_local.pytest_plugin import DatabaseFactory
from pixsim_provider_gateway.main import MIGRATIONS


@pytest_asyncio.fixture(loop_scope="session")
async def sessions(
    new_database: DatabaseFactory,
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions on a fresh, migrated gateway database of the test's own."""
    database = await new_database("gateway")
    await asyncio.to_thread(run_migrations, database.url, MIGRATIONS)
    engine = create_engine(database.url, pool_size=2)
    try:
        yield create_sessionmaker(engine)
    finally:
        await engine.dispose()
