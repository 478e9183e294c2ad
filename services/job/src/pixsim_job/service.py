"""`JobService`: the use cases. `create` is the only code that inserts a job; every write is
one transaction that saves the job and its events (outbox, written at commit) together."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

import structlog
from google.protobuf import duration_pb2, json_format
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from pixsim.events.v1 import events_pb2
from pixsim.job.v1 import job_service_pb2 as pb
from pixsim.provider.v1 import provider_gateway_service_pb2 as gw_pb
from pixsim.types.v1 import types_pb2
from pixsim_common import topics
from pixsim_common.auth import Identity
from pixsim_common.consumer import PoisonMessage
from pixsim_common.db import UnitOfWork, any_of
from pixsim_common.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from pixsim_common.money import CURRENCY, MAX_COST_MICROS, MICROS, dollars, micros_of
from pixsim_common.notify import Listener
from pixsim_common.outbound import AddressPolicy, UrlRefused, UrlUnreachable, check_url, resolve
from pixsim_common.outbox import Outgoing, SetAside, collect, outbox_row
from pixsim_common.timestamps import from_request, now_timestamp, to_timestamp
from pixsim_common.topics import MAX_EVENT_BYTES
from pixsim_common.validation import validate
from pixsim_job import repository as repo
from pixsim_job.capabilities import (
    CostEstimates,
    LiveStatus,
    ProviderCatalog,
    check_fallbacks,
    check_request,
)
from pixsim_job.domain import (
    LIVE_INTERVAL,
    LIVE_STATES,
    Fact,
    GenerationSettled,
    IllegalTransition,
    Job,
    Period,
    Standing,
    next_live_wait,
)
from pixsim_job.inputs import InputResolver, resolved
from pixsim_job.metrics import JOB_OVERHEAD, SPEND
from pixsim_job.resources import to_proto
from pixsim_job.webhooks import enqueue_delivery, new_secret, wanted_event

log = structlog.get_logger("pixsim.job")
SOURCE = "/job"
# Items of a batch created at once (each its own transaction), and jobs cancelled per
# transaction by a bulk cancel.
BATCH_CONCURRENCY = 8
CANCEL_CHUNK = 200
# GetUsage's range when none is given, and the longest it answers (a year, leap or not).
DEFAULT_USAGE_DAYS = 30
MAX_USAGE_DAYS = 366


def _now() -> datetime:
    return datetime.now(UTC)


class JobService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        catalog: ProviderCatalog,
        resolver: InputResolver,
        estimates: CostEstimates,
        *,
        reads: async_sessionmaker[AsyncSession],
        statements: AsyncEngine,
        webhook_policy: AddressPolicy | None = None,
        secret_overlap: timedelta = timedelta(days=1),
    ) -> None:
        self._webhook_policy = webhook_policy or AddressPolicy()
        self._secret_overlap = secret_overlap
        self._sessions = sessions
        # The hot one-statement reads (GetJob, WatchJob, CreateJob's request-id check).
        self._reads = reads
        # Writes that are all one statement, each committing by itself (CreateJob's).
        self._statements = statements
        self._catalog = catalog
        self._resolver = resolver
        self._estimates = estimates

    async def create(self, identity: Identity, request: pb.CreateJobRequest) -> Job:
        fingerprint = request_fingerprint(request.job)
        if request.request_id:
            # A retry of a request we have answered is answered again, even while the
            # gateway or the asset service is away.
            existing = await self._by_request_id(identity, request.request_id, fingerprint)
            if existing is not None:
                return existing
        webhook = await self._checked_webhook(identity, request.job)
        provider = await self._catalog.get(request.job.provider_id, identity.token)
        capability = check_request(request.job, provider)
        spec = pb.Job()
        spec.CopyFrom(request.job)
        found = await self._resolver.assets_of(spec.inputs, identity.token)
        inputs = resolved(spec.inputs, found, capability)
        for fallback in await check_fallbacks(request.job, self._catalog, identity.token):
            resolved(spec.inputs, found, fallback)  # within each fallback's limits too
        del spec.inputs[:]
        spec.inputs.extend(inputs)
        estimate = await self._estimates.of(spec, identity.token)
        now = _now()
        job = Job.submit(
            estimate=estimate,
            labels=dict(request.job.labels),
            priority=priority_of(request.job),
            webhook=webhook,
            start_deadline_time=deadline_of(request.job, "start_deadline", now),
            run_deadline_time=deadline_of(request.job, "run_deadline", now),
            user_id=identity.user_id,
            operation_type=spec.operation_type,
            provider_id=spec.provider_id,
            request_id=request.request_id,
            request_hash=fingerprint,
            request={
                "prompt": spec.prompt,
                "inputs": [json_format.MessageToDict(i) for i in spec.inputs],
                "params": json_format.MessageToDict(spec.params),
                "fallbacks": [json_format.MessageToDict(f) for f in spec.fallbacks],
            },
        )
        submitted = submitted_event(job, spec)
        refuse_oversized(submitted, spec)
        event = Outgoing(topics.JOB_SUBMITTED, job.id, submitted, SOURCE)
        async with self._statements.connect() as connection:
            budgeted, stored = await repo.insert_unless_budgeted(connection, job, outbox_row(event))
        if budgeted:
            stored = await self._create_within_budget(job, event)
        if stored is None:
            # The same caller sent the same request_id meanwhile: that job, no second.
            async with self._reads() as session:
                existing = await repo.load_by_request_id(
                    session, identity.user_id, request.request_id
                )
            return _same_request(existing, fingerprint)
        return stored

    async def _create_within_budget(self, job: Job, event: Outgoing) -> Job | None:
        """Store `job` if it fits in its owner's budget, holding the budget row to the end
        of the transaction; None when the caller already made one with its request_id."""
        async with UnitOfWork(self._sessions) as uow:
            await _hold_against_budget(uow.session, job.user_id, job.estimated_micros)
            stored = await repo.insert_new(uow.session, job)
            if stored is not None:
                collect(uow.session, [event])
            await uow.commit()
        return stored

    async def _by_request_id(
        self, identity: Identity, request_id: str, fingerprint: str
    ) -> Job | None:
        async with self._reads() as session:
            existing = await repo.find_by_request_id(session, identity.user_id, request_id)
        return _same_request(existing, fingerprint) if existing is not None else None

    async def _submitted(self, session: AsyncSession, job: Job, spec: Any) -> None:
        collect(
            session, [Outgoing(topics.JOB_SUBMITTED, job.id, submitted_event(job, spec), SOURCE)]
        )

    async def get(self, identity: Identity, job_id: str) -> Job:
        async with self._reads() as session:
            job = await repo.load(session, job_id, user_id=identity.user_id)
        if job is None:
            raise NotFound(f"jobs/{job_id} does not exist", reason="JOB_NOT_FOUND")
        return job

    @contextlib.asynccontextmanager
    async def _changing(
        self, identity: Identity, job_id: str
    ) -> AsyncIterator[tuple[AsyncSession, Job]]:
        """The caller's job, locked, in a transaction that commits when the block ends."""
        async with UnitOfWork(self._sessions) as uow:
            job = await repo.load(uow.session, job_id, user_id=identity.user_id, lock=True)
            if job is None:
                raise NotFound(f"jobs/{job_id} does not exist", reason="JOB_NOT_FOUND")
            yield uow.session, job
            await uow.commit()

    async def _checked_webhook(self, identity: Identity, job: pb.Job) -> dict[str, Any] | None:
        """The job's webhook as stored, once its URL is known to lead somewhere public and
        its owner has a secret to sign with."""
        if not job.HasField("webhook"):
            return None
        field = "job.webhook.url"
        try:
            _, host, port = check_url(job.webhook.url)
            await resolve(host, port, self._webhook_policy)
        except (UrlRefused, UrlUnreachable) as error:
            why = f"cannot be a webhook: {error}"
            raise InvalidArgument(
                f"{field} {why}", [FieldViolation(field, why, "WEBHOOK_REFUSED")]
            ) from None
        async with self._sessions() as session:
            signing = await repo.webhook_secrets_of(session, identity.user_id)
        if not signing:
            raise FailedPrecondition(
                "make a webhook secret first (RotateWebhookSecret): deliveries are signed",
                reason="NO_WEBHOOK_SECRET",
            )
        return {
            "url": job.webhook.url,
            "events": [pb.Webhook.Event.Name(e) for e in job.webhook.events],
        }

    async def rotate_webhook_secret(self, identity: Identity) -> tuple[str, datetime | None]:
        secret = new_secret()
        async with UnitOfWork(self._sessions) as uow:
            until = await repo.rotate_webhook_secret(
                uow.session, identity.user_id, secret, self._secret_overlap
            )
            await uow.commit()
        return secret, until

    async def deliveries(self, identity: Identity, job_id: str) -> list[tuple[Any, list[Any]]]:
        """The job's webhook deliveries, oldest first, each with its attempts."""
        await self.get(identity, job_id)  # the caller's, or NOT_FOUND
        d, a = repo.webhook_deliveries, repo.webhook_attempts
        async with self._sessions() as session:
            rows = (
                await session.execute(
                    # The id breaks ties: deliveries made in one transaction share its time.
                    select(d).where(d.c.job_id == job_id).order_by(d.c.create_time, d.c.id)
                )
            ).all()
            attempts = (
                await session.execute(
                    select(a)
                    .where(any_of(a.c.delivery_id, [row.id for row in rows]))
                    .order_by(a.c.attempt)
                )
            ).all()
        return [(row, [x for x in attempts if x.delivery_id == row.id]) for row in rows]

    async def create_many(
        self,
        identity: Identity,
        requests: Sequence[pb.CreateJobRequest],
        webhook: pb.Webhook | None = None,
    ) -> list[Job | DomainError]:
        """BatchCreateJobs: each request validated and created on its own (a few at a time),
        answered in order with its job or its error."""
        slots = asyncio.Semaphore(BATCH_CONCURRENCY)

        async def one(request: pb.CreateJobRequest) -> Job | DomainError:
            if webhook is not None and not request.job.HasField("webhook"):
                request.job.webhook.CopyFrom(webhook)
            try:
                validate(request)
                async with slots:
                    return await self.create(identity, request)
            except DomainError as error:
                return error

        return list(await asyncio.gather(*(one(request) for request in requests)))

    async def cancel(self, identity: Identity, job_id: str) -> Job:
        async with self._changing(identity, job_id) as (session, job):
            try:
                job.cancel(_now())
            except IllegalTransition as error:
                raise FailedPrecondition(
                    f"a {error.current.value} job cannot be cancelled",
                    reason="JOB_NOT_CANCELLABLE",
                    metadata={"state": error.current.value},
                ) from None
            return await self._cancelled(session, job)

    async def cancel_matching(
        self, identity: Identity, *, states: list[str], provider: str, labels: dict[str, str]
    ) -> int:
        """CancelJobs: every unfinished job of the caller's that matches, a chunk per
        transaction; how many were cancelled."""
        if not (states or provider or labels):
            why = "name at least one of states, provider_id or labels"
            raise InvalidArgument(
                f"a bulk cancel must be filtered: {why}",
                [FieldViolation("labels", why, "FILTER_REQUIRED")],
                reason="FILTER_REQUIRED",
            )
        cancelled = 0
        while True:
            async with UnitOfWork(self._sessions) as uow:
                jobs = await repo.lock_unfinished(
                    uow.session,
                    identity.user_id,
                    states=states,
                    provider=provider,
                    labels=labels,
                    limit=CANCEL_CHUNK,
                )
                for job in jobs:
                    job.cancel(_now())
                    await self._cancelled(uow.session, job)
                await uow.commit()
            cancelled += len(jobs)
            if len(jobs) < CANCEL_CHUNK:
                return cancelled

    async def _cancelled(self, session: AsyncSession, job: Job) -> Job:
        collect(
            session,
            [
                Outgoing(
                    topics.JOB_CANCELLED,
                    job.id,
                    events_pb2.JobCancelled(
                        job_id=job.id, user_id=job.user_id, cancel_time=now_timestamp()
                    ),
                    SOURCE,
                )
            ],
        )
        return await self._save(session, job)

    async def retry(self, identity: Identity, job_id: str) -> Job:
        async with self._changing(identity, job_id) as (session, job):
            try:
                job.retry(_now())
                await _hold_against_budget(session, job.user_id, job.estimated_micros)
            except IllegalTransition as error:
                raise FailedPrecondition(
                    "only a FAILED job can be retried",
                    reason="JOB_NOT_FAILED",
                    metadata={"state": error.current.value},
                ) from None
            spec = json_format.ParseDict(job.request, pb.Job(), ignore_unknown_fields=True)
            await self._submitted(session, job, spec)
            return await self._save(session, job)

    async def learn(self, session: AsyncSession, job_id: str, user_id: str, fact: Fact) -> None:
        """Apply a fact from an event inside the consumer's transaction. An event about a
        job must name its owner: one naming someone else changes nothing of theirs."""
        job = await repo.load(session, job_id, lock=True)
        if job is None:
            raise PoisonMessage(f"job {job_id} does not exist", "UNKNOWN_JOB")
        if job.user_id != user_id:
            raise PoisonMessage(f"job {job_id} is not {user_id[:64]!r}'s", "OWNER_MISMATCH")
        overhead_before = job.overhead()
        if job.learn(fact, _now()):
            await self._save(session, job)
            overhead = job.overhead()
            if overhead_before is None and overhead is not None:
                # Once per job: a redelivery finds the overhead known. (A transaction that
                # fails after this is observed again when retried: a histogram, not a ledger.)
                JOB_OVERHEAD.labels(job.provider_id).observe(overhead.total_seconds())

    async def settled(self, session: AsyncSession, event: events_pb2.GenerationSettled) -> None:
        """An attempt's cost, settled: onto its job, and its owner's usage of the day. A job
        counts once: when its first run's last attempt is settled."""
        micros = micros_of(event.cost.price)
        if not 0 <= micros <= MAX_COST_MICROS or event.cost.price.currency_code != CURRENCY:
            raise PoisonMessage(f"a cost is USD, 0 to {MAX_COST_MICROS / MICROS:.0f}", "BAD_COST")
        fact = GenerationSettled(event.job_retry_count, event.cost.credits, micros, event.final)
        await self.learn(session, event.job_id, event.user_id, fact)
        await repo.add_usage(
            session,
            user_id=event.user_id,
            day=event.settle_time.ToDatetime(tzinfo=UTC).date(),
            provider_id=event.provider_id,
            operation_type=event.operation_type,
            jobs=int(event.final and event.job_retry_count == 0),
            credits=event.cost.credits,
            micros=micros,
        )
        SPEND.labels(event.user_id, event.provider_id).inc(micros / MICROS)

    async def usage(
        self, identity: Identity, user: str, first: date | None, last: date | None
    ) -> tuple[str, date, date, list[Any]]:
        """GetUsage: the user's rows from `first` to `last` (defaults: the 30 days to today);
        another user's needs the admin role."""
        user_id = _readable_user(identity, user)
        last = last or _now().date()
        first = first or last - timedelta(days=DEFAULT_USAGE_DAYS - 1)
        if first > last or (last - first).days >= MAX_USAGE_DAYS:
            why = f"must be on or before end_date, and at most {MAX_USAGE_DAYS} days before it"
            raise InvalidArgument(
                f"start_date {why}", [FieldViolation("start_date", why, "BAD_RANGE")]
            )
        async with self._sessions() as session:
            rows = await repo.usage_of(session, user_id, first, last)
        return user_id, first, last, rows

    async def budget(self, identity: Identity, user: str) -> tuple[Any, Standing]:
        """GetBudget: the user's budget and where they stand this period (their own, or an
        admin's asking)."""
        user_id = _readable_user(identity, user)
        async with self._sessions() as session:
            budget = await repo.budget_of(session, user_id)
            if budget is None:
                raise NotFound(f"users/{user_id} has no budget", reason="BUDGET_NOT_FOUND")
            return budget, await _standing(session, budget)

    async def set_budget(
        self, user: str, period: Period, limit_micros: int
    ) -> tuple[Any, Standing]:
        """SetBudget (admin; the guard checked): the user's limit from now on."""
        if not 0 <= limit_micros <= MAX_BUDGET_MICROS:
            why = f"must be 0 to {dollars(MAX_BUDGET_MICROS)} in USD"
            raise InvalidArgument(
                f"budget.limit {why}", [FieldViolation("budget.limit", why, "BAD_LIMIT")]
            )
        async with UnitOfWork(self._sessions) as uow:
            budget = await repo.set_budget(uow.session, _user_of(user), period.value, limit_micros)
            standing = await _standing(uow.session, budget)
            await uow.commit()
        return budget, standing

    async def delete_budget(self, user: str) -> None:
        async with UnitOfWork(self._sessions) as uow:
            if not await repo.delete_budget(uow.session, _user_of(user)):
                raise NotFound(f"{user} has no budget", reason="BUDGET_NOT_FOUND")
            await uow.commit()

    async def event_set_aside(self, session: AsyncSession, row: SetAside) -> None:
        """The relay could never publish an event about a job (too large, refused by the
        topic): a job whose submission never leaves fails, rather than waiting forever."""
        if row.topic != topics.JOB_SUBMITTED.name:
            return  # a status change or a cancel: the job itself is already where it is
        job = await repo.load(session, row.key, lock=True)
        if job is None or job.state.terminal:
            return
        job.fail("EVENT_UNPUBLISHABLE", f"the job could not be submitted: {row.error}", _now())
        await self._save(session, job)

    async def _save(self, session: AsyncSession, job: Job) -> Job:
        for transition in job.transitions:
            collect(
                session,
                [
                    Outgoing(
                        topics.JOB_STATUS_CHANGED,
                        job.id,
                        events_pb2.JobStatusChanged(
                            job_id=job.id,
                            user_id=job.user_id,
                            state=pb.Job.State.Value(f"STATE_{transition.state.value}"),
                            previous_state=pb.Job.State.Value(f"STATE_{transition.previous.value}"),
                            error_code=job.error_code,
                            error_message=job.error_message,
                            asset_id=job.asset_id,
                            change_time=now_timestamp(),
                        ),
                        SOURCE,
                    )
                ],
            )
        stored = await repo.save(session, job)
        wanted = [wanted_event(stored.webhook, t.state) for t in job.transitions]
        events = [event for event in wanted if event is not None]
        if stored.webhook is None or not events:
            return stored
        body = json_format.MessageToJson(to_proto(stored), indent=None).encode()
        for event in events:
            await enqueue_delivery(
                session,
                job_id=stored.id,
                user_id=stored.user_id,
                url=stored.webhook["url"],
                event=event,
                body=body,
            )
        return stored


class ChangeFeed:
    """Wakes the watchers of a job when it changes (one LISTEN per process)."""

    def __init__(self, database_url: str) -> None:
        self._watchers: dict[str, set[asyncio.Event]] = {}
        # After a reconnect anything may have changed: every watcher looks again.
        self._listener = Listener(database_url, repo.CHANGE_CHANNEL, self._wake, self._wake)

    async def start(self) -> None:
        await self._listener.start()

    async def stop(self) -> None:
        await self._listener.stop()

    def _wake(self, job_id: str | None = None) -> None:
        targets = [self._watchers.get(job_id, set())] if job_id else list(self._watchers.values())
        for events in targets:
            for event in events:
                event.set()

    @contextlib.contextmanager
    def subscribe(self, job_id: str) -> Iterator[asyncio.Event]:
        event = asyncio.Event()
        self._watchers.setdefault(job_id, set()).add(event)
        try:
            yield event
        finally:
            self._watchers[job_id].discard(event)
            if not self._watchers[job_id]:
                del self._watchers[job_id]


# The job's row is read again on every notification of a change, and this often without
# one (a missed notification costs at most this much delay).
REREAD_INTERVAL = 15.0


async def watch(
    service: JobService,
    feed: ChangeFeed,
    identity: Identity,
    job_id: str,
    live: LiveStatus | None = None,
) -> AsyncIterator[tuple[Job, gw_pb.QueueStatus | None]]:
    """The job now, then on every change (of its state, or while it waits or runs of its
    place in line or its progress), until it is terminal. The row is read only when it
    may have changed; a live tick asks the gateway alone."""
    loop = asyncio.get_running_loop()
    with feed.subscribe(job_id) as changed:
        last: tuple[Any, ...] | None = None
        job: Job | None = None
        reread_at = 0.0
        live_wait = LIVE_INTERVAL
        while True:
            if job is None or changed.is_set() or loop.time() >= reread_at:
                changed.clear()
                job = await service.get(identity, job_id)
                reread_at = loop.time() + REREAD_INTERVAL
            status = (
                await live.of(job.id, identity.token)
                if live is not None and job.state in LIVE_STATES
                else None
            )
            current = (
                job.state,
                job.retry_count,
                job.asset_id,
                job.error_code,
                None if status is None else status.SerializeToString(deterministic=True),
            )
            live_wait = next_live_wait(
                job.state,
                live_wait,
                changed=current != last,
                queue_position=(
                    status.queue_position
                    if status is not None and status.state == gw_pb.Submission.STATE_WAITING
                    else None
                ),
            )
            if current != last:
                yield job, status
                last = current
            if job.state.terminal:
                return
            # Short while the gateway's answer may change without a change of the job's row.
            live_ticks = job.state in LIVE_STATES and live is not None
            wait = live_wait if live_ticks else reread_at - loop.time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout=max(wait, 0.0))


# The largest budget an admin may set: a million dollars a period.
MAX_BUDGET_MICROS = 1_000_000 * MICROS


def _user_of(name: str) -> str:
    return name.removeprefix("users/").removesuffix("/budget")


def _readable_user(identity: Identity, name: str) -> str:
    """The user `name` names (the caller when empty): the caller's own, or any with the
    admin role (PERMISSION_DENIED otherwise)."""
    user_id = _user_of(name) or identity.user_id
    if user_id != identity.user_id:
        identity.require_admin()
    return user_id


async def _standing(session: AsyncSession, budget: Any) -> Standing:
    since = Period(budget.period).start(_now()).date()
    spent, held = await repo.standing_of(session, budget.user_id, since)
    return Standing(budget.limit_micros, spent, held)


async def _hold_against_budget(session: AsyncSession, user_id: str, estimate: int) -> None:
    """Refuse a job whose estimate does not fit in what its owner's budget has left. The
    budget row stays locked to the end of the caller's transaction (which stores the job and
    its hold), so concurrent creates of one user are checked one after another."""
    budget = await repo.budget_of(session, user_id, lock=True)
    if budget is None:
        return
    standing = await _standing(session, budget)
    if standing.admits(estimate):
        return
    period = {Period.DAY: "daily", Period.MONTH: "monthly"}[Period(budget.period)]
    left, cost = dollars(standing.remaining), dollars(estimate)
    raise ResourceExhausted(
        f"this job is estimated at {cost}, more than the {left} left of your {period} budget",
        [(f"users/{user_id}/budget", f"{left} of {dollars(budget.limit_micros)} left")],
        reason="BUDGET_EXCEEDED",
        metadata={
            "remaining": left,
            "remaining_micros": str(standing.remaining),
            "estimate": cost,
            "limit": dollars(budget.limit_micros),
            "period": budget.period,
            "currency": CURRENCY,
        },
    )


def request_fingerprint(job: pb.Job) -> str:
    """sha256 of the request as the caller sent it (the fields a caller sets), so a reused
    request_id can be told from a retry of the same request."""
    sent = pb.Job(
        provider_id=job.provider_id,
        operation_type=job.operation_type,
        prompt=job.prompt,
        inputs=job.inputs,
        params=job.params if job.HasField("params") else None,
        labels=job.labels,
        priority=job.priority,
        webhook=job.webhook if job.HasField("webhook") else None,
        fallbacks=job.fallbacks,
    )
    for deadline in ("start_deadline", "run_deadline"):
        given = job.WhichOneof(deadline)
        if given is not None:
            getattr(sent, given).CopyFrom(getattr(job, given))
    return hashlib.sha256(sent.SerializeToString(deterministic=True)).hexdigest()


def _same_request(existing: Job, fingerprint: str) -> Job:
    if not existing.same_request(fingerprint):
        raise AlreadyExists(
            "this request_id was used for another request: use a new key for a new request",
            reason="REQUEST_ID_REUSED",
            metadata={"job": f"jobs/{existing.id}"},
        )
    return existing


def submitted_event(job: Job, spec: pb.Job) -> events_pb2.JobSubmitted:
    return events_pb2.JobSubmitted(
        job_id=job.id,
        user_id=job.user_id,
        operation_type=types_pb2.OperationType.ValueType(job.operation_type),
        provider_id=job.provider_id,
        prompt=spec.prompt,
        inputs=list(spec.inputs),
        params=spec.params,
        retry_count=job.retry_count,
        submit_time=now_timestamp(),
        start_deadline_time=to_timestamp(job.start_deadline_time),
        run_deadline_time=to_timestamp(job.run_deadline_time),
        priority=pb.Job.Priority.Value(f"PRIORITY_{job.priority}"),
        fallbacks=list(spec.fallbacks),
    )


def priority_of(job: pb.Job) -> str:
    """HIGH, NORMAL or LOW; NORMAL when not given."""
    given = pb.Job.Priority.Name(job.priority).removeprefix("PRIORITY_")
    return "NORMAL" if given == "UNSPECIFIED" else given


# The furthest a deadline may be; a job waiting longer than this is a mistake, not a plan.
MAX_DEADLINE = timedelta(days=7)


def deadline_of(
    job: pb.Job, which: Literal["start_deadline", "run_deadline"], now: datetime
) -> datetime | None:
    """The start or run deadline the caller gave, as a time: `..._deadline_time` as it is,
    or now plus `..._timeout` (its bounds are in the proto). A time that has passed, or one
    beyond MAX_DEADLINE, is INVALID_ARGUMENT naming its field."""
    given = job.WhichOneof(which)
    if given is None:
        return None
    if given.endswith("_timeout"):
        timeout: duration_pb2.Duration = getattr(job, given)
        return now + timeout.ToTimedelta()
    field = f"job.{given}"
    deadline = from_request(getattr(job, given), field)
    why = (
        "is in the past"
        if deadline <= now
        else f"is more than {MAX_DEADLINE.days} days away"
        if deadline > now + MAX_DEADLINE
        else None
    )
    if why is not None:
        raise InvalidArgument(
            f"{field} {why}", [FieldViolation(field, why, "DEADLINE_OUT_OF_RANGE")]
        )
    return deadline


def refuse_oversized(event: events_pb2.JobSubmitted, spec: pb.Job) -> None:
    """A request whose job.submitted the broker would refuse is INVALID_ARGUMENT, naming the
    field that takes the most room (the proto limits keep this from happening; this is the
    check that it holds)."""
    size = event.ByteSize()
    if size <= MAX_EVENT_BYTES:
        return
    sizes = {
        "job.prompt": len(spec.prompt.encode()),
        "job.inputs": sum(i.ByteSize() for i in spec.inputs),
        "job.params": spec.params.ByteSize(),
    }
    largest = max(sizes, key=lambda name: sizes[name])
    why = f"the job would make a {size}-byte event; the limit is {MAX_EVENT_BYTES}"
    raise InvalidArgument(why, [FieldViolation(largest, why, "TOO_LARGE")], reason="TOO_LARGE")
