"""Each service's composition root, as its own process: `migrate` builds its schema in its
own database, `serve` answers health and reflection through a real channel, and SIGTERM
drains it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess

import asyncpg
import grpc
import pytest

from pixsim_local.grpc_probe import reflected_services, wait_serving
from pixsim_local.infra import Infra
from pixsim_local.processes import free_port
from pixsim_local.pytest_plugin import DatabaseFactory
from pixsim_local.stack import SERVICES, ServiceSpec, service_command
from pixsim_provider_gateway.crypto import new_key

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("spec", SERVICES, ids=[spec.name for spec in SERVICES])
async def test_migrate_then_serve_health_and_reflection_then_drain(
    spec: ServiceSpec, infra: Infra, new_database: DatabaseFactory, signing_keys: tuple[str, str]
) -> None:
    package, prefix, grpc_service = spec.package, spec.env_prefix, spec.grpc_service
    database = await new_database(package)
    port = free_port()
    env = {
        **os.environ,
        f"{prefix}DATABASE_URL": database.url,
        f"{prefix}KAFKA_BOOTSTRAP": infra.kafka.bootstrap,
        f"{prefix}JWT_PUBLIC_KEY": signing_keys[1],
        f"{prefix}GRPC_PORT": str(port),
        f"{prefix}METRICS_PORT": "0",
        f"{prefix}CREDENTIALS_KEYS": f"test:{new_key()}",
    }

    unmigrated = await asyncio.to_thread(
        subprocess.run, service_command(spec, "serve"), env=env, capture_output=True, timeout=60
    )
    assert unmigrated.returncode != 0
    assert b"run the service's `migrate` command first" in unmigrated.stderr

    migrate = await asyncio.to_thread(
        subprocess.run, service_command(spec, "migrate"), env=env, capture_output=True, timeout=60
    )
    assert migrate.returncode == 0, migrate.stderr.decode()
    connection = await asyncpg.connect(database.url)
    try:
        tables = {
            row["tablename"]
            for row in await connection.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname='public'"
            )
        }
    finally:
        await connection.close()
    assert {"outbox", "inbox", "alembic_version"} <= tables

    server = subprocess.Popen(service_command(spec, "serve"), env=env, stderr=subprocess.PIPE)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), timeout=30)
            await wait_serving(channel, grpc_service, timeout=30)
            listed = await reflected_services(channel)
            assert grpc_service in listed
    finally:
        server.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.to_thread(server.communicate, timeout=30)
    assert server.returncode == 0, stderr.decode()[-2000:]
    assert b'"event": "stopped"' in stderr
