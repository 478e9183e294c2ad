"""`ProviderService`: the only code that calls a provider.

Each step is a short transaction, and no transaction is open while a provider is called:
1. dispatch: claim waiting submissions fairly, reserve an account's slot and credits, move
   to SUBMITTING under a lease; commit; call `execute`; record the answer (RUNNING with
   generation.started, or what `domain.judge` says for an error);
2. poll: lease due RUNNING submissions; commit; call `check_status`; record the answer
   (next poll, generation.completed, or failure/retry), settling the account;
3. recover: a SUBMITTING row whose lease ran out belonged to a replica that died during the
   call; its outcome is unknown, so it is treated as a transient failure (a new attempt).
Every state change that ends an attempt gives its account slot back exactly once: the
transaction that makes the change checks the state it expected under the row lock.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
from google.protobuf.message import DecodeError
from sqlalchemy import Row, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixsim.events.v1 import events_pb2
from pixsim_common import topics
from pixsim_common.db import UnitOfWork, any_of
from pixsim_common.outbox import SetAside, enqueue
from pixsim_common.tracing import continued
from pixsim_provider_gateway import metrics
from pixsim_provider_gateway import repository as repo
from pixsim_provider_gateway.crypto import CredentialCipher
from pixsim_provider_gateway.domain import (
    AccountEffect,
    AccountState,
    AttemptAction,
    RetryPolicy,
    SubmissionState,
    judge,
    poll_delay,
    retry_delay,
    unusable_output,
    unusable_task_id,
)
from pixsim_provider_gateway.events import (
    SOURCE,
    generation_completed,
    generation_failed,
    generation_started,
    request_of,
)
from pixsim_provider_gateway.inputs import InputFiles
from pixsim_provider_gateway.providers.base import (
    Credentials,
    ErrorKind,
    GenerationResult,
    Provider,
    ProviderError,
    ProviderStatusResult,
    TaskState,
    UnsupportedOperation,
)
from pixsim_provider_gateway.providers.registry import ProviderRegistry, UnknownProvider

log = structlog.get_logger("pixsim.gateway")
# The error message of an attempt ended by recovery: its outcome at the provider is unknown.
REPLICA_STOPPED = "the replica submitting this attempt stopped"
START_DEADLINE_EXCEEDED = "START_DEADLINE_EXCEEDED"


@dataclass(frozen=True)
class Prepared:
    """A submission moved to SUBMITTING on a reserved account, ready to send."""

    submission: Row[Any]
    provider: Provider
    payload: dict[str, Any]
    account_id: str
    reserved: int
    credentials: Credentials


class ProviderService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        registry: ProviderRegistry,
        cipher: CredentialCipher,
        policy: RetryPolicy,
        *,
        replica_id: str,
        submit_lease: timedelta,
        poll_lease: timedelta,
        inputs: InputFiles | None = None,
    ) -> None:
        self._inputs = inputs or InputFiles(None, None)
        self._sessions = sessions
        self._registry = registry
        self._cipher = cipher
        self._policy = policy
        self._replica = replica_id
        self._submit_lease = submit_lease
        self._poll_lease = poll_lease

    # ---- dispatch ----------------------------------------------------------------------

    async def dispatch_once(self, limit: int) -> int:
        """Send what can be sent now; how many submissions went to a provider."""
        ready: list[Prepared] = []
        async with UnitOfWork(self._sessions) as uow:
            for row in await repo.claim_waiting(uow.session, limit):
                with continued(row.trace_headers, "provider prepare"):
                    prepared = await self._prepare(uow.session, row)
                if prepared is not None:
                    ready.append(prepared)
            await uow.commit()
        await asyncio.gather(*(self._submit(p) for p in ready))
        return len(ready)

    async def _prepare(self, session: AsyncSession, row: Row[Any]) -> Prepared | None:
        try:
            provider = self._registry.get(row.provider_id)
            payload = row.payload or provider.map_parameters(row.operation_type, request_of(row))
        except (UnknownProvider, UnsupportedOperation, ProviderError) as error:
            kind = ErrorKind.INVALID_PARAMETERS
            message = (
                f"unknown provider {row.provider_id!r}"
                if isinstance(error, UnknownProvider)
                else getattr(error, "message", str(error))
            )
            await self._fail(session, row, kind.value, message)
            return None
        cost = provider.estimate_cost(payload)
        account = await repo.reserve_account(session, row.provider_id, cost)
        if account is None:
            # Its turn comes again when a slot frees; meanwhile others are looked at.
            await session.execute(
                update(repo.submissions)
                .where(repo.submissions.c.id == row.id)
                .values(available_at=func.now() + timedelta(milliseconds=200), payload=payload)
            )
            return None
        await session.execute(
            update(repo.submissions)
            .where(repo.submissions.c.id == row.id)
            .values(
                state=SubmissionState.SUBMITTING.value,
                account_id=account.id,
                reserved_credits=cost,
                payload=payload,
                submit_time=func.now(),
                lease_owner=self._replica,
                lease_until=func.now() + self._submit_lease,
            )
        )
        credentials = self._cipher.decrypt(
            account.credentials_key_id, account.credentials, account.id
        )
        return Prepared(
            row, provider, payload, account.id, cost, Credentials(credentials.get("api_key", ""))
        )

    async def _submit(self, prepared: Prepared) -> None:
        with continued(prepared.submission.trace_headers, "provider submit"):
            await self._submit_traced(prepared)

    async def _submit_traced(self, prepared: Prepared) -> None:
        row = prepared.submission
        started = time.perf_counter()
        try:
            # Inputs are read now, at dispatch: a presigned URL minted now, or the bytes.
            files = await self._inputs.of(row.user_id, request_of(row).inputs)
            result = await prepared.provider.execute(
                row.operation_type, prepared.credentials, prepared.payload, files
            )
        except ProviderError as error:
            metrics.observe_call(row.provider_id, "submit", started, error.kind.value)
            await self._record_submit_error(prepared, error)
            return
        except Exception as error:  # a bug in an adapter must not strand the attempt
            log.exception("adapter failed", provider=row.provider_id, submission=row.id)
            metrics.observe_call(row.provider_id, "submit", started, "BUG")
            await self._record_submit_error(
                prepared, ProviderError(ErrorKind.TRANSIENT, f"adapter error: {error!r}")
            )
            return
        metrics.observe_call(row.provider_id, "submit", started, "OK")
        unusable = unusable_task_id(result.provider_job_id)
        if unusable is not None:  # we could never poll it: as if the call had failed
            await self._record_submit_error(prepared, ProviderError(ErrorKind.TRANSIENT, unusable))
            return
        await self._record_accepted(prepared, result)

    async def _record_accepted(self, prepared: Prepared, result: GenerationResult) -> None:
        async with UnitOfWork(self._sessions) as uow:
            row = await repo.get_submission(uow.session, prepared.submission.id, lock=True)
            assert row is not None
            if row.state != SubmissionState.SUBMITTING.value:
                # Cancelled while we were calling: the slot is already back; cancel there too.
                await uow.session.execute(
                    update(repo.submissions)
                    .where(repo.submissions.c.id == row.id)
                    .values(
                        provider_job_id=result.provider_job_id,
                        provider_cancel_pending=prepared.provider.capabilities().supports_cancel,
                        lease_owner=None,
                        lease_until=None,
                    )
                )
                await uow.commit()
                return
            await uow.session.execute(
                update(repo.submissions)
                .where(repo.submissions.c.id == row.id)
                .values(
                    state=SubmissionState.RUNNING.value,
                    provider_job_id=result.provider_job_id,
                    response={"estimated_cost": result.estimated_cost},
                    next_poll_at=func.now() + timedelta(seconds=poll_delay(0, self._policy)),
                    # The gateway's own bound, or the job's run deadline when that is sooner.
                    deadline_at=func.least(
                        func.now() + timedelta(seconds=self._policy.deadline_seconds),
                        row.run_deadline_at,
                    ),
                    lease_owner=None,
                    lease_until=None,
                )
            )
            await enqueue(
                uow.session,
                topics.GENERATION_STARTED,
                row.job_id,
                generation_started(row, result.provider_job_id),
                source=SOURCE,
            )
            await uow.commit()

    async def _record_submit_error(self, prepared: Prepared, error: ProviderError) -> None:
        async with UnitOfWork(self._sessions) as uow:
            row = await repo.get_submission(uow.session, prepared.submission.id, lock=True)
            assert row is not None
            if row.state != SubmissionState.SUBMITTING.value:
                await uow.commit()
                return
            # Nothing ran at the provider: the reservation comes back whole.
            await repo.release_account(uow.session, prepared.account_id, prepared.reserved, 0)
            verdict = judge(
                error.kind,
                retry_attempt=row.retry_attempt,
                retry_after=error.retry_after,
                policy=self._policy,
            )
            await self._apply_account_effect(
                uow.session, prepared.account_id, verdict.account, verdict.cooldown_seconds
            )
            log.info(
                "provider refused a submission",
                submission=row.id,
                kind=error.kind.value,
                action=verdict.action.value,
                provider_code=error.provider_code,
            )
            if verdict.action is AttemptAction.REQUEUE:
                await uow.session.execute(
                    update(repo.submissions)
                    .where(repo.submissions.c.id == row.id)
                    .values(
                        state=SubmissionState.WAITING.value,
                        account_id=None,
                        reserved_credits=0,
                        lease_owner=None,
                        lease_until=None,
                        available_at=func.now(),
                    )
                )
            else:
                await self._end_attempt(uow.session, row, error, verdict.action, verdict.error_code)
            await uow.commit()

    async def _apply_account_effect(
        self, session: AsyncSession, account_id: str, effect: AccountEffect, cooldown: float
    ) -> None:
        if effect is AccountEffect.COOLDOWN:
            await repo.mark_account(session, account_id, cooldown=timedelta(seconds=cooldown))
        elif effect is AccountEffect.EXHAUSTED:
            await repo.mark_account(session, account_id, state=AccountState.EXHAUSTED)
        elif effect is AccountEffect.INVALID:
            await repo.mark_account(session, account_id, state=AccountState.INVALID)

    async def _end_attempt(
        self,
        session: AsyncSession,
        row: Row[Any],
        error: ProviderError,
        action: AttemptAction,
        error_code: str,
    ) -> None:
        """This attempt failed: link a new one after a backoff, or fail the job."""
        await session.execute(
            update(repo.submissions)
            .where(repo.submissions.c.id == row.id)
            .values(
                state=SubmissionState.FAILED.value,
                error_code=error.kind.value,
                error_message=error.message[:2000],
                complete_time=func.now(),
                lease_owner=None,
                lease_until=None,
            )
        )
        if action is AttemptAction.RETRY:
            attempt = row.retry_attempt + 1
            await session.execute(
                insert(repo.submissions).values(
                    id=repo.new_id(),
                    job_id=row.job_id,
                    user_id=row.user_id,
                    provider_id=row.provider_id,
                    operation_type=row.operation_type,
                    request=row.request,
                    payload=row.payload,
                    job_retry_count=row.job_retry_count,
                    retry_attempt=attempt,
                    trace_headers=row.trace_headers,
                    start_deadline_at=row.start_deadline_at,
                    run_deadline_at=row.run_deadline_at,
                    priority=row.priority,
                    turn_at=row.turn_at,  # a retry keeps its job's place in line
                    previous_submission_id=row.id,
                    state=SubmissionState.WAITING.value,
                    available_at=func.now() + timedelta(seconds=retry_delay(attempt, self._policy)),
                )
            )
            return
        await self._publish_failure(session, row, error_code or error.kind.value, error.message)

    async def _fail(self, session: AsyncSession, row: Row[Any], code: str, message: str) -> None:
        await session.execute(
            update(repo.submissions)
            .where(repo.submissions.c.id == row.id)
            .values(
                state=SubmissionState.FAILED.value,
                error_code=code,
                error_message=message,
                complete_time=func.now(),
            )
        )
        await self._publish_failure(session, row, code, message)

    async def _publish_failure(
        self, session: AsyncSession, row: Row[Any], code: str, message: str
    ) -> None:
        metrics.JOBS_FAILED.labels(row.provider_id, code).inc()
        await enqueue(
            session,
            topics.GENERATION_FAILED,
            row.job_id,
            generation_failed(row, code, message),
            source=SOURCE,
        )

    # ---- polling -----------------------------------------------------------------------

    async def poll_once(self, limit: int) -> int:
        async with UnitOfWork(self._sessions) as uow:
            rows = await repo.claim_for_polling(uow.session, self._replica, self._poll_lease, limit)
            credentials = {
                account.id: self._cipher.decrypt(
                    account.credentials_key_id, account.credentials, account.id
                )
                for account in (
                    await uow.session.execute(
                        select(repo.accounts).where(
                            any_of(repo.accounts.c.id, {r.account_id for r in rows if r.account_id})
                        )
                    )
                ).all()
            }
            await uow.commit()
        await asyncio.gather(
            *(
                self._poll(row, Credentials(credentials.get(row.account_id, {}).get("api_key", "")))
                for row in rows
            )
        )
        return len(rows)

    async def _poll(self, row: Row[Any], credentials: Credentials) -> None:
        with continued(row.trace_headers, "provider poll"):
            await self._poll_traced(row, credentials)

    async def _poll_traced(self, row: Row[Any], credentials: Credentials) -> None:
        provider = self._registry.get(row.provider_id)
        if row.provider_cancel_pending:
            await self._cancel_at_provider(provider, row, credentials)
            return
        started = time.perf_counter()
        try:
            status = await provider.check_status(credentials, row.provider_job_id)
        except ProviderError as error:
            metrics.observe_call(row.provider_id, "status", started, error.kind.value)
            status = ProviderStatusResult(TaskState.RUNNING)  # unknown: look again later
        else:
            metrics.observe_call(row.provider_id, "status", started, "OK")
        async with UnitOfWork(self._sessions) as uow:
            current = await repo.get_submission(uow.session, row.id, lock=True)
            if (
                current is None
                or current.state != SubmissionState.RUNNING.value
                or current.lease_owner != self._replica
            ):
                await uow.commit()  # cancelled meanwhile, or our lease was taken over
                return
            await self._record_status(uow.session, current, status, provider)
            await uow.commit()

    async def _record_status(
        self, session: AsyncSession, row: Row[Any], status: ProviderStatusResult, provider: Provider
    ) -> None:
        if status.state in (TaskState.PENDING, TaskState.RUNNING):
            if await repo.now(session) < row.deadline_at:
                await session.execute(
                    update(repo.submissions)
                    .where(repo.submissions.c.id == row.id)
                    .values(
                        poll_count=row.poll_count + 1,
                        progress=status.progress,
                        provider_state=status.provider_state[:64],
                        provider_queue_position=status.queue_position,
                        lease_owner=None,
                        lease_until=None,
                        next_poll_at=func.now()
                        + timedelta(seconds=poll_delay(row.poll_count + 1, self._policy)),
                    )
                )
                return
            # Past its deadline: stop it where we can, and fail the job.
            await repo.release_account(session, row.account_id, row.reserved_credits)
            await session.execute(
                update(repo.submissions)
                .where(repo.submissions.c.id == row.id)
                .values(
                    state=SubmissionState.FAILED.value,
                    error_code="DEADLINE_EXCEEDED",
                    error_message="the provider did not finish in time",
                    complete_time=func.now(),
                    lease_owner=None,
                    lease_until=None,
                    provider_cancel_pending=provider.capabilities().supports_cancel,
                )
            )
            await self._publish_failure(
                session, row, "DEADLINE_EXCEEDED", "the provider did not finish in time"
            )
            return
        await repo.release_account(session, row.account_id, row.reserved_credits, status.cost)
        unusable = unusable_output(status.outputs[0]) if status.outputs else None
        if status.state is TaskState.SUCCEEDED and unusable is not None:
            status = ProviderStatusResult(
                TaskState.FAILED, error=ProviderError(ErrorKind.TRANSIENT, unusable)
            )
        if status.state is TaskState.SUCCEEDED and status.outputs:
            await session.execute(
                update(repo.submissions)
                .where(repo.submissions.c.id == row.id)
                .values(
                    state=SubmissionState.SUCCEEDED.value,
                    complete_time=func.now(),
                    lease_owner=None,
                    lease_until=None,
                    response={"outputs": [vars_of(o) for o in status.outputs], "cost": status.cost},
                )
            )
            await enqueue(
                session,
                topics.GENERATION_COMPLETED,
                row.job_id,
                generation_completed(row, status.outputs[0]),
                source=SOURCE,
            )
            return
        error = status.error or ProviderError(
            ErrorKind.TRANSIENT, "the provider ended the task without a result"
        )
        verdict = judge(
            error.kind,
            retry_attempt=row.retry_attempt,
            retry_after=error.retry_after,
            policy=self._policy,
            accepted=True,
        )
        await self._end_attempt(session, row, error, verdict.action, verdict.error_code)

    async def _cancel_at_provider(
        self, provider: Provider, row: Row[Any], credentials: Credentials
    ) -> None:
        try:
            await provider.cancel(credentials, row.provider_job_id)
        except (ProviderError, NotImplementedError) as error:
            log.info("provider cancel not done", submission=row.id, error=repr(error))
        async with UnitOfWork(self._sessions) as uow:
            await uow.session.execute(
                update(repo.submissions)
                .where(repo.submissions.c.id == row.id)
                .values(provider_cancel_pending=False, lease_owner=None, lease_until=None)
            )
            await uow.commit()

    # ---- events that can never leave ---------------------------------------------------

    async def event_set_aside(self, session: AsyncSession, row: SetAside) -> None:
        """A generation.completed the relay could never publish (refused by the broker): its
        job would wait forever, so the attempt fails and says so in a generation.failed."""
        if row.topic != topics.GENERATION_COMPLETED.name:
            return
        try:
            event = events_pb2.GenerationCompleted.FromString(row.payload)
        except DecodeError:
            return
        submission = await repo.get_submission(session, event.submission_id, lock=True)
        if submission is None:
            return
        message = f"the result could not be announced: {row.error}"
        await repo.update_submission(
            session,
            submission.id,
            state=SubmissionState.FAILED.value,
            error_code="UNPUBLISHABLE",
            error_message=message[:2000],
        )
        await self._publish_failure(session, submission, "UNPUBLISHABLE", message)

    # ---- deadlines ---------------------------------------------------------------------

    async def expire_once(self, limit: int = 100) -> int:
        """Waiting submissions past their job's deadline end, and their jobs with them:
        unsent by the start deadline is START_DEADLINE_EXCEEDED (nothing reached a provider,
        nothing was reserved); past the run deadline between attempts, DEADLINE_EXCEEDED.
        Dispatch never claims such a row, so this sweep is the only way out of WAITING."""
        async with UnitOfWork(self._sessions) as uow:
            rows = await repo.passed_deadline(uow.session, limit)
            for row in rows:
                if row.why == "START":
                    code, message = START_DEADLINE_EXCEEDED, "not sent by its start deadline"
                else:
                    code, message = "DEADLINE_EXCEEDED", "the job's run deadline passed"
                await self._fail(uow.session, row, code, message)
            await uow.commit()
        return len(rows)

    # ---- recovery ----------------------------------------------------------------------

    async def recover_once(self, limit: int = 50) -> int:
        """Attempts whose replica died mid-call: the slot is settled as spent (the provider
        may have charged) and a new attempt follows."""
        async with UnitOfWork(self._sessions) as uow:
            rows = await repo.expired_submitting(uow.session, limit)
            for row in rows:
                await repo.release_account(uow.session, row.account_id, row.reserved_credits)
                error = ProviderError(ErrorKind.TRANSIENT, REPLICA_STOPPED)
                verdict = judge(
                    error.kind,
                    retry_attempt=row.retry_attempt,
                    retry_after=None,
                    policy=self._policy,
                )
                await self._end_attempt(uow.session, row, error, verdict.action, verdict.error_code)
            await uow.commit()
        return len(rows)


def vars_of(output: Any) -> dict[str, Any]:
    return {name: getattr(output, name) for name in output.__slots__}
