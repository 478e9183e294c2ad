"""Migrations against a real PostgreSQL: replicas that start together migrate once."""

from __future__ import annotations

import asyncio
import os

import asyncpg
import pytest

from pixsim_local.pytest_plugin import DatabaseFactory
from pixsim_local.stack import SERVICES, service_command

pytestmark = pytest.mark.integration


async def test_replicas_migrating_at_once_take_turns(new_database: DatabaseFactory) -> None:
    """Four `migrate` processes at once, as four pods' init containers would start."""
    database = await new_database("migrate")
    scene = next(spec for spec in SERVICES if spec.name == "scene")
    env = {**os.environ, f"{scene.env_prefix}DATABASE_URL": database.url}
    processes = [
        await asyncio.create_subprocess_exec(
            *service_command(scene, "migrate"),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        for _ in range(4)
    ]
    outputs = await asyncio.wait_for(
        asyncio.gather(*(p.communicate() for p in processes)), timeout=120
    )
    assert [p.returncode for p in processes] == [0] * 4, [o[0].decode()[-2000:] for o in outputs]
    connection = await asyncpg.connect(database.url)
    try:
        versions = await connection.fetch("SELECT version_num FROM alembic_version")
        tables = await connection.fetchval(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename = 'scenes'"
        )
    finally:
        await connection.close()
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from pixsim_scene.main import MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert [row["version_num"] for row in versions] == ScriptDirectory.from_config(
        config
    ).get_heads()
    assert tables == 1
