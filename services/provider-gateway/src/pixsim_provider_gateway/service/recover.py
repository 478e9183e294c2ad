"""What no provider answer drives: attempts whose replica died mid-call, attempts whose job's
deadline passed while they waited, and results that could never be announced."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import structlog
from google.protobuf.message import DecodeError
from sqlalchemy.ext.asyncio import AsyncSession

from pixsim.events.v1 import events_pb2
from pixsim_common import topics
from pixsim_common.outbox import SetAside
from pixsim_provider_gateway import repository as repo
from pixsim_provider_gateway.domain import NOT_BILLED, ErrorKind, RetryPolicy, assumed
from pixsim_provider_gateway.events import outgoing
from pixsim_provider_gateway.providers.base import ProviderError
from pixsim_provider_gateway.service.outcomes import settle_failure
from pixsim_provider_gateway.service.units import Unit
from pixsim_provider_gateway.settlement import settle

# The error message of an attempt ended by recovery: its outcome at the provider is unknown.
REPLICA_STOPPED = "the replica submitting this attempt stopped"
START_DEADLINE_EXCEEDED = "START_DEADLINE_EXCEEDED"
# A start deadline this near makes a waiting job with a fallback go on to it (the default
# of FALLBACK_DEADLINE_MARGIN_SECONDS).
FALLBACK_DEADLINE_MARGIN = timedelta(seconds=5)
log = structlog.get_logger("pixsim.gateway")


class Recover:
    def __init__(
        self,
        units: Callable[[], Unit],
        policy: RetryPolicy,
        fallback_margin: timedelta = FALLBACK_DEADLINE_MARGIN,
    ) -> None:
        self._units, self._policy, self._fallback_margin = units, policy, fallback_margin

    async def stranded(self, limit: int = 50) -> int:
        """Attempts whose replica died mid-call: the slot is settled as spent (the provider
        may have charged) and a new attempt follows."""
        async with self._units() as unit:
            attempts = await unit.submissions.expired_submitting(limit)
            for attempt in attempts:
                await settle(
                    unit.submissions, unit.accounts, attempt, assumed(attempt.reserved_credits)
                )
                error = ProviderError(ErrorKind.TRANSIENT, REPLICA_STOPPED)
                # Its task may be running at the provider: a retry there, never a fallback.
                await settle_failure(unit, attempt, error, self._policy, outcome_known=False)
            await unit.commit()
        return len(attempts)

    async def expired(self, limit: int = 100) -> int:
        """Waiting submissions past their job's deadline end, and their jobs with them:
        unsent by the start deadline is START_DEADLINE_EXCEEDED (nothing reached a provider,
        nothing was reserved); past the run deadline between attempts, DEADLINE_EXCEEDED.
        Dispatch never claims such a row, so this sweep is the only way out of WAITING."""
        async with self._units() as unit:
            attempts = await unit.submissions.passed_deadline(limit)
            for attempt in attempts:
                attempt.settle(NOT_BILLED)  # a waiting attempt holds nothing
                if attempt.why == "START":
                    attempt.fail(START_DEADLINE_EXCEEDED, "not sent by its start deadline")
                else:
                    attempt.fail("DEADLINE_EXCEEDED", "the job's run deadline passed")
                await unit.submissions.save(attempt)
            await unit.commit()
        return len(attempts)

    async def passed_over(self, limit: int = 100) -> int:
        """Waiting attempts never sent, whose provider cannot take them (circuit open, no
        usable account, start deadline near) and whose job has a fallback: they go on with
        the next provider at once, in their places."""
        async with self._units() as unit:
            attempts = await unit.submissions.to_pass_over(limit, self._fallback_margin)
            for attempt in attempts:
                log.info(
                    "passing a provider over",
                    job=attempt.job_id,
                    provider=attempt.provider_id,
                    why=attempt.why,
                    next=attempt.fallbacks[0]["provider_id"],
                )
                attempt.pass_over(attempt.why)
                await unit.submissions.save(attempt)
            await unit.commit()
        return len(attempts)

    async def event_set_aside(self, session: AsyncSession, row: SetAside) -> None:
        """A generation.completed the relay could never publish (refused by the broker): its
        job would wait forever, so the attempt fails and says so in a generation.failed."""
        if row.topic != topics.GENERATION_COMPLETED.name:
            return
        try:
            event = events_pb2.GenerationCompleted.FromString(row.payload)
        except DecodeError:
            return
        attempts = repo.Submissions(session, outgoing)
        attempt = await attempts.get(event.submission_id, lock=True)
        if attempt is None:
            return
        attempt.unpublishable(f"the result could not be announced: {row.error}")
        await attempts.save(attempt)
