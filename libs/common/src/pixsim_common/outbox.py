"""Transactional outbox: events are rows written in the same transaction as the state change,
and a relay in the same process publishes them to Kafka and marks them sent.

- `enqueue()` adds an event inside the caller's transaction; nothing touches Kafka then.
- An insert trigger sends `NOTIFY pixsim_outbox` (delivered at commit), which wakes the relay
  within milliseconds; a slow sweep covers notifications lost while it was reconnecting.
- The relay claims unsent rows (`FOR UPDATE SKIP LOCKED`, never a high-water mark: insert
  order is not commit order) while holding a per-database advisory lock, so one relay
  publishes at a time and a key's events leave in the order they were written, whichever
  replica runs it. The producer is idempotent with `acks=all`; rows are marked sent only
  after every send of the batch is acknowledged, so a crash in between resends (at least
  once) and never loses.
- A row that can never be published (larger than the topic takes, headers that do not
  encode, a topic that refuses it) is set aside with its error (`failed_at`, `error`) and
  counted in `pixsim_outbox_set_aside_total`, and the service's `on_set_aside` hook fails
  the aggregate it was about with a clear code. It is never retried in front of the rows
  behind it. A failure that may pass (the broker away, a leader moving) rolls the batch
  back and is retried, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka import errors as kafka_errors
from google.protobuf.message import Message
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    LargeBinary,
    MetaData,
    Row,
    Table,
    Text,
    func,
    insert,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from pixsim_common.cloudevents import encode_headers, event_headers
from pixsim_common.db import libpq_url
from pixsim_common.dependencies import CONNECT_WAIT_SECONDS, started_kafka_client
from pixsim_common.metrics import (
    OUTBOX_BACKLOG,
    OUTBOX_OLDEST,
    OUTBOX_PUBLISHED,
    OUTBOX_SET_ASIDE,
)
from pixsim_common.topics import MAX_EVENT_BYTES, TOPIC_MAX_MESSAGE_BYTES, Topic
from pixsim_common.tracing import inject_context

log = structlog.get_logger("pixsim.outbox")

NOTIFY_CHANNEL = "pixsim_outbox"
# One relay per database publishes at a time (pg_try_advisory_xact_lock key).
RELAY_LOCK_KEY = 0x7069_7873_6F62  # "pixsob"

metadata = MetaData()
outbox_table = Table(
    "outbox",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("event_id", Text, nullable=False, unique=True),
    Column("topic", Text, nullable=False),
    Column("key", Text, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("headers", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("sent_at", DateTime(timezone=True)),
    # Set when the row can never be published: it waits here for an operator, not in line.
    Column("failed_at", DateTime(timezone=True)),
    Column("error", Text),
    Index("outbox_unsent", "id", postgresql_where=text("sent_at IS NULL AND failed_at IS NULL")),
)

# Run by each service's first migration, after creating the table.
NOTIFY_TRIGGER_DDL = (
    f"""CREATE OR REPLACE FUNCTION pixsim_outbox_notify() RETURNS trigger AS $$
    BEGIN PERFORM pg_notify('{NOTIFY_CHANNEL}', ''); RETURN NULL; END $$ LANGUAGE plpgsql""",
    """CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION pixsim_outbox_notify()""",
)


# Brokers' answers that no retry changes: the record itself is what the topic refuses.
PERMANENT_SEND_ERRORS: tuple[type[BaseException], ...] = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordTooLargeError,
    kafka_errors.InvalidTopicError,
    kafka_errors.TopicAuthorizationFailedError,
    kafka_errors.PolicyViolationError,
    kafka_errors.CorruptRecordException,
    kafka_errors.RecordListTooLargeError,
    kafka_errors.UnsupportedForMessageFormatError,
)


@dataclass(frozen=True, slots=True)
class SetAside:
    """An outbox row that can never be published, and why."""

    event_id: str
    topic: str
    key: str
    error: str
    payload: bytes = b""


# Fails whatever aggregate a set-aside event was about, in the relay's transaction.
SetAsideHook = Callable[[AsyncSession, SetAside], Awaitable[None]]


class Unpublishable(Exception):
    """An event that no broker of ours would take; refused at `enqueue`."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """An event an aggregate raised, as it leaves: its topic, key and message."""

    topic: Topic
    key: str
    message: Message
    source: str


_COLLECTED = "pixsim.outbox.collected"


def collect(session: AsyncSession, events: Iterable[Outgoing]) -> None:
    """Events to write to the outbox when `session`'s transaction commits (by
    `UnitOfWork.commit`, or by the consumer after its handler): a repository hands over
    what its aggregates raised when it saves them, and no use case enqueues by hand. Each
    is checked now, and carries the trace context of now."""
    pending: list[dict[str, Any]] = session.info.setdefault(_COLLECTED, [])
    trace_headers = inject_context()
    for event in events:
        pending.append(
            _outbox_row(event.topic, event.key, event.message, event.source, None, trace_headers)
        )


def outbox_row(event: Outgoing) -> dict[str, Any]:
    """The outbox row of `event`, checked and carrying the trace context of now, for a
    repository that writes it in the same statement as the change that raised it (one
    round trip where the write is all one statement; `collect` everywhere else)."""
    return _outbox_row(event.topic, event.key, event.message, event.source, None, inject_context())


async def write_collected(session: AsyncSession) -> None:
    """Write the collected events to the outbox, in the order they were raised."""
    rows = session.info.pop(_COLLECTED, None)
    if rows:
        await session.execute(insert(outbox_table), rows)


def _outbox_row(
    topic: Topic,
    key: str,
    event: Message,
    source: str,
    event_id: str | None,
    trace_headers: Mapping[str, str],
) -> dict[str, Any]:
    if not isinstance(event, topic.message_type):
        raise TypeError(f"{topic.name} carries {topic.message_type.__name__}, not {type(event)}")
    payload = event.SerializeToString()
    if len(payload) > MAX_EVENT_BYTES:
        raise Unpublishable(
            f"a {topic.name} event of {len(payload)} bytes is over the {MAX_EVENT_BYTES} limit"
        )
    event_id = event_id or str(uuid.uuid4())
    headers = event_headers(
        event_type=topic.event_type, source=source, event_id=event_id, trace_headers=trace_headers
    )
    return {
        "event_id": event_id,
        "topic": topic.name,
        "key": key,
        "payload": payload,
        "headers": headers,
    }


async def enqueue(
    session: AsyncSession,
    topic: Topic,
    key: str,
    event: Message,
    *,
    source: str,
    event_id: str | None = None,
) -> str:
    """Write `event` to the outbox in `session`'s transaction now; returns its ce_id. The
    primitive under `collect`, for code that is not a use case (tests, tools)."""
    row = _outbox_row(topic, key, event, source, event_id, inject_context())
    await session.execute(insert(outbox_table).values(**row))
    return str(row["event_id"])


# The relay's next batch, in the order written, only while it holds the relay lock (one
# relay publishes at a time, so order holds across replicas; the lock lasts to the end of
# the transaction). The lock is taken in the same statement: a round trip less per batch.
# The CTE is evaluated once (the lock function is volatile, so it is never inlined).
_PENDING_BATCH = text(
    """
    WITH relay AS (SELECT pg_try_advisory_xact_lock(:key) AS held)
    SELECT id, event_id, topic, key, payload, headers FROM outbox, relay
    WHERE relay.held AND sent_at IS NULL AND failed_at IS NULL
    ORDER BY id LIMIT :limit FOR UPDATE OF outbox SKIP LOCKED
    """
)
_MARK_SENT = text("UPDATE outbox SET sent_at = now() WHERE id = ANY(:ids)")


class OutboxRelay:
    """Publishes a service's outbox to Kafka until stopped."""

    def __init__(
        self,
        *,
        service: str,
        engine: AsyncEngine,
        database_url: str,
        kafka_bootstrap: str,
        batch_size: int = 500,
        sweep_seconds: float = 5.0,
        retention: timedelta = timedelta(days=1),
        producer_options: Mapping[str, Any] | None = None,
        on_set_aside: SetAsideHook | None = None,
    ) -> None:
        self._service = service
        self._on_set_aside = on_set_aside
        self._engine = engine
        self._listen_url = libpq_url(database_url)
        self._bootstrap = kafka_bootstrap
        self._batch_size = batch_size
        self._sweep_seconds = sweep_seconds
        self._retention = retention
        self._producer_options = dict(producer_options or {})
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._producer: AIOKafkaProducer | None = None
        self._connected = asyncio.Event()

    async def start(self) -> None:
        """Connect and start relaying. With the broker away this returns after a short wait
        and the relay keeps connecting in the background: the service serves meanwhile and
        its events wait in the outbox."""
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name=f"{self._service}-outbox-relay")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), timeout=CONNECT_WAIT_SECONDS)

    def _new_producer(self) -> AIOKafkaProducer:
        options: dict[str, Any] = {
            "bootstrap_servers": self._bootstrap,
            "enable_idempotence": True,
            "acks": "all",
            "linger_ms": 2,
            "request_timeout_ms": 15000,
            "max_request_size": TOPIC_MAX_MESSAGE_BYTES,
        }
        options.update(self._producer_options)
        return AIOKafkaProducer(**options)

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Let the round under way finish, publish what is committed now (best effort), then
        stop. A round cut short would roll back rows the broker already has: they would go
        out again after a restart, and set-aside hooks would run twice."""
        if self._task is not None:
            self._stopping.set()
            self._wake.set()
            if self._producer is None:  # still connecting: nothing can be published
                self._task.cancel()
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=grace_seconds)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.publish_pending(), timeout=5)
            await self._producer.stop()

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        backoff = 0.1
        listener: asyncpg.Connection | None = None
        last_housekeeping = 0.0
        loop = asyncio.get_running_loop()
        try:
            if self._producer is None:
                self._producer = await started_kafka_client(
                    self._new_producer, what=f"{self._service} outbox relay"
                )
            self._connected.set()
            while not self._stopping.is_set():
                try:
                    if listener is None or listener.is_closed():
                        listener = await asyncpg.connect(self._listen_url)
                        await listener.add_listener(NOTIFY_CHANNEL, lambda *_: self._wake.set())
                    self._wake.clear()
                    await self.publish_pending()
                    if loop.time() - last_housekeeping >= self._sweep_seconds:
                        await self.housekeeping()
                        last_housekeeping = loop.time()
                    backoff = 0.1
                    await self._pause(self._sweep_seconds, until=self._wake)
                except Exception as error:  # Kafka or PostgreSQL away: wait and try again.
                    log.warning("outbox relay retrying", error=repr(error), backoff_s=backoff)
                    if listener is not None:
                        with contextlib.suppress(Exception):
                            await listener.close()
                        listener = None
                    await self._pause(backoff, until=self._stopping)
                    backoff = min(backoff * 2, 5.0)
        finally:
            if listener is not None:
                with contextlib.suppress(Exception):
                    await listener.close()

    async def _pause(self, seconds: float, *, until: asyncio.Event) -> None:
        """Sleep up to `seconds`, less if `until` is set; stop() sets both events."""
        if self._stopping.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(until.wait(), timeout=seconds)

    async def publish_pending(self) -> int:
        """Publish batches until none is left (or another relay holds the lock)."""
        total = 0
        while True:
            published = await self._publish_batch()
            total += published
            if published < self._batch_size:
                return total

    async def _publish_batch(self) -> int:
        producer = self._producer
        assert producer is not None, "start() the relay first"
        async with self._engine.begin() as connection:
            parameters = {"key": RELAY_LOCK_KEY, "limit": self._batch_size}
            rows = (await connection.execute(_PENDING_BATCH, parameters)).all()
            if not rows:  # nothing to send, or another replica's relay is sending
                return 0
            outcomes = await asyncio.gather(
                *(self._send(producer, row) for row in rows), return_exceptions=True
            )
            passing = next(
                (o for o in outcomes if isinstance(o, BaseException) and not _permanent(o)), None
            )
            if passing is not None:
                raise passing  # the batch rolls back and goes again, in order
            sent = [row.id for row, outcome in zip(rows, outcomes, strict=True) if outcome is None]
            if sent:
                await connection.execute(_MARK_SENT, {"ids": sent})
            for row, outcome in zip(rows, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    await self._set_aside(connection, row, outcome)
        for row, outcome in zip(rows, outcomes, strict=True):
            if outcome is None:
                OUTBOX_PUBLISHED.labels(self._service, row.topic).inc()
        return len(rows)

    async def _send(self, producer: AIOKafkaProducer, row: Row[Any]) -> None:
        """One row to the broker, acknowledged; what it raises says whether it may pass."""
        if len(row.payload) > MAX_EVENT_BYTES:
            raise Unpublishable(f"{len(row.payload)} bytes is over the {MAX_EVENT_BYTES} limit")
        try:
            headers = encode_headers(row.headers)
            key = row.key.encode()
        except (AttributeError, TypeError, ValueError, UnicodeError) as error:
            raise Unpublishable(f"the row does not encode: {error!r}") from error
        delivery = await producer.send(row.topic, value=row.payload, key=key, headers=headers)
        await delivery

    async def _set_aside(
        self, connection: AsyncConnection, row: Row[Any], error: BaseException
    ) -> None:
        """Take a row out of line for good, count it, and let the service fail what it was
        about."""
        why = f"{type(error).__name__}: {error}"[:2000]
        log.error(
            "outbox event set aside: it can never be published",
            service=self._service,
            topic=row.topic,
            key=row.key,
            event_id=row.event_id,
            error=why,
        )
        await connection.execute(
            text("UPDATE outbox SET failed_at = now(), error = :error WHERE id = :id"),
            {"id": row.id, "error": why},
        )
        OUTBOX_SET_ASIDE.labels(self._service, row.topic, type(error).__name__).inc()
        if self._on_set_aside is not None:
            session = AsyncSession(bind=connection)
            try:
                aside = SetAside(row.event_id, row.topic, row.key, why, bytes(row.payload))
                await self._on_set_aside(session, aside)
                await write_collected(session)
                await session.flush()
            finally:
                await session.close()  # the relay's transaction commits, not the session

    async def housekeeping(self) -> None:
        """Report the backlog and prune rows sent longer ago than the retention."""
        async with self._engine.begin() as connection:
            backlog, oldest = (
                await connection.execute(
                    text(
                        "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)"
                        " FROM outbox WHERE sent_at IS NULL AND failed_at IS NULL"
                    )
                )
            ).one()
            OUTBOX_BACKLOG.labels(self._service).set(backlog)
            OUTBOX_OLDEST.labels(self._service).set(float(oldest))
            await connection.execute(
                text("DELETE FROM outbox WHERE sent_at < now() - CAST(:retention AS interval)"),
                {"retention": self._retention},
            )


def _permanent(error: BaseException) -> bool:
    return isinstance(error, (Unpublishable, *PERMANENT_SEND_ERRORS))
