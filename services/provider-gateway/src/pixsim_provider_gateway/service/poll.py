"""Poll: running attempts due a status check are leased to this replica, checked at their
provider (no transaction open meanwhile), and what the provider said is recorded under the
row lock, if the lease is still ours."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from datetime import timedelta

import structlog

from pixsim_common.tracing import continued
from pixsim_provider_gateway import metrics
from pixsim_provider_gateway.crypto import CredentialCipher
from pixsim_provider_gateway.domain import (
    NOT_BILLED,
    ErrorKind,
    RetryPolicy,
    Submission,
    SubmissionState,
    assumed,
    next_poll_delay,
    poll_delay,
    unusable_output,
)
from pixsim_provider_gateway.providers.base import (
    Credentials,
    Provider,
    ProviderError,
    ProviderStatusResult,
    TaskState,
    TaskUnknown,
)
from pixsim_provider_gateway.providers.registry import ProviderRegistry
from pixsim_provider_gateway.service.outcomes import settle_failure
from pixsim_provider_gateway.service.timing import Timing
from pixsim_provider_gateway.service.units import Unit
from pixsim_provider_gateway.settlement import settle

log = structlog.get_logger("pixsim.gateway")


class Poll:
    def __init__(
        self,
        units: Callable[[], Unit],
        registry: ProviderRegistry,
        cipher: CredentialCipher,
        policy: RetryPolicy,
        replica: str,
        lease: timedelta,
        timing: Timing,
    ) -> None:
        self._units, self._registry, self._cipher, self._policy = units, registry, cipher, policy
        self._replica, self._lease, self._timing = replica, lease, timing

    async def once(self, limit: int) -> int:
        async with self._units() as unit:
            due = await unit.submissions.claim_for_polling(self._replica, self._lease, limit)
            sealed = await unit.accounts.sealed_credentials(
                {a.account_id for a in due if a.account_id}
            )
            await unit.commit()
        api_keys = {row.id: self._cipher.api_key_of(row) for row in sealed}
        await asyncio.gather(
            *(
                self._poll(attempt, Credentials(api_keys.get(attempt.account_id, "")))
                for attempt in due
            )
        )
        return len(due)

    async def _poll(self, attempt: Submission, credentials: Credentials) -> None:
        with continued(attempt.trace_headers, "provider poll"):
            await self._poll_traced(attempt, credentials)

    async def _poll_traced(self, leased: Submission, credentials: Credentials) -> None:
        provider = self._registry.get(leased.provider_id)
        if leased.provider_cancel_pending:
            await self._cancel_at_provider(provider, leased, credentials)
            return
        started = time.perf_counter()
        unknown = False
        try:
            status = await provider.check_status(credentials, leased.provider_job_id)
        except TaskUnknown as error:
            metrics.observe_call(leased.provider_id, "status", started, "UNKNOWN_TASK")
            status, unknown = ProviderStatusResult(TaskState.RUNNING, error=error), True
        except ProviderError as error:
            metrics.observe_call(leased.provider_id, "status", started, error.kind.value)
            status = ProviderStatusResult(TaskState.RUNNING)  # unknown: look again later
        else:
            metrics.observe_call(leased.provider_id, "status", started, "OK")
        async with self._units() as unit:
            attempt = await unit.submissions.get(leased.id, lock=True)
            if (
                attempt is None
                or attempt.state is not SubmissionState.RUNNING
                or attempt.lease_owner != self._replica
            ):
                await unit.commit()  # cancelled meanwhile, or our lease was taken over
                return
            if unknown:
                await record_unknown(unit, attempt, status, self._policy)
            else:
                await record_status(unit, attempt, status, provider, self._policy, self._timing)
            await unit.commit()

    async def _cancel_at_provider(
        self, provider: Provider, leased: Submission, credentials: Credentials
    ) -> None:
        try:
            await provider.cancel(credentials, leased.provider_job_id)
        except (ProviderError, NotImplementedError) as error:
            log.info("provider cancel not done", submission=leased.id, error=repr(error))
        async with self._units() as unit:
            attempt = await unit.submissions.get(leased.id, lock=True)
            if attempt is not None:
                attempt.cancel_sent()
                await unit.submissions.save(attempt)
            await unit.commit()


async def record_unknown(
    unit: Unit, attempt: Submission, status: ProviderStatusResult, policy: RetryPolicy
) -> None:
    """The provider has no task by the attempt's id. Said `unknown_task_polls` times in a
    row, nothing runs there and nothing is billed: the reservation comes back whole and the
    attempt fails as a transient failure (a retry follows); before that, it is looked at
    again, in case the provider was only slow to know the task it accepted."""
    if (attempt.record.get("unknown_polls") or 0) + 1 < policy.unknown_task_polls:
        attempt.polled_unknown(timedelta(seconds=poll_delay(attempt.poll_count + 1, policy)))
        await unit.submissions.save(attempt)
        return
    assert status.error is not None
    await settle(unit.submissions, unit.accounts, attempt, NOT_BILLED)
    await settle_failure(unit, attempt, status.error, policy, accepted=True)


async def record_status(
    unit: Unit,
    attempt: Submission,
    status: ProviderStatusResult,
    provider: Provider,
    policy: RetryPolicy,
    timing: Timing | None = None,
) -> None:
    """What a running attempt's provider said of it (a status check, or a callback), under
    the attempt's row lock: look again later (timed to the task's expected end, where
    `timing` knows it or the provider reports progress), its deadline passed, or its end,
    settled."""
    if status.state in (TaskState.PENDING, TaskState.RUNNING):
        now = await unit.submissions.now()
        if now < attempt.deadline_at:
            next_poll = next_poll_delay(
                attempt.poll_count + 1,
                policy,
                elapsed=attempt.seconds_since_sent(now),
                expected=timing.expected(attempt) if timing else None,
                reports_progress=provider.capabilities().reports_progress,
                progress=status.progress,
            )
            attempt.polled(
                status.progress,
                status.provider_state,
                status.queue_position,
                timedelta(seconds=next_poll),
            )
            await unit.submissions.save(attempt)
            return
        can_cancel = provider.capabilities().supports_cancel
        if policy.reconcile_seconds > 0 and attempt.may_reconcile(now, can_cancel):
            # It runs on, and is billed, whatever we do: its outcome is still the job's.
            attempt.reconcile(
                timedelta(seconds=policy.reconcile_seconds),
                timedelta(seconds=policy.poll_cap_seconds),
            )
            await unit.submissions.save(attempt)
            metrics.RECONCILING.labels(attempt.provider_id).inc()
            return
        # Past its deadline: stop it where we can, and fail the job. It may have run.
        await settle(unit.submissions, unit.accounts, attempt, assumed(attempt.reserved_credits))
        attempt.timed_out(can_cancel)
        await unit.submissions.save(attempt)
        return
    # Settled by what the provider bills for this end, before a result we cannot use turns
    # it into a failure of ours (the provider charged for it all the same).
    await settle(
        unit.submissions, unit.accounts, attempt, provider.charge(status, attempt.reserved_credits)
    )
    unusable = unusable_output(status.outputs[0].uri) if status.outputs else None
    if status.state is TaskState.SUCCEEDED and unusable is not None:
        status = ProviderStatusResult(
            TaskState.FAILED, error=ProviderError(ErrorKind.TRANSIENT, unusable)
        )
    if status.state is TaskState.SUCCEEDED and status.outputs:
        outputs = [dataclasses.asdict(o) for o in status.outputs]
        attempt.succeeded(outputs, status.outputs[0], status.cost)
        await unit.submissions.save(attempt)
        return
    error = status.error or ProviderError(
        ErrorKind.TRANSIENT, "the provider ended the task without a result"
    )
    await settle_failure(unit, attempt, error, policy, accepted=True)
