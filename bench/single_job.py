"""One job at a time on an idle stack: what the architecture adds to the provider's own time.

Each job is created, waited for (WatchJob) and only then the next one sent, with the
gateway's production check settings (first check after 1 s, backing off to 10 s, checks timed
to the provider's recent durations; 30 s with webhooks). The simulator's tasks take 2 s. The
overhead is CreateJob to COMPLETED (the clip fetched, hashed, probed and stored) minus the
task's own time at the simulator, from its acceptance to its end.

Once for PixVerse (no webhooks: the gateway must check) and once for fal's Pika (webhooks),
after a few jobs of warm-up, so the gateway has the recent durations steady use gives it.
The baseline, in the same run: the same steps in one coroutine, with nothing between them
(bench.baseline_steps: submit, check every 20 ms, stream, hash and record one row), which is
the floor any arrangement of this work pays.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import asyncpg
import httpx

from bench.baseline_steps import output_on_schedule, store, submit, table_sql
from bench.common import bench_stack, percentile, sim_key, use_accounts, verdict, write_result
from pixsim.job.v1 import job_service_pb2 as pb
from pixsim_local.whole_stack import WholeStack
from pixsim_provider_gateway.providers.pixverse import PixverseProvider

TASK_SECONDS = 2.0
JOBS, WARM_UP = 20, 5
BASELINE_CHECK_EVERY = 0.02
BASELINE_TABLE = "single_job_assets"
TARGET_P50_MS = 300.0


@dataclass(frozen=True)
class Overhead:
    before_ms: float
    after_ms: float

    @property
    def total_ms(self) -> float:
        return self.before_ms + self.after_ms


async def overhead_of(stack: WholeStack, prompt: str, began: float, ended: float) -> Overhead:
    """What a job spent outside its task at the simulator (accepted to ended), split into
    before the provider accepted it and after the task ended, in ms."""
    (task,) = await stack.sim_tasks(prompt)
    return Overhead(
        before_ms=(task["created_at"] - began) * 1000, after_ms=(ended - task["ended_at"]) * 1000
    )


def overheads_summary(overheads: list[Overhead]) -> dict[str, Any]:
    totals = [overhead.total_ms for overhead in overheads]
    return {
        "jobs": len(overheads),
        "p50_ms": percentile(totals, 50),
        "p95_ms": percentile(totals, 95),
        "max_ms": max(totals),
        "before_provider_p50_ms": percentile([o.before_ms for o in overheads], 50),
        "after_provider_p50_ms": percentile([o.after_ms for o in overheads], 50),
    }


async def pixsim_overheads(stack: WholeStack, provider: str) -> dict[str, Any]:
    await use_accounts(stack, [(provider, 4)], finish_ms=int(TASK_SECONDS * 1000))
    overheads = []
    for index in range(WARM_UP + JOBS):
        prompt = f"single {provider} {index}"
        created = await stack.create(provider, prompt=prompt)
        job = await stack.until_done(created, timeout=TASK_SECONDS + 60)
        assert job.state == pb.Job.STATE_COMPLETED, job
        if index >= WARM_UP:
            began, ended = (
                stamp.ToDatetime(tzinfo=UTC).timestamp()
                for stamp in (job.create_time, job.complete_time)
            )
            overheads.append(await overhead_of(stack, prompt, began, ended))
    return overheads_summary(overheads)


async def baseline_overheads(stack: WholeStack) -> dict[str, Any]:
    """The same work in one coroutine against the same simulator and cluster."""
    key = "bench-single-baseline"
    await sim_key(stack, key, finish_ms=int(TASK_SECONDS * 1000))
    database = await stack.services.infra.postgres.create_service_database("bench_single")
    provider = PixverseProvider(stack.services.simulator_url, timeout=30)
    pool = await asyncpg.create_pool(database.url, min_size=1, max_size=2)
    overheads = []
    try:
        await pool.execute(table_sql(BASELINE_TABLE))
        async with httpx.AsyncClient(timeout=30) as http:
            for index in range(WARM_UP + JOBS):
                prompt = f"single baseline {index}"
                began = time.time()
                task_id = await submit(provider, key, prompt)
                uri = await output_on_schedule(
                    provider, key, task_id, BASELINE_CHECK_EVERY, BASELINE_CHECK_EVERY
                )
                await store(http, pool, BASELINE_TABLE, f"single-{index}", uri)
                if index >= WARM_UP:
                    overheads.append(await overhead_of(stack, prompt, began, time.time()))
    finally:
        await pool.close()
        await provider.aclose()
    return overheads_summary(overheads)


async def main() -> dict[str, Any]:
    runs: dict[str, Any] = {}
    async with bench_stack() as stack:
        runs["PixSim7, PixVerse (checked)"] = await pixsim_overheads(stack, "pixverse")
        runs["PixSim7, Pika (webhooks)"] = await pixsim_overheads(stack, "pika")
        runs["one coroutine (baseline)"] = await baseline_overheads(stack)
    figures = {"task_seconds": TASK_SECONDS, "runs": runs, "target": {"p50_ms": TARGET_P50_MS}}
    write_result("single_job", figures)
    print(
        f"\n6. A single job on an idle stack: {JOBS} jobs one after another, tasks of "
        f"{TASK_SECONDS:g} s, overhead = create to COMPLETED minus the provider's own time"
    )
    print(f"{'':<30}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}   p50 before / after the provider")
    for label, run in runs.items():
        print(
            f"{label:<30}{run['p50_ms']:>9.0f}{run['p95_ms']:>9.0f}{run['max_ms']:>9.0f}"
            f"   {run['before_provider_p50_ms']:.0f} / {run['after_provider_p50_ms']:.0f}"
        )
    ours = [run for label, run in runs.items() if label.startswith("PixSim7")]
    worst = max(run["p50_ms"] for run in ours)
    floor = runs["one coroutine (baseline)"]["p50_ms"]
    print(
        f"single job: overhead p50 {worst:.0f} ms at worst (target <= {TARGET_P50_MS:.0f}; "
        f"the baseline's {floor:.0f}): {verdict(worst <= TARGET_P50_MS)}"
    )
    return figures
