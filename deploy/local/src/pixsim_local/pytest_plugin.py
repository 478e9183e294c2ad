"""pytest fixtures over real servers: one PostgreSQL cluster and one Kafka broker per test
run (not per test), fresh databases and topics per test, and a signing key pair.

Registered through the `pytest11` entry point, so every test in the workspace has them.
Set PIXSIM_DATABASE_URL / PIXSIM_KAFKA_BOOTSTRAP to use existing servers instead.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Protocol

import httpx
import pytest
import pytest_asyncio

from pixsim_common.auth import generate_keypair
from pixsim_common.topics import DEFAULT_PARTITIONS, Topic, all_topic_names
from pixsim_local.infra import Infra, infra_of_its_own
from pixsim_local.kafka import KafkaBroker
from pixsim_local.postgres import ServiceDatabase
from pixsim_local.processes import ManagedProcess, free_port
from pixsim_local.s3 import S3Server
from pixsim_local.whole_stack import WholeStack
from pixsim_local.whole_stack import whole_stack as pixsim_whole_stack

_timings: dict[str, float] = {}


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def infra() -> AsyncIterator[Infra]:
    async with infra_of_its_own("pixsim-test-") as started:
        _timings.update(started.timings)
        yield started


DatabaseFactory = Callable[[str], Awaitable[ServiceDatabase]]


@contextlib.asynccontextmanager
async def _databases(infra: Infra) -> AsyncIterator[DatabaseFactory]:
    """Makes fresh databases (each with its own role), dropped when the block ends."""
    created: list[str] = []

    async def make(prefix: str = "test") -> ServiceDatabase:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        created.append(name)
        return await infra.postgres.create_service_database(name)

    try:
        yield make
    finally:
        for name in created:
            await infra.postgres.drop_database(name)


@pytest_asyncio.fixture(loop_scope="session")
async def new_database(infra: Infra) -> AsyncIterator[DatabaseFactory]:
    """Fresh databases for one test."""
    async with _databases(infra) as make:
        yield make


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def new_database_module(infra: Infra) -> AsyncIterator[DatabaseFactory]:
    """Fresh databases for a module-scoped fixture."""
    async with _databases(infra) as make:
        yield make


class TopicFactory(Protocol):
    def __call__(self, message_type: type, partitions: int = 3) -> Awaitable[Topic]: ...


@pytest_asyncio.fixture(loop_scope="session")
async def new_topic(infra: Infra) -> TopicFactory:
    """Makes a fresh topic (and its .dlq) carrying the given message type, so a test sees
    only its own messages."""

    async def make(message_type: type, partitions: int = 3) -> Topic:
        topic = Topic(f"test.{uuid.uuid4().hex[:12]}.v1", message_type)
        await infra.kafka.ensure_topics([topic.name, topic.dlq], partitions)
        return topic

    return make


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def own_kafka() -> AsyncIterator[KafkaBroker]:
    """A broker for one test module alone, with every topic: for tests whose consumer groups
    must see no other module's events."""
    run_dir = Path(tempfile.mkdtemp(prefix="pixsim-kafka-"))
    broker = await KafkaBroker.start(run_dir, free_port(), free_port())
    try:
        await broker.ensure_topics(all_topic_names(), DEFAULT_PARTITIONS)
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def provider_sim() -> Iterator[str]:
    """The provider simulator as its own process on a free port; its base URL."""
    port = free_port()
    log_dir = Path(tempfile.mkdtemp(prefix="pixsim-sim-"))
    process = ManagedProcess(
        "provider-sim",
        [sys.executable, "-m", "pixsim_provider_sim", "--port", str(port), "--seed", "7"],
        log_dir / "provider-sim.log",
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        process.check_alive()
        try:
            httpx.get(f"{url}/_sim/stats", timeout=1).raise_for_status()
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    try:
        yield url
    finally:
        process.stop()
        shutil.rmtree(log_dir, ignore_errors=True)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def s3_server() -> AsyncIterator[S3Server]:
    """A real S3 server (the Versity gateway over a directory) for the whole run; each test
    that needs one makes a bucket of its own."""
    run_dir = Path(tempfile.mkdtemp(prefix="pixsim-s3-"))
    server = await S3Server.start(run_dir, free_port())
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def signing_keys() -> tuple[str, str]:
    """(private PEM, public PEM) of an Ed25519 key pair."""
    return generate_keypair()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _timings:
        terminalreporter.write_line(
            "real infrastructure started in "
            + ", ".join(f"{name}={seconds:.2f}" for name, seconds in _timings.items())
        )


TEST_URL_TTL_SECONDS = 30.0


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def whole_stack(infra: Infra) -> AsyncIterator[WholeStack]:
    """The simulator and the four services as processes, on free ports, with databases and
    a Kafka broker of their own: shared by every test of the session that needs it."""
    run_dir = Path(tempfile.mkdtemp(prefix="pixsim-stack-kafka-"))
    broker = await KafkaBroker.start(run_dir, free_port(), free_port())
    try:
        await broker.ensure_topics(all_topic_names(), DEFAULT_PARTITIONS)
        # Provider URLs die soon, as real ones do within a day or two (a test that needs
        # them dead sets a key's lifetime shorter still).
        async with pixsim_whole_stack(
            infra, broker, simulator_args=["--url-ttl", str(TEST_URL_TTL_SECONDS)]
        ) as stack:
            yield stack
    finally:
        broker.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
