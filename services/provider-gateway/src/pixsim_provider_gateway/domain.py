"""The gateway's decisions, pure: what a provider's answer means for the attempt, for the
account, and when to look again; and the `Submission` aggregate, whose every change of state
goes through its transition table. Persistence and HTTP happen elsewhere."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, TypeAlias

from pixsim.types.v1 import types_pb2
from pixsim_common.money import MAX_CREDIT_PRICE_MICROS, MAX_CREDITS

# What we pass on of a provider's answers is bounded like any input: a task id we store and
# poll by, and a result URL the asset service fetches (the events' limits).
MAX_TASK_ID_CHARS = 256
MAX_OUTPUT_URL_CHARS = 4096
MediaType: TypeAlias = types_pb2.MediaType.ValueType


class ErrorKind(StrEnum):
    """What a provider's failure means, whichever provider said it (adapters classify)."""

    RATE_LIMITED = "RATE_LIMITED"
    TRANSIENT = "TRANSIENT"
    CONTENT_REJECTED = "CONTENT_REJECTED"
    INVALID_PARAMETERS = "INVALID_PARAMETERS"
    ACCOUNT_EXHAUSTED = "ACCOUNT_EXHAUSTED"
    ACCOUNT_INVALID = "ACCOUNT_INVALID"


class AccountState(StrEnum):
    ACTIVE = "ACTIVE"
    DISABLED = "DISABLED"
    EXHAUSTED = "EXHAUSTED"
    INVALID = "INVALID"
    DRAINING = "DRAINING"  # no new attempts; the running ones finish


class AccountNotEnableable(Exception):
    """Enabling cannot fix why the account stopped: its credentials or credits must change."""


def account_enabled(state: AccountState) -> AccountState:
    """An operator's EnableAccount: back in rotation from DISABLED or DRAINING. An INVALID
    or EXHAUSTED account comes back with new credentials or credits (UpdateAccount)."""
    if state in (AccountState.INVALID, AccountState.EXHAUSTED):
        raise AccountNotEnableable(state)
    return AccountState.ACTIVE


def account_drained(state: AccountState) -> AccountState:
    """An operator's DrainAccount: no new attempts go to it. A DISABLED account takes none
    already and stays so."""
    return state if state is AccountState.DISABLED else AccountState.DRAINING


def account_state_after_update(
    state: AccountState, *, new_credentials: bool, credits: int | None
) -> AccountState:
    """An operator's update brings an account back where it fixes why it stopped: new
    credentials for an INVALID one, credits for an EXHAUSTED one. DISABLED stays so."""
    if state is AccountState.INVALID and new_credentials:
        return AccountState.ACTIVE
    if state is AccountState.EXHAUSTED and credits is not None and credits > 0:
        return AccountState.ACTIVE
    return state


class Billing(StrEnum):
    """How an attempt's cost was settled (the proto's `Billing`; docs/costs.md)."""

    REPORTED = "REPORTED"  # the provider said what it charged
    ESTIMATED = "ESTIMATED"  # it charged and does not say: the adapter's estimate
    NOT_BILLED = "NOT_BILLED"  # a failure it does not bill: nothing is spent
    ASSUMED = "ASSUMED"  # its outcome there is unknown: the reservation counts as spent


@dataclass(frozen=True, slots=True)
class Charge:
    """What an attempt is counted as having cost, in its provider's credits."""

    credits: int
    billing: Billing


NOT_BILLED = Charge(0, Billing.NOT_BILLED)


def assumed(reserved: int) -> Charge:
    """The charge of an attempt whose outcome at the provider cannot be known."""
    return Charge(reserved, Billing.ASSUMED)


def charged(reported: int | None, reserved: int) -> Charge:
    """The charge of an attempt the provider billed: what it reported, else the estimate."""
    if reported is None:
        return Charge(reserved, Billing.ESTIMATED)
    return Charge(max(int(reported), 0), Billing.REPORTED)


def price_micros(credits: int, credit_price_micros: int) -> int:
    """Money (in millionths) of `credits` at a price per credit, both bounded."""
    credits = min(max(credits, 0), MAX_CREDITS)
    return credits * min(max(credit_price_micros, 0), MAX_CREDIT_PRICE_MICROS)


class AlreadySettled(Exception):
    """An attempt's cost is settled once: a second settlement is a bug or a lost race."""


class Unsettled(Exception):
    """An attempt cannot end before its cost is settled (its account's reservation would
    be left held, or counted nowhere)."""


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


_S = SubmissionState
# Every change of a submission's state, and nothing else. A cancellation can come at any
# point before the end; a SUCCEEDED attempt fails afterwards only when its result could
# never be announced (the broker refused the event for good).
LEGAL: dict[SubmissionState, frozenset[SubmissionState]] = {
    _S.WAITING: frozenset({_S.SUBMITTING, _S.FAILED, _S.CANCELLED}),
    _S.SUBMITTING: frozenset({_S.RUNNING, _S.WAITING, _S.FAILED, _S.CANCELLED}),
    _S.RUNNING: frozenset({_S.SUCCEEDED, _S.FAILED, _S.CANCELLED}),
    _S.SUCCEEDED: frozenset({_S.FAILED}),
    _S.FAILED: frozenset(),
    _S.CANCELLED: frozenset(),
}


class IllegalTransition(Exception):
    def __init__(self, current: SubmissionState, wanted: SubmissionState) -> None:
        super().__init__(f"a submission cannot go from {current} to {wanted}")
        self.current, self.wanted = current, wanted


def check_transition(current: SubmissionState, wanted: SubmissionState) -> None:
    if wanted not in LEGAL[current]:
        raise IllegalTransition(current, wanted)


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
    # The closest two status checks come, near a task's expected end.
    poll_min_seconds: float = 0.1
    deadline_seconds: float = 900.0
    # Where the provider pushes a task's end, the first poll is only the fallback.
    callback_poll_first_seconds: float = 30.0
    # How long past the gateway's bound a task that cannot be stopped is followed on.
    reconcile_seconds: float = 3600.0
    # Status checks in a row answered "no such task" that end an attempt, unbilled (fewer
    # may be a provider's lag just after it accepted the task).
    unknown_task_polls: int = 3


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


def retry_delay(retry_attempt: int, policy: RetryPolicy, rng: random.Random | None = None) -> float:
    """Seconds before attempt `retry_attempt` (1, 2, ...): exponential with full jitter, so
    the retries of many jobs failed together spread out instead of arriving together."""
    ceiling = min(policy.retry_cap_seconds, policy.retry_base_seconds * 2 ** (retry_attempt - 1))
    return (rng or random).uniform(0, ceiling)


# Near a task's expected end, status checks come this fraction of its duration apart (and
# no closer than `poll_min_seconds`): a 30 s task is looked at every 0.9 s around its end.
NEAR_END_STEP = 0.03
# Until this fraction of the expected duration has passed beyond it, the end is still near;
# later, the task is taking longer than usual and checks back off with how late it is.
NEAR_END_WINDOW = 0.25
# Progress below this says too little about the rest (a task just started, or queued).
MIN_TELLING_PROGRESS = 0.05


@dataclass(frozen=True, slots=True)
class Expected:
    """How long tasks of one provider and operation have been taking lately: the median
    (`seconds`) and the tenth percentile (`earliest`, before which few have ended)."""

    seconds: float
    earliest: float


def first_poll_delay(
    policy: RetryPolicy,
    *,
    callbacks: bool,
    expected: Expected | None = None,
    reports_progress: bool = False,
    elapsed: float = 0.0,
) -> float:
    """Seconds from acceptance to the first status check: just before the task's expected
    end where that is known, else soon; unless the provider will say when the task ends,
    when the poll only covers a callback that never comes. `elapsed`: seconds since the
    attempt was sent, which the expected durations count from (a slow submit call is part
    of the task's time, not a delay before it)."""
    if callbacks:
        return policy.callback_poll_first_seconds
    return next_poll_delay(
        0, policy, elapsed=elapsed, expected=expected, reports_progress=reports_progress
    )


def remaining_seconds(
    elapsed: float, expected: Expected | None, progress: float | None
) -> float | None:
    """How long a task that has run `elapsed` seconds has left, by what it reports of its
    progress (Runway does) or else by how long such tasks have taken; None if neither."""
    if progress is not None and MIN_TELLING_PROGRESS <= progress < 1 and elapsed > 0:
        return elapsed * (1 - progress) / progress
    if expected is not None:
        return expected.seconds - elapsed
    return None


def next_poll_delay(
    poll_count: int,
    policy: RetryPolicy,
    *,
    elapsed: float,
    expected: Expected | None = None,
    progress: float | None = None,
    rng: random.Random | None = None,
    reports_progress: bool = False,
) -> float:
    """Seconds until the next status check of a task `elapsed` seconds in, after
    `poll_count` checks. Timed to the task's expected end: one check just before it, then
    checks a small step apart while the end is near, then backing off with how late the task
    is. Before the end, checks come at most the cap apart (what an early end costs), counted
    from when the earliest tenth of such tasks end: a look sooner would find it running nine
    times in ten; unless the provider `reports_progress`, whose answers time the checks
    better than history does and show a caller following the job how far it has got.
    Where nothing says when it will end, the plain backoff (`poll_delay`)."""
    remaining = remaining_seconds(elapsed, expected, progress)
    if remaining is None:
        return poll_delay(poll_count, policy, rng)
    duration = max(elapsed + remaining, 0.0)
    step = max(policy.poll_min_seconds, NEAR_END_STEP * duration)
    if remaining > step:  # arrive half a step before the expected end
        cap = policy.poll_cap_seconds
        if expected is not None and not reports_progress:
            cap = max(cap, expected.earliest - elapsed)
        return min(remaining - step / 2, cap)
    overdue = -remaining
    if overdue <= NEAR_END_WINDOW * duration:
        return min(step, policy.poll_cap_seconds)
    return min(max(step, overdue / 2), policy.poll_cap_seconds)


def poll_delay(poll_count: int, policy: RetryPolicy, rng: random.Random | None = None) -> float:
    """Seconds until the next status check after `poll_count` checks: backing off by half
    again each time to a cap, with a little jitter so replicas' polls spread out."""
    first, cap = policy.poll_first_seconds, policy.poll_cap_seconds
    delay = min(max(first * 1.5 ** min(poll_count, 64), first), cap)
    return delay * (0.9 + 0.2 * (rng or random).random())


def unusable_task_id(task_id: str) -> str | None:
    """Why a provider's task id cannot be kept and polled by, or None."""
    if not task_id:
        return "the provider accepted the task without an id"
    if len(task_id) > MAX_TASK_ID_CHARS or not task_id.isprintable():
        return f"the provider's task id is not {MAX_TASK_ID_CHARS} printable characters or fewer"
    return None


def unusable_output(uri: str) -> str | None:
    """Why a provider's result URL cannot be handed to the asset service, or None."""
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


@dataclass(frozen=True, slots=True)
class FromNow:
    """A moment on the database's clock, `after` from the moment a change is saved, so every
    replica's times agree; never later than `not_after` when that is set."""

    after: timedelta = timedelta(0)
    not_after: datetime | None = None


NOW = FromNow()


@dataclass(frozen=True, slots=True)
class MediaOutput:
    """A produced file, with what the provider reports of it (None: not reported)."""

    uri: str
    media_type: MediaType
    width: int | None = None
    height: int | None = None
    duration_seconds: float | None = None
    seed: int | None = None


# ---- the submission aggregate -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Queued:
    """The job's attempt chain is in the gateway's queue."""

    attempt: Submission


@dataclass(frozen=True, slots=True)
class Started:
    """The provider accepted the attempt as task `provider_job_id`."""

    attempt: Submission
    provider_job_id: str


@dataclass(frozen=True, slots=True)
class Completed:
    attempt: Submission
    output: MediaOutput


@dataclass(frozen=True, slots=True)
class Failed:
    """The job fails with `code` (a generation error code): no attempt follows."""

    attempt: Submission
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Settled:
    """The attempt's cost is settled; `final`: no attempt of this run follows it."""

    attempt: Submission
    final: bool = False


SubmissionEvent = Queued | Started | Completed | Failed | Settled
# The failures of a job's attempts on one provider that another provider might not have:
# those go on with the job's next fallback (moderation and invalid input never do).
FALLS_BACK = frozenset({"RETRIES_EXHAUSTED"})
# What a retry takes over from the attempt before it: the job's request and its place.
_CARRIED_TO_THE_NEXT_ATTEMPT = (
    "fallbacks",
    "provider_first_attempt",
    "passed_over",
    "job_id",
    "user_id",
    "provider_id",
    "operation_type",
    "request",
    "payload",
    "job_retry_count",
    "trace_headers",
    "start_deadline_at",
    "run_deadline_at",
    "priority",
)


class Submission:
    """One attempt of a job at its provider, as stored (`record`: its columns by name).

    Every change goes through a method here: it checks the transition table (`LEGAL`),
    records the columns it changes (`changes`, which the repository saves compare-and-set on
    the state the attempt was loaded in) and the events it raises (`take_events`). Columns
    read as attributes, changed values first."""

    def __init__(self, record: Mapping[str, Any]) -> None:
        self._record = dict(record)
        self.changes: dict[str, Any] = {}
        self.loaded_state = SubmissionState(self._record["state"])
        self._events: list[SubmissionEvent] = []

    def __getattr__(self, name: str) -> Any:
        try:
            changes = object.__getattribute__(self, "changes")
            return changes[name] if name in changes else self._record[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def record(self) -> dict[str, Any]:
        """Every column, changed values included."""
        return self._record | self.changes

    @property
    def state(self) -> SubmissionState:
        return SubmissionState(self.changes.get("state", self._record["state"]))

    def stored(self, record: Mapping[str, Any]) -> None:
        """The repository saved it: `record` is what the database holds now."""
        self._record = dict(record)
        self.changes = {}
        self.loaded_state = SubmissionState(self._record["state"])

    def take_events(self) -> list[SubmissionEvent]:
        """What it raised since the last save. A settlement is final when the run ends with
        this attempt: it completed, failed the job, or was cancelled."""
        events, self._events = self._events, []
        ends = self.state is SubmissionState.CANCELLED or any(
            isinstance(e, Completed | Failed) for e in events
        )
        return [Settled(self, ends) if isinstance(e, Settled) else e for e in events]

    @property
    def settled(self) -> bool:
        return self.record.get("settle_time") is not None

    def seconds_since_sent(self, now: datetime) -> float:
        """How long its task has run at `now`, counted from the send as the expected
        durations are (0 until the send is recorded)."""
        sent = self.record.get("submit_time")
        return (now - sent).total_seconds() if isinstance(sent, datetime) else 0.0

    def _move(self, to: SubmissionState, **values: Any) -> None:
        """Every change of state. An attempt ends settled, and its end announces what it
        cost (`Settled`, final unless an attempt follows it)."""
        check_transition(self.state, to)
        if to.terminal and not self.settled:
            raise Unsettled(f"submission {self.record.get('id')} ends unsettled")
        if to.terminal and not self.state.terminal:
            self._events.append(Settled(self))
        self.changes |= values | {"state": to.value}

    def settle(self, charge: Charge) -> None:
        """Its cost, once: in credits and in money at the price it was reserved at
        (announced when it ends)."""
        if self.settled:
            raise AlreadySettled(f"submission {self.record.get('id')} is settled already")
        credits = min(max(charge.credits, 0), MAX_CREDITS)
        self.changes |= {
            "settled_credits": credits,
            "settled_micros": price_micros(credits, self.record.get("credit_price_micros") or 0),
            "billing": charge.billing.value,
            "settle_time": NOW,
        }

    # -- a new chain, and the attempts that follow --------------------------------------

    @classmethod
    def first(cls, record: Mapping[str, Any]) -> Submission:
        """The first attempt of a job's chain, waiting for an account."""
        made = cls({**record, "state": SubmissionState.WAITING.value})
        made._events.append(Queued(made))
        return made

    def _next_attempt(self, new_id: str, delay: timedelta) -> Submission:
        return Submission(
            {name: getattr(self, name) for name in _CARRIED_TO_THE_NEXT_ATTEMPT}
            | {
                "id": new_id,
                "retry_attempt": self.retry_attempt + 1,
                "turn_at": self.turn_at,  # a retry keeps its job's place in line
                "previous_submission_id": self.id,
                "state": SubmissionState.WAITING.value,
                "available_at": FromNow(delay),
            }
        )

    # -- dispatch ------------------------------------------------------------------------

    def wait_for_account(self, payload: dict[str, Any], delay: timedelta) -> None:
        """No account can take it now: its turn comes again after `delay`."""
        self.changes |= {"available_at": FromNow(delay), "payload": payload}

    def send(
        self,
        account_id: str,
        cost: int,
        payload: dict[str, Any],
        replica: str,
        lease: timedelta,
        credit_price_micros: int = 0,
    ) -> None:
        """Reserved on `account_id`, about to be sent by `replica` (under a lease), at the
        provider's price per credit now (what its cost is counted in money at)."""
        self._move(
            SubmissionState.SUBMITTING,
            account_id=account_id,
            reserved_credits=cost,
            credit_price_micros=credit_price_micros,
            payload=payload,
            submit_time=NOW,
            lease_owner=replica,
            lease_until=FromNow(lease),
        )

    def accepted(
        self,
        provider_job_id: str,
        estimated_cost: int | None,
        first_poll: timedelta,
        bound: timedelta,
    ) -> None:
        """The provider took it: polled from `first_poll` on, until the gateway's `bound` or
        the job's run deadline, whichever is sooner."""
        self._move(
            SubmissionState.RUNNING,
            provider_job_id=provider_job_id,
            response={"estimated_cost": estimated_cost},
            next_poll_at=FromNow(first_poll),
            deadline_at=FromNow(bound, not_after=self.run_deadline_at),
            lease_owner=None,
            lease_until=None,
        )
        self._events.append(Started(self, provider_job_id))

    def accepted_after_cancel(self, provider_job_id: str, can_cancel: bool) -> None:
        """The provider took it after the job was cancelled: cancel it there too."""
        self.changes |= {
            "provider_job_id": provider_job_id,
            "provider_cancel_pending": can_cancel,
            "lease_owner": None,
            "lease_until": None,
        }

    def requeue(self, after: timedelta = timedelta(0)) -> None:
        """The account (or something else not the attempt's) was the trouble: the same
        attempt waits, for another account, `after` from now."""
        self._move(
            SubmissionState.WAITING,
            account_id=None,
            reserved_credits=0,
            lease_owner=None,
            lease_until=None,
            available_at=FromNow(after),
        )

    def refused(
        self,
        kind: ErrorKind,
        message: str,
        verdict: Verdict,
        new_id: str,
        policy: RetryPolicy,
        *,
        outcome_known: bool = True,
    ) -> Submission | None:
        """The attempt failed with `kind`: the one that follows it (by `verdict`), if any: a
        retry on the same provider, or the job's next fallback when the provider could not
        do it and another might (only once this attempt's outcome is known, so no two
        providers ever run the job at once); else the job fails."""
        self._move(
            SubmissionState.FAILED,
            error_code=kind.value,
            error_message=message[:2000],
            complete_time=NOW,
            lease_owner=None,
            lease_until=None,
        )
        if verdict.action is AttemptAction.RETRY:
            retries_here = self.retry_attempt - self.provider_first_attempt
            delay = timedelta(seconds=retry_delay(retries_here + 1, policy))
            return self._next_attempt(new_id, delay)
        code = verdict.error_code or kind.value
        if code in FALLS_BACK and self.fallbacks and outcome_known:
            return self._on_next_fallback(new_id)
        self._events.append(Failed(self, code, message))
        return None

    def _on_next_fallback(self, new_id: str) -> Submission:
        """The job's next attempt, on its next fallback provider, with that one's params."""
        following = self._next_attempt(new_id, timedelta(0))
        following._record |= self._on_fallback() | {
            "provider_first_attempt": self.retry_attempt + 1
        }
        return following

    def pass_over(self, why: str) -> None:
        """Nothing was sent yet and its provider cannot take it (`why`): the same attempt
        goes on with the job's next fallback provider instead, with that provider's whole
        retry budget (the retries spent on the one passed over are not its)."""
        self.changes |= self._on_fallback() | {
            "passed_over": [*self.passed_over, {"provider_id": self.provider_id, "why": why}],
            "available_at": NOW,
            "provider_first_attempt": self.retry_attempt,
        }

    def _on_fallback(self) -> dict[str, Any]:
        """The columns of an attempt on the job's next fallback: its provider, the request
        with that provider's params (mapped again at dispatch), and the fallbacks left."""
        fallback, *rest = self.fallbacks
        return {
            "provider_id": fallback["provider_id"],
            "request": {**self.request, "params": fallback.get("params") or {}},
            "payload": None,
            "fallbacks": rest,
        }

    def fail(self, code: str, message: str, **also: Any) -> None:
        """The job fails now with `code`, without another attempt."""
        self._move(
            SubmissionState.FAILED,
            error_code=code,
            error_message=message[:2000],
            complete_time=NOW,
            **also,
        )
        self._events.append(Failed(self, code, message))

    # -- polling -------------------------------------------------------------------------

    def polled(
        self,
        progress: float | None,
        provider_state: str,
        queue_position: int | None,
        next_poll: timedelta,
    ) -> None:
        """Still under way at the provider, as it says."""
        self.changes |= {
            "poll_count": self.poll_count + 1,
            "last_running_at": NOW,
            "unknown_polls": 0,
            "progress": progress,
            "provider_state": provider_state[:64],
            "provider_queue_position": queue_position,
            "lease_owner": None,
            "lease_until": None,
            "next_poll_at": FromNow(next_poll),
        }

    def polled_unknown(self, next_poll: timedelta) -> None:
        """The provider said it has no such task: looked at again, counted."""
        self.changes |= {
            "poll_count": self.poll_count + 1,
            "unknown_polls": (self.record.get("unknown_polls") or 0) + 1,
            "lease_owner": None,
            "lease_until": None,
            "next_poll_at": FromNow(next_poll),
        }

    def may_reconcile(self, now: datetime, can_cancel: bool) -> bool:
        """Whether, past its bound and still running, it is followed on rather than failed:
        its provider cannot stop it (so it is billed whatever we do, and its clip is worth
        keeping), it is not followed on already, and the job's own run deadline has not
        passed (that one the caller set, and it always holds)."""
        before_run_deadline = self.run_deadline_at is None or now < self.run_deadline_at
        return not can_cancel and self.reconcile_from is None and before_run_deadline

    def reconcile(self, bound: timedelta, next_poll: timedelta) -> None:
        """Followed on for `bound` more (never past the job's run deadline): the task's
        outcome is still to come, and whatever it is, it is the job's, settled once."""
        self.changes |= {
            "reconcile_from": NOW,
            "deadline_at": FromNow(bound, not_after=self.run_deadline_at),
            "poll_count": self.poll_count + 1,
            "lease_owner": None,
            "lease_until": None,
            "next_poll_at": FromNow(next_poll),
        }

    def timed_out(self, can_cancel: bool) -> None:
        """Past its deadline at the provider: stopped there where it can be, and failed."""
        self.fail(
            "DEADLINE_EXCEEDED",
            "the provider did not finish in time",
            lease_owner=None,
            lease_until=None,
            provider_cancel_pending=can_cancel,
        )

    def succeeded(
        self, outputs: list[dict[str, Any]], first: MediaOutput, cost: int | None
    ) -> None:
        self._move(
            SubmissionState.SUCCEEDED,
            complete_time=NOW,
            lease_owner=None,
            lease_until=None,
            response={"outputs": outputs, "cost": cost},
        )
        self._events.append(Completed(self, first))

    # -- cancelling ----------------------------------------------------------------------

    def cancel(self) -> None:
        """The job was cancelled: the provider is told where a task exists there."""
        self._move(
            SubmissionState.CANCELLED,
            complete_time=NOW,
            provider_cancel_pending=self.provider_job_id is not None,
            lease_owner=None,
            lease_until=None,
        )

    def cancel_sent(self) -> None:
        self.changes |= {"provider_cancel_pending": False, "lease_owner": None, "lease_until": None}

    def unpublishable(self, message: str) -> None:
        """Its result could never be announced: the attempt fails and says so (once)."""
        if self.state is not SubmissionState.SUCCEEDED:
            return
        self._move(SubmissionState.FAILED, error_code="UNPUBLISHABLE", error_message=message[:2000])
        self._events.append(Failed(self, "UNPUBLISHABLE", message))


# ---- a provider's gate: paused by an operator, or its circuit open -----------------------


class Circuit(StrEnum):
    CLOSED = "CLOSED"  # calls go through
    OPEN = "OPEN"  # failing: nothing is sent until `open_until`
    HALF_OPEN = "HALF_OPEN"  # one probe call is out; its outcome closes or opens it again


@dataclass(frozen=True, slots=True)
class CircuitPolicy:
    # Consecutive failed calls to a provider (to one account) that open its circuit.
    failures_to_open: int = 5
    account_failures_to_open: int = 3
    # How long it stays open the first time; each reopening without a success in between
    # doubles it, up to the cap.
    open_seconds: float = 30.0
    open_cap_seconds: float = 600.0

    def open_for(self, times_opened: int) -> timedelta:
        return timedelta(
            seconds=min(self.open_cap_seconds, self.open_seconds * 2 ** min(times_opened, 16))
        )


def counts_against_circuit(kind: ErrorKind) -> bool:
    """Whether a call that failed with `kind` says the provider is failing: a server error,
    a timeout, a broken connection. Any other answer (a refusal, a rate limit, moderation)
    is the provider answering, so it counts as a success of the call."""
    return kind is ErrorKind.TRANSIENT


@dataclass(slots=True)
class ProviderGate:
    """Whether a provider's waiting jobs may be sent: an operator's pause, and the circuit
    breaker over its calls. Pure: the moments come from the caller (the database clock)."""

    provider_id: str
    paused: bool = False
    pause_time: datetime | None = None
    pause_reason: str = ""
    circuit: Circuit = Circuit.CLOSED
    consecutive_failures: int = 0
    open_count: int = 0
    open_until: datetime | None = None
    probe_until: datetime | None = None
    # The circuit's changes since it was loaded, for the metrics.
    moves: list[Circuit] = field(default_factory=list)

    def pause(self, now: datetime, reason: str) -> None:
        if not self.paused:
            self.paused, self.pause_time, self.pause_reason = True, now, reason

    def resume(self) -> None:
        self.paused, self.pause_time, self.pause_reason = False, None, ""

    def may_probe(self, now: datetime) -> bool:
        """Whether a call may go out now as the circuit's probe: it has been open long
        enough and no other probe is out."""
        if self.circuit is Circuit.CLOSED:
            return False
        opened_long_enough = self.open_until is None or self.open_until <= now
        return opened_long_enough and (self.probe_until is None or self.probe_until <= now)

    def begin_probe(self, now: datetime, lease: timedelta) -> None:
        self._move(Circuit.HALF_OPEN)
        self.probe_until = now + lease

    def call_succeeded(self) -> None:
        self._move(Circuit.CLOSED)
        self.consecutive_failures = self.open_count = 0
        self.open_until = self.probe_until = None

    def call_failed(self, now: datetime, policy: CircuitPolicy) -> None:
        self.consecutive_failures += 1
        if self.circuit is Circuit.OPEN:
            return  # a call that was out when it opened: it stays open as it is
        probe_failed = self.circuit is Circuit.HALF_OPEN
        if probe_failed or self.consecutive_failures >= policy.failures_to_open:
            self._move(Circuit.OPEN)
            self.open_until = now + policy.open_for(self.open_count)
            self.open_count += 1
            self.probe_until = None

    def _move(self, to: Circuit) -> None:
        if self.circuit is not to:
            self.circuit = to
            self.moves.append(to)
