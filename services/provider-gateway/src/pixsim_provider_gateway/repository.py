"""The gateway's tables and the queries that share work between replicas.

Concurrency mechanisms, each a single statement or a short transaction:
- an account's slots and credits are taken with `FOR UPDATE SKIP LOCKED` on the account row
  in the transaction that moves a submission to SUBMITTING, and given back in the one that
  ends it, so `in_flight <= max_concurrency` and `credits >= 0` hold across any replicas;
- waiting submissions are claimed fairly across users (fewest in flight first, then oldest);
- running submissions are polled under a lease (`lease_until`), so a dead replica's work is
  taken over when its lease runs out.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    Interval,
    LargeBinary,
    MetaData,
    Row,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    column,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.sql.selectable import TextualSelect

from pixsim_common.db import any_of, insert_or_skip
from pixsim_common.outbox import Outgoing, collect
from pixsim_provider_gateway.domain import (
    AccountState,
    Circuit,
    Expected,
    FromNow,
    ProviderGate,
    Submission,
    SubmissionEvent,
    SubmissionState,
)

metadata = MetaData()

accounts = Table(
    "provider_accounts",
    metadata,
    Column("id", UUID(as_uuid=False), primary_key=True),
    Column("provider_id", Text, nullable=False),
    Column("label", Text, nullable=False, server_default=""),
    Column("credentials_key_id", Text, nullable=False),
    Column("credentials", LargeBinary, nullable=False),
    Column("credits", BigInteger, nullable=False),
    Column("max_concurrency", Integer, nullable=False),
    Column("in_flight", Integer, nullable=False, server_default="0"),
    Column("priority", Integer, nullable=False, server_default="0"),
    Column("state", Text, nullable=False, server_default=AccountState.ACTIVE.value),
    Column("cooldown_until", DateTime(timezone=True)),
    # Calls on it that failed in a row (`domain.counts_against_circuit`); a success resets it.
    Column("consecutive_failures", Integer, nullable=False, server_default="0"),
    # What the provider last reported of its credits, when; when its key was last checked.
    Column("provider_credits", BigInteger),
    Column("provider_credits_time", DateTime(timezone=True)),
    Column("check_time", DateTime(timezone=True)),
    Column("create_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("update_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("in_flight >= 0 AND in_flight <= max_concurrency", name="slots_in_range"),
    CheckConstraint("credits >= 0", name="credits_not_negative"),
    Index("provider_accounts_selectable", "provider_id", "priority"),
)

submissions = Table(
    "provider_submissions",
    metadata,
    Column("id", UUID(as_uuid=False), primary_key=True),
    Column("job_id", UUID(as_uuid=False), nullable=False),
    Column("user_id", Text, nullable=False),
    Column("provider_id", Text, nullable=False),
    Column("operation_type", Integer, nullable=False),
    # The job's request as submitted (prompt, inputs, params): what a retry maps again.
    Column("request", JSONB, nullable=False),
    # What is sent to the provider: the single source of truth of generation parameters.
    Column("payload", JSONB),
    # The W3C trace context of the job.submitted that asked for it, so the provider calls
    # and events made later by any replica belong to the caller's trace.
    Column("trace_headers", JSONB, nullable=False, server_default="{}"),
    Column("job_retry_count", Integer, nullable=False),
    Column("retry_attempt", Integer, nullable=False),
    Column("previous_submission_id", UUID(as_uuid=False)),
    Column("state", Text, nullable=False),
    Column("account_id", UUID(as_uuid=False)),
    Column("reserved_credits", BigInteger, nullable=False, server_default="0"),
    # Its cost, settled once (docs/costs.md): the price of a credit when it was reserved,
    # the credits and money it is counted as having cost, and how that was decided.
    Column("credit_price_micros", BigInteger, nullable=False, server_default="0"),
    Column("settled_credits", BigInteger),
    Column("settled_micros", BigInteger),
    Column("billing", Text, nullable=False, server_default=""),
    Column("settle_time", DateTime(timezone=True)),
    # Status checks in a row that found no such task at the provider.
    Column("unknown_polls", Integer, nullable=False, server_default="0"),
    Column("provider_job_id", Text),
    Column("response", JSONB),
    Column("error_code", Text, nullable=False, server_default=""),
    Column("error_message", Text, nullable=False, server_default=""),
    Column("available_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("next_poll_at", DateTime(timezone=True)),
    Column("poll_count", Integer, nullable=False, server_default="0"),
    Column("lease_owner", Text),
    Column("lease_until", DateTime(timezone=True)),
    # This attempt's deadline at the provider: the gateway's own, or the job's run deadline.
    Column("deadline_at", DateTime(timezone=True)),
    # The job's deadlines (job.submitted), copied to every attempt of the chain: not sent by
    # `start_deadline_at`, the job expires unsent; not ended by `run_deadline_at`, it fails.
    Column("start_deadline_at", DateTime(timezone=True)),
    Column("run_deadline_at", DateTime(timezone=True)),
    Column("priority", Text, nullable=False, server_default="NORMAL"),
    # What the last status check said, for GetQueueStatus: progress (0 to 1), the
    # provider's own state word, and its place in the provider's own queue.
    Column("progress", Float),
    Column("provider_state", Text, nullable=False, server_default=""),
    Column("provider_queue_position", Integer),
    # Its place in its owner's queue: arrival plus `domain.turn_delay` of its priority; a
    # retry keeps the place of the attempt before it.
    Column("turn_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("provider_cancel_pending", Boolean, nullable=False, server_default="false"),
    # When the gateway's own bound passed with the task still running at a provider that
    # cannot stop it: followed on from then (reconciled), its late result still the job's.
    Column("reconcile_from", DateTime(timezone=True)),
    # The providers the job may go on with, in order ([{provider_id, params}]), the attempt
    # at which its current provider began (retries count per provider), and the providers
    # passed over before anything was sent to them ([{provider_id, why}]).
    Column("fallbacks", JSONB, nullable=False, server_default="[]"),
    Column("provider_first_attempt", Integer, nullable=False, server_default="0"),
    Column("passed_over", JSONB, nullable=False, server_default="[]"),
    Column("create_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("submit_time", DateTime(timezone=True)),
    Column("complete_time", DateTime(timezone=True)),
    Column("update_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # The last status check that found the task still running: with `complete_time` (the
    # check that found it done) it brackets the task's real end (`expected_durations`).
    Column("last_running_at", DateTime(timezone=True)),
    # Per owner: a crafted job.submitted naming another user's job makes a chain of its own,
    # which their job never hears of (the job service checks the owner of every event).
    UniqueConstraint(
        "job_id", "user_id", "job_retry_count", "retry_attempt", name="one_row_per_attempt"
    ),
    Index(
        "provider_submissions_waiting", "available_at", postgresql_where=text("state = 'WAITING'")
    ),
    Index(
        "provider_submissions_polling",
        "next_poll_at",
        postgresql_where=text("state IN ('RUNNING', 'SUBMITTING')"),
    ),
    Index("provider_submissions_job", "job_id", "create_time"),
    Index(
        "provider_submissions_expiring",
        text("least(start_deadline_at, run_deadline_at)"),
        postgresql_where=text(
            "state = 'WAITING' AND (start_deadline_at IS NOT NULL OR run_deadline_at IS NOT NULL)"
        ),
    ),
    Index("provider_submissions_served", "submit_time"),
    # A callback names only the provider's task.
    Index(
        "provider_submissions_task",
        "provider_id",
        "provider_job_id",
        postgresql_where=text("provider_job_id IS NOT NULL"),
    ),
)

# Each provider's gate (`domain.ProviderGate`): an operator's pause and its circuit. A
# provider without a row is active and closed.
provider_states = Table(
    "provider_states",
    metadata,
    Column("provider_id", Text, primary_key=True),
    Column("paused", Boolean, nullable=False, server_default="false"),
    Column("pause_time", DateTime(timezone=True)),
    Column("pause_reason", Text, nullable=False, server_default=""),
    Column("circuit", Text, nullable=False, server_default="CLOSED"),
    Column("consecutive_failures", Integer, nullable=False, server_default="0"),
    Column("open_count", Integer, nullable=False, server_default="0"),
    Column("circuit_open_until", DateTime(timezone=True)),
    Column("probe_until", DateTime(timezone=True)),
    Column("update_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("circuit IN ('CLOSED', 'OPEN', 'HALF_OPEN')", name="provider_states_circuit"),
)

# Jobs cancelled, kept even when their job.submitted has not arrived yet (it may come later),
# per owner: a cancel naming another user's job cancels nothing of theirs.
cancelled_jobs = Table(
    "cancelled_jobs",
    metadata,
    Column("job_id", UUID(as_uuid=False), primary_key=True),
    Column("user_id", Text, primary_key=True),
    Column("cancel_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
)


def new_id() -> str:
    return str(uuid.uuid4())


_COLUMNS = ", ".join(f"s.{c.name}" for c in submissions.c)
# The deadline rules, once, over a submissions row `s`: dispatch never claims a row past
# one, and the expiry sweep ends it. Never sent (its first attempt, no send yet: a 429 put
# back counts as sent) and past the start deadline; or past the run deadline.
_START_DEADLINE_PASSED = (
    "coalesce(s.retry_attempt = 0 AND s.submit_time IS NULL AND s.start_deadline_at <= now(),"
    " false)"
)
_RUN_DEADLINE_PASSED = "coalesce(s.run_deadline_at <= now(), false)"

# The order waiting work is served in, shared by dispatch and by queue positions: per user,
# how many of theirs are in flight and when they were last served; then each one's turn.
_FAIR_ORDER_INPUTS = """
    WITH busy AS (
        SELECT user_id, count(*) AS n FROM provider_submissions
        WHERE state IN ('SUBMITTING', 'RUNNING') GROUP BY user_id
    ), served AS (
        SELECT user_id, max(submit_time) AS last FROM provider_submissions
        WHERE submit_time > now() - interval '1 hour' GROUP BY user_id
    )"""
# Ends with the id: a total order. Attempts made in one transaction (the consumer takes a
# partition's run of job.submitted together) share turn_at and create_time, the database's
# clock of that transaction, and without it their places swapped from one reading to the
# next (a queued job was told 9, then 10).
_FAIR_ORDER = "coalesce(b.n, 0), v.last NULLS FIRST, s.turn_at, s.create_time, s.id"

QUEUE_POSITIONS = text(
    f"""
    {_FAIR_ORDER_INPUTS}
    SELECT s.id::text AS id, (row_number() OVER (ORDER BY {_FAIR_ORDER}) - 1)::int AS position
    FROM provider_submissions s
    LEFT JOIN busy b USING (user_id) LEFT JOIN served v USING (user_id)
    WHERE s.state = 'WAITING' AND s.provider_id = :provider
    """  # noqa: S608 - constant SQL
)


# NOTIFY on it wakes every replica's dispatch loop: new work is waiting.
WORK_CHANNEL = "pixsim_gateway_work"


async def wake_dispatch(session: AsyncSession) -> None:
    """Dispatch loops wake when this transaction commits."""
    await session.execute(text(f"NOTIFY {WORK_CHANNEL}"))


async def is_cancelled(session: AsyncSession, job_id: str, user_id: str) -> bool:
    found = await session.scalar(
        select(cancelled_jobs.c.job_id).where(
            cancelled_jobs.c.job_id == job_id, cancelled_jobs.c.user_id == user_id
        )
    )
    return found is not None


async def remember_cancelled(session: AsyncSession, job_id: str, user_id: str) -> None:
    """Kept even before the job's job.submitted arrives: it may come later."""
    await session.execute(
        insert(cancelled_jobs).values(job_id=job_id, user_id=user_id).on_conflict_do_nothing()
    )


async def lock_job(session: AsyncSession, job_id: str, user_id: str) -> None:
    """Serialize the handlers of one job's `job.submitted` and `job.cancelled` until commit.
    Without it each misses the other's uncommitted row: the cancellation finds no attempt
    to stop, the submission finds no cancellation, and a cancelled job is sent."""
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
        {"key": f"pixsim-job:{user_id}/{job_id}"},
    )


async def queue_positions(session: AsyncSession, provider_id: str) -> dict[str, int]:
    """Every waiting submission of the provider by id, with how many go before it in the
    order dispatch serves them (0: next). One in a retry's backoff counts in line."""
    rows = (await session.execute(QUEUE_POSITIONS, {"provider": provider_id})).all()
    return {row.id: row.position for row in rows}


async def latest_submission(
    session: AsyncSession, job_id: str, user_id: str | None = None
) -> Row[Any] | None:
    """The job's newest attempt (of `user_id`'s chain of it, when given)."""
    if user_id is None:
        return (await session.execute(_LATEST_OF_JOB, {"job_id": job_id})).first()
    parameters = {"job_id": job_id, "user_id": user_id}
    return (await session.execute(_LATEST_OF_USERS_JOB, parameters)).first()


_LATEST_OF_JOB = (
    select(submissions)
    .where(submissions.c.job_id == bindparam("job_id"))
    # The counts break ties of create_time: attempts made in one transaction share it.
    .order_by(
        submissions.c.create_time.desc(),
        submissions.c.job_retry_count.desc(),
        submissions.c.retry_attempt.desc(),
    )
    .limit(1)
)
_LATEST_OF_USERS_JOB = _LATEST_OF_JOB.where(submissions.c.user_id == bindparam("user_id"))


async def claim_waiting(session: AsyncSession, limit: int) -> Sequence[Row[Any]]:
    """Waiting submissions whose turn it is, locked, fair across users (round robin): a user
    with fewer submissions in flight goes first, then the one served least recently, then
    within a user the earliest `turn_at` (arrival, later for a lower priority). So one
    user's thousand queued jobs take turns with another's one even when a single slot frees
    at a time, and priority orders a user's own work without costing others their share.

    Per provider only as many as its accounts have free slots, from the head of its line:
    a slot that frees goes to the submission at the head, and the ones behind stay where
    they are, so the queue positions GetQueueStatus reports are the order of service. A
    provider with no usable account at all has one submission looked at a round (dispatch
    fails it when the provider is unknown, else it waits). A paused provider's, or one
    whose circuit is open, are not claimed; once the circuit may be probed, one is."""
    result = await session.execute(
        text(
            f"""
            {_FAIR_ORDER_INPUTS}, free AS (
                SELECT provider_id, sum(max_concurrency - in_flight) AS slots
                FROM provider_accounts
                WHERE state = 'ACTIVE' AND credits > 0
                  AND (cooldown_until IS NULL OR cooldown_until <= now())
                GROUP BY provider_id
            ), gate AS (
                SELECT provider_id, circuit <> 'CLOSED' AS probe,
                       CASE WHEN paused THEN 0
                            WHEN circuit = 'CLOSED' THEN NULL
                            WHEN coalesce(circuit_open_until > now(), false)
                              OR coalesce(probe_until > now(), false) THEN 0
                            ELSE 1 END AS cap
                FROM provider_states
            ), ranked AS (
                SELECT s.id, coalesce(g.probe, false) AS probe,
                       least(coalesce(f.slots, 1), coalesce(g.cap, f.slots, 1)) AS slots,
                       row_number() OVER (PARTITION BY s.provider_id ORDER BY {_FAIR_ORDER})
                           AS place
                FROM provider_submissions s
                LEFT JOIN busy b USING (user_id) LEFT JOIN served v USING (user_id)
                LEFT JOIN free f ON f.provider_id = s.provider_id
                LEFT JOIN gate g ON g.provider_id = s.provider_id
                WHERE s.state = 'WAITING' AND s.available_at <= now()
                  AND NOT {_START_DEADLINE_PASSED} AND NOT {_RUN_DEADLINE_PASSED}
            )
            SELECT {_COLUMNS}, r.probe FROM provider_submissions s JOIN ranked r ON r.id = s.id
            WHERE r.place <= r.slots AND s.state = 'WAITING'
            ORDER BY r.place
            LIMIT :limit
            FOR UPDATE OF s SKIP LOCKED
            """  # noqa: S608 - the column names come from the table definition
            # Typed like every other read (ids as str, JSON decoded); `probe`: its provider's
            # circuit is not closed, so it may go out only as the circuit's probe.
        ).columns(*submissions.c, column("probe", Boolean)),
        {"limit": limit},
    )
    return result.all()


async def claim_for_polling(
    session: AsyncSession, owner: str, lease: timedelta, limit: int
) -> Sequence[Row[Any]]:
    """Running submissions due a status check (or with a provider cancel pending), leased to
    `owner`; a lease that ran out (its replica died) is claimed again."""
    due = (
        (
            await session.execute(
                select(submissions.c.id)
                .where(
                    (
                        (submissions.c.state == SubmissionState.RUNNING.value)
                        & (submissions.c.next_poll_at <= func.now())
                    )
                    | submissions.c.provider_cancel_pending,
                    (submissions.c.lease_until.is_(None))
                    | (submissions.c.lease_until < func.now()),
                )
                .order_by(submissions.c.next_poll_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        )
        .scalars()
        .all()
    )
    if not due:
        return []
    result = await session.execute(
        update(submissions)
        .where(any_of(submissions.c.id, due))
        # Due again when the lease runs out, should this replica never record the check.
        .values(lease_owner=owner, lease_until=func.now() + lease, next_poll_at=func.now() + lease)
        .returning(*submissions.c)
    )
    return result.all()


_PASSED_DEADLINE = text(
    f"""
    SELECT {_COLUMNS}, CASE WHEN {_START_DEADLINE_PASSED} THEN 'START' ELSE 'RUN' END AS why
    FROM provider_submissions s
    WHERE s.state = 'WAITING' AND ({_START_DEADLINE_PASSED} OR {_RUN_DEADLINE_PASSED})
    LIMIT :limit
    FOR UPDATE OF s SKIP LOCKED
    """  # noqa: S608 - the column names come from the table definition
).columns(*submissions.c, column("why", Text))


# Waiting attempts, never sent, whose provider cannot take them now while the job has a
# fallback, each with `why`: its circuit is not closed, it has no account that could ever
# take it (none ACTIVE with credits), or the job's start deadline is about to pass and no
# account of it has a free slot now.
_PASSED_OVER = text(
    f"""
    SELECT {_COLUMNS},
           CASE WHEN coalesce(g.circuit <> 'CLOSED', false) THEN 'CIRCUIT_OPEN'
                WHEN NOT EXISTS (
                    SELECT 1 FROM provider_accounts a
                    WHERE a.provider_id = s.provider_id AND a.state = 'ACTIVE' AND a.credits > 0
                ) THEN 'NO_USABLE_ACCOUNT'
                ELSE 'START_DEADLINE_NEAR' END AS why
    FROM provider_submissions s
    LEFT JOIN provider_states g ON g.provider_id = s.provider_id
    WHERE s.state = 'WAITING' AND s.submit_time IS NULL AND s.fallbacks <> '[]'::jsonb
      AND (coalesce(g.circuit <> 'CLOSED', false)
           OR NOT EXISTS (
               SELECT 1 FROM provider_accounts a
               WHERE a.provider_id = s.provider_id AND a.state = 'ACTIVE' AND a.credits > 0
           )
           OR (coalesce(s.start_deadline_at < now() + :margin, false)
               AND NOT EXISTS (
                   SELECT 1 FROM provider_accounts a
                   WHERE a.provider_id = s.provider_id AND a.state = 'ACTIVE'
                     AND a.credits > 0 AND a.in_flight < a.max_concurrency
                     AND (a.cooldown_until IS NULL OR a.cooldown_until <= now())
               )))
    LIMIT :limit
    FOR UPDATE OF s SKIP LOCKED
    """  # noqa: S608 - the column names come from the table definition
).columns(*submissions.c, column("why", Text))


async def passed_deadline(session: AsyncSession, limit: int) -> Sequence[Row[Any]]:
    """Waiting submissions whose job's deadline has passed, locked, each with `why`: the
    START or the RUN deadline."""
    return (await session.execute(_PASSED_DEADLINE, {"limit": limit})).all()


async def expired_submitting(session: AsyncSession, limit: int) -> Sequence[Row[Any]]:
    """SUBMITTING rows whose replica died between reserving and recording the answer."""
    result = await session.execute(
        select(submissions)
        .where(
            submissions.c.state == SubmissionState.SUBMITTING.value,
            submissions.c.lease_until < func.now(),
        )
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return result.all()


# The hot statements are built once, with bound parameters: building a statement and
# deriving its cache key took 0.1-0.6 ms a call (more than running it), and a statement
# object reused keeps its key (docs/performance.md).
_SUBMISSION_BY_ID = select(submissions).where(submissions.c.id == bindparam("id"))
# A locked read comes with the database's clock (its transaction's `now()`, the same for
# every statement of the transaction), so a use case that reads the attempt and then asks
# the time (a status check's next look, its deadline) needs no round trip for it.
DB_NOW = "db_now"
_SUBMISSION_BY_ID_LOCKED = _SUBMISSION_BY_ID.add_columns(func.now().label(DB_NOW)).with_for_update()
_SUBMISSION_OF_TASK = (
    select(submissions, func.now().label(DB_NOW))
    .where(
        submissions.c.provider_id == bindparam("provider_id"),
        submissions.c.provider_job_id == bindparam("provider_job_id"),
    )
    .with_for_update()
)


async def get_submission(
    session: AsyncSession, submission_id: str, lock: bool = False
) -> Row[Any] | None:
    query = _SUBMISSION_BY_ID_LOCKED if lock else _SUBMISSION_BY_ID
    return (await session.execute(query, {"id": submission_id})).first()


async def submission_of_task(
    session: AsyncSession, provider_id: str, provider_job_id: str
) -> Row[Any] | None:
    """The attempt a provider's task belongs to, locked."""
    parameters = {"provider_id": provider_id, "provider_job_id": provider_job_id}
    return (await session.execute(_SUBMISSION_OF_TASK, parameters)).first()


async def now(session: AsyncSession) -> datetime:
    value = await session.scalar(select(func.now()))
    assert isinstance(value, datetime)
    return value


# How a change sets a column: to a value, or to a moment on the database's clock (`FromNow`),
# with an offset ("+") and a cap ("<"). A statement is built once per shape of change.
Shape = tuple[tuple[str, str], ...]


def _shape(values: Mapping[str, Any]) -> Shape:
    return tuple((name, _how(value)) for name, value in values.items())


def _how(value: Any) -> str:
    if not isinstance(value, FromNow):
        return "value"
    return "now" + ("+" if value.after else "") + ("<" if value.not_after is not None else "")


def _parameters(values: Mapping[str, Any]) -> dict[str, Any]:
    """The bound values of a change, named as `_shape`'s statements name them."""
    bound: dict[str, Any] = {}
    for name, value in values.items():
        if not isinstance(value, FromNow):
            bound[f"set_{name}"] = value
            continue
        if value.after:
            bound[f"after_{name}"] = value.after
        if value.not_after is not None:
            bound[f"cap_{name}"] = value.not_after
    return bound


def _set_sql(name: str, how: str) -> str:
    """What a column is set to, as SQL, for `_shape`'s `how`."""
    if how == "value":
        return f":set_{name}"
    moment = f"now() + :after_{name}" if "+" in how else "now()"
    return f"least({moment}, :cap_{name})" if "<" in how else moment


def _binds(shape: Shape) -> list[BindParameter[Any]]:
    """The typed parameters `_set_sql` names for `shape`."""
    binds: list[BindParameter[Any]] = []
    for name, how in shape:
        column_type = submissions.c[name].type
        if how == "value":
            binds.append(bindparam(f"set_{name}", type_=column_type))
        if "+" in how:
            binds.append(bindparam(f"after_{name}", type_=Interval()))
        if "<" in how:
            binds.append(bindparam(f"cap_{name}", type_=column_type))
    return binds


_RETURNING = ", ".join(c.name for c in submissions.c)


# Text built from the table's own column names, never from input.
@functools.lru_cache(maxsize=256)
def _save_statement(shape: Shape, *, settling: bool) -> TextualSelect:
    """The compare-and-set update of a change of this shape, on the state it was loaded in;
    a settlement is compare-and-set too (one replica's, once)."""
    sets = ", ".join(f"{name} = {_set_sql(name, how)}" for name, how in shape)
    sql = (
        f"UPDATE {submissions.name} SET {sets}, update_time = now()"  # noqa: S608
        " WHERE id = :saved_id AND state = :loaded_state"
        + (" AND settle_time IS NULL" if settling else "")
        + f" RETURNING {_RETURNING}"
    )
    saved_id = bindparam("saved_id", type_=submissions.c.id.type)
    return text(sql).bindparams(saved_id, *_binds(shape)).columns(*submissions.c)


@functools.lru_cache(maxsize=64)
def _add_statement(shape: Shape) -> TextualSelect:
    """A new attempt of this shape, none if the job has it already."""
    return insert_or_skip(
        submissions,
        [name for name, _ in shape],
        values=[_set_sql(name, how) for name, how in shape],
        binds=_binds(shape),
        conflict="ON CONSTRAINT one_row_per_attempt",
    )


class StaleSubmission(Exception):
    """A save found the attempt no longer in the state it was loaded in: someone else
    changed it meanwhile (the row was not locked, or a lease was taken over)."""


Publish = Callable[[SubmissionEvent], Outgoing]


class Submissions:
    """The gateway's attempts as `Submission` aggregates. A save writes the attempt's
    changes compare-and-set on the state it was loaded in, and hands the events it raised to
    the unit of work (`outbox.collect`), which writes them at commit; `publish` says what
    each one is on the wire."""

    def __init__(self, session: AsyncSession, publish: Publish) -> None:
        self.session = session
        self._publish = publish
        # The database's `now()` as a locked read brought it, with the transaction it is of.
        self._clock: tuple[object, datetime] | None = None

    def _loaded(self, rows: Iterable[Row[Any]]) -> list[Submission]:
        return [Submission(dict(row._mapping)) for row in rows]

    def _locked(self, row: Row[Any] | None) -> Submission | None:
        """The attempt of a locked read, keeping the clock it came with."""
        if row is None:
            return None
        record = dict(row._mapping)
        self._clock = (self.session.get_transaction(), record.pop(DB_NOW))
        return Submission(record)

    async def get(self, submission_id: str, *, lock: bool = False) -> Submission | None:
        row = await get_submission(self.session, submission_id, lock)
        if lock:
            return self._locked(row)
        return None if row is None else Submission(dict(row._mapping))

    async def of_task(self, provider_id: str, provider_job_id: str) -> Submission | None:
        """The attempt `provider_id`'s task belongs to, locked (a callback names only it)."""
        return self._locked(await submission_of_task(self.session, provider_id, provider_job_id))

    async def claim_waiting(self, limit: int) -> list[Submission]:
        return self._loaded(await claim_waiting(self.session, limit))

    async def next_waiting_in(self) -> float | None:
        return await next_waiting_in(self.session)

    async def claim_for_polling(self, owner: str, lease: timedelta, limit: int) -> list[Submission]:
        return self._loaded(await claim_for_polling(self.session, owner, lease, limit))

    async def passed_deadline(self, limit: int) -> list[Submission]:
        """Each with `why`: the START or the RUN deadline."""
        return self._loaded(await passed_deadline(self.session, limit))

    async def expired_submitting(self, limit: int) -> list[Submission]:
        return self._loaded(await expired_submitting(self.session, limit))

    async def to_pass_over(self, limit: int, margin: timedelta) -> list[Submission]:
        """Each with `why` (`_PASSED_OVER`); `margin`: how near a start deadline is near."""
        rows = await self.session.execute(_PASSED_OVER, {"limit": limit, "margin": margin})
        return self._loaded(rows.all())

    async def unfinished_of_job(self, job_id: str, user_id: str) -> list[Submission]:
        """The job's attempts not ended yet, locked."""
        rows = await self.session.execute(
            select(submissions)
            .where(
                submissions.c.job_id == job_id,
                submissions.c.user_id == user_id,
                submissions.c.state.in_([s.value for s in SubmissionState if not s.terminal]),
            )
            .with_for_update()
        )
        return self._loaded(rows.all())

    async def latest_of_job(self, job_id: str, user_id: str) -> str | None:
        """The id of the job's newest attempt chain's last attempt, if any."""
        row = await latest_submission(self.session, job_id, user_id)
        return None if row is None else str(row.id)

    async def now(self) -> datetime:
        """The database's time of this transaction (read with a locked attempt, else asked)."""
        transaction = self.session.get_transaction()
        if self._clock is None or self._clock[0] is not transaction or transaction is None:
            self._clock = (transaction, await now(self.session))
        return self._clock[1]

    async def add(self, attempt: Submission) -> bool:
        """Store a new attempt; False when the job already has this attempt (a redelivery)."""
        record = attempt.record
        row = (
            await self.session.execute(_add_statement(_shape(record)), _parameters(record))
        ).first()
        if row is None:
            return False
        self._stored(attempt, row)
        return True

    async def save(self, attempt: Submission) -> None:
        if not attempt.changes:
            return
        changes = attempt.changes
        statement = _save_statement(_shape(changes), settling="settle_time" in changes)
        parameters = {
            **_parameters(changes),
            "saved_id": attempt.id,
            "loaded_state": attempt.loaded_state.value,
        }
        row = (await self.session.execute(statement, parameters)).first()
        if row is None:
            raise StaleSubmission(f"submission {attempt.id} is not {attempt.loaded_state} any more")
        self._stored(attempt, row)

    def _stored(self, attempt: Submission, row: Row[Any]) -> None:
        attempt.stored(dict(row._mapping))
        collect(self.session, [self._publish(event) for event in attempt.take_events()])


_RECORD_BALANCE = text(
    """
    WITH before AS (SELECT id, credits FROM provider_accounts WHERE id = :id)
    UPDATE provider_accounts AS a SET
        provider_credits = :balance,
        provider_credits_time = now(),
        credits = CASE WHEN a.in_flight = 0 AND a.state IN ('ACTIVE', 'EXHAUSTED')
                       THEN greatest(:balance, 0) ELSE a.credits END,
        state = CASE WHEN a.in_flight = 0 AND a.state = 'EXHAUSTED' AND :balance > 0
                     THEN 'ACTIVE' ELSE a.state END,
        update_time = now()
    FROM before WHERE a.id = before.id
    RETURNING before.credits
    """
).bindparams(bindparam("id", type_=UUID(as_uuid=False)), bindparam("balance", type_=BigInteger))


_FREE_ACCOUNT = (
    select(accounts)
    .where(
        accounts.c.provider_id == bindparam("provider_id"),
        accounts.c.state == AccountState.ACTIVE.value,
        (accounts.c.cooldown_until.is_(None)) | (accounts.c.cooldown_until <= func.now()),
        accounts.c.in_flight < accounts.c.max_concurrency,
        accounts.c.credits >= bindparam("cost", type_=BigInteger),
    )
    .order_by(accounts.c.priority.desc(), accounts.c.in_flight, accounts.c.id)
    .limit(1)
    .with_for_update(skip_locked=True)
)
_RESERVE = (
    update(accounts)
    .where(accounts.c.id == bindparam("account_id"))
    .values(
        in_flight=accounts.c.in_flight + 1,
        credits=accounts.c.credits - bindparam("cost", type_=BigInteger),
        update_time=func.now(),
    )
)
_RELEASE = (
    update(accounts)
    .where(accounts.c.id == bindparam("account_id"))
    .values(
        in_flight=accounts.c.in_flight - 1,
        credits=func.greatest(accounts.c.credits + bindparam("returned", type_=BigInteger), 0),
        update_time=func.now(),
    )
)


class Accounts:
    """The provider accounts: their slots and credits (the ledger), and their records."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def reserve(self, provider_id: str, cost: int) -> Row[Any] | None:
        """The best free account for `provider_id` with a slot and `cost` credits, reserved."""
        parameters = {"provider_id": provider_id, "cost": cost}
        account = (await self.session.execute(_FREE_ACCOUNT, parameters)).first()
        if account is None:
            return None
        await self.session.execute(_RESERVE, {"account_id": account.id, "cost": cost})
        return account

    async def release(self, account_id: str, reserved: int, spent: int | None = None) -> None:
        """Give the slot back and settle credits: the reservation returns, the actual cost
        (when the provider said it) is taken instead. Dispatch wakes at commit, so the next
        waiting attempt takes the slot at once."""
        actual = reserved if spent is None else spent
        parameters = {"account_id": account_id, "returned": reserved - actual}
        await self.session.execute(_RELEASE, parameters)
        await wake_dispatch(self.session)

    async def mark(
        self,
        account_id: str,
        *,
        state: AccountState | None = None,
        cooldown: timedelta | None = None,
    ) -> None:
        values: dict[str, Any] = {"update_time": func.now()}
        if state is not None:
            values["state"] = state.value
        if cooldown is not None:
            values["cooldown_until"] = func.now() + cooldown
        await self.session.execute(
            update(accounts).where(accounts.c.id == account_id).values(**values)
        )

    async def record_call(self, account_id: str, *, failed: bool) -> int:
        """Count a failed call on the account, or reset the count after a success (no write
        when there is nothing to reset); the calls failed in a row now."""
        column = accounts.c.consecutive_failures
        if not failed:
            await self.session.execute(
                update(accounts)
                .where(accounts.c.id == account_id, column > 0)
                .values(consecutive_failures=0)
            )
            return 0
        count = await self.session.scalar(
            update(accounts)
            .where(accounts.c.id == account_id)
            .values(consecutive_failures=column + 1)
            .returning(column)
        )
        return int(count or 0)

    async def sealed_credentials(self, account_ids: Iterable[str]) -> list[Row[Any]]:
        """The accounts' encrypted credentials (id, key id, sealed bytes)."""
        wanted = set(account_ids)
        if not wanted:
            return []
        rows = await self.session.execute(
            select(accounts.c.id, accounts.c.credentials_key_id, accounts.c.credentials).where(
                any_of(accounts.c.id, wanted)
            )
        )
        return list(rows.all())

    async def due_for_check(self, every: timedelta, limit: int) -> list[Row[Any]]:
        """Accounts whose key was not checked for `every` (ACTIVE, EXHAUSTED or DRAINING),
        claimed: their `check_time` is now, so no other replica checks them meanwhile."""
        due = (
            select(accounts.c.id)
            .where(
                accounts.c.state.in_(
                    [AccountState.ACTIVE, AccountState.EXHAUSTED, AccountState.DRAINING]
                ),
                (accounts.c.check_time.is_(None)) | (accounts.c.check_time < func.now() - every),
            )
            .order_by(accounts.c.check_time.nulls_first())
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        rows = await self.session.execute(
            update(accounts)
            .where(accounts.c.id.in_(due.scalar_subquery()))
            .values(check_time=func.now(), update_time=func.now())
            .returning(*accounts.c)
        )
        return list(rows.all())

    async def record_balance(self, account_id: str, balance: int) -> int | None:
        """The provider's own figure for the account. The ledger takes it while nothing
        runs on the account (a task in flight holds a reservation the provider may not have
        charged yet); an EXHAUSTED account with credits again is ACTIVE. One statement, so
        the row is locked for no longer than a reservation would wait. The ledger's
        credits before, or None for an account that is gone."""
        ledger = await self.session.scalar(_RECORD_BALANCE, {"id": account_id, "balance": balance})
        return None if ledger is None else int(ledger)

    async def get(self, account_id: str, *, lock: bool = False) -> Row[Any] | None:
        query = select(accounts).where(accounts.c.id == account_id)
        return (await self.session.execute(query.with_for_update() if lock else query)).first()

    async def create(self, **values: Any) -> Row[Any]:
        # Its first key check comes a check period later: the job it is made for goes
        # first, rather than find its row locked by a check.
        values.setdefault("check_time", func.now())
        return (
            await self.session.execute(insert(accounts).values(**values).returning(*accounts.c))
        ).one()

    async def update(self, account_id: str, **values: Any) -> Row[Any]:
        """Raises IntegrityError when the change breaks a rule of the ledger (slots in use)."""
        return (
            await self.session.execute(
                update(accounts)
                .where(accounts.c.id == account_id)
                .values(**values, update_time=func.now())
                .returning(*accounts.c)
            )
        ).one()


def accounts_listed(provider_id: str) -> Any:
    """The query ListAccounts pages through."""
    query = select(accounts)
    return query.where(accounts.c.provider_id == provider_id) if provider_id else query


def submissions_listed(job_id: str, user_id: str | None) -> Any:
    """The query ListSubmissions pages through: the job's attempts (the owner's, unless
    `user_id` is None for an admin)."""
    query = select(submissions).where(submissions.c.job_id == job_id)
    return query if user_id is None else query.where(submissions.c.user_id == user_id)


async def account_loads(session: AsyncSession) -> list[Row[Any]]:
    """Every account's provider, id, slots in use and slots, for the metrics."""
    rows = await session.execute(
        select(
            accounts.c.provider_id, accounts.c.id, accounts.c.in_flight, accounts.c.max_concurrency
        )
    )
    return list(rows.all())


async def waiting_by_provider(session: AsyncSession) -> dict[str, tuple[int, float]]:
    """Per provider with submissions waiting: how many, and how long (seconds) the one that
    has waited longest since it could be sent has waited (0 while none can be sent yet)."""
    ready_since = func.min(submissions.c.available_at).filter(
        submissions.c.available_at <= func.now()
    )
    rows = await session.execute(
        select(
            submissions.c.provider_id,
            func.count(),
            func.coalesce(func.extract("epoch", func.now() - ready_since), 0),
        )
        .where(submissions.c.state == SubmissionState.WAITING.value)
        .group_by(submissions.c.provider_id)
    )
    return {provider_id: (count, float(wait)) for provider_id, count, wait in rows.all()}


# The median time from send to a seen success, per provider and operation, over each one's
# latest successes of the last hour (at least 3 of them): what the next task is expected to
# take. A success is seen at most one near-end step late, so the median runs about half a
# step long, which is why the first check comes half a step before it.
# A task's real end lies between the last check that found it running and the one that
# found it done: its sample is the middle of the two. Measured to the done check alone, the
# estimate kept our own lateness in it, and checks timed by it came late by as much again
# (2 s tasks were seen 0.24 s late at the median). One found done at its first check ended
# before it, by how much unknown: its sample is a poll step earlier, so an estimate that is
# too long shrinks until checks find tasks running just before their end.
# The tenth percentile beside it says how soon a task of the kind may end: looking before
# that finds it running nine times in ten (decision 129).
_EXPECTED_DURATIONS = text(
    """
    SELECT provider_id, operation_type,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY seconds) AS seconds,
           percentile_cont(0.1) WITHIN GROUP (ORDER BY seconds) AS earliest
    FROM (
        SELECT provider_id, operation_type,
               CASE WHEN last_running_at IS NOT NULL AND last_running_at < complete_time
                    THEN extract(epoch FROM last_running_at - submit_time
                                 + (complete_time - last_running_at) / 2)
                    ELSE greatest(extract(epoch FROM complete_time - submit_time) - :step, 0)
               END AS seconds,
               row_number() OVER (PARTITION BY provider_id, operation_type
                                  ORDER BY submit_time DESC) AS latest
        FROM provider_submissions
        WHERE submit_time > now() - interval '1 hour' AND state = 'SUCCEEDED'
    ) recent
    WHERE latest <= :window
    GROUP BY provider_id, operation_type
    HAVING count(*) >= 3
    """
)


async def expected_durations(
    session: AsyncSession, window: int = 50, step: float = 0.1
) -> dict[tuple[str, int], Expected]:
    """(provider, operation) -> how long a task of it is expected to take, where known, from
    its `window` latest; `step` is how much earlier than the check that found it done a task
    with no check before is taken to have ended (the poll loop's smallest step)."""
    rows = await session.execute(_EXPECTED_DURATIONS, {"window": window, "step": step})
    return {
        (row.provider_id, row.operation_type): Expected(float(row.seconds), float(row.earliest))
        for row in rows
    }


async def next_waiting_in(session: AsyncSession) -> float | None:
    """Seconds until the soonest waiting submission's turn (negative: it is due, and waits
    for a slot or its provider); None when nothing waits."""
    seconds = await session.scalar(
        select(func.extract("epoch", func.min(submissions.c.available_at) - func.now())).where(
            submissions.c.state == SubmissionState.WAITING.value
        )
    )
    return None if seconds is None else float(seconds)


async def next_poll_in(session: AsyncSession) -> float | None:
    """Seconds until the soonest running attempt is due a check (a leased one is due when
    its lease runs out); None when nothing runs."""
    seconds = await session.scalar(
        select(func.extract("epoch", func.min(submissions.c.next_poll_at) - func.now())).where(
            submissions.c.state == SubmissionState.RUNNING.value
        )
    )
    return None if seconds is None else float(seconds)


def _gate_of(row: Row[Any]) -> ProviderGate:
    return ProviderGate(
        provider_id=row.provider_id,
        paused=row.paused,
        pause_time=row.pause_time,
        pause_reason=row.pause_reason,
        circuit=Circuit(row.circuit),
        consecutive_failures=row.consecutive_failures,
        open_count=row.open_count,
        open_until=row.circuit_open_until,
        probe_until=row.probe_until,
    )


class ProviderGates:
    """Each provider's `ProviderGate`, as stored (a provider without a row is open)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def all(self) -> dict[str, ProviderGate]:
        rows = await self.session.execute(select(provider_states))
        return {row.provider_id: _gate_of(row) for row in rows.all()}

    async def get(self, provider_id: str) -> ProviderGate:
        row = (
            await self.session.execute(
                select(provider_states).where(provider_states.c.provider_id == provider_id)
            )
        ).first()
        return ProviderGate(provider_id) if row is None else _gate_of(row)

    async def lock(self, provider_id: str) -> tuple[ProviderGate, datetime]:
        """The gate, locked until commit (made if the provider has none), and the
        database's now."""
        await self.session.execute(
            insert(provider_states).values(provider_id=provider_id).on_conflict_do_nothing()
        )
        row = (
            await self.session.execute(
                select(provider_states, func.now().label("db_now"))
                .where(provider_states.c.provider_id == provider_id)
                .with_for_update()
            )
        ).one()
        return _gate_of(row), row.db_now

    async def troubled(self, provider_id: str) -> ProviderGate | None:
        """The gate, locked, if its circuit is not closed or counts failures: what a success
        has to reset. None (and no write) in the usual case."""
        row = (
            await self.session.execute(
                select(provider_states)
                .where(
                    provider_states.c.provider_id == provider_id,
                    (provider_states.c.circuit != Circuit.CLOSED.value)
                    | (provider_states.c.consecutive_failures > 0),
                )
                .with_for_update()
            )
        ).first()
        return None if row is None else _gate_of(row)

    async def save(self, gate: ProviderGate) -> None:
        await self.session.execute(
            update(provider_states)
            .where(provider_states.c.provider_id == gate.provider_id)
            .values(
                paused=gate.paused,
                pause_time=gate.pause_time,
                pause_reason=gate.pause_reason,
                circuit=gate.circuit.value,
                consecutive_failures=gate.consecutive_failures,
                open_count=gate.open_count,
                circuit_open_until=gate.open_until,
                probe_until=gate.probe_until,
                update_time=func.now(),
            )
        )
