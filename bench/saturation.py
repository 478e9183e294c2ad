"""Keeping providers busy: the simulator takes 2 s per task, the accounts' concurrency sums to
C, so no scheduler can finish more than C / 2 s tasks per second. With 1 and then 2 gateway
replicas, a backlog of jobs goes through and the achieved rate is printed against that bound.

The backlog is queued whole before any of it is sent (the provider paused meanwhile), so the
window measures how the gateway keeps slots busy with work waiting, not how fast jobs
arrive. The window is the gateway's own record: from the first submission sent to the last
seen finished, so the job and asset services' work around it is not counted.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import asyncpg

from bench.common import bench_stack, use_accounts, verdict, write_result
from pixsim.job.v1 import job_service_pb2 as pb
from pixsim.provider.v1 import provider_gateway_service_pb2 as gw_pb
from pixsim_local.processes import ManagedProcess, free_port
from pixsim_local.stack import SERVICES, service_command
from pixsim_local.whole_stack import WholeStack

TASK_SECONDS = 2.0
ACCOUNTS = (("pixverse", 8), ("pixverse", 8))  # C = 16
CAPACITY = sum(concurrency for _, concurrency in ACCOUNTS)
WAVES = int(os.environ.get("BENCH_SATURATION_WAVES", "8"))  # jobs = C x WAVES
TARGET = 0.95  # issue 22
# A backlog not through this long after its ideal time is reported as stalled, not waited on.
STALL_SECONDS = 60
GATEWAY = next(spec for spec in SERVICES if spec.name == "provider-gateway")


async def queued_whole(connection: asyncpg.Connection, ids: list[str]) -> None:
    """Wait until every job of the backlog waits at the gateway (`connection`: its
    database)."""
    deadline = time.monotonic() + STALL_SECONDS
    while await connection.fetchval(
        "SELECT count(*) FROM provider_submissions WHERE job_id = ANY($1::uuid[])", ids
    ) < len(ids):
        if time.monotonic() > deadline:
            raise TimeoutError("the backlog did not reach the gateway")
        await asyncio.sleep(0.1)


async def backlog(stack: WholeStack, user: str) -> dict[str, Any]:
    caller = stack.auth(user)
    admin = stack.auth("bench-admin", admin=True)
    count = CAPACITY * WAVES
    limit = asyncio.Semaphore(32)
    provider = gw_pb.PauseProviderRequest(name="providers/pixverse", reason="queueing a backlog")
    await stack.gateway.PauseProvider(provider, metadata=admin)

    async def one(index: int) -> pb.Job:
        async with limit:
            return await stack.create(
                "pixverse", prompt=f"saturation {user} {index}", metadata=caller
            )

    jobs = await asyncio.gather(*(one(index) for index in range(count)))
    ids = [job.name.removeprefix("jobs/") for job in jobs]
    connection = await asyncpg.connect(stack.services.databases["provider-gateway"].url)
    try:
        await queued_whole(connection, ids)
        resume = gw_pb.ResumeProviderRequest(name="providers/pixverse")
        await stack.gateway.ResumeProvider(resume, metadata=admin)
        deadline = time.monotonic() + STALL_SECONDS + count * TASK_SECONDS / CAPACITY
        while True:
            done = await connection.fetchval(
                "SELECT count(*) FROM provider_submissions"
                " WHERE job_id = ANY($1::uuid[]) AND state = 'SUCCEEDED'",
                ids,
            )
            if done == count or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        window = await connection.fetchval(
            "SELECT extract(epoch FROM max(complete_time) - min(submit_time))"
            " FROM provider_submissions WHERE job_id = ANY($1::uuid[])",
            ids,
        )
    finally:
        await connection.close()
    achieved = done / float(window)
    possible = CAPACITY / TASK_SECONDS
    return {
        "jobs": count,
        "finished": done,
        "window_s": float(window),
        "achieved_per_s": achieved,
        "possible_per_s": possible,
        "ratio": achieved / possible,
    }


async def main() -> dict[str, Any]:
    runs: dict[str, Any] = {}
    async with bench_stack() as stack:
        await use_accounts(stack, ACCOUNTS, finish_ms=int(TASK_SECONDS * 1000))
        runs["1 replica"] = await backlog(stack, "saturation-1")
        second = ManagedProcess(
            "provider-gateway-2",
            service_command(GATEWAY, "serve"),
            stack.services.logs / "provider-gateway-2.log",
            env={
                **stack.services.envs["provider-gateway"],
                "PIXSIM_GATEWAY_GRPC_PORT": str(free_port()),
            },
        )
        try:
            await asyncio.sleep(3)  # started, in the consumer group, looping
            second.check_alive()
            runs["2 replicas"] = await backlog(stack, "saturation-2")
        finally:
            second.stop()
    figures = {"task_seconds": TASK_SECONDS, "capacity": CAPACITY, "runs": runs, "target": TARGET}
    write_result("saturation", figures)
    print(
        f"\n3. Keeping providers busy: tasks take {TASK_SECONDS:g} s, accounts' concurrency "
        f"sums to {CAPACITY}, so at most {CAPACITY / TASK_SECONDS:g} tasks/s"
    )
    print(
        f"{'':<12}{'jobs':>6}{'done':>6}{'window s':>10}{'tasks/s':>9}{'possible':>10}{'ratio':>7}"
    )
    for label, run in runs.items():
        print(
            f"{label:<12}{run['jobs']:>6}{run['finished']:>6}{run['window_s']:>10.1f}{run['achieved_per_s']:>9.2f}"
            f"{run['possible_per_s']:>10.2f}{run['ratio']:>7.2f}"
        )
    worst = min(run["ratio"] for run in runs.values())
    print(
        f"saturation: achieved/possible {worst:.2f} at worst (target >= {TARGET}): "
        f"{verdict(worst >= TARGET)}"
    )
    return figures
