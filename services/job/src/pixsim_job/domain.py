"""The `Job` aggregate and its state machine, pure: the one place transitions are decided.

    PENDING → QUEUED → PROCESSING → COMPLETED | FAILED | CANCELLED
    PENDING | QUEUED → EXPIRED (the start deadline passed before any attempt was sent)
    FAILED → PENDING (RetryJob)

Facts from other services arrive in any order and any number of times. Each moves the job
only forward: a late or repeated fact, or one about an earlier try of a retried job, changes
nothing. The aggregate records the transitions it makes, so the service can publish one
`job.status_changed` for each.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any


class JobState(StrEnum):
    PENDING = "PENDING"
    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"

    @property
    def terminal(self) -> bool:
        return self in (
            JobState.COMPLETED,
            JobState.FAILED,
            JobState.CANCELLED,
            JobState.EXPIRED,
        )


# The gateway's code for a job whose start deadline passed unsent: it ends EXPIRED, not FAILED.
START_DEADLINE_EXCEEDED = "START_DEADLINE_EXCEEDED"


# How far along each state is; a fact never moves a job to a lower rank (except RetryJob).
RANK = {
    JobState.PENDING: 0,
    JobState.QUEUED: 1,
    JobState.PROCESSING: 2,
    JobState.COMPLETED: 3,
    JobState.FAILED: 3,
    JobState.CANCELLED: 3,
    JobState.EXPIRED: 3,
}

LEGAL = {
    JobState.PENDING: {
        JobState.QUEUED,
        JobState.PROCESSING,
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.EXPIRED,
    },
    JobState.QUEUED: {
        JobState.PROCESSING,
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.EXPIRED,
    },
    JobState.PROCESSING: {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED},
    JobState.FAILED: {JobState.PENDING},  # RetryJob
    JobState.COMPLETED: set(),
    JobState.CANCELLED: set(),
    JobState.EXPIRED: set(),
}


class IllegalTransition(Exception):
    def __init__(self, current: JobState, target: JobState) -> None:
        super().__init__(f"a {current.value} job cannot become {target.value}")
        self.current = current
        self.target = target


@dataclass(frozen=True, slots=True)
class Transition:
    previous: JobState
    state: JobState


# Facts the job learns from events.
@dataclass(frozen=True, slots=True)
class GenerationQueued:
    retry_count: int
    queue_time: datetime


@dataclass(frozen=True, slots=True)
class GenerationStarted:
    retry_count: int
    # When the gateway sent the attempt, and when the provider accepted it (None: unsaid).
    dispatch_time: datetime | None = None
    provider_start_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class GenerationFinished:
    """The provider finished the try's task (generation.completed): a time, not a state."""

    retry_count: int
    provider_end_time: datetime
    # Whose task it was: the job's provider or one of its fallbacks.
    provider_id: str = ""


@dataclass(frozen=True, slots=True)
class GenerationFailed:
    retry_count: int
    error_code: str
    error_message: str


@dataclass(frozen=True, slots=True)
class AssetCreated:
    asset_id: str


@dataclass(frozen=True, slots=True)
class GenerationSettled:
    """An attempt's cost, settled once by the gateway (each arrives once: the inbox)."""

    retry_count: int
    credits: int
    micros: int
    # No attempt of this run follows.
    final: bool


Fact = (
    GenerationQueued
    | GenerationStarted
    | GenerationFinished
    | GenerationFailed
    | AssetCreated
    | GenerationSettled
)


class Period(StrEnum):
    """A budget's period: UTC days, or calendar months in UTC."""

    DAY = "DAY"
    MONTH = "MONTH"

    def start(self, now: datetime) -> datetime:
        """The first moment of the period `now` is in."""
        day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        return day if self is Period.DAY else day.replace(day=1)


@dataclass(frozen=True, slots=True)
class Standing:
    """Where a user stands against their budget this period, in millionths of a dollar:
    the costs settled in it, and the estimates of their jobs not settled yet."""

    limit: int
    spent: int
    held: int

    @property
    def remaining(self) -> int:
        return max(self.limit - self.spent - self.held, 0)

    def admits(self, estimate: int) -> bool:
        """Whether a job estimated at `estimate` fits in what remains."""
        return self.spent + self.held + estimate <= self.limit


@dataclass
class Job:
    id: str
    user_id: str
    operation_type: int
    provider_id: str
    # The request as submitted (prompt, inputs, params), in protobuf's JSON mapping.
    request: dict[str, Any]
    state: JobState = JobState.PENDING
    error_code: str = ""
    error_message: str = ""
    retry_count: int = 0
    asset_id: str = ""
    # The provider whose task made the asset (the job's own or a fallback).
    asset_provider_id: str = ""
    request_id: str = ""
    request_hash: str = ""
    create_time: datetime | None = None
    update_time: datetime | None = None  # its last change (AIP-148), as stored
    start_time: datetime | None = None
    complete_time: datetime | None = None
    # When the gateway took it into its queue (the try's QUEUED), sent it, the provider
    # accepted it, and the gateway saw the provider finish.
    queue_time: datetime | None = None
    dispatch_time: datetime | None = None
    provider_start_time: datetime | None = None
    provider_end_time: datetime | None = None
    # HIGH, NORMAL or LOW: its turn among its owner's waiting jobs (the gateway's).
    priority: str = "NORMAL"
    # {"url": ..., "events": ["EVENT_COMPLETED", ...]}: where its changes are pushed.
    webhook: dict[str, Any] | None = None
    # The caller's labels, to find and cancel jobs by.
    labels: dict[str, str] = field(default_factory=dict)
    # Deadlines of the first try (None: none); the gateway enforces them.
    start_deadline_time: datetime | None = None
    run_deadline_time: datetime | None = None
    # What its attempts cost, every run's (credits of its providers, and millionths of a
    # dollar), how many are settled, and whether its latest run's last one is.
    settled_credits: int = 0
    settled_micros: int = 0
    settled_attempts: int = 0
    cost_final: bool = False
    # Its latest run's estimate (CreateJob, RetryJob), and what of it is held against its
    # owner's budget: all of it until the run's last attempt is settled.
    estimated_credits: int = 0
    estimated_micros: int = 0
    hold_micros: int = 0
    transitions: list[Transition] = field(default_factory=list, repr=False)

    @classmethod
    def submit(
        cls,
        *,
        user_id: str,
        operation_type: int,
        provider_id: str,
        request: dict[str, Any],
        request_id: str = "",
        request_hash: str = "",
        start_deadline_time: datetime | None = None,
        run_deadline_time: datetime | None = None,
        labels: dict[str, str] | None = None,
        priority: str = "NORMAL",
        webhook: dict[str, Any] | None = None,
        estimate: tuple[int, int] = (0, 0),
    ) -> Job:
        return cls(
            estimated_credits=estimate[0],
            estimated_micros=estimate[1],
            hold_micros=estimate[1],
            webhook=webhook,
            priority=priority,
            labels=dict(labels or {}),
            start_deadline_time=start_deadline_time,
            run_deadline_time=run_deadline_time,
            id=str(uuid.uuid4()),
            user_id=user_id,
            operation_type=operation_type,
            provider_id=provider_id,
            request=request,
            request_id=request_id,
            request_hash=request_hash,
        )

    def provider_duration(self) -> timedelta | None:
        """The provider's time on the try that completed: accepted to seen finished."""
        if self.provider_start_time is None or self.provider_end_time is None:
            return None
        return max(self.provider_end_time - self.provider_start_time, timedelta(0))

    def overhead(self) -> timedelta | None:
        """Ours, once COMPLETED: created to completed, less the provider's time."""
        provider = self.provider_duration()
        if self.state is not JobState.COMPLETED or provider is None:
            return None
        if self.create_time is None or self.complete_time is None:
            return None
        return max(self.complete_time - self.create_time - provider, timedelta(0))

    def same_request(self, request_hash: str) -> bool:
        """Whether a request with this fingerprint is the one this job was made from (a job
        from before fingerprints were kept counts as the same)."""
        return not self.request_hash or self.request_hash == request_hash

    def _move(self, target: JobState, now: datetime) -> None:
        if target not in LEGAL[self.state]:
            raise IllegalTransition(self.state, target)
        self.transitions.append(Transition(self.state, target))
        self.state = target
        self.update_time = now
        if target is JobState.PROCESSING and self.start_time is None:
            self.start_time = now
        if target.terminal:
            self.complete_time = now
            if self.queue_time is None:
                # The gateway never took this run into its queue (cancelled first, or its
                # submission never left): no settlement will come to release its hold, and
                # the run cost nothing.
                self.hold_micros = 0
                self.cost_final = True

    def learn(self, fact: Fact, now: datetime) -> bool:
        """Apply a fact from another service; False when it changes nothing (late, repeated,
        or about an earlier try). A cost counts whichever try it was of."""
        if isinstance(fact, GenerationSettled):
            self.settled_credits += fact.credits
            self.settled_micros += fact.micros
            self.settled_attempts += 1
            if fact.final and fact.retry_count == self.retry_count:
                self.cost_final = True
                self.hold_micros = 0
            self.update_time = now
            return True
        if isinstance(
            fact, GenerationQueued | GenerationStarted | GenerationFinished | GenerationFailed
        ) and (fact.retry_count != self.retry_count):
            return False
        if isinstance(fact, GenerationFinished):
            if self.provider_end_time is not None:
                return False
            self.provider_end_time = fact.provider_end_time
            self.asset_provider_id = fact.provider_id or self.provider_id
            self.update_time = now
            return True
        timed = False
        if isinstance(fact, GenerationStarted) and self.provider_start_time is None:
            # Kept even when the start itself comes late (after the asset): timings only.
            self.dispatch_time = fact.dispatch_time
            self.provider_start_time = fact.provider_start_time
            timed = fact.provider_start_time is not None
        target = {
            GenerationQueued: JobState.QUEUED,
            GenerationStarted: JobState.PROCESSING,
            GenerationFailed: JobState.FAILED,
            AssetCreated: JobState.COMPLETED,
        }[type(fact)]
        if isinstance(fact, GenerationFailed) and fact.error_code == START_DEADLINE_EXCEEDED:
            target = JobState.EXPIRED
            if self.state is JobState.PROCESSING:
                return False  # sent after all: the gateway's own answer decides
        if self.state.terminal or RANK[target] <= RANK[self.state]:
            if timed:
                self.update_time = now
            return timed
        if isinstance(fact, GenerationFailed):
            self.error_code, self.error_message = fact.error_code, fact.error_message
        if isinstance(fact, AssetCreated):
            self.asset_id = fact.asset_id
        if isinstance(fact, GenerationQueued):
            self.queue_time = fact.queue_time
        self._move(target, now)
        return True

    def fail(self, error_code: str, error_message: str, now: datetime) -> None:
        """The job cannot go on (its submission could not be sent, say); only one that has not
        ended can fail."""
        self.error_code, self.error_message = error_code, error_message
        self._move(JobState.FAILED, now)

    def cancel(self, now: datetime) -> None:
        """The caller cancels; only a job that has not ended can be."""
        self._move(JobState.CANCELLED, now)

    def retry(self, now: datetime, estimate: tuple[int, int] | None = None) -> None:
        """RetryJob: only from FAILED; a new try with its own count (and `estimate`, held
        until it is settled)."""
        self._move(JobState.PENDING, now)
        self.retry_count += 1
        if estimate is not None:
            self.estimated_credits, self.estimated_micros = estimate
        self.hold_micros = self.estimated_micros
        self.error_code = self.error_message = ""
        self.start_time = self.complete_time = self.queue_time = None
        self.dispatch_time = self.provider_start_time = self.provider_end_time = None
        self.asset_provider_id = ""
        self.cost_final = False  # a new run, to be settled
        # A retry is a try the caller asks for now: the first try's deadlines are past it.
        self.start_deadline_time = self.run_deadline_time = None


# While a job waits or runs, its place in line and progress are asked of the gateway this
# often: at most this many messages a second reach a watcher.
LIVE_INTERVAL = 0.25
# A look that changed nothing doubles the next wait, up to the job's state's cap: most
# providers report no progress, and a place in line stays put while the slots ahead are
# busy, so a watcher should not cost a gateway call 4 times a second for a minute (they
# were most of the gateway's RPCs in the pipeline benchmark). Any change brings the wait
# back to LIVE_INTERVAL.
LIVE_INTERVAL_CAP = {JobState.QUEUED: 1.0, JobState.PROCESSING: 2.0}
# The states whose watchers get live looks at all.
LIVE_STATES = tuple(LIVE_INTERVAL_CAP)
# A job this near the front of its line is looked at every LIVE_INTERVAL, without backing
# off: its next change is the next slot to free, and its reaching the front (0) is what
# its watcher waits to see, which a 1 s wait could step over while the job ahead runs.
# Only two jobs a line are this near, so the cost stays per line, not per waiting job.
NEAR_FRONT = 1
# Further back, a job is looked at no more often than LIVE_INTERVAL for every this many
# places ahead of it (up to the cap), changed or not: under load a line moves on nearly
# every look, and a watcher at place 20 was asking 4 times a second for a number that
# only needs to be right within the second.
PLACES_PER_INTERVAL = 2


def next_live_wait(
    state: JobState, wait: float, *, changed: bool, queue_position: int | None = None
) -> float:
    """Seconds to the next live look at a job in `state`, after one that waited `wait` and
    did or did not see a change (and, when queued, saw it at `queue_position`)."""
    if state not in LIVE_INTERVAL_CAP:
        return LIVE_INTERVAL
    cap = LIVE_INTERVAL_CAP[state]
    following = LIVE_INTERVAL if changed else min(wait * 2, cap)
    if state is JobState.QUEUED and queue_position is not None:
        if queue_position <= NEAR_FRONT:
            return LIVE_INTERVAL
        return max(following, min(cap, LIVE_INTERVAL * queue_position / PLACES_PER_INTERVAL))
    return following
