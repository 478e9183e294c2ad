"""The chaos run (pixsim_local.chaos): jobs with scripted provider faults through the whole
stack (the asset service and the gateway as two replicas each, assets over S3) while service
processes are SIGKILLed and restarted, the broker and the database cluster crash once each,
and one provider is down for a while (its jobs carry a fallback); afterwards nothing is
lost, duplicated or stuck, and every job with a fallback ended as scripted.

The suite runs a short version; `make chaos` runs 1,000 jobs (PIXSIM_CHAOS_JOBS).
"""

from __future__ import annotations

import os

import pytest

from pixsim_local.chaos import ChaosPlan, ChaosRun, chaos_stack

pytestmark = pytest.mark.e2e

JOBS = int(os.environ.get("PIXSIM_CHAOS_JOBS", "150"))
# The short run takes about as long as a full cycle of faults needs; the full one a fault
# every 3 s while its jobs are submitted.
PLAN = ChaosPlan(jobs=JOBS, rate=10.0, every=2.0 if JOBS < 500 else 3.0)


@pytest.mark.timeout(PLAN.drain_timeout + JOBS / PLAN.rate + 300)
async def test_a_chaos_run_loses_duplicates_and_strands_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with chaos_stack() as stack:
        report = await ChaosRun(stack, PLAN).run()
    table = report.table()
    with capsys.disabled():
        print("\n" + table)
    assert report.holds, table
    assert report.outage[1] > report.outage[0]  # the provider was down while jobs came
    # Every kind of fault was exercised, each service was killed at least once.
    assert {action[1] for action in report.actions} >= {
        "job",
        "asset",
        "asset#2",
        "provider-gateway",
        "provider-gateway#2",
        "scene",
        "kafka",
        "postgres",
    }
