"""The chaos plan is decided before the run: every target is killed at least once, and the
broker and the database crash exactly once each, whatever the seed."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from pixsim_local.chaos import ChaosPlan

pytestmark = pytest.mark.unit

TARGETS = ["job", "asset", "asset#2", "provider-gateway", "scene"]


@pytest.mark.parametrize("jobs", [10, 150, 1000])
def test_every_target_is_hit_and_each_crash_happens_once(jobs: int) -> None:
    plan = ChaosPlan(jobs=jobs, rate=10.0, every=2.0)
    for seed in range(50):
        check(plan, plan.actions(random.Random(seed), TARGETS), jobs)


def check(plan: ChaosPlan, actions: list[tuple[float, str]], jobs: int) -> None:
    hits = Counter(what for _, what in actions)
    assert set(hits) == {*TARGETS, "kafka", "postgres"}
    assert hits["kafka"] == hits["postgres"] == 1
    kinds = [what for _, what in actions]
    assert kinds.index("kafka") < kinds.index("postgres")
    assert [at for at, _ in actions] == [plan.every * (k + 1) for k in range(len(actions))]
    assert len(actions) == max(len(TARGETS) + 2, int(jobs / plan.rate / plan.every))
