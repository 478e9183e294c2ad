"""Idempotent Kafka consumption: each message's effect and its `inbox` row commit together.

For every message the runner:
1. reads the CloudEvents headers and decodes the value as the topic's protobuf type, then
   validates it (protovalidate); a message that fails any of these is poison;
2. in one transaction inserts `(consumer, ce_id)` into `inbox` (a seen id is skipped) and
   runs the handler. A subscription may `prepare` first, outside any transaction (a
   download, say, which must hold no pooled connection): what it makes is handed to the
   handler, and to `discard` if the handler never commits (a duplicate, a dead letter).
   Consecutive records of one partition that need no `prepare` share a transaction (their
   inbox rows in one statement, their outbox rows in another): BEGIN and COMMIT are paid
   once a run instead of once a record. If anything in the run fails, the run rolls back
   whole and its records are taken one at a time, each in its own transaction, as above;
3. commits the partition offset only after that transaction committed, and at most every
   COMMIT_INTERVAL_SECONDS (and at once when a partition is revoked or the consumer stops):
   the inbox, not the offset, is what keeps a record from having its effect twice, so a
   member that dies redelivers at most that much, which the inbox drops. Committing after
   every batch cost a broker round trip per batch, waited out before the next one.

Poison goes to the topic's `.dlq` twin with the error in headers, and the consumer moves on.
A failure is retried with backoff. Retrying is right only while a dependency is away, so an
attempt counts against the message only when the service's own database (and any peer the
consumer was given a probe for) answers: a message that keeps failing while everything it
needs is up is poison, and after `max_handler_attempts` such attempts it is dead-lettered
with its error, so one message never blocks its partition for everyone behind it. While the
database is down nothing counts and nothing is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.errors import KafkaError
from google.protobuf.message import DecodeError, Message
from opentelemetry import trace
from sqlalchemy import Column, DateTime, MetaData, PrimaryKeyConstraint, Table, Text, func, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixsim_common.cloudevents import EventMeta, MalformedEvent, parse_headers
from pixsim_common.dependencies import CONNECT_WAIT_SECONDS, started_kafka_client
from pixsim_common.errors import InvalidArgument
from pixsim_common.metrics import CONSUMER_LAG, DLQ_DEPTH, MESSAGES_CONSUMED
from pixsim_common.outbox import write_collected
from pixsim_common.topics import MAX_EVENT_BYTES, Topic
from pixsim_common.tracing import extract_context
from pixsim_common.transient import is_transient
from pixsim_common.validation import validate

log = structlog.get_logger("pixsim.consumer")
tracer = trace.get_tracer("pixsim.consumer")

# Producers never write more (requests are bounded to fit); anything larger is poison.
MAX_MESSAGE_BYTES = MAX_EVENT_BYTES
# How often a member reads how many messages its topics' dead-letter twins hold.
DLQ_REPORT_SECONDS = 15.0
# How often a member commits the offsets it has processed (sooner on revocation or stop).
COMMIT_INTERVAL_SECONDS = 1.0

metadata = MetaData()
inbox_table = Table(
    "inbox",
    metadata,
    Column("consumer", Text, nullable=False),
    Column("event_id", Text, nullable=False),
    Column("topic", Text, nullable=False),
    Column("processed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("consumer", "event_id"),
)

# As SQL text because the PostgreSQL dialect's insert() (for ON CONFLICT) has no cache key:
# SQLAlchemy would compile it again for every event every service consumes.
INBOX_INSERT = text(
    "INSERT INTO inbox (consumer, event_id, topic) VALUES (:consumer, :event_id, :topic)"
    " ON CONFLICT DO NOTHING RETURNING event_id"
)

# A run's inbox rows in one statement; the ids that come back are the new ones (an id
# repeated within the run comes back once, and its first record is the one handled).
INBOX_INSERT_RUN = text(
    "INSERT INTO inbox (consumer, event_id, topic)"
    " SELECT :consumer, run.event_id, run.topic"
    " FROM unnest(CAST(:event_ids AS text[]), CAST(:topics AS text[])) AS run(event_id, topic)"
    " ON CONFLICT DO NOTHING RETURNING event_id"
)
# The most records one transaction takes: a run holds its locks (a job's, say) to its end.
# (1 takes every record alone.)
MAX_RUN_RECORDS = 100

INBOX_SEEN = text("SELECT 1 FROM inbox WHERE consumer = :consumer AND event_id = :event_id")

Handler = Callable[[AsyncSession, Any, EventMeta], Awaitable[None]]
# Answers whether a dependency of the handlers is up (a peer service, say).
Probe = Callable[[], Awaitable[bool]]


class PoisonMessage(Exception):
    """Raised by a handler for an event it can never process (e.g. it names nothing real)."""

    def __init__(self, message: str, reason: str = "REJECTED_BY_HANDLER") -> None:
        super().__init__(message)
        self.reason = reason


def decode(topic: Topic, record: ConsumerRecord[bytes, bytes]) -> tuple[EventMeta, Message]:
    """The event of a record, or `MalformedEvent` saying why it is poison."""
    value = record.value
    if value is None:
        raise MalformedEvent("message has no value", "EMPTY")
    if len(value) > MAX_MESSAGE_BYTES:
        raise MalformedEvent(f"message of {len(value)} bytes is too large", "TOO_LARGE")
    meta = parse_headers(record.headers)
    if meta.type != topic.event_type:
        raise MalformedEvent(
            f"ce_type {meta.type!r} does not belong on {topic.name}", "WRONG_EVENT_TYPE"
        )
    event = topic.message_type()
    try:
        event.ParseFromString(value)
    except DecodeError as error:
        raise MalformedEvent(
            f"not a {event.DESCRIPTOR.full_name}: {error}", "UNDECODABLE"
        ) from error
    try:
        validate(event)
    except InvalidArgument as error:
        raise MalformedEvent(str(error), "INVALID_EVENT") from error
    return meta, event


@dataclass(frozen=True)
class Decoded:
    """A well-formed record with its subscription, headers and event."""

    record: ConsumerRecord[bytes, bytes]
    subscription: Subscription
    meta: EventMeta
    event: Message


@dataclass(frozen=True)
class Subscription:
    """What a consumer does with one topic. Without `prepare` the handler is called as
    `handler(session, event, meta)`; with it, `handler(session, event, meta, prepared)`."""

    topic: Topic
    handler: Callable[..., Awaitable[None]]
    prepare: Callable[[Any, EventMeta], Awaitable[Any]] | None = None
    discard: Callable[[Any], Awaitable[None]] | None = None
    # The topic's partitions are handled one after another, never in transactions open at
    # once: for a handler whose rows are ordered by their transaction's clock (`now()`),
    # which is its start, so a transaction begun earlier and committed later would put its
    # rows ahead of ones already read (a queued job's place rose).
    one_partition_at_a_time: bool = False


class EventConsumer:
    """A consumer-group member that runs `subscriptions` until stopped."""

    def __init__(
        self,
        *,
        name: str,
        group_id: str,
        kafka_bootstrap: str,
        sessions: async_sessionmaker[AsyncSession],
        subscriptions: Sequence[Subscription],
        max_handler_attempts: int = 8,
        backoff_base: float = 0.05,
        backoff_cap: float = 5.0,
        consumer_options: Mapping[str, Any] | None = None,
        probes: Sequence[Probe] = (),
        reads: async_sessionmaker[AsyncSession] | None = None,
        max_run_records: int = MAX_RUN_RECORDS,
    ) -> None:
        self.name = name
        self._group_id = group_id
        self._bootstrap = kafka_bootstrap
        self._sessions = sessions
        # For its lone reads (`db.create_read_sessionmaker`); `sessions` does too, slower.
        self._reads = reads or sessions
        self._routes = {s.topic.name: s for s in subscriptions}
        self._max_handler_attempts = max_handler_attempts
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._consumer_options = dict(consumer_options or {})
        self._probes = list(probes)
        self._max_run_records = max_run_records
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        # Processed and not yet committed: the next offset to consume, by partition.
        self._uncommitted: dict[TopicPartition, int] = {}
        self._next_commit = 0.0

    async def start(self) -> None:
        options: dict[str, Any] = {
            "group_id": self._group_id,
            "bootstrap_servers": self._bootstrap,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "max_partition_fetch_bytes": 2 * MAX_MESSAGE_BYTES,
            "fetch_max_bytes": 16 * MAX_MESSAGE_BYTES,
        }
        options.update(self._consumer_options)
        self._task = asyncio.create_task(self._run(options), name=f"{self.name}-consumer")
        # With the broker away, the service serves RPCs meanwhile; this keeps connecting.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), timeout=CONNECT_WAIT_SECONDS)

    async def _connect(self, options: Mapping[str, Any]) -> AIOKafkaConsumer:
        self._producer = await started_kafka_client(
            lambda: AIOKafkaProducer(
                bootstrap_servers=self._bootstrap, enable_idempotence=True, acks="all"
            ),
            what=f"{self.name} dead-letter producer",
        )
        consumer = await started_kafka_client(
            lambda: AIOKafkaConsumer(**options), what=f"{self.name} consumer"
        )
        self._consumer = consumer
        # Subscribing after start: given topics up front, start() waits for the group to
        # assign partitions, which after a crash is the dead member's whole session timeout,
        # and the service would not serve RPCs meanwhile. The group joins on the first poll.
        consumer.subscribe(list(self._routes), listener=_OnRevoke(self._revoked))
        self._connected.set()
        return consumer

    async def stop(self) -> None:
        """Finish the message in hand, commit what was processed, leave the group."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._commit_processed(self._consumer)
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()

    async def _run(self, options: Mapping[str, Any]) -> None:
        consumer = await self._connect(options)
        loop = asyncio.get_running_loop()
        next_dlq_report = loop.time()
        while True:
            try:
                await self._consume_batch(consumer)
                if loop.time() >= self._next_commit:
                    await self._commit_processed(consumer)
                if loop.time() >= next_dlq_report:
                    next_dlq_report = loop.time() + DLQ_REPORT_SECONDS
                    await self._report_dead_letters(consumer)
            except Exception:
                # The loop must outlive whatever one batch meets: a dead loop leaves this
                # member in its group, holding partitions that nobody consumes.
                log.exception("consumer batch failed; going on", consumer=self.name)
                await asyncio.sleep(1)

    async def _report_dead_letters(self, consumer: AIOKafkaConsumer) -> None:
        """Set each dead-letter twin's depth: what its partitions hold (nothing consumes
        them, so only retention or an operator takes messages out)."""
        assert self._producer is not None
        for route in self._routes.values():
            dlq = route.topic.dlq
            try:
                partitions = [
                    TopicPartition(dlq, p) for p in await self._producer.partitions_for(dlq)
                ]
                ends = await consumer.end_offsets(partitions)
                starts = await consumer.beginning_offsets(partitions)
            except KafkaError as error:
                log.info("dead-letter depth unknown", topic=dlq, error=repr(error))
                continue
            DLQ_DEPTH.labels(dlq).set(sum(ends[tp] - starts[tp] for tp in partitions))

    async def _process_partitions(
        self,
        batch: Mapping[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
        done: dict[TopicPartition, int],
    ) -> list[BaseException | None]:
        """Each partition's records, partitions at once except those of a subscription
        taken `one_partition_at_a_time`; what each partition ended with, in `batch`'s order."""
        outcomes: dict[TopicPartition, BaseException | None] = {}

        async def one_after_another(partitions: list[TopicPartition]) -> None:
            for tp in partitions:
                try:
                    await self._process_partition(tp, batch[tp], done)
                except Exception as error:
                    outcomes[tp] = error

        def alone(tp: TopicPartition) -> bool:
            route = self._routes.get(tp.topic)
            return route is not None and route.one_partition_at_a_time

        serial = [tp for tp in batch if alone(tp)]
        together = [tp for tp in batch if not alone(tp)]
        results = await asyncio.gather(
            one_after_another(serial),
            *(self._process_partition(tp, batch[tp], done) for tp in together),
            return_exceptions=True,
        )
        if isinstance(results[0], BaseException):  # cancelled: as gather would report it
            outcomes.update({tp: results[0] for tp in serial if tp not in outcomes})
        for tp, result in zip(together, results[1:], strict=True):
            outcomes[tp] = result if isinstance(result, BaseException) else None
        return [outcomes.get(tp) for tp in batch]

    async def _consume_batch(self, consumer: AIOKafkaConsumer) -> None:
        batch = await consumer.getmany(timeout_ms=500, max_records=500)
        if not batch:
            return
        done: dict[TopicPartition, int] = {}
        # Every partition runs to its end or its failure before anything is committed:
        # a failure in one must neither abandon the others mid-record nor lose its own rest.
        try:
            outcomes = await self._process_partitions(batch, done)
        finally:  # stopped mid-batch too: what was processed is committed (by stop)
            # A rebalance during the batch may have given some partitions to another
            # member: theirs to commit now (they redeliver; the inbox drops the repeats).
            assigned = consumer.assignment()
            mine = {tp: offset for tp, offset in done.items() if tp in assigned}
            self._uncommitted.update(mine)
        for (tp, records), outcome in zip(batch.items(), outcomes, strict=True):
            if isinstance(outcome, BaseException) and tp in assigned:
                # getmany moved the position past the whole batch: back to the first record
                # not processed, or the rest of this partition's batch is never consumed.
                consumer.seek(tp, done.get(tp, records[0].offset))
                log.warning(
                    "partition batch failed; consuming it again from its first unprocessed",
                    consumer=self.name,
                    topic=tp.topic,
                    partition=tp.partition,
                    error=repr(outcome),
                )
        for tp, offset in mine.items():
            highwater = consumer.highwater(tp)
            if highwater is not None:
                CONSUMER_LAG.labels(self._group_id, tp.topic, tp.partition).set(
                    max(highwater - offset, 0)
                )

    async def _commit_processed(
        self, consumer: AIOKafkaConsumer, partitions: Iterable[TopicPartition] | None = None
    ) -> None:
        """Commit the processed offsets (of `partitions`, or all). One that does not commit
        stays to be tried again while the partition is this member's."""
        self._next_commit = asyncio.get_running_loop().time() + COMMIT_INTERVAL_SECONDS
        chosen = self._uncommitted if partitions is None else set(partitions)
        offsets = {tp: self._uncommitted[tp] for tp in chosen if tp in self._uncommitted}
        if not offsets:
            return
        for tp in offsets:
            del self._uncommitted[tp]
        try:
            await asyncio.shield(consumer.commit(offsets))
        except KafkaError as error:
            log.info("offsets not committed", consumer=self.name, error=repr(error))
            assigned = consumer.assignment()
            for tp, offset in offsets.items():
                if tp in assigned:
                    self._uncommitted.setdefault(tp, offset)

    async def _revoked(self, revoked: set[TopicPartition]) -> None:
        """What was processed of partitions going to another member is committed first, so
        it redelivers nothing it need not; what does not commit is its to redeliver."""
        if self._consumer is not None:
            await self._commit_processed(self._consumer, revoked)
        for tp in revoked:
            self._uncommitted.pop(tp, None)

    async def _process_partition(
        self,
        tp: TopicPartition,
        records: list[ConsumerRecord[bytes, bytes]],
        done: dict[TopicPartition, int],
    ) -> None:
        """Records of one partition, in order; `done[tp]` is the next offset to consume."""
        position = 0
        while position < len(records):
            run = self._run_from(records, position)
            if len(run) > 1 and await self._apply_run(run):
                done[tp] = run[-1].record.offset + 1
                position += len(run)
                continue
            # Alone, or a run that failed together: one record at a time, each retried alone
            # (decoded once: a run's records are handed on as they were decoded for it).
            alone: list[tuple[ConsumerRecord[bytes, bytes], Decoded | None]] = [
                (item.record, item) for item in run
            ] or [(records[position], None)]
            for record, decoded in alone:
                await self._process(record, decoded)
                done[tp] = record.offset + 1
            position += len(alone)

    def _run_from(self, records: list[ConsumerRecord[bytes, bytes]], start: int) -> list[Decoded]:
        """The records from `start` that can share a transaction: well-formed, of
        subscriptions without `prepare`, at most `max_run_records`."""
        run: list[Decoded] = []
        for record in records[start : start + self._max_run_records]:
            subscription = self._routes[record.topic]
            if subscription.prepare is not None:
                break
            try:
                meta, event = decode(subscription.topic, record)
            except MalformedEvent:
                break
            run.append(Decoded(record, subscription, meta, event))
        return run

    async def _apply_run(self, run: list[Decoded]) -> bool:
        """The run's records in one transaction: True once it committed; False (after the
        rollback) when anything in it failed, for its records to be taken one at a time."""
        outcomes: list[str] = []
        try:
            async with self._sessions() as session, session.begin():
                new = set(
                    await session.scalars(
                        INBOX_INSERT_RUN,
                        {
                            "consumer": self._group_id,
                            "event_ids": [item.meta.id for item in run],
                            "topics": [item.subscription.topic.name for item in run],
                        },
                    )
                )
                for item in run:
                    if item.meta.id not in new:
                        outcomes.append("duplicate")
                        continue
                    new.discard(item.meta.id)
                    with self._handling(item.subscription, item.meta):
                        await item.subscription.handler(session, item.event, item.meta)
                    outcomes.append("processed")
                await write_collected(session)
        except Exception as error:  # each record alone then meets it and is judged by it
            log.info(
                "a run of records failed together; taking them one at a time",
                consumer=self.name,
                records=len(run),
                error=repr(error),
            )
            return False
        for item, outcome in zip(run, outcomes, strict=True):
            MESSAGES_CONSUMED.labels(self._group_id, item.record.topic, outcome).inc()
        return True

    async def _process(
        self, record: ConsumerRecord[bytes, bytes], decoded: Decoded | None = None
    ) -> None:
        """One record in a transaction of its own; `decoded` is it already decoded."""
        subscription = self._routes[record.topic]
        if decoded is not None:
            meta, event = decoded.meta, decoded.event
        else:
            try:
                meta, event = decode(subscription.topic, record)
            except MalformedEvent as error:
                await self._dead_letter(subscription.topic, record, error.reason, str(error))
                return
        counted = tries = 0
        prepared: list[Any] = []  # what `prepare` made, once made
        while True:
            tries += 1
            try:
                if subscription.prepare is not None and not prepared:
                    # Inside the retries: a database away here is waited out like anywhere.
                    if await self._seen(meta.id):
                        MESSAGES_CONSUMED.labels(self._group_id, record.topic, "duplicate").inc()
                        return  # a redelivery: prepare nothing again
                    prepared.append(await subscription.prepare(event, meta))
                outcome = await self._apply(subscription, meta, event, prepared)
            except PoisonMessage as error:
                await self._discard(subscription, prepared)
                await self._dead_letter(subscription.topic, record, error.reason, str(error))
                return
            except Exception as error:
                transient = is_transient(error)
                if not transient or await self._dependencies_answer():
                    counted += 1
                if counted >= self._max_handler_attempts:
                    log.warning(
                        "message keeps failing while its dependencies answer; dead-lettering",
                        topic=record.topic,
                        offset=record.offset,
                        ce_id=meta.id,
                        attempts=tries,
                        error=repr(error),
                        exc_info=not transient,
                    )
                    await self._discard(subscription, prepared)
                    await self._dead_letter(
                        subscription.topic,
                        record,
                        "KEEPS_FAILING" if transient else "HANDLER_FAILED",
                        repr(error),
                    )
                    return
                delay = min(self._backoff_cap, self._backoff_base * 2 ** min(tries, 10))
                log.warning(
                    "handler retrying",
                    topic=record.topic,
                    offset=record.offset,
                    ce_id=meta.id,
                    transient=transient,
                    attempt=tries,
                    counted=counted,
                    error=repr(error),
                )
                await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter
                continue
            if outcome == "duplicate":
                await self._discard(subscription, prepared)
            MESSAGES_CONSUMED.labels(self._group_id, record.topic, outcome).inc()
            return

    async def _seen(self, event_id: str) -> bool:
        # On the reads (a statement that commits by itself): one round trip, not three
        # (BEGIN, the look, ROLLBACK), for every event of a subscription that prepares.
        async with self._reads() as session:
            found = await session.scalar(
                INBOX_SEEN, {"consumer": self._group_id, "event_id": event_id}
            )
        return found is not None

    async def _discard(self, subscription: Subscription, prepared: list[Any]) -> None:
        """What `prepare` made for a handler that will never commit: the subscription
        undoes it (a staged file's claim, say). Shielded: it must not be cut short."""
        if subscription.discard is not None and prepared:
            await asyncio.shield(subscription.discard(prepared[0]))

    async def _dependencies_answer(self) -> bool:
        """Whether the database (and every probed peer) answers now: only then does a failed
        attempt count against the message."""
        try:
            async with asyncio.timeout(5), self._reads() as session:
                await session.execute(text("SELECT 1"))
            for probe in self._probes:
                async with asyncio.timeout(5):
                    if not await probe():
                        return False
        except Exception:  # away, or too slow to tell: not the message's fault
            return False
        return True

    @contextlib.contextmanager
    def _handling(self, subscription: Subscription, meta: EventMeta) -> Iterator[None]:
        """The event's consumer span, in its producer's trace, and its ids in every log line."""
        with (
            tracer.start_as_current_span(
                f"{subscription.topic.name} process",
                context=extract_context(meta.trace_headers),
                kind=trace.SpanKind.CONSUMER,
                attributes={"messaging.system": "kafka", "messaging.message.id": meta.id},
            ),
            structlog.contextvars.bound_contextvars(ce_id=meta.id, topic=meta.type),
        ):
            yield

    async def _apply(
        self, subscription: Subscription, meta: EventMeta, event: Message, prepared: list[Any]
    ) -> str:
        with self._handling(subscription, meta):
            async with self._sessions() as session, session.begin():
                inserted = await session.scalar(
                    INBOX_INSERT,
                    {
                        "consumer": self._group_id,
                        "event_id": meta.id,
                        "topic": subscription.topic.name,
                    },
                )
                if inserted is None:
                    return "duplicate"
                await subscription.handler(session, event, meta, *prepared)
                await write_collected(session)
            return "processed"

    async def _dead_letter(
        self, topic: Topic, record: ConsumerRecord[bytes, bytes], reason: str, error: str
    ) -> None:
        """Copy the record to `<topic>.dlq` with why, and wait for the broker to have it."""
        producer = self._producer
        assert producer is not None
        log.warning(
            "dead-lettering message",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            reason=reason,
            error=error,
        )
        headers = [
            *(record.headers or ()),
            ("pixsim_error_reason", reason.encode()),
            ("pixsim_error", error[:4000].encode(errors="replace")),
            ("pixsim_original_topic", record.topic.encode()),
            ("pixsim_original_partition", str(record.partition).encode()),
            ("pixsim_original_offset", str(record.offset).encode()),
            ("pixsim_consumer_group", self._group_id.encode()),
        ]
        value = record.value
        if value is not None and len(value) > MAX_MESSAGE_BYTES:
            value = value[:1024]  # keep the evidence, not the payload that broke the limit
            headers.append(("pixsim_truncated", b"true"))
        while True:
            try:
                await producer.send_and_wait(
                    topic.dlq, value=value, key=record.key, headers=headers
                )
                break
            except Exception as failure:  # Kafka away: the message must not be skipped.
                log.warning("dead-letter publish retrying", error=repr(failure))
                await asyncio.sleep(1.0)
        MESSAGES_CONSUMED.labels(self._group_id, record.topic, "dead_lettered").inc()


class _OnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """Hands the partitions a rebalance takes away to `revoked` before their next owner
    starts consuming them."""

    def __init__(self, revoked: Callable[[set[TopicPartition]], Awaitable[None]]) -> None:
        self._revoked = revoked

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        return None
