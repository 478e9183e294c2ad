"""What every use case does with an attempt the provider failed: the account's side of it,
then the same attempt again on another account, a new attempt, or the job's failure."""

from __future__ import annotations

from datetime import timedelta

import structlog

from pixsim_provider_gateway import repository as repo
from pixsim_provider_gateway.domain import (
    AccountEffect,
    AccountState,
    AttemptAction,
    Charge,
    RetryPolicy,
    Submission,
    Verdict,
    judge,
)
from pixsim_provider_gateway.providers.base import ProviderError
from pixsim_provider_gateway.service.units import Unit

log = structlog.get_logger("pixsim.gateway")
_MARKS = {
    AccountEffect.EXHAUSTED: AccountState.EXHAUSTED,
    AccountEffect.INVALID: AccountState.INVALID,
}


async def settle_failure(
    unit: Unit,
    attempt: Submission,
    error: ProviderError,
    policy: RetryPolicy,
    *,
    accepted: bool = False,
    outcome_known: bool = True,
    unsent_charge: Charge | None = None,
) -> Verdict:
    """End or requeue `attempt` as `domain.judge` says of `error` (its account's slot is
    already settled by the caller); `accepted`: the provider had taken the task;
    `outcome_known`: whether it surely did not run there (else it falls back to no one);
    `unsent_charge`: its cost should it end now, when its reservation is back already
    (a refused submit), else the caller has settled it."""
    verdict = judge(
        error.kind,
        retry_attempt=attempt.retry_attempt - attempt.provider_first_attempt,
        retry_after=error.retry_after,
        policy=policy,
        accepted=accepted,
    )
    if verdict.account is AccountEffect.COOLDOWN:
        await unit.accounts.mark(
            attempt.account_id, cooldown=timedelta(seconds=verdict.cooldown_seconds)
        )
    elif verdict.account in _MARKS:
        await unit.accounts.mark(attempt.account_id, state=_MARKS[verdict.account])
    if verdict.action is AttemptAction.REQUEUE:
        attempt.requeue()
        await unit.submissions.save(attempt)
        return verdict
    if unsent_charge is not None:
        attempt.settle(unsent_charge)
    follow = attempt.refused(
        error.kind, error.message, verdict, repo.new_id(), policy, outcome_known=outcome_known
    )
    await unit.submissions.save(attempt)
    if follow is not None:
        await unit.submissions.add(follow)
        if follow.provider_id != attempt.provider_id:
            log.info(
                "falling back to the next provider",
                job=attempt.job_id,
                failed_on=attempt.provider_id,
                next=follow.provider_id,
            )
    return verdict
