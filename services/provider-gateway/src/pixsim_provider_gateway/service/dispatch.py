"""Dispatch: waiting attempts are claimed fairly, reserved on an account and sent; the
provider's answer is recorded in a transaction of its own (no transaction is open during
the call)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import structlog

from pixsim_common.tracing import continued
from pixsim_provider_gateway import metrics
from pixsim_provider_gateway.crypto import CredentialCipher
from pixsim_provider_gateway.domain import (
    NOT_BILLED,
    CircuitPolicy,
    ErrorKind,
    RetryPolicy,
    Submission,
    SubmissionState,
    first_poll_delay,
    unusable_task_id,
)
from pixsim_provider_gateway.events import request_of
from pixsim_provider_gateway.inputs import InputFiles
from pixsim_provider_gateway.providers.base import (
    Credentials,
    GenerationResult,
    Provider,
    ProviderError,
    UnsupportedOperation,
)
from pixsim_provider_gateway.providers.registry import ProviderRegistry, UnknownProvider
from pixsim_provider_gateway.service import circuits
from pixsim_provider_gateway.service.outcomes import settle_failure
from pixsim_provider_gateway.service.timing import Timing
from pixsim_provider_gateway.service.units import Unit

log = structlog.get_logger("pixsim.gateway")
# How soon a submission no account could take is looked at again (a slot frees sooner).
NO_ACCOUNT_DELAY = timedelta(milliseconds=200)
# How soon an attempt whose inputs could not be read goes again.
INPUTS_UNREADABLE_DELAY = timedelta(seconds=2)
# After a round that sent nothing, the next comes when the soonest waiting attempt's turn
# does, within these bounds: NOTIFY wakes the loop at once for new work and freed slots, so
# with nothing waiting the round is only a safety net; waiting attempts that are due but
# found no slot are looked at again soon (an account's cooldown or a circuit ends by time).
IDLE_NOTHING_WAITING = 1.0
IDLE_WAITING_FOR_A_SLOT = 0.2


@dataclass(frozen=True)
class Prepared:
    """A submission moved to SUBMITTING on a reserved account, ready to send."""

    attempt: Submission
    provider: Provider
    credentials: Credentials


def idle_after(next_waiting_in: float | None) -> float:
    """How long to sleep after a round that sent nothing, given when the soonest waiting
    attempt's turn comes (None: nothing waits; negative: due, but no slot took it)."""
    if next_waiting_in is None:
        return IDLE_NOTHING_WAITING
    if next_waiting_in <= 0:
        return IDLE_WAITING_FOR_A_SLOT
    return min(max(next_waiting_in, 0.005), IDLE_NOTHING_WAITING)


class Dispatch:
    def __init__(
        self,
        units: Callable[[], Unit],
        registry: ProviderRegistry,
        cipher: CredentialCipher,
        policy: RetryPolicy,
        replica: str,
        lease: timedelta,
        inputs: InputFiles,
        circuit_policy: CircuitPolicy,
        timing: Timing,
    ) -> None:
        self._units, self._registry, self._cipher, self._policy = units, registry, cipher, policy
        self._replica, self._lease, self._inputs = replica, lease, inputs
        self._circuits, self._timing = circuit_policy, timing
        self._idle = IDLE_WAITING_FOR_A_SLOT

    def idle(self) -> float:
        """Seconds the dispatch loop sleeps (unless woken) after a round that sent nothing."""
        return self._idle

    async def once(self, limit: int) -> int:
        """Send what can be sent now; how many submissions went to a provider."""
        ready: list[Prepared] = []
        async with self._units() as unit:
            for attempt in await unit.submissions.claim_waiting(limit):
                with continued(attempt.trace_headers, "provider prepare"):
                    prepared = await self._prepare(unit, attempt)
                if prepared is not None:
                    ready.append(prepared)
            if not ready:  # the loop sleeps: until the soonest turn, as put back just now
                self._idle = idle_after(await unit.submissions.next_waiting_in())
            await unit.commit()
        await asyncio.gather(*(self._submit(p) for p in ready))
        return len(ready)

    async def _prepare(self, unit: Unit, attempt: Submission) -> Prepared | None:
        try:
            provider = self._registry.get(attempt.provider_id)
            payload = attempt.payload or provider.map_parameters(
                attempt.operation_type, request_of(attempt)
            )
        except (UnknownProvider, UnsupportedOperation, ProviderError) as error:
            message = (
                f"unknown provider {attempt.provider_id!r}"
                if isinstance(error, UnknownProvider)
                else getattr(error, "message", str(error))
            )
            attempt.settle(NOT_BILLED)  # nothing was reserved or sent
            attempt.fail(ErrorKind.INVALID_PARAMETERS.value, message)
            await unit.submissions.save(attempt)
            return None
        probe = bool(attempt.record.get("probe"))
        if probe and not await circuits.admit_probe(unit, attempt.provider_id, self._lease):
            attempt.wait_for_account(payload, NO_ACCOUNT_DELAY)  # another replica probes
            await unit.submissions.save(attempt)
            return None
        cost = provider.estimate_cost(payload)
        account = await unit.accounts.reserve(attempt.provider_id, cost)
        if account is None:
            # Its turn comes again when a slot frees; meanwhile others are looked at.
            if probe:
                await circuits.withdraw_probe(unit, attempt.provider_id)
            attempt.wait_for_account(payload, NO_ACCOUNT_DELAY)
            await unit.submissions.save(attempt)
            return None
        attempt.send(
            account.id,
            cost,
            payload,
            self._replica,
            self._lease,
            self._registry.credit_price_micros(attempt.provider_id),
        )
        await unit.submissions.save(attempt)
        return Prepared(attempt, provider, Credentials(self._cipher.api_key_of(account)))

    async def _submit(self, prepared: Prepared) -> None:
        with continued(prepared.attempt.trace_headers, "provider submit"):
            await self._submit_traced(prepared)

    async def _submit_traced(self, prepared: Prepared) -> None:
        attempt = prepared.attempt
        started = time.perf_counter()
        try:
            # Inputs are read now, at dispatch: a presigned URL minted now, or the bytes.
            files = await self._inputs.of(attempt.user_id, request_of(attempt).inputs)
        except ProviderError as error:
            await self._record_unreadable_inputs(prepared, error)
            return
        try:
            result = await prepared.provider.execute(
                attempt.operation_type, prepared.credentials, attempt.payload, files
            )
        except ProviderError as error:
            metrics.observe_call(attempt.provider_id, "submit", started, error.kind.value)
            await self._record_refusal(prepared, error)
            return
        except Exception as error:  # a bug in an adapter must not strand the attempt
            log.exception("adapter failed", provider=attempt.provider_id, submission=attempt.id)
            metrics.observe_call(attempt.provider_id, "submit", started, "BUG")
            await self._record_refusal(
                prepared, ProviderError(ErrorKind.TRANSIENT, f"adapter error: {error!r}")
            )
            return
        metrics.observe_call(attempt.provider_id, "submit", started, "OK")
        unusable = unusable_task_id(result.provider_job_id)
        if unusable is not None:  # we could never poll it: as if the call had failed
            await self._record_refusal(prepared, ProviderError(ErrorKind.TRANSIENT, unusable))
            return
        await self._record_accepted(prepared, result)

    async def _record_accepted(self, prepared: Prepared, result: GenerationResult) -> None:
        async with self._units() as unit:
            attempt = await unit.submissions.get(prepared.attempt.id, lock=True)
            assert attempt is not None
            if attempt.state is not SubmissionState.SUBMITTING:
                # Cancelled while we were calling: the slot is already back; cancel there too.
                attempt.accepted_after_cancel(
                    result.provider_job_id, prepared.provider.capabilities().supports_cancel
                )
            else:
                # Timed from the send, as the expected durations are: timed from acceptance,
                # a first check that found the task done pushed the estimate up by the
                # submit call's time, and the next first check later again.
                attempt.accepted(
                    result.provider_job_id,
                    result.estimated_cost,
                    first_poll=timedelta(
                        seconds=first_poll_delay(
                            self._policy,
                            callbacks=self._registry.callbacks(attempt.provider_id) is not None,
                            expected=self._timing.expected(attempt),
                            reports_progress=prepared.provider.capabilities().reports_progress,
                            elapsed=attempt.seconds_since_sent(await unit.submissions.now()),
                        )
                    ),
                    bound=timedelta(seconds=self._policy.deadline_seconds),
                )
            await unit.submissions.save(attempt)
            await circuits.record_call(
                unit, attempt.provider_id, attempt.account_id, None, self._circuits
            )
            await unit.commit()
        # One line per task a provider took, under the job's trace: the gateway's part of a
        # job is findable in its log (the HTTP clients' own request lines are off, decision 121).
        log.info(
            "provider accepted a submission",
            submission=attempt.id,
            job=attempt.job_id,
            provider=attempt.provider_id,
            task=result.provider_job_id,
        )
        self._timing.accepted.set()

    async def _unsent(self, unit: Unit, prepared: Prepared) -> Submission | None:
        """The attempt again, locked, with its reservation back whole (nothing ran at the
        provider), if it is still SUBMITTING; None when a cancellation or recovery ended it
        meanwhile (they gave the slot back). Should it end now, it cost nothing."""
        attempt = await unit.submissions.get(prepared.attempt.id, lock=True)
        assert attempt is not None
        if attempt.state is not SubmissionState.SUBMITTING:
            return None
        await unit.accounts.release(attempt.account_id, attempt.reserved_credits, 0)
        return attempt

    async def _record_unreadable_inputs(self, prepared: Prepared, error: ProviderError) -> None:
        """The inputs could not be read (the asset service away, or the asset gone): not
        the provider's failure, so no attempt or circuit counts it. The same attempt waits
        and goes again, or the job fails where the input will never be readable."""
        async with self._units() as unit:
            attempt = await self._unsent(unit, prepared)
            if attempt is None:
                await unit.commit()
                return
            log.warning("inputs unreadable", submission=attempt.id, error=error.message)
            if error.kind is ErrorKind.TRANSIENT:
                attempt.requeue(after=INPUTS_UNREADABLE_DELAY)
            else:
                attempt.settle(NOT_BILLED)
                attempt.fail(error.kind.value, error.message, lease_owner=None, lease_until=None)
            await unit.submissions.save(attempt)
            await unit.commit()

    async def _record_refusal(self, prepared: Prepared, error: ProviderError) -> None:
        async with self._units() as unit:
            attempt = await self._unsent(unit, prepared)
            if attempt is None:
                await unit.commit()
                return
            await circuits.record_call(
                unit, attempt.provider_id, attempt.account_id, error, self._circuits
            )
            verdict = await settle_failure(
                unit, attempt, error, self._policy, unsent_charge=NOT_BILLED
            )
            log.info(
                "provider refused a submission",
                submission=attempt.id,
                kind=error.kind.value,
                action=verdict.action.value,
                provider_code=error.provider_code,
            )
            await unit.commit()
