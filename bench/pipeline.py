"""The whole pipeline against the alternative, and how its cost grows with its work.

PixSim7: jobs through the full stack (CreateJob, job.submitted, the gateway submitting to and
polling the simulator, generation.completed, the asset service downloading, hashing, probing
and storing, asset.created, COMPLETED), 32 in flight, the simulator finishing tasks at once.
Run at 500, 1,000, 2,000 and 4,000 jobs in a row; the 2,000 run is the one compared.

Baseline: an ARQ worker over Redis doing each job's work in one function (bench.arq_baseline),
the same 2,000 jobs at the same 32 in flight, against the same simulator and cluster.

`BENCH_STORAGE=s3` stores the assets in an S3 bucket (a Versity gateway of the run's own), as
production does; the default is local files, as the baseline's worker keeps them.

Overhead per job is CreateJob to COMPLETED (enqueue to finish for ARQ), minus the simulator's
time, which is nil here: what is left is the architecture's own cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from arq import create_pool
from arq.connections import RedisSettings

from bench.common import (
    ROOT,
    bench_stack,
    children_of,
    cpu_of_tree,
    cpu_seconds,
    peak_rss_mib,
    percentile,
    use_accounts,
    verdict,
    write_result,
)
from pixsim_local.processes import ManagedProcess, free_port
from pixsim_local.s3 import S3Server
from pixsim_local.stack import SERVICE_NAMES
from pixsim_local.whole_stack import WholeStack

SIZES = tuple(
    int(n) for n in os.environ.get("BENCH_PIPELINE_SIZES", "500,1000,2000,4000").split(",")
)
COMPARED = int(os.environ.get("BENCH_PIPELINE_COMPARED", "2000"))
IN_FLIGHT = 32
WARM_UP = 50
# Both sides look at a task first after 20 ms, then back off x1.5 to 0.3 s: the simulator
# finishes at once, so the polling schedule is the only provider-side wait.
SETTINGS = {"POLL_FIRST_SECONDS": "0.02", "POLL_CAP_SECONDS": "0.3"}
TARGET_RATIO, TARGET_P50_MS, TARGET_P99_MS = 1.0, 100.0, 500.0
TARGET_FLAT, TARGET_RSS_MIB = 0.20, 200.0
STORAGE = os.environ.get("BENCH_STORAGE", "local")


async def closed_loop(count: int, one: Any) -> float:
    """`count` calls of `one(index)`, IN_FLIGHT at a time; the wall time in seconds."""
    indexes = itertools.count()

    async def worker() -> None:
        while (index := next(indexes)) < count:
            await one(index)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    return time.perf_counter() - started


def processes_of(stack: WholeStack) -> dict[str, int]:
    """The pids whose CPU a run is charged with: each service, the simulator, the broker and
    the PostgreSQL cluster (with its backends)."""
    infra = stack.services.infra
    pids = {name: process.pid for name, process in stack.services.processes.items()}
    assert infra.kafka.process is not None
    assert infra.postgres.process is not None
    return pids | {"kafka": infra.kafka.process.pid, "postgres": infra.postgres.process.pid}


def cpu_by_process(pids: dict[str, int]) -> dict[str, float]:
    return {
        name: cpu_of_tree(pid) if name in ("postgres", "asset") else cpu_seconds(pid)
        for name, pid in pids.items()
    }


async def pixsim_run(stack: WholeStack, count: int, user: str) -> dict[str, Any]:
    caller = stack.auth(user)
    pids = processes_of(stack)
    cpu_before = cpu_by_process(pids)

    async def one(index: int) -> None:
        job = await stack.create("pixverse", prompt=f"bench {user} {index}", metadata=caller)
        await stack.until_done(job, metadata=caller)

    wall = await closed_loop(count, one)
    connection = await asyncpg.connect(stack.services.databases["job"].url)
    try:
        rows = await connection.fetch(
            "SELECT state, extract(epoch FROM complete_time - create_time) * 1000 AS ms"
            " FROM jobs WHERE user_id = $1",
            user,
        )
    finally:
        await connection.close()
    completed = [float(row["ms"]) for row in rows if row["state"] == "COMPLETED"]
    cpu_after = cpu_by_process(pids)
    return summary(count, wall, completed) | {
        "cpu_ms_per_job": {
            name: (cpu_after[name] - cpu_before[name]) * 1000 / count for name in pids
        }
    }


def summary(count: int, wall: float, overheads_ms: list[float]) -> dict[str, Any]:
    return {
        "jobs": count,
        "completed": len(overheads_ms),
        "seconds": wall,
        "jobs_per_second": count / wall,
        "ms_per_job": wall * 1000 / count,
        "overhead_p50_ms": percentile(overheads_ms, 50),
        "overhead_p95_ms": percentile(overheads_ms, 95),
        "overhead_p99_ms": percentile(overheads_ms, 99),
    }


async def arq_run(stack: WholeStack, count: int) -> tuple[dict[str, Any], float]:
    """The baseline's figures for `count` jobs (after a warm-up), and its peak RSS."""
    logs = stack.services.logs
    redis_port = free_port()
    redis = ManagedProcess(
        "redis",
        [
            "redis-server",
            "--port",
            str(redis_port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        logs / "redis.log",
    )
    database = await stack.services.infra.postgres.create_service_database("bench_arq")
    async with httpx.AsyncClient() as client:
        answer = await client.put(
            f"{stack.services.simulator_url}/_sim/keys/bench-arq", json={"finish_ms": 0}
        )
        answer.raise_for_status()
    worker = ManagedProcess(
        "arq-worker",
        [
            sys.executable,
            "-c",
            "from arq.cli import cli; cli()",
            "bench.arq_baseline.WorkerSettings",
        ],
        logs / "arq.log",
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "BENCH_REDIS_PORT": str(redis_port),
            "BENCH_DATABASE_URL": database.url,
            "BENCH_SIMULATOR_URL": stack.services.simulator_url,
        },
    )
    try:
        pool = await create_pool(
            RedisSettings(port=redis_port, conn_retries=50, conn_retry_delay=1)
        )
        overheads: list[float] = []

        def runner(label: str, record: bool) -> Any:
            async def one(index: int) -> None:
                job = await pool.enqueue_job(
                    "generate", f"{label}-{index}", "bench-arq", f"bench arq {label} {index}"
                )
                assert job is not None
                await job.result(timeout=120, poll_delay=0.005)
                info = await job.result_info()
                assert info is not None
                assert info.success, info
                if record:
                    overheads.append((info.finish_time - info.enqueue_time).total_seconds() * 1000)

            return one

        await closed_loop(WARM_UP, runner("warm-up", False))
        wall = await closed_loop(count, runner("measured", True))
        await pool.aclose()
        return summary(count, wall, overheads), peak_rss_mib(worker.pid)
    finally:
        worker.stop()
        redis.stop()


def print_tables(figures: dict[str, Any]) -> None:
    pixsim, arq = figures["pixsim_at_compared"], figures["arq"]
    print(
        f"\n2. The pipeline against an ARQ worker: {COMPARED} jobs, {IN_FLIGHT} in flight, "
        f"the simulator finishing at once, assets stored in {figures['storage']}"
    )
    print(f"{'':<12}{'jobs/s':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}   (overhead per job)")
    for label, row in (("PixSim7", pixsim), ("ARQ+Redis", arq)):
        print(
            f"{label:<12}{row['jobs_per_second']:>8.1f}{row['overhead_p50_ms']:>9.0f}"
            f"{row['overhead_p95_ms']:>9.0f}{row['overhead_p99_ms']:>9.0f}"
        )
    holds = (
        figures["ratio"] >= TARGET_RATIO
        and pixsim["overhead_p50_ms"] <= TARGET_P50_MS
        and pixsim["overhead_p99_ms"] <= TARGET_P99_MS
    )
    print(
        f"pipeline: {figures['ratio']:.2f}x the ARQ baseline's jobs/s (target >= 1.0), overhead "
        f"p50 {pixsim['overhead_p50_ms']:.0f} ms (<= 100), p99 {pixsim['overhead_p99_ms']:.0f} ms "
        f"(<= 500): {verdict(holds)}"
    )
    print(f"\n4. Scale of cost: the same pipeline at {', '.join(map(str, SIZES))} jobs in a row")
    print(f"{'jobs':>6}{'seconds':>9}{'ms/job':>8}{'p50 ms':>8}{'p99 ms':>8}")
    for row in figures["sizes"]:
        print(
            f"{row['jobs']:>6}{row['seconds']:>9.1f}{row['ms_per_job']:>8.1f}"
            f"{row['overhead_p50_ms']:>8.0f}{row['overhead_p99_ms']:>8.0f}"
        )
    print(
        f"CPU ms per job at {COMPARED}: "
        + ", ".join(
            f"{k} {v:.1f}" for k, v in figures["pixsim_at_compared"]["cpu_ms_per_job"].items()
        )
    )
    rss = dict(figures["peak_rss_mib"])
    decoders = rss.pop("asset decoders", 0)
    each = rss.pop("asset decoder (each)", 0.0)
    print(
        "peak RSS (MiB): "
        + ", ".join(f"{k} {v:.0f}" for k, v in rss.items())
        + f"; the asset service's decoder processes {each:.0f} each, {decoders:.0f} of them"
    )
    services_rss = [v for k, v in figures["peak_rss_mib"].items() if k in SERVICE_NAMES]
    holds = figures["spread"] <= TARGET_FLAT and max(services_rss) <= TARGET_RSS_MIB
    print(
        f"scale: ms/job spread {figures['spread']:.0%} (target <= 20%), largest service "
        f"{max(services_rss):.0f} MiB (target < 200): {verdict(holds)}"
    )


@contextlib.asynccontextmanager
async def storage_settings() -> AsyncIterator[dict[str, str]]:
    """The asset service's storage settings for `BENCH_STORAGE`, and its server if any."""
    if STORAGE == "local":
        yield {}
        return
    run_dir = Path(tempfile.mkdtemp(prefix="pixsim-bench-s3-"))
    server = await S3Server.start(run_dir, free_port())
    try:
        await server.create_bucket("bench")
        yield server.settings("bench")
    finally:
        server.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


async def main() -> dict[str, Any]:
    async with storage_settings() as storage, bench_stack(SETTINGS | storage) as stack:
        await use_accounts(stack, [("pixverse", 64)], finish_ms=0)
        await pixsim_run(stack, WARM_UP, "bench-warm-up")
        sizes = [await pixsim_run(stack, size, f"bench-{size}") for size in SIZES]
        rss = {name: peak_rss_mib(stack.services.processes[name].pid) for name in SERVICE_NAMES}
        # The asset service decodes in worker processes of its own (recycled every few
        # hundred files): the largest peak among those alive at the end, and how many.
        decoders = [peak_rss_mib(pid) for pid in children_of(stack.services.processes["asset"].pid)]
        rss["asset decoder (each)"] = max(decoders, default=0.0)
        rss["asset decoders"] = len(decoders)
        arq, arq_rss = await arq_run(stack, COMPARED)
    rss["arq-worker"] = arq_rss
    compared = (
        next(row for row in sizes if row["jobs"] == COMPARED) if COMPARED in SIZES else sizes[-1]
    )
    per_job = [row["ms_per_job"] for row in sizes]
    figures = {
        "storage": STORAGE,
        "in_flight": IN_FLIGHT,
        "settings": SETTINGS,
        "sizes": sizes,
        "pixsim_at_compared": compared,
        "arq": arq,
        "ratio": compared["jobs_per_second"] / arq["jobs_per_second"],
        "spread": max(per_job) / min(per_job) - 1,
        "peak_rss_mib": rss,
        "target": {
            "ratio": TARGET_RATIO,
            "overhead_p50_ms": TARGET_P50_MS,
            "overhead_p99_ms": TARGET_P99_MS,
            "spread": TARGET_FLAT,
            "rss_mib": TARGET_RSS_MIB,
        },
    }
    write_result("pipeline", figures)
    print_tables(figures)
    return figures
