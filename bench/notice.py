"""Noticing finished work: 30-second tasks at fal (Pika), and the time from each task's end at
the simulator to its job's COMPLETED (the job's `complete_time`: the asset fetched, hashed,
probed and stored too), with the production poll settings (first poll after 1 s, backing
off by half again to 10 s). Once with fal's webhooks (the first poll then only after 30 s,
as the fallback), once polled alone, side by side.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bench.common import bench_stack, percentile, use_accounts, verdict, write_result
from pixsim.job.v1 import job_service_pb2 as pb
from pixsim_local.whole_stack import WholeStack

TASK_SECONDS = 30.0
JOBS = 20
# One job a second, so tasks end one at a time, as they do in steady use (all at once, the
# figure is the queue behind twenty downloads, not the notice).
SUBMIT_EVERY = 1.0
POLLING = {"POLL_FIRST_SECONDS": "1", "POLL_CAP_SECONDS": "10", "CALLBACK_POLL_FIRST_SECONDS": "30"}
TARGET_CALLBACK_P50, TARGET_CALLBACK_P99, TARGET_POLL_P50 = 0.3, 1.0, 2.0


async def notice_latencies(stack: WholeStack, label: str) -> dict[str, Any]:
    await use_accounts(stack, [("pika", JOBS)], finish_ms=int(TASK_SECONDS * 1000))
    prompts = [f"notice {label} {n}" for n in range(JOBS)]
    jobs = []
    for prompt in prompts:
        jobs.append(await stack.create("pika", prompt=prompt))
        await asyncio.sleep(SUBMIT_EVERY)
    done = await asyncio.gather(*(stack.until_done(j, timeout=TASK_SECONDS * 4) for j in jobs))
    latencies = []
    for prompt, job in zip(prompts, done, strict=True):
        assert job.state == pb.Job.STATE_COMPLETED, job
        (task,) = await stack.sim_tasks(prompt)
        latencies.append(job.complete_time.ToDatetime().timestamp() - task["ended_at"])
    polls = [task["polls"] for p in prompts for task in await stack.sim_tasks(p)]
    return {
        "jobs": JOBS,
        "p50_s": percentile(latencies, 50),
        "p99_s": percentile(latencies, 99),
        "max_s": max(latencies),
        "polls_per_task": sum(polls) / len(polls),
    }


async def main() -> dict[str, Any]:
    runs: dict[str, Any] = {}
    async with bench_stack(POLLING) as stack:
        runs["webhooks"] = await notice_latencies(stack, "webhooks")
    async with bench_stack(POLLING | {"CALLBACK_BASE_URL": ""}) as stack:
        runs["polling"] = await notice_latencies(stack, "polling")
    figures = {"task_seconds": TASK_SECONDS, "runs": runs}
    write_result("notice", figures)
    print(
        f"\n5. Noticing finished work: {JOBS} fal tasks of {TASK_SECONDS:g} s, from the task's "
        "end at the provider to the job's COMPLETED"
    )
    print(f"{'':<10}{'p50 s':>8}{'p99 s':>8}{'max s':>8}{'polls/task':>12}")
    for label, run in runs.items():
        print(
            f"{label:<10}{run['p50_s']:>8.3f}{run['p99_s']:>8.3f}{run['max_s']:>8.3f}"
            f"{run['polls_per_task']:>12.1f}"
        )
    hooked, polled = runs["webhooks"], runs["polling"]
    ratio = polled["p50_s"] / max(hooked["p50_s"], 1e-3)
    met = (
        hooked["p50_s"] <= TARGET_CALLBACK_P50
        and hooked["p99_s"] <= TARGET_CALLBACK_P99
        and polled["p50_s"] <= TARGET_POLL_P50
    )
    print(
        f"notice: webhooks p50 {hooked['p50_s']:.3f} s, p99 {hooked['p99_s']:.3f} s; polling p50 "
        f"{polled['p50_s']:.3f} s ({ratio:.0f}x slower; targets {TARGET_CALLBACK_P50}/"
        f"{TARGET_CALLBACK_P99} s and {TARGET_POLL_P50} s): {verdict(met)}"
    )
    return figures
