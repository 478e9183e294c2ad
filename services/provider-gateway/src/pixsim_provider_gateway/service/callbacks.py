"""Callbacks: a provider's verified word that a task ended, recorded as a status check's
answer would be, under the attempt's row lock. Polling goes on beside it as the fallback
(a callback may be late, or never come) and the check; whichever comes first settles the
attempt, and the other finds it ended."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

from pixsim_provider_gateway.domain import RetryPolicy, SubmissionState
from pixsim_provider_gateway.providers.callbacks import Notice
from pixsim_provider_gateway.providers.registry import ProviderRegistry
from pixsim_provider_gateway.service.poll import record_status
from pixsim_provider_gateway.service.timing import Timing
from pixsim_provider_gateway.service.units import Unit


class Heard(StrEnum):
    RECORDED = "RECORDED"  # the attempt moved as the callback says
    ALREADY_ENDED = "ALREADY_ENDED"  # a duplicate, or a poll (a cancellation) got there first
    UNKNOWN = "UNKNOWN"  # no attempt has this task (yet: its submit may still be recorded)


class Callbacks:
    def __init__(
        self,
        units: Callable[[], Unit],
        registry: ProviderRegistry,
        policy: RetryPolicy,
        timing: Timing,
    ) -> None:
        self._units, self._registry, self._policy = units, registry, policy
        self._timing = timing

    async def heard(self, provider_id: str, notice: Notice) -> Heard:
        provider = self._registry.get(provider_id)
        async with self._units() as unit:
            attempt = await unit.submissions.of_task(provider_id, notice.provider_job_id)
            if attempt is None or attempt.state is not SubmissionState.RUNNING:
                await unit.commit()
                return Heard.UNKNOWN if attempt is None else Heard.ALREADY_ENDED
            await record_status(unit, attempt, notice.status, provider, self._policy, self._timing)
            await unit.commit()
        return Heard.RECORDED
