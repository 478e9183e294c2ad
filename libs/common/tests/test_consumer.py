"""The idempotent consumer against real Kafka and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from opentelemetry import trace
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from pixsim.events.v1 import events_pb2
from pixsim_common.cloudevents import EventMeta, encode_headers, event_headers
from pixsim_common.consumer import DLQ_REPORT_SECONDS, EventConsumer, PoisonMessage, Subscription
from pixsim_common.topics import Topic
from pixsim_local.infra import Infra
from pixsim_local.kafka import produce_raw, read_topic
from pixsim_local.pytest_plugin import TopicFactory

from .conftest import MessagingDatabase, database_away

DLQ_DEPTH_METRIC = "pixsim_dlq_depth_messages"

pytestmark = pytest.mark.integration


def cancelled_event(job_id: str) -> events_pb2.JobCancelled:
    return events_pb2.JobCancelled(job_id=job_id, user_id="u1")


def message(
    topic: Topic, event: Any, *, event_id: str | None = None, traceparent: str | None = None
) -> Any:
    headers = event_headers(
        event_type=topic.event_type,
        source="/test",
        event_id=event_id,
        trace_headers={"traceparent": traceparent} if traceparent else None,
    )
    return (event.job_id.encode(), event.SerializeToString(), encode_headers(headers))


TRACE_IDS: dict[str, str] = {}


async def record_effect(session: AsyncSession, event: Any, meta: EventMeta) -> None:
    span_context = trace.get_current_span().get_span_context()
    TRACE_IDS[event.job_id] = format(span_context.trace_id, "032x")
    if event.user_id == "reject-me":
        raise PoisonMessage("this job does not exist", "UNKNOWN_JOB")
    if event.user_id == "bug":
        raise RuntimeError("a bug in the handler")
    if event.user_id == "too-many-parameters":
        # asyncpg refuses more than 32,767 parameters: a bug, however often it is retried.
        values = {f"p{i}": i for i in range(40_000)}
        placeholders = ", ".join(f":p{i}" for i in range(40_000))
        await session.execute(text(f"SELECT 1 WHERE 1 IN ({placeholders})"), values)
    if event.user_id == "always-conflicts":
        # Classified as passing, yet it fails every time while the database answers.
        raise DBAPIError("UPDATE ...", {}, asyncpg.SerializationError("could not serialize"))
    await session.execute(
        text("INSERT INTO effects (event_id, job_id) VALUES (:e, :j)"),
        {"e": meta.id, "j": event.job_id},
    )


ConsumerFactory = Callable[..., Awaitable[EventConsumer]]


@pytest.fixture
async def start_consumer(
    messaging_db: MessagingDatabase, infra: Infra
) -> AsyncIterator[ConsumerFactory]:
    started: list[EventConsumer] = []

    async def start(topic: Topic, handler: Any = record_effect, **options: Any) -> EventConsumer:
        consumer = EventConsumer(
            name="kit-test",
            group_id=f"group-{uuid.uuid4().hex[:8]}",
            kafka_bootstrap=infra.kafka.bootstrap,
            sessions=messaging_db.sessions,
            subscriptions=[Subscription(topic, handler, **options)],
            max_handler_attempts=2,
            backoff_base=0.01,
            backoff_cap=0.2,
        )
        await consumer.start()
        started.append(consumer)
        return consumer

    yield start
    for consumer in started:
        await consumer.stop()


async def effects(db: MessagingDatabase, job_id: str) -> int:
    async with db.engine.connect() as connection:
        count = await connection.scalar(
            text("SELECT count(*) FROM effects WHERE job_id = :j"), {"j": job_id}
        )
    return int(count or 0)


async def wait_for_effect(db: MessagingDatabase, job_id: str) -> None:
    """Until the handler has recorded exactly one effect for `job_id`."""

    async def recorded() -> bool:
        return await effects(db, job_id) == 1

    await wait_for(recorded)


# Generous: the suite runs the chaos run beside these tests, on the same two cores.
async def wait_for(condition: Callable[[], Awaitable[bool]], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_a_duplicated_delivery_has_one_effect_and_offsets_follow_the_commit(
    messaging_db: MessagingDatabase,
    infra: Infra,
    new_topic: TopicFactory,
    start_consumer: ConsumerFactory,
) -> None:
    # One partition: the marker is consumed only after both copies, whatever their keys hash to.
    topic = await new_topic(events_pb2.JobCancelled, partitions=1)
    job_id = str(uuid.uuid4())
    same_id = str(uuid.uuid4())
    duplicate = message(topic, cancelled_event(job_id), event_id=same_id)
    marker = str(uuid.uuid4())
    await produce_raw(
        infra.kafka.bootstrap,
        topic.name,
        [duplicate, duplicate, message(topic, cancelled_event(marker))],
    )
    consumer = await start_consumer(topic)

    await wait_for_effect(messaging_db, marker)
    assert await effects(messaging_db, job_id) == 1

    admin = AIOKafkaAdminClient(bootstrap_servers=infra.kafka.bootstrap)
    await admin.start()
    try:

        async def committed_all() -> bool:
            offsets = await admin.list_consumer_group_offsets(consumer._group_id)
            return bool(sum(meta.offset for meta in offsets.values()) == 3)

        await wait_for(committed_all)
    finally:
        await admin.close()


async def test_poison_messages_go_to_the_dlq_and_the_consumer_carries_on(
    messaging_db: MessagingDatabase,
    infra: Infra,
    new_topic: TopicFactory,
    start_consumer: ConsumerFactory,
) -> None:
    topic = await new_topic(events_pb2.JobCancelled)
    good = cancelled_event(str(uuid.uuid4()))

    def valid_headers() -> list[tuple[str, bytes]]:
        """Well-formed headers with a ce_id of their own, so no message is a redelivery."""
        return encode_headers(event_headers(event_type=topic.event_type, source="/test"))

    wrong_type_headers = encode_headers(
        event_headers(event_type="pixsim.asset.deleted.v1", source="/test")
    )
    poison = [
        (b"garbage", b"\xff\xfe not a protobuf \x00", valid_headers()),
        (b"wrong-type", good.SerializeToString(), wrong_type_headers),
        (b"no-headers", good.SerializeToString(), []),
        (b"oversized", b"\x00" * (600 * 1024), valid_headers()),
        (b"invalid", cancelled_event("not-a-uuid").SerializeToString(), valid_headers()),
        (
            b"rejected",
            events_pb2.JobCancelled(
                job_id=str(uuid.uuid4()), user_id="reject-me"
            ).SerializeToString(),
            valid_headers(),
        ),
        *(
            (
                name.encode(),
                events_pb2.JobCancelled(job_id=str(uuid.uuid4()), user_id=name).SerializeToString(),
                valid_headers(),
            )
            for name in ("bug", "too-many-parameters", "always-conflicts")
        ),
    ]
    # One partition's worth of order: all on one key would serialize them; distinct keys
    # spread them, and the good message is sent last.
    await produce_raw(infra.kafka.bootstrap, topic.name, [*poison, message(topic, good)])
    await start_consumer(topic)

    await wait_for_effect(messaging_db, good.job_id)
    # Generous: the handler that always fails is retried with backoff before it is set aside,
    # and the suite shares the cores with the chaos run.
    dead = await read_topic(infra.kafka.bootstrap, topic.dlq, until=len(poison), timeout=90)
    reasons = {
        record.key.decode(): dict(record.headers)["pixsim_error_reason"].decode() for record in dead
    }
    assert reasons == {
        "garbage": "UNDECODABLE",
        "wrong-type": "WRONG_EVENT_TYPE",
        "no-headers": "MISSING_HEADERS",
        "oversized": "TOO_LARGE",
        "invalid": "INVALID_EVENT",
        "rejected": "UNKNOWN_JOB",
        "bug": "HANDLER_FAILED",
        "too-many-parameters": "HANDLER_FAILED",
        "always-conflicts": "KEEPS_FAILING",
    }
    for record in dead:
        headers = dict(record.headers)
        assert headers["pixsim_original_topic"] == topic.name.encode()
        assert headers["pixsim_error"]
    # Operators see the twin's depth (read from the broker every DLQ_REPORT_SECONDS).
    deadline = time.monotonic() + DLQ_REPORT_SECONDS + 15
    while REGISTRY.get_sample_value(DLQ_DEPTH_METRIC, {"topic": topic.dlq}) != len(poison):
        assert time.monotonic() < deadline, "the dead-letter depth was never reported"
        await asyncio.sleep(0.5)
    # Nothing poison left an effect behind.
    async with messaging_db.engine.connect() as connection:
        assert await connection.scalar(text("SELECT count(*) FROM effects")) == 1


async def test_a_database_outage_is_retried_and_never_skipped(
    messaging_db: MessagingDatabase,
    infra: Infra,
    new_topic: TopicFactory,
    start_consumer: ConsumerFactory,
) -> None:
    topic = await new_topic(events_pb2.JobCancelled)
    warmup = cancelled_event(str(uuid.uuid4()))
    await produce_raw(infra.kafka.bootstrap, topic.name, [message(topic, warmup)])
    await start_consumer(topic)

    await wait_for_effect(messaging_db, warmup.job_id)

    async with database_away(messaging_db, infra):
        during = cancelled_event(str(uuid.uuid4()))
        await produce_raw(infra.kafka.bootstrap, topic.name, [message(topic, during)])
        await asyncio.sleep(2.0)  # the consumer meets the outage and retries meanwhile
        dead_letters = await read_topic(infra.kafka.bootstrap, topic.dlq, until=1, timeout=1)
        assert dead_letters == []

    await wait_for_effect(messaging_db, during.job_id)


async def test_the_handler_runs_in_the_producers_trace(
    messaging_db: MessagingDatabase,
    infra: Infra,
    new_topic: TopicFactory,
    start_consumer: ConsumerFactory,
) -> None:
    topic = await new_topic(events_pb2.JobCancelled)
    event = cancelled_event(str(uuid.uuid4()))
    trace_id = uuid.uuid4().hex
    traceparent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
    await produce_raw(
        infra.kafka.bootstrap, topic.name, [message(topic, event, traceparent=traceparent)]
    )
    await start_consumer(topic)

    await wait_for_effect(messaging_db, event.job_id)
    assert TRACE_IDS[event.job_id] == trace_id


async def test_a_rebalance_during_a_batch_leaves_both_members_consuming(
    messaging_db: MessagingDatabase, infra: Infra, new_topic: TopicFactory
) -> None:
    """A second replica joins while the first is in the middle of a batch, so the first
    finishes it after some of its partitions went to the newcomer. Both must go on
    consuming: found by the saturation benchmark, where the first replica's loop died on
    the lag metric of a partition no longer its own, and its partitions stalled."""
    topic = await new_topic(events_pb2.JobCancelled, partitions=6)
    group = f"group-{uuid.uuid4().hex[:8]}"
    in_batch = asyncio.Event()

    async def slow_then_record(session: AsyncSession, event: Any, meta: EventMeta) -> None:
        if event.user_id == "slow":
            in_batch.set()
            await asyncio.sleep(4)  # the newcomer joins meanwhile
        await record_effect(session, event, meta)

    def member(name: str) -> EventConsumer:
        return EventConsumer(
            name=name,
            group_id=group,
            kafka_bootstrap=infra.kafka.bootstrap,
            sessions=messaging_db.sessions,
            subscriptions=[Subscription(topic, slow_then_record)],
        )

    first, second = member("first"), member("second")
    await first.start()
    try:
        slow = [
            events_pb2.JobCancelled(job_id=str(uuid.uuid4()), user_id="slow") for _ in range(12)
        ]
        await produce_raw(infra.kafka.bootstrap, topic.name, [message(topic, e) for e in slow])
        await asyncio.wait_for(in_batch.wait(), 30)
        await second.start()
        for event in slow:
            await wait_for_effect(messaging_db, event.job_id)
        # Every partition is consumed by someone after the rebalance.
        after = [cancelled_event(str(uuid.uuid4())) for _ in range(24)]
        await produce_raw(infra.kafka.bootstrap, topic.name, [message(topic, e) for e in after])
        for event in after:
            await wait_for_effect(messaging_db, event.job_id)
    finally:
        await second.stop()
        await first.stop()


async def test_a_database_outage_before_prepare_skips_nothing(
    messaging_db: MessagingDatabase, infra: Infra, new_topic: TopicFactory
) -> None:
    """A subscription with `prepare` looks up its inbox before preparing. Found by the chaos
    run: with the database away that lookup failed outside the retries, the batch was
    abandoned with the consumer's position already past it, and its other records were
    never consumed (their jobs waited forever, with no lag and nothing in a .dlq)."""
    topic = await new_topic(events_pb2.JobCancelled, partitions=1)

    async def prepare(event: Any, meta: EventMeta) -> str:
        return str(event.job_id)

    async def record_prepared(
        session: AsyncSession, event: Any, meta: EventMeta, prepared: str
    ) -> None:
        await record_effect(session, event, meta)

    consumer = EventConsumer(
        name="kit-test",
        group_id=f"group-{uuid.uuid4().hex[:8]}",
        kafka_bootstrap=infra.kafka.bootstrap,
        sessions=messaging_db.sessions,
        subscriptions=[Subscription(topic, record_prepared, prepare=prepare)],
        backoff_base=0.01,
        backoff_cap=0.2,
    )
    warmup = cancelled_event(str(uuid.uuid4()))
    await produce_raw(infra.kafka.bootstrap, topic.name, [message(topic, warmup)])
    await consumer.start()
    try:
        await wait_for_effect(messaging_db, warmup.job_id)
        during = [cancelled_event(str(uuid.uuid4())) for _ in range(5)]
        async with database_away(messaging_db, infra):
            # One batch of five while the database is away.
            await produce_raw(
                infra.kafka.bootstrap, topic.name, [message(topic, e) for e in during]
            )
            await asyncio.sleep(2.0)
        for event in during:
            await wait_for_effect(messaging_db, event.job_id)
    finally:
        await consumer.stop()


async def test_a_partitions_records_share_a_transaction_and_one_failing_costs_nothing(
    messaging_db: MessagingDatabase,
    infra: Infra,
    new_topic: TopicFactory,
    start_consumer: ConsumerFactory,
) -> None:
    """Consecutive records of a partition are handled in one transaction; when one of
    them fails, the run rolls back whole and is taken one record at a time, so each good
    record still has exactly one effect and the bad one is dead-lettered alone."""
    topic = await new_topic(events_pb2.JobCancelled, partitions=1)
    transactions: dict[str, int] = {}

    async def record_with_transaction(session: AsyncSession, event: Any, meta: EventMeta) -> None:
        await record_effect(session, event, meta)
        transactions[event.job_id] = int(await session.scalar(text("SELECT txid_current()")))

    together = [cancelled_event(str(uuid.uuid4())) for _ in range(20)]
    twice = cancelled_event(str(uuid.uuid4()))  # delivered twice within the run
    repeated = message(topic, twice, event_id=str(uuid.uuid4()))
    await produce_raw(
        infra.kafka.bootstrap,
        topic.name,
        [*(message(topic, e) for e in together[:4]), repeated, repeated]
        + [message(topic, e) for e in together[4:]],
    )
    await start_consumer(topic, record_with_transaction)
    for event in together:
        await wait_for_effect(messaging_db, event.job_id)
    # Fetched in one or a few batches: far fewer transactions than records.
    assert len({transactions[e.job_id] for e in together}) <= len(together) // 4

    # A failing record in the middle of a waiting run.
    failing = await new_topic(events_pb2.JobCancelled, partitions=1)
    good = [cancelled_event(str(uuid.uuid4())) for _ in range(9)]
    bug = events_pb2.JobCancelled(job_id=str(uuid.uuid4()), user_id="bug")
    await produce_raw(
        infra.kafka.bootstrap,
        failing.name,
        [message(failing, e) for e in [*good[:4], bug, *good[4:]]],
    )
    await start_consumer(failing)
    for event in good:
        await wait_for_effect(messaging_db, event.job_id)
    dead = await read_topic(infra.kafka.bootstrap, failing.dlq, until=1, timeout=60)
    assert [dict(r.headers)["pixsim_error_reason"] for r in dead] == [b"HANDLER_FAILED"]
    assert await effects(messaging_db, bug.job_id) == 0
    # The event delivered twice in one run (one ce_id) had one effect, not two.
    assert await effects(messaging_db, twice.job_id) == 1


async def test_a_stopping_member_commits_what_it_processed(
    messaging_db: MessagingDatabase, infra: Infra, new_topic: TopicFactory
) -> None:
    """Offsets are committed lazily (the inbox guards against repeats), but never lost:
    a member that stops commits every offset it processed, so the next one starts after."""
    topic = await new_topic(events_pb2.JobCancelled, partitions=3)
    group = f"group-{uuid.uuid4().hex[:8]}"
    events = [cancelled_event(str(uuid.uuid4())) for _ in range(12)]
    await produce_raw(infra.kafka.bootstrap, topic.name, [message(topic, e) for e in events])
    consumer = EventConsumer(
        name="kit-test",
        group_id=group,
        kafka_bootstrap=infra.kafka.bootstrap,
        sessions=messaging_db.sessions,
        subscriptions=[Subscription(topic, record_effect)],
    )
    await consumer.start()
    try:
        for event in events:
            await wait_for_effect(messaging_db, event.job_id)
    finally:
        await consumer.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=infra.kafka.bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    assert sum(meta.offset for meta in offsets.values()) == len(events)


@pytest.mark.parametrize("one_at_a_time", [True, False])
async def test_a_topic_taken_one_partition_at_a_time_never_has_two_transactions_open(
    messaging_db: MessagingDatabase,
    infra: Infra,
    new_topic: TopicFactory,
    start_consumer: ConsumerFactory,
    one_at_a_time: bool,
) -> None:
    """Handlers that order rows by their transaction's clock need transactions that do not
    overlap: one begun earlier and committed later puts its rows ahead of rows already
    read. Without the option the partitions of a batch do run at once (the test's check)."""
    topic = await new_topic(events_pb2.JobCancelled, partitions=4)
    open_now = most_open = 0

    async def slow_effect(session: AsyncSession, event: Any, meta: EventMeta) -> None:
        nonlocal open_now, most_open
        open_now += 1
        most_open = max(most_open, open_now)
        try:
            await asyncio.sleep(0.02)
            await record_effect(session, event, meta)
        finally:
            open_now -= 1

    events = [cancelled_event(str(uuid.uuid4())) for _ in range(40)]
    await produce_raw(infra.kafka.bootstrap, topic.name, [message(topic, e) for e in events])
    await start_consumer(topic, slow_effect, one_partition_at_a_time=one_at_a_time)
    for event in events:
        await wait_for_effect(messaging_db, event.job_id)
    assert (most_open == 1) is one_at_a_time, most_open
