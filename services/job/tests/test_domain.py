"""The job state machine, without I/O; property tests over any order and duplication."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pixsim_job.domain import (
    LEGAL,
    LIVE_INTERVAL,
    AssetCreated,
    Fact,
    GenerationFailed,
    GenerationFinished,
    GenerationSettled,
    GenerationStarted,
    IllegalTransition,
    Job,
    JobState,
    next_live_wait,
)

pytestmark = pytest.mark.unit
NOW = datetime(2026, 11, 24, tzinfo=UTC)


def new_job() -> Job:
    return Job.submit(
        user_id="u", operation_type=1, provider_id="pixverse", request={"prompt": "a cat"}
    )


STARTED = GenerationStarted(0)
FAILED = GenerationFailed(0, "CONTENT_REJECTED", "no")
COMPLETED = AssetCreated("asset-1")


@st.composite
def one_try(draw: st.DrawFn) -> tuple[Fact | None, bool, list[Fact]]:
    """A try's facts (maybe started, at most one outcome: the gateway publishes either),
    each delivered at least once, some again, in any order."""
    started = draw(st.booleans())
    outcome = draw(st.sampled_from([None, FAILED, COMPLETED]))
    facts: list[Fact] = [f for f in (STARTED if started else None, outcome) if f is not None]
    repeats = draw(st.lists(st.sampled_from(facts), max_size=8)) if facts else []
    return outcome, started, draw(st.permutations(facts + repeats))


@given(one_try())
def test_any_order_and_duplication_ends_where_the_latest_meaningful_fact_says(
    case: tuple[Fact | None, bool, list[Fact]],
) -> None:
    outcome, started, facts = case
    job = new_job()
    for fact in facts:
        job.learn(fact, NOW)
    if outcome is not None:
        expected = JobState.FAILED if outcome is FAILED else JobState.COMPLETED
    else:
        expected = JobState.PROCESSING if started else JobState.PENDING
    assert job.state is expected
    # every transition made was legal, and none was made twice (no going back and forth)
    for transition in job.transitions:
        assert transition.state in LEGAL[transition.previous]
    assert len(job.transitions) == len({t.state for t in job.transitions})


@given(st.lists(st.sampled_from([STARTED, FAILED, COMPLETED]), max_size=10))
def test_a_cancelled_job_stays_cancelled(facts: list[Fact]) -> None:
    job = new_job()
    job.cancel(NOW)
    for fact in facts:
        assert not job.learn(fact, NOW)
    assert job.state is JobState.CANCELLED


def test_a_late_start_leaves_a_completed_job_completed() -> None:
    job = new_job()
    assert job.learn(COMPLETED, NOW)
    assert not job.learn(STARTED, NOW)
    assert (job.state, job.asset_id) == (JobState.COMPLETED, "asset-1")


def test_retry_starts_a_new_try_that_ignores_the_old_ones_facts() -> None:
    job = new_job()
    job.learn(STARTED, NOW)
    job.learn(FAILED, NOW)
    assert (job.state, job.error_code) == (JobState.FAILED, "CONTENT_REJECTED")
    job.retry(NOW)
    assert (job.state, job.retry_count, job.error_code) == (JobState.PENDING, 1, "")
    assert not job.learn(GenerationFailed(0, "TRANSIENT", "late"), NOW)  # the old try
    assert job.learn(GenerationStarted(1), NOW)
    assert job.learn(AssetCreated("asset-2"), NOW)
    assert job.state is JobState.COMPLETED


@pytest.mark.parametrize("state", [JobState.COMPLETED, JobState.CANCELLED, JobState.FAILED])
def test_only_open_jobs_cancel(state: JobState) -> None:
    job = new_job()
    job.state = state
    with pytest.raises(IllegalTransition):
        job.cancel(NOW)


@pytest.mark.parametrize("state", [JobState.PENDING, JobState.PROCESSING, JobState.COMPLETED])
def test_only_failed_jobs_retry(state: JobState) -> None:
    job = new_job()
    job.state = state
    with pytest.raises(IllegalTransition):
        job.retry(NOW)


def test_timestamps() -> None:
    job = new_job()
    job.learn(STARTED, NOW)
    job.learn(COMPLETED, NOW)
    assert job.start_time == job.complete_time == NOW


EXPIRED_UNSENT = GenerationFailed(0, "START_DEADLINE_EXCEEDED", "not sent by its start deadline")


@pytest.mark.parametrize("before", [JobState.PENDING, JobState.QUEUED])
def test_a_job_unsent_by_its_start_deadline_expires(before: JobState) -> None:
    job = new_job()
    job.state = before
    assert job.learn(EXPIRED_UNSENT, NOW)
    assert (job.state, job.error_code, job.complete_time) == (
        JobState.EXPIRED,
        "START_DEADLINE_EXCEEDED",
        NOW,
    )
    assert job.state.terminal
    # Nothing moves an expired job, and it is not retried (it never failed at a provider).
    assert not job.learn(STARTED, NOW)
    assert not job.learn(COMPLETED, NOW)
    with pytest.raises(IllegalTransition):
        job.retry(NOW)


def test_a_started_job_does_not_expire() -> None:
    job = new_job()
    assert job.learn(STARTED, NOW)
    assert not job.learn(EXPIRED_UNSENT, NOW)
    assert job.state is JobState.PROCESSING


def test_a_retry_runs_without_the_first_tries_deadlines() -> None:
    job = Job.submit(
        user_id="u",
        operation_type=1,
        provider_id="pixverse",
        request={"prompt": "a cat"},
        start_deadline_time=NOW,
        run_deadline_time=NOW,
    )
    assert job.learn(FAILED, NOW)
    job.retry(NOW)
    assert (job.start_deadline_time, job.run_deadline_time) == (None, None)


def test_timings_come_in_any_order_and_the_overhead_is_what_the_provider_did_not_take() -> None:
    job = new_job()
    job.create_time = NOW
    accepted = NOW.replace(second=2)
    finished = NOW.replace(second=7)
    stored = NOW.replace(second=8)
    # The asset first, then the provider's end, then a late start: each time is kept.
    assert job.learn(AssetCreated("a"), stored)
    assert job.overhead() is None
    assert job.learn(GenerationFinished(0, finished), stored)
    assert job.learn(GenerationStarted(0, NOW.replace(second=1), accepted), stored)
    assert job.state is JobState.COMPLETED
    assert job.provider_duration() == timedelta(seconds=5)
    assert job.overhead() == timedelta(seconds=3)  # 8 s in all, 5 of them the provider's
    # Repeats change nothing.
    assert not job.learn(GenerationFinished(0, stored), stored)
    assert not job.learn(GenerationStarted(0, stored, stored), stored)


def test_costs_add_up_over_every_run_and_only_the_latest_runs_last_attempt_is_final() -> None:
    job = Job.submit(user_id="alice", operation_type=1, provider_id="runway", request={})
    now = datetime(2026, 12, 2, tzinfo=UTC)
    assert job.learn(GenerationSettled(0, 0, 0, final=False), now)  # a refused submit
    assert job.learn(GenerationSettled(0, 25, 250_000, final=True), now)
    assert (job.settled_credits, job.settled_micros, job.cost_final) == (25, 250_000, True)
    job.learn(GenerationFailed(0, "TRANSIENT", "x"), now)
    job.retry(now)
    assert job.cost_final is False  # a new run, not settled yet
    # A late settlement of the first run still counts, but does not settle the second.
    job.learn(GenerationSettled(0, 5, 50_000, final=True), now)
    assert (job.settled_credits, job.settled_attempts, job.cost_final) == (30, 3, False)
    job.learn(GenerationSettled(1, 25, 250_000, final=True), now)
    assert (job.settled_credits, job.settled_micros, job.cost_final) == (55, 550_000, True)


def test_live_looks_that_change_nothing_back_off_to_each_states_cap() -> None:
    for state, cap in ((JobState.QUEUED, 1.0), (JobState.PROCESSING, 2.0)):
        waits, wait = [], LIVE_INTERVAL
        for _ in range(6):
            wait = next_live_wait(state, wait, changed=False)
            waits.append(wait)
        assert waits[0] == 2 * LIVE_INTERVAL
        assert waits == sorted(waits)
        assert waits[-1] == cap


@given(st.sampled_from(list(JobState)), st.floats(min_value=0.01, max_value=10.0))
def test_a_change_brings_the_live_look_back_to_its_shortest_wait(
    state: JobState, wait: float
) -> None:
    assert next_live_wait(state, wait, changed=True) == LIVE_INTERVAL
    assert next_live_wait(state, wait, changed=False) <= max(LIVE_INTERVAL, 2.0)


@given(st.integers(min_value=0, max_value=1), st.floats(min_value=0.01, max_value=10.0))
def test_a_job_near_the_front_of_its_line_is_looked_at_without_backing_off(
    position: int, wait: float
) -> None:
    assert next_live_wait(JobState.QUEUED, wait, changed=False, queue_position=position) == (
        LIVE_INTERVAL
    )
    # Further back it backs off as any look that changed nothing.
    assert next_live_wait(JobState.QUEUED, 0.5, changed=False, queue_position=2) == 1.0


@given(st.integers(min_value=2, max_value=10_000), st.floats(min_value=0.01, max_value=10.0))
def test_a_job_further_back_is_looked_at_less_often_changed_or_not(
    position: int, wait: float
) -> None:
    cap = 1.0
    for changed in (True, False):
        after = next_live_wait(JobState.QUEUED, wait, changed=changed, queue_position=position)
        assert LIVE_INTERVAL <= after <= cap
        assert after >= min(cap, LIVE_INTERVAL * position / 2)
    assert next_live_wait(JobState.QUEUED, wait, changed=True, queue_position=8) == cap
    assert next_live_wait(JobState.QUEUED, wait, changed=True, queue_position=2) == LIVE_INTERVAL
