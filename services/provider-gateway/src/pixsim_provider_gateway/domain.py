"""The gateway's decisions, pure: what a provider's answer means for the attempt, for the
account, and when to look again. Persistence and HTTP happen elsewhere."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from types import SimpleNamespace

from tenacity import wait_exponential, wait_random_exponential

from pixsim_provider_gateway.providers.base import ErrorKind, MediaOutput

# What we pass on of a provider's answers is bounded like any input: a task id we store and
# poll by, and a result URL the asset service fetches (the events' limits).
MAX_TASK_ID_CHARS = 256
MAX_OUTPUT_URL_CHARS = 4096


class AccountState(StrEnum):
    ACTIVE = "ACTIVE"
    DISABLED = "DISABLED"
    EXHAUSTED = "EXHAUSTED"
    INVALID = "INVALID"


class SubmissionState(StrEnum):
    WAITING = "WAITING"  # for a free account (or for its retry backoff to pass)
    SUBMITTING = "SUBMITTING"  # an account is reserved; the provider is being called
    RUNNING = "RUNNING"  # the provider accepted it; polled until it ends
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in (
            SubmissionState.SUCCEEDED,
            SubmissionState.FAILED,
            SubmissionState.CANCELLED,
        )

    @property
    def holds_slot(self) -> bool:
        return self in (SubmissionState.SUBMITTING, SubmissionState.RUNNING)


class AttemptAction(StrEnum):
    REQUEUE = "REQUEUE"  # the account was the problem: same attempt, another account
    RETRY = "RETRY"  # a new linked attempt after a backoff
    FAIL = "FAIL"  # the job fails now


class AccountEffect(StrEnum):
    NONE = "NONE"
    COOLDOWN = "COOLDOWN"
    EXHAUSTED = "EXHAUSTED"
    INVALID = "INVALID"


@dataclass(frozen=True, slots=True)
class Verdict:
    action: AttemptAction
    account: AccountEffect = AccountEffect.NONE
    cooldown_seconds: float = 0.0
    # The generation error code when the job fails (RETRIES_EXHAUSTED after the last retry).
    error_code: str = ""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 3
    retry_base_seconds: float = 1.0
    retry_cap_seconds: float = 60.0
    default_cooldown_seconds: float = 30.0
    poll_first_seconds: float = 1.0
    poll_cap_seconds: float = 10.0
    deadline_seconds: float = 900.0


ACCOUNT_KINDS = (ErrorKind.RATE_LIMITED, ErrorKind.ACCOUNT_EXHAUSTED, ErrorKind.ACCOUNT_INVALID)


def judge(
    kind: ErrorKind,
    *,
    retry_attempt: int,
    retry_after: float | None,
    policy: RetryPolicy,
    accepted: bool = False,
) -> Verdict:
    """What to do with an attempt the provider answered with an error of `kind`.

    `accepted`: the provider had taken the task before it failed. The same attempt cannot be
    sent again then, so an account's trouble counts as a transient failure of the attempt.
    """
    if accepted and kind in ACCOUNT_KINDS:
        kind = ErrorKind.TRANSIENT
    if kind is ErrorKind.RATE_LIMITED:
        cooldown = retry_after if retry_after is not None else policy.default_cooldown_seconds
        return Verdict(AttemptAction.REQUEUE, AccountEffect.COOLDOWN, cooldown)
    if kind is ErrorKind.ACCOUNT_EXHAUSTED:
        return Verdict(AttemptAction.REQUEUE, AccountEffect.EXHAUSTED)
    if kind is ErrorKind.ACCOUNT_INVALID:
        return Verdict(AttemptAction.REQUEUE, AccountEffect.INVALID)
    if kind is ErrorKind.TRANSIENT:
        if retry_attempt < policy.max_retries:
            return Verdict(AttemptAction.RETRY)
        return Verdict(AttemptAction.FAIL, error_code="RETRIES_EXHAUSTED")
    return Verdict(AttemptAction.FAIL, error_code=kind.value)  # moderation, bad parameters


def retry_delay(retry_attempt: int, policy: RetryPolicy) -> float:
    """Seconds before attempt `retry_attempt` (1, 2, ...): exponential, full jitter."""
    wait = wait_random_exponential(
        multiplier=policy.retry_base_seconds, max=policy.retry_cap_seconds
    )
    return float(wait(SimpleNamespace(attempt_number=retry_attempt)))  # type: ignore[arg-type]


def poll_delay(poll_count: int, policy: RetryPolicy, rng: random.Random | None = None) -> float:
    """Seconds until the next status check after `poll_count` checks: backing off to a cap,
    with a little jitter so replicas' polls spread out."""
    wait = wait_exponential(
        multiplier=policy.poll_first_seconds,
        min=policy.poll_first_seconds,
        max=policy.poll_cap_seconds,
        exp_base=1.5,
    )
    delay = float(wait(SimpleNamespace(attempt_number=poll_count + 1)))  # type: ignore[arg-type]
    return delay * (0.9 + 0.2 * (rng or random).random())


def unusable_task_id(task_id: str) -> str | None:
    """Why a provider's task id cannot be kept and polled by, or None."""
    if not task_id:
        return "the provider accepted the task without an id"
    if len(task_id) > MAX_TASK_ID_CHARS or not task_id.isprintable():
        return f"the provider's task id is not {MAX_TASK_ID_CHARS} printable characters or fewer"
    return None


def unusable_output(output: MediaOutput) -> str | None:
    """Why a provider's result cannot be handed to the asset service, or None."""
    uri = output.uri
    if len(uri) > MAX_OUTPUT_URL_CHARS:
        return f"the provider's result URL is longer than {MAX_OUTPUT_URL_CHARS} characters"
    if not uri.startswith(("https://", "http://")) or not uri.isprintable():
        return "the provider's result is not an http(s) URL"
    return None


class Priority(StrEnum):
    HIGH = "HIGH"
    NORMAL = "NORMAL"
    LOW = "LOW"


# How far behind a HIGH arrival each priority starts, as a share of the aging bound.
_TURN_SHARE = {Priority.HIGH: 0.0, Priority.NORMAL: 0.5, Priority.LOW: 1.0}


def turn_delay(priority: Priority, aging: timedelta) -> timedelta:
    """How much later than its arrival a submission's turn is among its owner's waiting
    work (the `turn_at` its queue is ordered by): none for HIGH, half the aging bound for
    NORMAL, all of it for LOW. So a LOW job is never passed by HIGH work arriving more than
    `aging` after it, nor by NORMAL work arriving more than half of it after: under any
    sustained load of higher priority, its wait is bounded."""
    return aging * _TURN_SHARE[priority]
