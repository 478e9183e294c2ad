"""A service that starts while its broker or database is away (restarting, not scheduled
yet) waits for it and carries on, rather than exiting: real Kafka and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from pixsim.events.v1 import events_pb2
from pixsim_common.consumer import EventConsumer, Subscription
from pixsim_common.db import UnitOfWork, create_engine, create_sessionmaker, libpq_url
from pixsim_common.dependencies import CONNECT_WAIT_SECONDS, with_database
from pixsim_common.outbox import OutboxRelay, enqueue
from pixsim_common.topics import Topic
from pixsim_common.transient import is_transient
from pixsim_local.infra import Infra
from pixsim_local.kafka import KafkaBroker
from pixsim_local.processes import free_port
from pixsim_local.pytest_plugin import DatabaseFactory

from .conftest import MessagingDatabase, database_away
from .test_consumer import record_effect, wait_for

pytestmark = pytest.mark.integration


async def test_a_relay_and_a_consumer_started_with_the_broker_away_catch_up_when_it_is_back(
    messaging_db: MessagingDatabase, tmp_path_factory: pytest.TempPathFactory
) -> None:
    run_dir = tmp_path_factory.mktemp("late-kafka")
    ports = (free_port(), free_port())
    broker = await KafkaBroker.start(run_dir, *ports)
    topic = Topic(f"test.{uuid.uuid4().hex[:12]}.v1", events_pb2.JobCancelled)
    await broker.ensure_topics([topic.name], partitions=2)
    bootstrap = broker.bootstrap
    broker.stop()  # the topic stays on disk for when it is back

    relay = OutboxRelay(
        service="kit-test",
        engine=messaging_db.engine,
        database_url=messaging_db.database.url,
        kafka_bootstrap=bootstrap,
        producer_options={"request_timeout_ms": 2000},
    )
    consumer = EventConsumer(
        name="kit-test",
        group_id=f"group-{uuid.uuid4().hex[:8]}",
        kafka_bootstrap=bootstrap,
        sessions=messaging_db.sessions,
        subscriptions=[Subscription(topic, record_effect)],
        consumer_options={"request_timeout_ms": 5000},
    )
    job_ids = [str(uuid.uuid4()) for _ in range(5)]
    try:
        began = time.monotonic()
        await relay.start()
        await consumer.start()
        # Both returned (the service would serve now) and go on connecting behind.
        assert time.monotonic() - began < 4 * CONNECT_WAIT_SECONDS
        async with UnitOfWork(messaging_db.sessions) as uow:
            for job_id in job_ids:
                event = events_pb2.JobCancelled(job_id=job_id, user_id="u1")
                await enqueue(uow.session, topic, job_id, event, source="/job")
            await uow.commit()
        await asyncio.sleep(1)
        async with messaging_db.engine.connect() as connection:
            unsent = await connection.scalar(
                text("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
            )
        assert unsent == len(job_ids)

        broker = await KafkaBroker.start(run_dir, *ports)

        async def all_handled() -> bool:
            async with messaging_db.engine.connect() as connection:
                handled = await connection.scalar(
                    text("SELECT count(DISTINCT job_id) FROM effects WHERE job_id = ANY(:ids)"),
                    {"ids": job_ids},
                )
            return bool(handled == len(job_ids))

        await wait_for(all_handled, timeout=90)
    finally:
        await consumer.stop()
        await relay.stop()
        broker.stop()


async def test_a_start_waits_for_a_database_that_refuses_connections(
    messaging_db: MessagingDatabase, infra: Infra
) -> None:
    url = libpq_url(messaging_db.database.url)

    async def select_one() -> int:
        connection = await asyncpg.connect(url)
        try:
            return int(await connection.fetchval("SELECT 1"))
        finally:
            await connection.close()

    async with database_away(messaging_db, infra):
        waiting = asyncio.create_task(with_database(select_one, wait_seconds=60))
        await asyncio.sleep(1.5)
        assert not waiting.done()
    assert await asyncio.wait_for(waiting, timeout=30) == 1


async def test_a_failure_that_will_not_pass_is_not_waited_for() -> None:
    calls = 0

    async def wrong() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError, match="a bug"):
        await with_database(wrong, wait_seconds=60)
    assert calls == 1


async def test_connections_a_restart_broke_fail_once_transiently_then_the_pool_is_fresh(
    new_database: DatabaseFactory, infra: Infra
) -> None:
    """The pool does not ping at checkout (decision 118): a broken connection's first
    statement fails, as a transient error, and every pooled connection that predates it is
    replaced, so the process pays one retry for a database restart, not one per connection."""
    database = await new_database("restart")
    engine = create_engine(database.url, pool_size=4)
    db = MessagingDatabase(database, engine, create_sessionmaker(engine))

    async def backend_pid() -> int:
        async with db.sessions() as session:
            pid = await session.scalar(text("SELECT pg_backend_pid() FROM pg_sleep(0.05)"))
        assert isinstance(pid, int)
        return pid

    try:
        before = set(await asyncio.gather(*(backend_pid() for _ in range(4))))
        assert len(before) == 4  # the pool holds four connections
        async with database_away(db, infra):
            pass  # every open connection dropped, as a restart does
        with pytest.raises(DBAPIError) as failure:
            await backend_pid()
        assert is_transient(failure.value), repr(failure.value)
        after = set(await asyncio.gather(*(backend_pid() for _ in range(4))))
        assert after.isdisjoint(before)
    finally:
        await engine.dispose()
