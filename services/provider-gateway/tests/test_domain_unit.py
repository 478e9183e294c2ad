"""The gateway's pure decisions and the credentials cipher."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pixsim_provider_gateway.crypto import CredentialCipher, new_key
from pixsim_provider_gateway.domain import (
    AccountEffect,
    AttemptAction,
    ErrorKind,
    Expected,
    RetryPolicy,
    first_poll_delay,
    judge,
    next_poll_delay,
    poll_delay,
    retry_delay,
    unusable_output,
    unusable_task_id,
)
from pixsim_provider_gateway.service.dispatch import IDLE_NOTHING_WAITING, idle_after
from pixsim_provider_gateway.service.timing import IDLE_NOTHING_RUNNING, pause_after

pytestmark = pytest.mark.unit
POLICY = RetryPolicy(max_retries=2, default_cooldown_seconds=30)


@pytest.mark.parametrize(
    ("kind", "attempt", "retry_after", "action", "effect", "code"),
    [
        (ErrorKind.RATE_LIMITED, 0, 7.0, AttemptAction.REQUEUE, AccountEffect.COOLDOWN, ""),
        (ErrorKind.ACCOUNT_EXHAUSTED, 0, None, AttemptAction.REQUEUE, AccountEffect.EXHAUSTED, ""),
        (ErrorKind.ACCOUNT_INVALID, 0, None, AttemptAction.REQUEUE, AccountEffect.INVALID, ""),
        (ErrorKind.TRANSIENT, 0, None, AttemptAction.RETRY, AccountEffect.NONE, ""),
        (ErrorKind.TRANSIENT, 2, None, AttemptAction.FAIL, AccountEffect.NONE, "RETRIES_EXHAUSTED"),
        (
            ErrorKind.CONTENT_REJECTED,
            0,
            None,
            AttemptAction.FAIL,
            AccountEffect.NONE,
            "CONTENT_REJECTED",
        ),
        (
            ErrorKind.INVALID_PARAMETERS,
            0,
            None,
            AttemptAction.FAIL,
            AccountEffect.NONE,
            "INVALID_PARAMETERS",
        ),
    ],
)
def test_judge(
    kind: ErrorKind,
    attempt: int,
    retry_after: float | None,
    action: AttemptAction,
    effect: AccountEffect,
    code: str,
) -> None:
    verdict = judge(kind, retry_attempt=attempt, retry_after=retry_after, policy=POLICY)
    assert (verdict.action, verdict.account, verdict.error_code) == (action, effect, code)


@pytest.mark.parametrize(
    "kind", [ErrorKind.RATE_LIMITED, ErrorKind.ACCOUNT_EXHAUSTED, ErrorKind.ACCOUNT_INVALID]
)
def test_an_accepted_task_failing_for_its_account_is_a_new_attempt(kind: ErrorKind) -> None:
    retry = judge(kind, retry_attempt=0, retry_after=5, policy=POLICY, accepted=True)
    assert (retry.action, retry.account) == (AttemptAction.RETRY, AccountEffect.NONE)
    last = judge(kind, retry_attempt=2, retry_after=5, policy=POLICY, accepted=True)
    assert (last.action, last.error_code) == (AttemptAction.FAIL, "RETRIES_EXHAUSTED")
    moderated = judge(
        ErrorKind.CONTENT_REJECTED, retry_attempt=0, retry_after=None, policy=POLICY, accepted=True
    )
    assert (moderated.action, moderated.error_code) == (AttemptAction.FAIL, "CONTENT_REJECTED")


def test_a_429_without_retry_after_cools_down_for_the_default() -> None:
    verdict = judge(ErrorKind.RATE_LIMITED, retry_attempt=0, retry_after=None, policy=POLICY)
    assert verdict.cooldown_seconds == 30
    honoured = judge(ErrorKind.RATE_LIMITED, retry_attempt=0, retry_after=7, policy=POLICY)
    assert honoured.cooldown_seconds == 7


@given(st.integers(min_value=1, max_value=50))
def test_retry_delays_stay_within_exponential_bounds(attempt: int) -> None:
    policy = RetryPolicy(retry_base_seconds=1, retry_cap_seconds=60)
    delay = retry_delay(attempt, policy)
    assert 0 <= delay <= min(60, 2**attempt)


def test_poll_delays_back_off_to_the_cap() -> None:
    policy = RetryPolicy(poll_first_seconds=1, poll_cap_seconds=10)
    rng = random.Random(1)
    delays = [poll_delay(n, policy, rng) for n in range(12)]
    assert 0.9 <= delays[0] <= 1.1
    assert all(d <= 11 for d in delays)
    assert delays[-1] >= 9  # reached the cap


def checks_of(
    task_seconds: float, expected: float, policy: RetryPolicy, earliest: float = 0.0
) -> list[float]:
    """When the checks of a task that ends at `task_seconds` come, up to the one that sees
    it ended, with its kind expected to take `expected` (a tenth of them `earliest`)."""
    known = Expected(expected, earliest)
    at = first_poll_delay(policy, callbacks=False, expected=known)
    checks = [at]
    while at < task_seconds:
        at += next_poll_delay(len(checks), policy, elapsed=at, expected=known)
        checks.append(at)
    return checks


def test_checks_are_timed_to_the_expected_end_then_close_together() -> None:
    policy = RetryPolicy(poll_first_seconds=1, poll_cap_seconds=10, poll_min_seconds=0.1)
    # A 30 s task expected at 30.45 s (the median runs half a step long): checks the cap
    # apart until its end is near (a wrong expectation costs at most the cap), one just
    # before the end, and the next sees it, less than a step (0.9 s) late.
    checks = checks_of(30.0, 30.45, policy)
    assert checks[:2] == [10, 20]
    assert 29.9 <= checks[-2] <= 30.0
    assert len(checks) == 4
    assert checks[-1] - 30.0 < 0.92
    # Without it, the plain backoff is 10 s apart by then.
    plain = [poll_delay(n, policy, random.Random(1)) for n in range(12)]
    assert plain[-1] >= 9
    # A 2 s task is met within the minimum step.
    short = checks_of(2.0, 2.05, policy)
    assert short[-1] - 2.0 <= 0.1 + 1e-9


def test_no_check_comes_before_the_earliest_tenth_of_such_tasks_has_ended() -> None:
    policy = RetryPolicy(poll_first_seconds=1, poll_cap_seconds=10, poll_min_seconds=0.1)
    # 30 s tasks of which a tenth end by 25 s: the cap counts from 25 s, not from the send.
    checks = checks_of(30.0, 30.45, policy, earliest=25.0)
    assert checks[0] == 25.0
    assert len(checks) == 3
    assert checks[-1] - 30.0 < 0.92
    # 2 s tasks, a tenth of them done by 1.95 s, with a test stack's 0.3 s cap: two checks,
    # not one every 0.3 s from the send (seven).
    assert len(checks_of(2.0, 2.02, RetryPolicy(poll_cap_seconds=0.3), earliest=1.95)) == 2
    assert len(checks_of(2.0, 2.02, RetryPolicy(poll_cap_seconds=0.3))) == 8
    # One that ends before nearly all its kind is seen when they end, then the cap applies.
    early = checks_of(10.0, 30.45, policy, earliest=25.0)
    assert early == [25.0]
    # Timed from the send: a submit call that took 1 s brings the first check 1 s sooner.
    assert first_poll_delay(
        policy, callbacks=False, expected=Expected(30.45, 25), elapsed=1.0
    ) == pytest.approx(24.0)
    # A provider that reports progress is looked at from the start, the cap apart.
    assert first_poll_delay(
        policy, callbacks=False, expected=Expected(30.45, 25), reports_progress=True
    ) == pytest.approx(10)


def test_a_task_longer_than_expected_is_checked_less_often_as_it_runs_late() -> None:
    policy = RetryPolicy(poll_first_seconds=1, poll_cap_seconds=10, poll_min_seconds=0.1)
    checks = checks_of(120.0, 30.0, policy)
    gaps = [b - a for a, b in itertools.pairwise(checks)]
    near_end = [gap for at, gap in zip(checks, gaps, strict=False) if 30 <= at < 37.5]
    assert near_end
    assert all(gap == pytest.approx(0.9) for gap in near_end)  # 3 % of it
    assert max(gaps) <= 10  # never past the cap
    assert gaps[-1] > near_end[0]  # backing off once well past it
    assert len(checks) < 40


def test_reported_progress_says_when_the_task_will_end() -> None:
    policy = RetryPolicy(poll_first_seconds=1, poll_cap_seconds=10, poll_min_seconds=0.1)
    # Half way after 4 s: 4 s left, of 8 s; looked at again half a step (0.12 s) before.
    assert next_poll_delay(3, policy, elapsed=4, progress=0.5) == pytest.approx(3.88)
    # Too little progress to tell: the plain backoff, capped.
    assert next_poll_delay(3, policy, elapsed=8, progress=0.01) <= 10 * 1.1
    # A callback provider's first check is only the fallback, expected end or not.
    assert first_poll_delay(policy, callbacks=True, expected=Expected(2, 1.9)) == 30


@given(
    elapsed=st.floats(0, 1e6),
    durations=st.one_of(st.none(), st.tuples(st.floats(0, 1e6), st.floats(0, 1e6))),
    progress=st.one_of(st.none(), st.floats(0, 1)),
    polls=st.integers(0, 10_000),
)
def test_a_check_is_never_sooner_than_the_minimum_or_later_than_the_cap(
    elapsed: float,
    durations: tuple[float, float] | None,
    progress: float | None,
    polls: int,
) -> None:
    """Later than the cap only while the earliest tenth of such tasks is still running."""
    policy = RetryPolicy(poll_first_seconds=1, poll_cap_seconds=10, poll_min_seconds=0.1)
    expected = Expected(max(durations), min(durations)) if durations else None
    delay = next_poll_delay(polls, policy, elapsed=elapsed, expected=expected, progress=progress)
    not_yet = expected.earliest - elapsed if expected else 0.0
    assert 0.05 - 1e-9 <= delay <= max(11, not_yet)
    assert delay <= 11 or not_yet >= delay


def test_credentials_round_trip_and_are_bound_to_their_account() -> None:
    cipher = CredentialCipher(f"k1:{new_key()}")
    key_id, sealed = cipher.encrypt({"api_key": "secret"}, "account-1")
    assert b"secret" not in sealed
    assert cipher.decrypt(key_id, sealed, "account-1") == {"api_key": "secret"}
    with pytest.raises(ValueError, match="do not decrypt"):
        cipher.decrypt(key_id, sealed, "account-2")  # copied onto another account


def test_rotation_new_key_encrypts_old_key_still_decrypts() -> None:
    old = f"old:{new_key()}"
    key_id, sealed = CredentialCipher(old).encrypt({"api_key": "a"}, "acc")
    rotated = CredentialCipher(f"new:{new_key()},{old}")
    assert rotated.decrypt(key_id, sealed, "acc") == {"api_key": "a"}
    assert rotated.encrypt({"api_key": "a"}, "acc")[0] == "new"
    with pytest.raises(ValueError, match="not configured"):
        CredentialCipher(f"other:{new_key()}").decrypt(key_id, sealed, "acc")


@pytest.mark.parametrize("keys", ["", "nokey", "k:bm90LWEta2V5"])
def test_bad_key_settings_are_refused(keys: str) -> None:
    with pytest.raises(ValueError, match="key"):
        CredentialCipher(keys)


@pytest.mark.parametrize(
    ("uri", "usable"),
    [
        ("https://cdn.example/o/1.mp4", True),
        ("http://127.0.0.1:8300/_sim/media/x.mp4", True),
        ("data:video/mp4;base64,AAAA", False),
        ("https://cdn.example/" + "a" * 5000, False),
        ("https://cdn.example/x\x00.mp4", False),
        ("", False),
    ],
)
def test_a_result_url_we_cannot_pass_on_is_unusable(uri: str, usable: bool) -> None:
    assert (unusable_output(uri) is None) is usable


@pytest.mark.parametrize(
    ("task_id", "usable"),
    [
        ("17f20503-6c24-4c16-946b-35dbbce2af2f", True),
        ("123456", True),
        ("", False),
        ("x" * 300, False),
    ],
)
def test_a_task_id_we_cannot_poll_by_is_unusable(task_id: str, usable: bool) -> None:
    assert (unusable_task_id(task_id) is None) is usable


@given(st.one_of(st.none(), st.floats(min_value=-60, max_value=3600)))
def test_idle_loops_sleep_within_their_bounds_and_no_longer_than_the_next_turn(
    due_in: float | None,
) -> None:
    dispatch_sleep = idle_after(due_in)
    poll_sleep = pause_after(due_in, 0.2)
    assert 0.005 <= dispatch_sleep <= IDLE_NOTHING_WAITING
    assert 0.005 <= poll_sleep <= IDLE_NOTHING_RUNNING
    if due_in is None:  # nothing waits or runs: NOTIFY or this replica's own start wakes it
        assert (dispatch_sleep, poll_sleep) == (IDLE_NOTHING_WAITING, IDLE_NOTHING_RUNNING)
    elif due_in > 0.005:
        assert dispatch_sleep <= due_in
        assert poll_sleep <= due_in
    if due_in is not None:
        assert poll_sleep <= 0.2  # another replica's task may fall due sooner
