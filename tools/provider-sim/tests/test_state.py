"""The simulator's scripting rules, without HTTP."""

from __future__ import annotations

import pytest

from pixsim_provider_sim.state import Fault, SimState

pytestmark = pytest.mark.unit


def test_a_counted_prompt_fault_meets_only_that_many_submits_of_the_prompt() -> None:
    state = SimState()
    prompt = "job 7 [sim:server_error=2]"
    faults = [state.fault_for("key", prompt) for _ in range(4)]
    assert faults == [Fault.SERVER_ERROR, Fault.SERVER_ERROR, None, None]
    # Another prompt with the same knob has its own count.
    assert state.fault_for("key", "job 8 [sim:server_error=2]") is Fault.SERVER_ERROR
    assert state.prompt_submits == {prompt: 4, "job 8 [sim:server_error=2]": 1}


def test_an_uncounted_prompt_fault_meets_every_submit() -> None:
    state = SimState()
    assert [state.fault_for("key", "x [sim:moderation]") for _ in range(3)] == [
        Fault.MODERATION
    ] * 3


def test_a_prompt_fault_spent_falls_through_to_no_fault_not_to_the_keys() -> None:
    state = SimState()
    state.config("key").fault = Fault.RATE_LIMIT
    state.config("key").fault_count = 1
    prompt = "y [sim:fail=1]"
    assert state.fault_for("key", prompt) is Fault.FAIL
    # The prompt's fault is spent; the key's counted fault is still there for the next.
    assert state.fault_for("key", prompt) is None
    assert state.fault_for("key", "plain") is Fault.RATE_LIMIT
    assert state.fault_for("key", "plain") is None


def test_non_fault_knobs_do_not_script_a_fault() -> None:
    state = SimState()
    assert state.fault_for("key", "z [sim:finish_ms=2000] [sim:seed=3]") is None
    state.reset()
    assert not state.prompt_submits
