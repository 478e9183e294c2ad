"""The local cluster gives each service its own database and role, fenced from the others."""

from __future__ import annotations

import asyncpg
import pytest

from pixsim_local.infra import Infra
from pixsim_local.pytest_plugin import DatabaseFactory

pytestmark = pytest.mark.integration


async def test_a_service_role_reaches_only_its_own_database(
    infra: Infra, new_database: DatabaseFactory
) -> None:
    jobs = await new_database("jobs")
    assets = await new_database("assets")

    connection = await asyncpg.connect(jobs.url)
    try:
        assert await connection.fetchval("SELECT current_database()") == jobs.name
    finally:
        await connection.close()

    for other in (assets.name, "postgres"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await asyncpg.connect(
                user=jobs.role,
                password=jobs.password,
                host=jobs.host,
                port=jobs.port,
                database=other,
            )


async def test_creating_a_service_database_twice_keeps_it(
    infra: Infra, new_database: DatabaseFactory
) -> None:
    first = await new_database("again")
    connection = await asyncpg.connect(first.url)
    await connection.execute("CREATE TABLE kept (id int)")
    await connection.close()

    second = await infra.postgres.create_service_database(first.name)
    connection = await asyncpg.connect(second.url)
    try:
        assert await connection.fetchval("SELECT count(*) FROM kept") == 0
    finally:
        await connection.close()
