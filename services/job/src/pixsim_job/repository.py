"""The job table, and loading and saving the `Job` aggregate.

Concurrency: writes lock the job row (`SELECT ... FOR UPDATE`); idempotent creation rests on
the unique `(user_id, request_id)` index, so concurrent retries of one request make one job.
Every insert or update of a job notifies `pixsim_job_changed` with its id (a trigger made by
the migration), which is what `WatchJob` waits on in every replica.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Row,
    Table,
    Text,
    bindparam,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from pixsim_common.db import any_of, insert_or_skip
from pixsim_common.pagination import PageTokens
from pixsim_job.domain import Job, JobState

CHANGE_CHANNEL = "pixsim_job_changed"

metadata = MetaData()

jobs = Table(
    "jobs",
    metadata,
    Column("id", UUID(as_uuid=False), primary_key=True),
    Column("user_id", Text, nullable=False),
    Column("operation_type", Integer, nullable=False),
    Column("provider_id", Text, nullable=False),
    Column("request", JSONB, nullable=False),
    Column("state", Text, nullable=False),
    Column("error_code", Text, nullable=False, server_default=""),
    Column("error_message", Text, nullable=False, server_default=""),
    Column("retry_count", Integer, nullable=False, server_default="0"),
    Column("asset_id", Text, nullable=False, server_default=""),
    Column("asset_provider_id", Text, nullable=False, server_default=""),
    Column("request_id", Text),
    # sha256 of the request as the caller sent it: the same request_id means the same request.
    Column("request_hash", Text),
    Column("create_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("update_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("start_time", DateTime(timezone=True)),
    Column("complete_time", DateTime(timezone=True)),
    Column("start_deadline_time", DateTime(timezone=True)),
    Column("run_deadline_time", DateTime(timezone=True)),
    Column("labels", JSONB, nullable=False, server_default="{}"),
    Column("priority", Text, nullable=False, server_default="NORMAL"),
    Column("queue_time", DateTime(timezone=True)),
    Column("dispatch_time", DateTime(timezone=True)),
    Column("provider_start_time", DateTime(timezone=True)),
    Column("provider_end_time", DateTime(timezone=True)),
    # {"url": ..., "events": [EVENT_...]}: where the job's changes are pushed; NULL: nowhere.
    Column("webhook", JSONB),
    # The sum of its attempts' settled costs (docs/costs.md).
    Column("settled_credits", BigInteger, nullable=False, server_default="0"),
    Column("settled_micros", BigInteger, nullable=False, server_default="0"),
    Column("settled_attempts", Integer, nullable=False, server_default="0"),
    Column("cost_final", Boolean, nullable=False, server_default="false"),
    # Its latest run's estimate, and what of it is held against its owner's budget.
    Column("estimated_credits", BigInteger, nullable=False, server_default="0"),
    Column("estimated_micros", BigInteger, nullable=False, server_default="0"),
    Column("hold_micros", BigInteger, nullable=False, server_default="0"),
    Index(
        "jobs_idempotency",
        "user_id",
        "request_id",
        unique=True,
        postgresql_where=text("request_id IS NOT NULL"),
    ),
    Index("jobs_by_user_newest", "user_id", text("create_time DESC"), text("id DESC")),
    Index("jobs_holding", "user_id", postgresql_where=text("hold_micros > 0")),
    Index(
        "jobs_labels", "labels", postgresql_using="gin", postgresql_ops={"labels": "jsonb_path_ops"}
    ),
)


webhook_secrets = Table(
    "webhook_secrets",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("secret", Text, nullable=False),
    Column("previous_secret", Text),
    Column("previous_until", DateTime(timezone=True)),
    Column("update_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# A webhook outbox: written in the transaction of the change it announces, sent by the
# deliverer (webhooks.py) until the receiver answers 2xx or the retry window closes.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", UUID(as_uuid=False), primary_key=True),  # the webhook-id header
    Column("job_id", UUID(as_uuid=False), nullable=False),
    Column("user_id", Text, nullable=False),
    Column("event", Text, nullable=False),
    Column("url", Text, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("state", Text, nullable=False, server_default="PENDING"),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("create_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("webhook_deliveries_due", "next_attempt_at", postgresql_where=text("state = 'PENDING'")),
    Index("webhook_deliveries_job", "job_id", "create_time"),
)

webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column("delivery_id", UUID(as_uuid=False), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("attempt_time", DateTime(timezone=True), nullable=False),
    Column("status_code", Integer, nullable=False),
    Column("error", Text, nullable=False, server_default=""),
    Column("duration_ms", Integer, nullable=False),
)


# What each user spent, by provider, operation and day (UTC), added to as attempts' costs
# settle (GetUsage reads it; it never scans jobs).
usage_daily = Table(
    "usage_daily",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("day", Date, primary_key=True),
    Column("provider_id", Text, primary_key=True),
    Column("operation_type", Integer, primary_key=True),
    Column("jobs", BigInteger, nullable=False, server_default="0"),
    Column("credits", BigInteger, nullable=False, server_default="0"),
    Column("micros", BigInteger, nullable=False, server_default="0"),
)

# As text: the dialect's ON CONFLICT insert has no cache key, so SQLAlchemy compiled it for
# every settlement.
_ADD_USAGE = text(
    """
    INSERT INTO usage_daily (user_id, day, provider_id, operation_type, jobs, credits, micros)
    VALUES (:user_id, :day, :provider_id, :operation_type, :jobs, :credits, :micros)
    ON CONFLICT (user_id, day, provider_id, operation_type) DO UPDATE SET
        jobs = usage_daily.jobs + excluded.jobs,
        credits = usage_daily.credits + excluded.credits,
        micros = usage_daily.micros + excluded.micros
    """
).bindparams(
    *(
        bindparam(name, type_=usage_daily.c[name].type)
        for name in ("day", "operation_type", "jobs", "credits", "micros")
    )
)


async def add_usage(session: AsyncSession, **values: Any) -> None:
    """Add a settled cost (and a job, when `jobs` is 1) to its user's day."""
    await session.execute(_ADD_USAGE, values)


async def usage_of(session: AsyncSession, user_id: str, first: date, last: date) -> list[Row[Any]]:
    """The user's usage rows from `first` to `last` (inclusive), by day, provider, operation."""
    u = usage_daily
    return list(
        (
            await session.execute(
                select(u)
                .where(u.c.user_id == user_id, u.c.day >= first, u.c.day <= last)
                .order_by(u.c.day, u.c.provider_id, u.c.operation_type)
            )
        ).all()
    )


# What an admin lets a user spend a period (docs/costs.md). CreateJob locks its user's row,
# so their creates take turns at the check and 50 at once never commit past the limit.
budgets = Table(
    "budgets",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("period", Text, nullable=False),
    Column("limit_micros", BigInteger, nullable=False),
    Column("update_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# Spent (settled this period) and held (estimates of runs not settled), in one snapshot.
_STANDING = text(
    """
    SELECT
        (SELECT coalesce(sum(micros), 0) FROM usage_daily
          WHERE user_id = :user_id AND day >= :since) AS spent,
        (SELECT coalesce(sum(hold_micros), 0) FROM jobs
          WHERE user_id = :user_id AND hold_micros > 0) AS held
    """
).bindparams(bindparam("since", type_=Date))


async def budget_of(session: AsyncSession, user_id: str, *, lock: bool = False) -> Row[Any] | None:
    query = select(budgets).where(budgets.c.user_id == user_id)
    return (await session.execute(query.with_for_update() if lock else query)).first()


async def standing_of(session: AsyncSession, user_id: str, since: date) -> tuple[int, int]:
    """The user's spent and held micros (spent: settled on or after `since`)."""
    row = (await session.execute(_STANDING, {"user_id": user_id, "since": since})).one()
    return int(row.spent), int(row.held)


async def set_budget(
    session: AsyncSession, user_id: str, period: str, limit_micros: int
) -> Row[Any]:
    statement = pg_insert(budgets).values(user_id=user_id, period=period, limit_micros=limit_micros)
    return (
        await session.execute(
            statement.on_conflict_do_update(
                index_elements=["user_id"],
                set_={"period": period, "limit_micros": limit_micros, "update_time": func.now()},
            ).returning(*budgets.c)
        )
    ).one()


async def delete_budget(session: AsyncSession, user_id: str) -> bool:
    deleted = await session.execute(
        budgets.delete().where(budgets.c.user_id == user_id).returning(budgets.c.user_id)
    )
    return deleted.first() is not None


def to_job(row: Row[Any]) -> Job:
    return Job(
        id=row.id,
        user_id=row.user_id,
        operation_type=row.operation_type,
        provider_id=row.provider_id,
        request=row.request,
        state=JobState(row.state),
        error_code=row.error_code,
        error_message=row.error_message,
        retry_count=row.retry_count,
        asset_id=row.asset_id,
        asset_provider_id=row.asset_provider_id,
        request_id=row.request_id or "",
        request_hash=row.request_hash or "",
        create_time=row.create_time,
        update_time=row.update_time,
        start_time=row.start_time,
        complete_time=row.complete_time,
        start_deadline_time=row.start_deadline_time,
        run_deadline_time=row.run_deadline_time,
        labels=row.labels,
        priority=row.priority,
        queue_time=row.queue_time,
        settled_credits=row.settled_credits,
        settled_micros=row.settled_micros,
        settled_attempts=row.settled_attempts,
        cost_final=row.cost_final,
        estimated_credits=row.estimated_credits,
        estimated_micros=row.estimated_micros,
        hold_micros=row.hold_micros,
        dispatch_time=row.dispatch_time,
        provider_start_time=row.provider_start_time,
        provider_end_time=row.provider_end_time,
        webhook=row.webhook,
    )


# The columns CreateJob writes (the rest take their defaults).
SUBMIT_COLUMNS = (
    "id",
    "user_id",
    "operation_type",
    "provider_id",
    "request",
    "state",
    "request_id",
    "request_hash",
    "start_deadline_time",
    "run_deadline_time",
    "labels",
    "priority",
    "webhook",
    "estimated_credits",
    "estimated_micros",
    "hold_micros",
)
_JSON_COLUMNS = frozenset({"request", "labels", "webhook", "headers"})  # jobs' and outbox's
# Every column, for driver SQL's RETURNING (no SQLAlchemy type to turn the driver's UUID
# into a string).
_JOB_COLUMNS_ID_AS_TEXT = ", ".join(
    "id::text AS id" if column.name == "id" else column.name for column in jobs.c
)
# CreateJob's insert within a budget's transaction.
INSERT_NEW = insert_or_skip(
    jobs,
    SUBMIT_COLUMNS,
    # No webhook is SQL NULL, not JSON null.
    binds=[bindparam("webhook", type_=JSONB(none_as_null=True))],
)


def _submit_values(job: Job) -> dict[str, Any]:
    """The values of `job`'s SUBMIT_COLUMNS."""
    return {
        "id": job.id,
        "user_id": job.user_id,
        "operation_type": job.operation_type,
        "provider_id": job.provider_id,
        "request": job.request,
        "state": job.state.value,
        "request_id": job.request_id or None,
        "request_hash": job.request_hash or None,
        "start_deadline_time": job.start_deadline_time,
        "run_deadline_time": job.run_deadline_time,
        "labels": job.labels,
        "priority": job.priority,
        "webhook": job.webhook,
        "estimated_credits": job.estimated_credits,
        "estimated_micros": job.estimated_micros,
        "hold_micros": job.hold_micros,
    }


async def insert_new(session: AsyncSession, job: Job) -> Job | None:
    """Insert `job`, returned as stored; None when the caller already made one with the same
    request_id."""
    inserted = (await session.execute(INSERT_NEW, _submit_values(job))).first()
    return to_job(inserted) if inserted is not None else None


EVENT_COLUMNS = ("event_id", "topic", "key", "payload", "headers")


def _placeholders(first: int, count: int) -> str:
    return ", ".join(f"${n}" for n in range(first, first + count))


_USER_PARAMETER = SUBMIT_COLUMNS.index("user_id") + 1
# CreateJob for a caller without a budget, all in one statement run in autocommit: the job
# row and its job.submitted outbox row, inserted only when the caller has no budget (one
# with a budget is checked in a transaction that locks it: `budgeted` says so and nothing is
# written) and when no job of theirs has the request_id (then no row comes back). One round
# trip instead of five (BEGIN, the budget read, the job, the outbox row, COMMIT), sent as
# driver SQL: the execution layer cost more CPU than the driver (docs/performance.md).
INSERT_UNLESS_BUDGETED = f"""
WITH budgeted AS (SELECT EXISTS (SELECT FROM budgets WHERE user_id = ${_USER_PARAMETER}) AS yes),
job AS (
    INSERT INTO jobs ({", ".join(SUBMIT_COLUMNS)})
    SELECT {_placeholders(1, len(SUBMIT_COLUMNS))} FROM budgeted WHERE NOT budgeted.yes
    ON CONFLICT DO NOTHING
    RETURNING {_JOB_COLUMNS_ID_AS_TEXT}
),
event AS (
    INSERT INTO outbox ({", ".join(EVENT_COLUMNS)})
    SELECT {_placeholders(len(SUBMIT_COLUMNS) + 1, len(EVENT_COLUMNS))} FROM job
)
SELECT budgeted.yes AS budgeted, job.* FROM budgeted LEFT JOIN job ON true
"""  # noqa: S608


def _driver_value(column: str, value: Any) -> Any:
    """Driver SQL has no column types: JSON goes as its text (NULL stays NULL)."""
    return json.dumps(value) if column in _JSON_COLUMNS and value is not None else value


async def insert_unless_budgeted(
    connection: AsyncConnection, job: Job, submitted: Mapping[str, Any]
) -> tuple[bool, Job | None]:
    """`job` and its outbox row `submitted` in one statement on an autocommit `connection`:
    (True, None) when the user has a budget (nothing written), else (False, the job as
    stored), or (False, None) when the caller already made one with the same request_id."""
    job_values = _submit_values(job)
    values = tuple(
        _driver_value(name, source[name])
        for source, names in ((job_values, SUBMIT_COLUMNS), (submitted, EVENT_COLUMNS))
        for name in names
    )
    row = (await connection.exec_driver_sql(INSERT_UNLESS_BUDGETED, values)).one()
    if row.budgeted:
        return True, None
    return False, to_job(row) if row.id is not None else None


async def load(
    session: AsyncSession, job_id: str, *, user_id: str | None = None, lock: bool = False
) -> Job | None:
    """The job, locked for update when asked; None when missing or another user's."""
    query = _LOAD[user_id is not None, lock]
    row = (await session.execute(query, {"job_id": job_id, "user_id": user_id})).first()
    return to_job(row) if row is not None else None


# load's four statements (of a user's job or any, locked or not), built once: building a
# statement and deriving its cache key per call cost more than running it.
_LOAD_ANY = select(jobs).where(jobs.c.id == bindparam("job_id"))
_LOAD_USERS = _LOAD_ANY.where(jobs.c.user_id == bindparam("user_id"))
_LOAD = {
    (False, False): _LOAD_ANY,
    (False, True): _LOAD_ANY.with_for_update(),
    (True, False): _LOAD_USERS,
    (True, True): _LOAD_USERS.with_for_update(),
}


async def find_by_request_id(session: AsyncSession, user_id: str, request_id: str) -> Job | None:
    row = (
        await session.execute(
            select(jobs).where(jobs.c.user_id == user_id, jobs.c.request_id == request_id)
        )
    ).first()
    return to_job(row) if row is not None else None


async def load_by_request_id(session: AsyncSession, user_id: str, request_id: str) -> Job:
    row = (
        await session.execute(
            select(jobs).where(jobs.c.user_id == user_id, jobs.c.request_id == request_id)
        )
    ).one()
    return to_job(row)


# What save writes back (the rest never changes after the insert), built once.
_SAVED_COLUMNS = (
    "state",
    "error_code",
    "error_message",
    "retry_count",
    "asset_id",
    "asset_provider_id",
    "start_time",
    "complete_time",
    "start_deadline_time",
    "run_deadline_time",
    "queue_time",
    "dispatch_time",
    "provider_start_time",
    "provider_end_time",
    "settled_credits",
    "settled_micros",
    "settled_attempts",
    "cost_final",
    "estimated_credits",
    "estimated_micros",
    "hold_micros",
)
_SAVE = (
    update(jobs)
    .where(jobs.c.id == bindparam("saved_id"))
    .values(
        {
            **{name: bindparam(f"set_{name}", type_=jobs.c[name].type) for name in _SAVED_COLUMNS},
            # When the aggregate changed, on the same clock as its other times.
            "update_time": func.coalesce(
                bindparam("set_update_time", type_=DateTime(timezone=True)), func.now()
            ),
        }
    )
    .returning(jobs)
)


async def save(session: AsyncSession, job: Job) -> Job:
    """Write the aggregate's state back; returns it with the stored timestamps."""
    values = {f"set_{name}": getattr(job, name) for name in _SAVED_COLUMNS}
    values["set_state"] = job.state.value
    parameters = {**values, "set_update_time": job.update_time, "saved_id": job.id}
    row = (await session.execute(_SAVE, parameters)).one()
    return to_job(row)


async def list_page(
    session: AsyncSession,
    tokens: PageTokens,
    user_id: str,
    filters: dict[str, Any],
    *,
    page_token: str,
    page_size: int,
) -> tuple[list[Job], str]:
    """One page of the user's jobs, newest first, and the next page's token. `filters`: states
    (names), provider, operation, start and end (ISO times; empty values do not filter)."""
    query = select(jobs).where(jobs.c.user_id == user_id)
    if filters["states"]:
        query = query.where(any_of(jobs.c.state, filters["states"]))
    if filters["provider"]:
        query = query.where(jobs.c.provider_id == filters["provider"])
    if filters["operation"]:
        query = query.where(jobs.c.operation_type == filters["operation"])
    if filters["start"]:
        query = query.where(jobs.c.create_time >= datetime.fromisoformat(filters["start"]))
    if filters["end"]:
        query = query.where(jobs.c.create_time < datetime.fromisoformat(filters["end"]))
    if filters.get("labels"):
        query = query.where(jobs.c.labels.contains(filters["labels"]))
    rows, token = await tokens.fetch_page(
        session, query, jobs, page_token, page_size, filters, newest_first=True
    )
    return [to_job(r) for r in rows], token


async def lock_unfinished(
    session: AsyncSession,
    user_id: str,
    *,
    states: list[str],
    provider: str,
    labels: dict[str, str],
    limit: int,
) -> list[Job]:
    """Up to `limit` of the user's jobs that have not ended and match, locked for update."""
    unfinished = [state.value for state in JobState if not state.terminal]
    query = select(jobs).where(
        jobs.c.user_id == user_id,
        any_of(jobs.c.state, [s for s in states if s in unfinished] if states else unfinished),
    )
    if provider:
        query = query.where(jobs.c.provider_id == provider)
    if labels:
        query = query.where(jobs.c.labels.contains(labels))
    rows = (await session.execute(query.order_by(jobs.c.id).limit(limit).with_for_update())).all()
    return [to_job(row) for row in rows]


async def webhook_secrets_of(session: AsyncSession, user_id: str) -> list[str]:
    """The user's signing secrets now: the current one, and the previous while it overlaps."""
    row = (
        await session.execute(select(webhook_secrets).where(webhook_secrets.c.user_id == user_id))
    ).first()
    if row is None:
        return []
    keep_previous = row.previous_secret and row.previous_until and row.previous_until > now_utc()
    return [row.secret, row.previous_secret] if keep_previous else [row.secret]


async def rotate_webhook_secret(
    session: AsyncSession, user_id: str, secret: str, overlap: timedelta
) -> datetime | None:
    """Make `secret` the user's; the one it replaces signs beside it for `overlap`. When the
    previous one stops (None: there was none)."""
    until = now_utc() + overlap
    row = (
        await session.execute(
            pg_insert(webhook_secrets)
            .values(user_id=user_id, secret=secret)
            .on_conflict_do_update(
                index_elements=[webhook_secrets.c.user_id],
                set_={
                    "previous_secret": webhook_secrets.c.secret,
                    "previous_until": until,
                    "secret": secret,
                    "update_time": func.now(),
                },
            )
            .returning(webhook_secrets.c.previous_until)
        )
    ).one()
    return row.previous_until  # type: ignore[no-any-return]


def now_utc() -> datetime:
    return datetime.now(UTC)
