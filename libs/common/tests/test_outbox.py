"""The transactional outbox against real PostgreSQL and Kafka."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from datetime import timedelta

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from cloudevents.core.bindings.kafka import KafkaMessage, from_binary
from cloudevents.core.formats.json import JSONFormat
from cloudevents.v1 import kafka as v1_kafka
from opentelemetry import trace
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncSession

from pixsim.events.v1 import events_pb2
from pixsim.types.v1 import types_pb2
from pixsim_common.db import UnitOfWork
from pixsim_common.metrics import OUTBOX_BACKLOG, OUTBOX_OLDEST, OUTBOX_SET_ASIDE
from pixsim_common.outbox import (
    RELAY_LOCK_KEY,
    OutboxRelay,
    SetAside,
    Unpublishable,
    enqueue,
    outbox_table,
)
from pixsim_common.topics import MAX_EVENT_BYTES, TOPIC_MAX_MESSAGE_BYTES, Topic
from pixsim_local.infra import Infra
from pixsim_local.kafka import KafkaBroker, read_topic
from pixsim_local.processes import free_port
from pixsim_local.pytest_plugin import TopicFactory

from .conftest import MessagingDatabase

pytestmark = pytest.mark.integration


def submitted(job_id: str) -> events_pb2.JobSubmitted:
    return events_pb2.JobSubmitted(
        job_id=job_id,
        user_id="u1",
        operation_type=types_pb2.OPERATION_TYPE_TEXT_TO_VIDEO,
        provider_id="pixverse",
        prompt="a cat",
    )


def relay_for(db: MessagingDatabase, infra: Infra, **options: float) -> OutboxRelay:
    return OutboxRelay(
        service="kit-test",
        engine=db.engine,
        database_url=db.database.url,
        kafka_bootstrap=infra.kafka.bootstrap,
        **options,  # type: ignore[arg-type]
    )


async def test_committed_events_reach_kafka_as_cloudevents_with_trace_context(
    messaging_db: MessagingDatabase, infra: Infra, new_topic: TopicFactory
) -> None:
    topic = await new_topic(events_pb2.JobSubmitted)
    # A sweep of a minute: the events can only arrive in time if NOTIFY wakes the relay.
    relay = relay_for(messaging_db, infra, sweep_seconds=60)
    await relay.start()
    try:
        job_ids = [str(uuid.uuid4()) for _ in range(3)]
        with trace.get_tracer("test").start_as_current_span("CreateJob") as span:
            async with UnitOfWork(messaging_db.sessions) as uow:
                event_ids = [
                    await enqueue(uow.session, topic, job_id, submitted(job_id), source="/job")
                    for job_id in job_ids
                ]
                await uow.commit()
        trace_id = format(span.get_span_context().trace_id, "032x")
        records = await read_topic(infra.kafka.bootstrap, topic.name, until=3, timeout=20)
    finally:
        await relay.stop()

    assert sorted(r.key.decode() for r in records) == sorted(job_ids)
    for record in records:
        headers = dict(record.headers)
        assert headers["ce_specversion"] == b"1.0"
        assert headers["ce_type"] == topic.name.encode()
        assert headers["ce_source"] == b"/job"
        assert headers["content-type"] == b"application/protobuf"
        assert headers["traceparent"].decode().split("-")[1] == trace_id
        event = events_pb2.JobSubmitted.FromString(record.value)
        assert event.job_id == record.key.decode()

        # The CloudEvents SDK's Kafka binding reads the message exactly as we sent it.
        cloud_event = from_binary(
            KafkaMessage(headers=headers, key=record.key, value=record.value), JSONFormat()
        )
        assert cloud_event.get_id() in event_ids
        assert cloud_event.get_type() == topic.name
        assert cloud_event.get_source() == "/job"
        assert cloud_event.get_datacontenttype() == "application/protobuf"
        # The v1 binding with the identity unmarshaller hands back the exact payload bytes.
        legacy = v1_kafka.from_binary(
            v1_kafka.KafkaMessage(headers=headers, key=record.key, value=record.value),
            data_unmarshaller=v1_kafka.conversion.IDENTITY_UNMARSHALLER,
        )
        assert legacy["id"] == cloud_event.get_id()
        payload = legacy.get_data()
        assert isinstance(payload, bytes)
        assert events_pb2.JobSubmitted.FromString(payload) == event

    async with messaging_db.engine.connect() as connection:
        unsent = await connection.scalar(text("SELECT count(*) FROM outbox WHERE sent_at IS NULL"))
    assert unsent == 0


async def test_a_rolled_back_transaction_publishes_nothing(
    messaging_db: MessagingDatabase, infra: Infra, new_topic: TopicFactory
) -> None:
    topic = await new_topic(events_pb2.JobSubmitted)
    relay = relay_for(messaging_db, infra)
    await relay.start()
    try:
        async with UnitOfWork(messaging_db.sessions) as uow:
            job_id = str(uuid.uuid4())
            await enqueue(uow.session, topic, job_id, submitted(job_id), source="/job")
            # leaves without commit()
        assert await relay.publish_pending() == 0
    finally:
        await relay.stop()
    assert await read_topic(infra.kafka.bootstrap, topic.name, until=1, timeout=2) == []


async def test_while_another_relay_holds_the_relay_lock_this_one_sends_nothing(
    messaging_db: MessagingDatabase, infra: Infra, new_topic: TopicFactory
) -> None:
    """One relay publishes at a time (each key's events stay in order across replicas)."""
    topic = await new_topic(events_pb2.JobSubmitted)
    relay = relay_for(messaging_db, infra, sweep_seconds=60)
    async with messaging_db.engine.connect() as other_replica:
        await other_replica.begin()
        await other_replica.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": RELAY_LOCK_KEY}
        )
        await relay.start()
        try:
            job_ids = [str(uuid.uuid4()) for _ in range(3)]
            async with UnitOfWork(messaging_db.sessions) as uow:
                for job_id in job_ids:
                    await enqueue(uow.session, topic, job_id, submitted(job_id), source="/job")
                await uow.commit()
            assert await relay.publish_pending() == 0
            assert await read_topic(infra.kafka.bootstrap, topic.name, until=1, timeout=2) == []
            await other_replica.rollback()  # the other relay's transaction ends
            assert await relay.publish_pending() == 3
            records = await read_topic(infra.kafka.bootstrap, topic.name, until=3, timeout=20)
        finally:
            await relay.stop()
    assert sorted(r.key.decode() for r in records) == sorted(job_ids)


def test_enqueue_refuses_an_event_of_the_wrong_type() -> None:
    from pixsim_common.topics import JOB_CANCELLED

    with pytest.raises(TypeError, match="JobCancelled"):
        asyncio.run(
            enqueue(None, JOB_CANCELLED, "k", submitted("x"), source="/job")  # type: ignore[arg-type]
        )


RELAY_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pixsim_common.db import create_engine
    from pixsim_common.outbox import OutboxRelay

    async def main():
        url, bootstrap = sys.argv[1], sys.argv[2]
        relay = OutboxRelay(service="doomed", engine=create_engine(url), database_url=url,
                            kafka_bootstrap=bootstrap, batch_size=100)
        await relay.start()
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


async def test_a_relay_killed_mid_publish_loses_nothing(
    messaging_db: MessagingDatabase, infra: Infra, new_topic: TopicFactory
) -> None:
    topic = await new_topic(events_pb2.JobSubmitted)
    count = 5000
    async with UnitOfWork(messaging_db.sessions) as uow:
        event_ids = {
            await enqueue(uow.session, topic, job_id, submitted(job_id), source="/job")
            for job_id in (str(uuid.uuid4()) for _ in range(count))
        }
        await uow.commit()

    child = subprocess.Popen(
        [sys.executable, "-c", RELAY_CHILD, messaging_db.database.url, infra.kafka.bootstrap],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        async with messaging_db.engine.connect() as connection:
            for _ in range(3000):
                sent = await connection.scalar(
                    text("SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL")
                )
                await connection.rollback()
                if sent:
                    break
                await asyncio.sleep(0.005)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()

    async with messaging_db.engine.connect() as connection:
        unsent_after_kill = await connection.scalar(
            text("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
        )
    # The kill really came mid-way: some events were marked sent, some not.
    assert 0 < unsent_after_kill < count

    relay = relay_for(messaging_db, infra)
    await relay.start()
    try:
        records = await read_topic(infra.kafka.bootstrap, topic.name, until=count, timeout=60)
        delivered = {dict(r.headers)["ce_id"].decode() for r in records}
        # At least once: every committed event is on the topic, duplicates allowed.
        while delivered != event_ids:
            more = await read_topic(
                infra.kafka.bootstrap, topic.name, until=len(records) + 1, timeout=5
            )
            if len(more) == len(records):
                break
            records = more
            delivered = {dict(r.headers)["ce_id"].decode() for r in records}
    finally:
        await relay.stop()
    assert delivered == event_ids


async def test_housekeeping_prunes_sent_rows_and_publishing_goes_on(
    messaging_db: MessagingDatabase, infra: Infra, new_topic: TopicFactory
) -> None:
    topic = await new_topic(events_pb2.JobSubmitted)
    relay = relay_for(messaging_db, infra, sweep_seconds=60)
    relay._retention = timedelta(0)
    await relay.start()
    try:
        for round_number in (1, 2):
            async with UnitOfWork(messaging_db.sessions) as uow:
                job_id = str(uuid.uuid4())
                await enqueue(uow.session, topic, job_id, submitted(job_id), source="/job")
                await uow.commit()
            records = await read_topic(
                infra.kafka.bootstrap, topic.name, until=round_number, timeout=10
            )
            assert len(records) == round_number
            # Kafka has the record a moment before the relay's `sent_at` update commits.
            async with messaging_db.engine.connect() as connection:
                for _ in range(200):
                    unsent = await connection.scalar(
                        text("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
                    )
                    await connection.rollback()
                    if unsent == 0:
                        break
                    await asyncio.sleep(0.01)
            await relay.housekeeping()
            async with messaging_db.engine.connect() as connection:
                assert await connection.scalar(text("SELECT count(*) FROM outbox")) == 0
        assert OUTBOX_BACKLOG.labels("kit-test")._value.get() == 0
    finally:
        await relay.stop()


async def test_housekeeping_reports_how_old_the_oldest_unsent_event_is(
    messaging_db: MessagingDatabase, infra: Infra, new_topic: TopicFactory
) -> None:
    topic = await new_topic(events_pb2.JobSubmitted)
    relay = relay_for(messaging_db, infra)  # never started: nothing publishes
    async with UnitOfWork(messaging_db.sessions) as uow:
        job_id = str(uuid.uuid4())
        await enqueue(uow.session, topic, job_id, submitted(job_id), source="/job")
        await uow.commit()
    async with messaging_db.engine.begin() as connection:
        await connection.execute(
            text("UPDATE outbox SET created_at = now() - interval '5 minutes' WHERE key = :key"),
            {"key": job_id},
        )
    try:
        await relay.housekeeping()
        assert OUTBOX_BACKLOG.labels("kit-test")._value.get() >= 1
        assert 300 <= OUTBOX_OLDEST.labels("kit-test")._value.get() < 360
    finally:
        async with messaging_db.engine.begin() as connection:
            await connection.execute(text("DELETE FROM outbox WHERE key = :key"), {"key": job_id})
    await relay.housekeeping()
    assert OUTBOX_OLDEST.labels("kit-test")._value.get() < 300


async def test_kafka_down_delays_but_loses_nothing(
    messaging_db: MessagingDatabase, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # A broker of its own, so stopping it does not disturb the other tests.
    run_dir = tmp_path_factory.mktemp("own-kafka")
    ports = (free_port(), free_port())
    brokers = [await KafkaBroker.start(run_dir, *ports)]
    relay: OutboxRelay | None = None
    try:
        topic = Topic(f"test.{uuid.uuid4().hex[:12]}.v1", events_pb2.JobSubmitted)
        await brokers[0].ensure_topics([topic.name], partitions=1)
        relay = OutboxRelay(
            service="kit-test",
            engine=messaging_db.engine,
            database_url=messaging_db.database.url,
            kafka_bootstrap=brokers[0].bootstrap,
            producer_options={"request_timeout_ms": 2000},
        )
        await relay.start()
        brokers[0].stop()
        async with UnitOfWork(messaging_db.sessions) as uow:
            event_ids = {
                await enqueue(uow.session, topic, job_id, submitted(job_id), source="/job")
                for job_id in (str(uuid.uuid4()) for _ in range(20))
            }
            await uow.commit()
        await asyncio.sleep(3)  # the relay tries, fails, backs off
        async with messaging_db.engine.connect() as connection:
            unsent = await connection.scalar(
                text("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
            )
        assert unsent == len(event_ids)

        brokers.append(await KafkaBroker.start(run_dir, *ports))
        records = await read_topic(
            brokers[-1].bootstrap, topic.name, until=len(event_ids), timeout=60
        )
        assert {dict(r.headers)["ce_id"].decode() for r in records} == event_ids
    finally:
        if relay is not None:
            await relay.stop()
        for broker in brokers:
            broker.stop()


async def test_a_row_that_can_never_be_published_is_set_aside_and_the_rest_go_on(
    messaging_db: MessagingDatabase, infra: Infra, new_topic: TopicFactory
) -> None:
    """Rows written behind an unpublishable one (too large for the topic, headers that do not
    encode) leave at once; the bad rows are set aside with their error, counted, and handed
    to the service's hook, once each."""
    topic = await new_topic(events_pb2.JobSubmitted)
    handed: list[SetAside] = []

    async def fail_the_job(session: AsyncSession, row: SetAside) -> None:
        handed.append(row)
        await session.execute(
            text("INSERT INTO effects (event_id, job_id) VALUES (:e, :j)"),
            {"e": row.event_id, "j": row.key},
        )

    too_large, bad_headers, refused = (str(uuid.uuid4()) for _ in range(3))
    behind = [str(uuid.uuid4()) for _ in range(3)]
    # A topic that takes records of a kilobyte at most: the broker itself refuses the row.
    strict = f"test.strict-{uuid.uuid4().hex[:8]}.v1"
    admin = AIOKafkaAdminClient(bootstrap_servers=infra.kafka.bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(strict, 1, 1, topic_configs={"max.message.bytes": "1024"})]
        )
    finally:
        await admin.close()
    async with messaging_db.engine.begin() as connection:
        await connection.execute(
            insert(outbox_table).values(
                event_id=str(uuid.uuid4()),
                topic=strict,
                key=refused,
                payload=b"\x0a" + b"x" * 10_000,
                headers={"ce_id": "x"},
            )
        )
        # Written by hand: enqueue itself refuses such events.
        await connection.execute(
            insert(outbox_table).values(
                event_id=str(uuid.uuid4()),
                topic=topic.name,
                key=too_large,
                payload=b"\x0a" + b"x" * (2 * TOPIC_MAX_MESSAGE_BYTES),
                headers={"ce_id": "x"},
            )
        )
        await connection.execute(
            insert(outbox_table).values(
                event_id=str(uuid.uuid4()),
                topic=topic.name,
                key=bad_headers,
                payload=submitted(bad_headers).SerializeToString(),
                headers=[1, 2, 3],  # not a mapping of header names to text
            )
        )
    before = OUTBOX_SET_ASIDE.labels("kit-test", topic.name, "Unpublishable")._value.get()
    async with UnitOfWork(messaging_db.sessions) as uow:
        for job_id in behind:
            await enqueue(uow.session, topic, job_id, submitted(job_id), source="/job")
        await uow.commit()
    relay = OutboxRelay(
        service="kit-test",
        engine=messaging_db.engine,
        database_url=messaging_db.database.url,
        kafka_bootstrap=infra.kafka.bootstrap,
        on_set_aside=fail_the_job,
    )
    await relay.start()
    try:
        records = await read_topic(infra.kafka.bootstrap, topic.name, until=3, timeout=20)
        await relay.publish_pending()  # another round: nothing set aside comes back
    finally:
        await relay.stop()

    # At least once: a round that met a passing error (the new topic's metadata not yet
    # there) is sent again, so a row may arrive twice; none of the bad ones arrives at all.
    assert {r.key.decode() for r in records} == set(behind)
    assert sorted(row.key for row in handed) == sorted([too_large, bad_headers, refused])
    after = OUTBOX_SET_ASIDE.labels("kit-test", topic.name, "Unpublishable")._value.get()
    assert after - before == 2
    async with messaging_db.engine.connect() as connection:
        aside = (
            await connection.execute(
                text("SELECT key, error FROM outbox WHERE failed_at IS NOT NULL ORDER BY key")
            )
        ).all()
        effects = await connection.scalar(text("SELECT count(*) FROM effects"))
        unsent = await connection.scalar(
            text("SELECT count(*) FROM outbox WHERE sent_at IS NULL AND failed_at IS NULL")
        )
    assert sorted(key for key, _ in aside) == sorted([too_large, bad_headers, refused])
    assert all(error for _, error in aside)
    assert (effects, unsent) == (3, 0)


async def test_enqueue_refuses_an_event_over_the_limit(messaging_db: MessagingDatabase) -> None:
    huge = submitted(str(uuid.uuid4()))
    huge.prompt = "x" * (MAX_EVENT_BYTES + 1)
    topic = Topic("pixsim.job.submitted.v1", events_pb2.JobSubmitted)
    async with UnitOfWork(messaging_db.sessions) as uow:
        with pytest.raises(Unpublishable):
            await enqueue(uow.session, topic, huge.job_id, huge, source="/job")


async def test_stop_lets_the_round_under_way_finish(
    messaging_db: MessagingDatabase, infra: Infra, new_topic: TopicFactory
) -> None:
    """Stopped in the middle of a round, the relay finishes it: cut short, the round would roll
    back what the broker already has (sent again after a restart) and run hooks twice."""
    topic = await new_topic(events_pb2.JobSubmitted)
    in_hook = asyncio.Event()
    handed: list[str] = []

    async def slow_hook(session: AsyncSession, row: SetAside) -> None:
        handed.append(row.key)
        in_hook.set()
        await asyncio.sleep(1.0)  # stop() arrives meanwhile

    bad, good = str(uuid.uuid4()), str(uuid.uuid4())
    async with messaging_db.engine.begin() as connection:
        await connection.execute(
            insert(outbox_table).values(
                event_id=str(uuid.uuid4()),
                topic=topic.name,
                key=bad,
                payload=b"\x0a" + b"x" * (2 * TOPIC_MAX_MESSAGE_BYTES),
                headers={"ce_id": "x"},
            )
        )
    async with UnitOfWork(messaging_db.sessions) as uow:
        await enqueue(uow.session, topic, good, submitted(good), source="/job")
        await uow.commit()
    relay = OutboxRelay(
        service="kit-test",
        engine=messaging_db.engine,
        database_url=messaging_db.database.url,
        kafka_bootstrap=infra.kafka.bootstrap,
        on_set_aside=slow_hook,
    )
    await relay.start()
    await asyncio.wait_for(in_hook.wait(), timeout=20)
    await relay.stop()

    assert handed == [bad]
    async with messaging_db.engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT key, sent_at IS NOT NULL OR failed_at IS NOT NULL AS done FROM outbox")
        )
        states = {row.key: row.done for row in rows}
    assert states == {bad: True, good: True}
    records = await read_topic(infra.kafka.bootstrap, topic.name, until=1, timeout=20)
    assert [r.key.decode() for r in records] == [good]
