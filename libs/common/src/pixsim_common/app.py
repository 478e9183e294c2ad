"""The lifecycle every service shares: start, serve until SIGTERM, drain, stop.

A service's `main.py` builds a `ServiceApp` from its parts (server, engine, relay, consumers)
and calls `run_until_signal()`. On SIGTERM or SIGINT health turns NOT_SERVING (so load
balancers stop sending), the server lets in-flight RPCs finish for `drain_seconds`,
consumers finish the message in hand and commit, the relay publishes what is committed, and
the database pool closes.
"""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import grpc
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from pixsim_common.auth import TokenVerifier, WorkloadTrust
from pixsim_common.consumer import EventConsumer, Subscription
from pixsim_common.db import create_engine, create_read_sessionmaker, create_sessionmaker
from pixsim_common.grpc_server import (
    AccessPolicy,
    HealthServicer,
    add_health_and_reflection,
    build_server,
    mark,
)
from pixsim_common.logging import configure_logging
from pixsim_common.metrics import serve_metrics
from pixsim_common.outbox import OutboxRelay, SetAsideHook
from pixsim_common.pagination import PageTokens
from pixsim_common.settings import ServiceSettings
from pixsim_common.tracing import configure_tracing, instrument_engine

log = structlog.get_logger("pixsim.app")


class Worker(Protocol):
    """A background part: an outbox relay, an event consumer, a poller."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass
class ServiceApp:
    name: str
    server: grpc.aio.Server
    health: HealthServicer
    service_names: Sequence[str]
    address: str
    engine: AsyncEngine | None = None
    # Started in order; stopped in reverse.
    workers: list[Worker] = field(default_factory=list)
    drain_seconds: float = 20.0
    port: int = 0

    async def start(self) -> None:
        self.port = self.server.add_insecure_port(self.address)
        if self.port == 0:
            raise RuntimeError(f"{self.name}: cannot listen on {self.address}")
        for worker in self.workers:
            await worker.start()
        await self.server.start()
        await mark(self.health, self.service_names, serving=True)
        # What startup made (modules, descriptors, pools) lives as long as the process:
        # out of the collector's sight, a full collection scans only what came since. In
        # the CreateJob benchmark these took up to 0.5-0.8 s each, every call waiting.
        gc.freeze()
        log.info("serving", service=self.name, port=self.port)

    async def stop(self) -> None:
        log.info("draining", service=self.name, grace_s=self.drain_seconds)
        await mark(self.health, self.service_names, serving=False)
        # RPCs first (they may still write outbox events), then consumers, the relay last.
        await self.server.stop(self.drain_seconds)
        for worker in reversed(self.workers):
            await worker.stop()
        if self.engine is not None:
            await self.engine.dispose()
        log.info("stopped", service=self.name)

    async def run_until_signal(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()


@dataclass(frozen=True)
class Kit:
    """What a service's handlers are built from."""

    settings: ServiceSettings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    # Single-round-trip sessions (create_read_sessionmaker): reads, and one-statement writes.
    reads: async_sessionmaker[AsyncSession]
    page_tokens: PageTokens


def configure_observability(settings: ServiceSettings) -> None:
    configure_logging(settings.service_name, settings.log_level, settings.log_format)
    configure_tracing(settings.service_name, settings.otel_exporter, settings.otel_endpoint)
    serve_metrics(settings.metrics_port, settings.metrics_host)


async def assemble(
    settings: ServiceSettings,
    *,
    service_names: Sequence[str],
    register: Callable[[grpc.aio.Server, Kit], None],
    admin_methods: Iterable[str] = (),
    workload_methods: Mapping[str, str] | None = None,
    subscriptions: Callable[[Kit], Sequence[Subscription]] | None = None,
    workers: Callable[[Kit], Sequence[Worker]] | None = None,
    on_set_aside: Callable[[Kit], SetAsideHook] | None = None,
) -> ServiceApp:
    """Wire a service from the kit: engine, server with the guard, health, reflection,
    outbox relay (with the service's hook for events that can never be published), the
    service's own `workers`, and (when it consumes) its consumer group `<service_name>`.
    Workers start in that order and stop in reverse."""
    database_url = settings.database_url.get_secret_value()
    engine = create_engine(
        database_url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
    )
    instrument_engine(engine)
    page_secret = settings.page_token_secret.get_secret_value()
    if not page_secret:
        log.warning("no PAGE_TOKEN_SECRET: page tokens hold only within this process")
    kit = Kit(
        settings,
        engine,
        create_sessionmaker(engine),
        create_read_sessionmaker(engine),
        PageTokens.from_setting(page_secret),
    )
    verifier = TokenVerifier(
        public_key=settings.jwt_public_key,
        jwks_url=settings.jwt_jwks_url,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        max_lifetime_seconds=settings.jwt_max_lifetime_seconds,
        workload=WorkloadTrust(settings.workload_issuer, settings.workload_public_key)
        if settings.workload_public_key
        else None,
    )
    policy = AccessPolicy(verifier, frozenset(admin_methods), dict(workload_methods or {}))
    server = build_server(settings.service_name, policy)
    register(server, kit)
    health = await add_health_and_reflection(server, service_names)
    parts: list[Worker] = [
        OutboxRelay(
            service=settings.service_name,
            engine=engine,
            database_url=database_url,
            kafka_bootstrap=settings.kafka_bootstrap,
            on_set_aside=on_set_aside(kit) if on_set_aside is not None else None,
        )
    ]
    if workers is not None:
        parts.extend(workers(kit))
    if subscriptions is not None:
        parts.append(
            EventConsumer(
                name=settings.service_name,
                group_id=settings.service_name,
                kafka_bootstrap=settings.kafka_bootstrap,
                sessions=kit.sessions,
                reads=kit.reads,
                subscriptions=subscriptions(kit),
            )
        )
    return ServiceApp(
        name=settings.service_name,
        server=server,
        health=health,
        service_names=service_names,
        address=f"{settings.grpc_host}:{settings.grpc_port}",
        engine=engine,
        workers=parts,
        drain_seconds=settings.drain_seconds,
    )


def migrations_of(main_module: str) -> Path:
    """A service's Alembic directory: inside the package when installed from a wheel (the
    image), beside `src/` in the workspace."""
    here = Path(main_module).resolve()
    packaged = here.parent / "migrations"
    return packaged if packaged.is_dir() else here.parents[2] / "migrations"


def service_main(
    settings_type: type[ServiceSettings],
    build: Callable[[ServiceSettings], Awaitable[ServiceApp]],
    migrations_dir: Path,
    argv: Sequence[str] | None = None,
) -> None:
    """The command line of every service: `serve` (the default) or `migrate`."""
    import argparse

    from pixsim_common.db import ensure_migrated, run_migrations

    parser = argparse.ArgumentParser()
    parser.add_argument("command", nargs="?", default="serve", choices=["serve", "migrate"])
    command = parser.parse_args(argv).command
    # Required fields come from the environment, which mypy cannot see.
    settings = settings_type()  # type: ignore[call-arg]
    if command == "migrate":
        # A one-shot command: logs, but no metrics port to collide with the server's.
        configure_logging(settings.service_name, settings.log_level, settings.log_format)
        run_migrations(settings.database_url.get_secret_value(), migrations_dir)
        log.info("migrated", service=settings.service_name)
        return

    configure_observability(settings)

    async def serve() -> None:
        await ensure_migrated(settings.database_url.get_secret_value(), migrations_dir)
        app = await build(settings)
        await app.run_until_signal()

    asyncio.run(serve())
