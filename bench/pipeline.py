"""The whole pipeline against the alternative, and how its cost grows with its work.

PixSim7: jobs through the full stack (CreateJob, job.submitted, the gateway submitting to and
polling the simulator, generation.completed, the asset service downloading, hashing, probing
and storing, asset.created, COMPLETED), 32 in flight, the simulator finishing tasks at once.
Run at 500, 1,000, 2,000 and 4,000 jobs in a row; the 2,000 run is the one compared.

Baselines, the same 2,000 jobs at the same 32 in flight, against the same simulator and
cluster: an ARQ worker over Redis doing each job's work in one function (bench.arq_baseline),
fast and not durable; and a Temporal workflow of activities on a Temporal dev server
(bench.temporal_baseline), durable as PixSim7 is.

`BENCH_STORAGE=s3` stores the assets in an S3 bucket (a Versity gateway of the run's own), as
production does; the default is local files, as the baseline's worker keeps them.

Overhead per job is CreateJob to COMPLETED (enqueue to finish for ARQ, a workflow's start to
its close for Temporal), minus the simulator's time, which is nil here: what is left is the
architecture's own cost. CPU per job is summed over every process a side runs, the
simulator and the PostgreSQL cluster included.
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
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
from arq import create_pool
from arq.connections import RedisSettings
from temporalio.client import Client, WorkflowFailureError

from bench import temporal_baseline
from bench.common import (
    ROOT,
    TEMPORAL,
    bench_stack,
    children_of,
    cpu_of_tree,
    cpu_seconds,
    peak_rss_mib,
    percentile,
    sim_key,
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
TARGET_RATIO, TARGET_CPU_MS = 0.5, 35.0
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
    return summary(count, wall, completed, cpu_per_job(pids, cpu_before, count))


def cpu_per_job(pids: dict[str, int], before: dict[str, float], count: int) -> dict[str, float]:
    """CPU ms per job of each process since `before` was taken."""
    after = cpu_by_process(pids)
    return {name: (after[name] - before[name]) * 1000 / count for name in pids}


def summary(
    count: int, wall: float, overheads_ms: list[float], cpu_ms: dict[str, float]
) -> dict[str, Any]:
    return {
        "jobs": count,
        "completed": len(overheads_ms),
        "seconds": wall,
        "jobs_per_second": count / wall,
        "ms_per_job": wall * 1000 / count,
        "overhead_p50_ms": percentile(overheads_ms, 50),
        "overhead_p95_ms": percentile(overheads_ms, 95),
        "overhead_p99_ms": percentile(overheads_ms, 99),
        "cpu_ms_per_job": cpu_ms,
        "cpu_ms_per_job_total": sum(cpu_ms.values()),
    }


async def baseline(stack: WholeStack, name: str) -> tuple[dict[str, int], dict[str, str]]:
    """What a baseline needs of the run: the pids it is charged with besides its own
    processes (the cluster and the simulator), and its processes' environment, with a
    database of its own and a simulator key `bench-<name>` whose tasks finish at once."""
    database = await stack.services.infra.postgres.create_service_database(f"bench_{name}")
    await sim_key(stack, f"bench-{name}", finish_ms=0)
    shared = {
        "postgres": processes_of(stack)["postgres"],
        "provider-sim": stack.services.processes["provider-sim"].pid,
    }
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "BENCH_DATABASE_URL": database.url,
        "BENCH_SIMULATOR_URL": stack.services.simulator_url,
    }
    return shared, env


async def measured(
    count: int, pids: dict[str, int], one: Callable[[str, int], Awaitable[float | None]]
) -> dict[str, Any]:
    """A warm-up of WARM_UP jobs, then `count` measured: `one(label, index)` runs a job and
    answers its overhead in ms, or None when it did not complete."""
    await closed_loop(WARM_UP, lambda index: one("warm-up", index))
    overheads: list[float] = []

    async def recorded(index: int) -> None:
        if (overhead := await one("measured", index)) is not None:
            overheads.append(overhead)

    cpu_before = cpu_by_process(pids)
    wall = await closed_loop(count, recorded)
    return summary(count, wall, overheads, cpu_per_job(pids, cpu_before, count))


async def arq_run(stack: WholeStack, count: int) -> tuple[dict[str, Any], float]:
    """The ARQ baseline's figures for `count` jobs, and its worker's peak RSS."""
    logs = stack.services.logs
    redis_port = free_port()
    shared, env = await baseline(stack, "arq")
    redis = ManagedProcess(
        "redis",
        [
            "redis-server",
            *("--port", str(redis_port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no"),
        ],
        logs / "redis.log",
    )
    worker = ManagedProcess(
        "arq-worker",
        [
            sys.executable,
            "-c",
            "from arq.cli import cli; cli()",
            "bench.arq_baseline.WorkerSettings",
        ],
        logs / "arq.log",
        env=env | {"BENCH_REDIS_PORT": str(redis_port)},
    )
    try:
        pool = await create_pool(
            RedisSettings(port=redis_port, conn_retries=50, conn_retry_delay=1)
        )

        async def one(label: str, index: int) -> float | None:
            job = await pool.enqueue_job(
                "generate", f"{label}-{index}", "bench-arq", f"bench arq {label} {index}"
            )
            assert job is not None
            # A job that failed (its result may not even unpickle) counts as not
            # completed, as PixSim7's failed jobs do.
            with contextlib.suppress(Exception):
                await job.result(timeout=120, poll_delay=0.005)
            info = await job.result_info()
            if info is None or not info.success:
                return None
            return (info.finish_time - info.enqueue_time).total_seconds() * 1000

        pids = shared | {"arq-worker": worker.pid, "redis": redis.pid}
        figures = await measured(count, pids, one)
        await pool.aclose()
        return figures, peak_rss_mib(worker.pid)
    finally:
        worker.stop()
        redis.stop()


async def temporal_client(address: str, server: ManagedProcess) -> Client:
    """A client of the dev server once it answers (it takes a few seconds to start)."""
    for _ in range(120):
        if not server.alive():
            raise RuntimeError(f"the Temporal dev server exited; see {server.log_path}")
        try:
            return await Client.connect(address)
        except RuntimeError:
            await asyncio.sleep(0.5)
    raise RuntimeError(f"the Temporal dev server did not answer; see {server.log_path}")


async def temporal_run(stack: WholeStack, count: int) -> tuple[dict[str, Any], float]:
    """The Temporal baseline's figures for `count` jobs, and its worker's peak RSS."""
    logs = stack.services.logs
    address = f"127.0.0.1:{free_port()}"
    shared, env = await baseline(stack, "temporal")
    server = ManagedProcess(
        "temporal",
        [
            str(TEMPORAL),
            *("server", "start-dev", "--headless", "--log-level", "warn"),
            *("--ip", "127.0.0.1", "--port", address.rpartition(":")[2]),
            *("--http-port", str(free_port()), "--metrics-port", str(free_port())),
            # Its state in a file, so workflows outlive the server; not flushed to disk, as
            # the cluster's fsync is off.
            *("--db-filename", str(logs / "temporal.sqlite"), "--sqlite-pragma", "synchronous=OFF"),
        ],
        logs / "temporal.log",
    )
    worker = ManagedProcess(
        "temporal-worker",
        [sys.executable, "-m", "bench.temporal_baseline"],
        logs / "temporal-worker.log",
        env=env | {"BENCH_TEMPORAL_ADDRESS": address},
    )
    try:
        client = await temporal_client(address, server)

        async def one(label: str, index: int) -> float | None:
            handle = await client.start_workflow(
                temporal_baseline.GenerateWorkflow.run,
                temporal_baseline.JobInput(
                    f"{label}-{index}", "bench-temporal", f"bench temporal {label} {index}"
                ),
                id=f"bench-{label}-{index}",
                task_queue=temporal_baseline.TASK_QUEUE,
            )
            try:
                await handle.result()
            except WorkflowFailureError:
                return None  # not completed, as PixSim7's failed jobs
            described = await handle.describe()
            assert described.close_time is not None
            return (described.close_time - described.start_time).total_seconds() * 1000

        pids = shared | {"temporal-worker": worker.pid, "temporal": server.pid}
        figures = await measured(count, pids, one)
        return figures, peak_rss_mib(worker.pid)
    finally:
        worker.stop()
        server.stop()


def print_tables(figures: dict[str, Any]) -> None:
    pixsim = figures["pixsim_at_compared"]
    print(
        f"\n2. The pipeline against an ARQ worker and a Temporal workflow: {COMPARED} jobs, "
        f"{IN_FLIGHT} in flight, the simulator finishing at once, assets stored in "
        f"{figures['storage']}"
    )
    print(
        f"{'':<12}{'done':>6}{'jobs/s':>8}{'CPU ms/job':>12}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
        "   (overhead per job; CPU summed over every process of the side)"
    )
    sides = {"PixSim7": pixsim, "ARQ+Redis": figures["arq"], "Temporal": figures["temporal"]}
    for label, row in sides.items():
        print(
            f"{label:<12}{row['completed']:>6}{row['jobs_per_second']:>8.1f}"
            f"{row['cpu_ms_per_job_total']:>12.1f}"
            f"{row['overhead_p50_ms']:>9.0f}{row['overhead_p95_ms']:>9.0f}"
            f"{row['overhead_p99_ms']:>9.0f}"
        )
    for label, row in sides.items():
        print(
            f"  CPU ms per job, {label}: "
            + ", ".join(f"{k} {v:.1f}" for k, v in row["cpu_ms_per_job"].items())
        )
    print(
        f"pipeline: {figures['ratio']:.2f}x the ARQ baseline's jobs/s (target >= "
        f"{TARGET_RATIO}), {figures['temporal_ratio']:.2f}x Temporal's; CPU "
        f"{pixsim['cpu_ms_per_job_total']:.0f} ms per job (target <= {TARGET_CPU_MS:.0f}; ARQ "
        f"{figures['arq']['cpu_ms_per_job_total']:.0f}, Temporal "
        f"{figures['temporal']['cpu_ms_per_job_total']:.0f}): "
        + verdict(
            figures["ratio"] >= TARGET_RATIO and pixsim["cpu_ms_per_job_total"] <= TARGET_CPU_MS
        )
    )
    print(f"\n4. Scale of cost: the same pipeline at {', '.join(map(str, SIZES))} jobs in a row")
    print(f"{'jobs':>6}{'seconds':>9}{'ms/job':>8}{'p50 ms':>8}{'p99 ms':>8}")
    for row in figures["sizes"]:
        print(
            f"{row['jobs']:>6}{row['seconds']:>9.1f}{row['ms_per_job']:>8.1f}"
            f"{row['overhead_p50_ms']:>8.0f}{row['overhead_p99_ms']:>8.0f}"
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
        arq, rss["arq-worker"] = await arq_run(stack, COMPARED)
        temporal, rss["temporal-worker"] = await temporal_run(stack, COMPARED)
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
        "temporal": temporal,
        "ratio": compared["jobs_per_second"] / arq["jobs_per_second"],
        "temporal_ratio": compared["jobs_per_second"] / temporal["jobs_per_second"],
        "spread": max(per_job) / min(per_job) - 1,
        "peak_rss_mib": rss,
        "target": {
            "ratio": TARGET_RATIO,
            "cpu_ms_per_job": TARGET_CPU_MS,
            "spread": TARGET_FLAT,
            "rss_mib": TARGET_RSS_MIB,
        },
    }
    write_result("pipeline", figures)
    print_tables(figures)
    return figures
