"""Two gateway processes sharing one database and one consumer group, as two Kubernetes
replicas would: limits hold across them, one replica's death loses nothing, and a task
that outlives the gateway's bound at a provider that cannot stop it is followed on by
whichever replica polls next, its late clip adopted and its cost settled once."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import httpx
import pytest
import pytest_asyncio

from pixsim.events.v1 import events_pb2
from pixsim.provider.v1 import provider_gateway_service_pb2 as pb
from pixsim.provider.v1 import provider_gateway_service_pb2_grpc as pb_grpc
from pixsim.types.v1 import types_pb2 as t
from pixsim_common import topics
from pixsim_common.auth import issue_token
from pixsim_common.db import run_migrations
from pixsim_common.topics import DEFAULT_PARTITIONS, all_topic_names
from pixsim_local.grpc_probe import wait_serving
from pixsim_local.kafka import EventTap, KafkaBroker, publish_events
from pixsim_local.postgres import ServiceDatabase
from pixsim_local.processes import ManagedProcess, free_port
from pixsim_local.pytest_plugin import DatabaseFactory
from pixsim_provider_gateway.crypto import new_key
from pixsim_provider_gateway.main import MIGRATIONS

pytestmark = pytest.mark.integration

SERVICE = "pixsim.provider.v1.ProviderGatewayService"
RUNWAY_COST = 25  # a 5 s Runway task: what the simulator charges and the gateway reserves


@dataclass
class Replicas:
    processes: list[ManagedProcess]
    ports: list[int]
    database: ServiceDatabase
    stub: pb_grpc.ProviderGatewayServiceAsyncStub
    tap: EventTap
    kafka: KafkaBroker
    sim: str
    admin: tuple[tuple[str, str], ...]

    async def account(self, provider: str, max_concurrency: int, **knobs: object) -> str:
        key = f"{provider}-{uuid.uuid4().hex[:8]}"
        async with httpx.AsyncClient() as client:
            (await client.put(f"{self.sim}/_sim/keys/{key}", json=knobs)).raise_for_status()
        await self.stub.CreateAccount(
            pb.CreateAccountRequest(
                account=pb.Account(
                    provider_id=provider,
                    label=key,
                    credentials={"api_key": key},
                    credits=100_000,
                    max_concurrency=max_concurrency,
                )
            ),
            metadata=self.admin,
        )
        return key

    async def submit(self, provider: str, count: int) -> list[str]:
        jobs = [str(uuid.uuid4()) for _ in range(count)]
        await publish_events(
            self.kafka.bootstrap,
            topics.JOB_SUBMITTED,
            [
                (
                    job,
                    events_pb2.JobSubmitted(
                        job_id=job,
                        user_id=f"user{index % 5}",
                        provider_id=provider,
                        prompt="a cat",
                        operation_type=t.OPERATION_TYPE_TEXT_TO_VIDEO,
                    ),
                )
                for index, job in enumerate(jobs)
            ],
        )
        return jobs

    async def sim_stats(self) -> dict[str, dict[str, int]]:
        async with httpx.AsyncClient() as client:
            keys = (await client.get(f"{self.sim}/_sim/stats")).json()["keys"]
        return {key: dict(value) for key, value in keys.items()}


def gateway_process(index: int, port: int, env: dict[str, str], logs: Path) -> ManagedProcess:
    return ManagedProcess(
        f"gateway-{index}",
        [sys.executable, "-c", "from pixsim_provider_gateway.main import run; run()"],
        logs / f"gateway-{index}.log",
        env={**env, "PIXSIM_GATEWAY_GRPC_PORT": str(port)},
    )


@asynccontextmanager
async def started_replicas(
    kafka: KafkaBroker,
    database: ServiceDatabase,
    provider_sim: str,
    signing_keys: tuple[str, str],
    logs: Path,
    settings: Mapping[str, str] | None = None,
) -> AsyncIterator[Replicas]:
    """Two gateway processes over `database`, in one consumer group of their own."""
    await asyncio.to_thread(run_migrations, database.url, MIGRATIONS)
    env = {
        **os.environ,
        "PIXSIM_GATEWAY_SERVICE_NAME": f"gateway-replicas-{uuid.uuid4().hex[:6]}",
        "PIXSIM_GATEWAY_DATABASE_URL": database.url,
        "PIXSIM_GATEWAY_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "PIXSIM_GATEWAY_JWT_PUBLIC_KEY": signing_keys[1],
        "PIXSIM_GATEWAY_METRICS_PORT": "0",
        "PIXSIM_GATEWAY_LOG_LEVEL": "WARNING",
        "PIXSIM_GATEWAY_CREDENTIALS_KEYS": f"k1:{new_key()}",
        "PIXSIM_GATEWAY_PROVIDER_TIMEOUT": "3",
        "PIXSIM_GATEWAY_POLL_FIRST_SECONDS": "0.1",
        "PIXSIM_GATEWAY_POLL_CAP_SECONDS": "0.3",
        "PIXSIM_GATEWAY_POLL_LEASE_SECONDS": "3",
        "PIXSIM_GATEWAY_RETRY_BASE_SECONDS": "0.1",
        "PIXSIM_GATEWAY_DEADLINE_SECONDS": "120",
        **{f"PIXSIM_GATEWAY_{p}_BASE_URL": provider_sim for p in ("PIXVERSE", "RUNWAY", "PIKA")},
        **{f"PIXSIM_GATEWAY_{name}": value for name, value in (settings or {}).items()},
    }
    ports = [free_port(), free_port()]
    processes = [gateway_process(i, port, env, logs) for i, port in enumerate(ports)]
    tap = EventTap(
        kafka.bootstrap,
        [
            topics.GENERATION_STARTED.name,
            topics.GENERATION_COMPLETED.name,
            topics.GENERATION_FAILED.name,
        ],
    )
    await tap.start()
    admin = (
        (
            "authorization",
            "Bearer " + issue_token(signing_keys[0], user_id="root", roles=["admin"]),
        ),
    )
    try:
        for process, port in zip(processes, ports, strict=True):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as probe:
                await wait_serving(probe, SERVICE, timeout=60, check_alive=process.check_alive)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports[0]}") as channel:
            yield Replicas(
                processes,
                ports,
                database,
                pb_grpc.ProviderGatewayServiceStub(channel),
                tap,
                kafka,
                provider_sim,
                admin,
            )
    finally:
        for process in processes:
            process.stop()
        await tap.stop()


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def replicas(
    own_kafka: KafkaBroker,
    new_database_module: DatabaseFactory,
    provider_sim: str,
    signing_keys: tuple[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Replicas]:
    database = await new_database_module("gateway_replicas")
    logs = tmp_path_factory.mktemp("replicas")
    async with started_replicas(own_kafka, database, provider_sim, signing_keys, logs) as made:
        yield made


async def test_two_replicas_never_exceed_an_accounts_limits(replicas: Replicas) -> None:
    narrow = await replicas.account("runway", 2, finish_ms=300)
    wide = await replicas.account("runway", 3, finish_ms=300)
    jobs = await replicas.submit("runway", 200)

    for job in jobs:
        await replicas.tap.wait_for(topics.GENERATION_COMPLETED.name, job, timeout=120)
    failed = [j for j in jobs if replicas.tap.of(topics.GENERATION_FAILED.name, j)]
    assert failed == []

    stats = await replicas.sim_stats()
    print(
        f"\nhighest concurrency: limit 2 -> {stats[narrow]['in_flight_max']}, "
        f"limit 3 -> {stats[wide]['in_flight_max']}; submits "
        f"{stats[narrow]['submits']} + {stats[wide]['submits']}"
    )
    assert 0 < stats[narrow]["in_flight_max"] <= 2
    assert 0 < stats[wide]["in_flight_max"] <= 3
    assert stats[narrow]["submits"] + stats[wide]["submits"] == 200
    connection = await asyncpg.connect(replicas.database.url)
    try:
        accounts = {
            row["label"]: row
            for row in await connection.fetch(
                "SELECT label, credits, in_flight FROM provider_accounts"
            )
        }
    finally:
        await connection.close()
    for key in (narrow, wide):
        # Every slot came back, and the credits spent are exactly what the provider charged.
        assert accounts[key]["in_flight"] == 0
        assert accounts[key]["credits"] == 100_000 - RUNWAY_COST * stats[key]["submits"]
        assert stats[key]["credits"] >= 0


async def test_a_replica_killed_mid_poll_loses_nothing(replicas: Replicas) -> None:
    # Status checks that take a second keep leases held while we look for them.
    await replicas.account("pixverse", 10, finish_ms=2000, latency_ms=1000)
    jobs = await replicas.submit("pixverse", 12)
    for job in jobs:
        await replicas.tap.wait_for(topics.GENERATION_STARTED.name, job, timeout=60)

    connection = await asyncpg.connect(replicas.database.url)
    try:
        victim = None
        for _ in range(100):
            owners = {
                row["lease_owner"]
                for row in await connection.fetch(
                    "SELECT lease_owner FROM provider_submissions "
                    "WHERE state = 'RUNNING' AND lease_owner IS NOT NULL"
                )
            }
            pids = {int(owner.rsplit(":", 1)[1]) for owner in owners}
            victim = next((p for p in replicas.processes if p.pid in pids), None)
            if victim is not None:
                break
            await asyncio.sleep(0.05)
        assert victim is not None, "no replica was holding a poll lease"
        os.kill(victim.pid, signal.SIGKILL)
        victim.process.wait()
        held = await connection.fetchval(
            "SELECT count(*) FROM provider_submissions WHERE lease_owner LIKE $1", f"%:{victim.pid}"
        )
        assert held > 0  # it died holding leases
    finally:
        await connection.close()

    for job in jobs:
        await replicas.tap.wait_for(topics.GENERATION_COMPLETED.name, job, timeout=90)
    assert all(not replicas.tap.of(topics.GENERATION_FAILED.name, j) for j in jobs)


@pytest_asyncio.fixture(loop_scope="session")
async def kafka_alone(tmp_path: Path) -> AsyncIterator[KafkaBroker]:
    """A broker of the test's own: the module's pair would run its jobs too, and its new
    consumer group would read every job the module's other tests submitted."""
    broker = await KafkaBroker.start(tmp_path / "kafka", free_port(), free_port())
    try:
        await broker.ensure_topics(all_topic_names(), DEFAULT_PARTITIONS)
        yield broker
    finally:
        broker.stop()


async def test_a_late_task_is_followed_past_the_bound_adopted_and_settled_once(
    kafka_alone: KafkaBroker,
    new_database: DatabaseFactory,
    provider_sim: str,
    signing_keys: tuple[str, str],
    tmp_path: Path,
) -> None:
    """PixVerse cannot cancel a task: one still running at the gateway's bound (2 s here)
    runs on, and is billed, whatever the gateway does."""
    database = await new_database("gateway_reconcile")
    async with started_replicas(
        kafka_alone,
        database,
        provider_sim,
        signing_keys,
        tmp_path,
        {"DEADLINE_SECONDS": "2", "RECONCILE_SECONDS": "60", "POLL_CAP_SECONDS": "0.5"},
    ) as pair:
        key = await pair.account("pixverse", 4, finish_ms=4000)
        jobs = await pair.submit("pixverse", 4)
        connection = await asyncpg.connect(database.url)
        try:
            for _ in range(600):
                done = await connection.fetch(
                    "SELECT id::text AS id, reconcile_from FROM provider_submissions"
                    " WHERE state = 'SUCCEEDED'"
                )
                if len(done) == len(jobs):
                    break
                await asyncio.sleep(0.1)
            failed = await connection.fetchval(
                "SELECT count(*) FROM provider_submissions WHERE state = 'FAILED'"
            )
            account = await connection.fetchrow(
                "SELECT credits, in_flight FROM provider_accounts WHERE label = $1", key
            )
        finally:
            await connection.close()
        ours = {row["id"] for row in done}
        completions = await pair.tap.wait_matching(
            topics.GENERATION_COMPLETED.name,
            lambda r: events_pb2.GenerationCompleted.FromString(r.value).submission_id in ours,
            count=len(ours),
        )
        followed = sum(1 for row in done if row["reconcile_from"] is not None)
        stats = (await pair.sim_stats())[key]
    assert (len(done), failed) == (4, 0)
    assert followed == 4
    assert len(completions) == 4  # one each
    assert stats["submits"] == 4  # nothing was sent again
    # Each task's cost, once: what the simulator took is what the ledger took.
    assert (account["in_flight"], 100_000 - account["credits"]) == (0, 1_000_000 - stats["credits"])
