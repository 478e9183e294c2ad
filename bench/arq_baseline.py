"""The stack the original design planned, as a baseline: one ARQ worker over Redis doing each
job's work in one function (submit to the simulator, poll, download, sha256, one row in
PostgreSQL). It speaks to the simulator through the gateway's own PixVerse adapter, so both
sides send the same requests; what differs is the architecture around them.

Run as `arq bench.arq_baseline.WorkerSettings` with BENCH_REDIS_PORT, BENCH_DATABASE_URL and
BENCH_SIMULATOR_URL set.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import asyncpg
import httpx
from arq.connections import RedisSettings

from bench.baseline_steps import (
    POLL_CAP,
    POLL_FIRST,
    output_on_schedule,
    store,
    submit,
    table_sql,
)
from pixsim_provider_gateway.providers.pixverse import PixverseProvider

TABLE = "arq_assets"
MAX_JOBS = 64


async def startup(ctx: dict[str, Any]) -> None:
    ctx["provider"] = PixverseProvider(os.environ["BENCH_SIMULATOR_URL"], timeout=30)
    ctx["http"] = httpx.AsyncClient(timeout=30)
    ctx["db"] = await asyncpg.create_pool(os.environ["BENCH_DATABASE_URL"], max_size=10)
    async with ctx["db"].acquire() as connection:
        await connection.execute(table_sql(TABLE))


async def shutdown(ctx: dict[str, Any]) -> None:
    await ctx["http"].aclose()
    await ctx["provider"].aclose()
    await ctx["db"].close()


async def generate(ctx: dict[str, Any], job_id: str, api_key: str, prompt: str) -> int:
    """One job, start to end; the size of what it stored."""
    provider: PixverseProvider = ctx["provider"]
    task_id = await submit(provider, api_key, prompt)
    uri = await output_on_schedule(provider, api_key, task_id, POLL_FIRST, POLL_CAP)
    return await store(ctx["http"], ctx["db"], TABLE, job_id, uri)


class WorkerSettings:
    functions: ClassVar = [generate]
    on_startup = startup
    on_shutdown = shutdown
    redis_settings = RedisSettings(port=int(os.environ.get("BENCH_REDIS_PORT", "6379")))
    max_jobs = MAX_JOBS
    # The queue is looked at this often when idle (ARQ's default is 0.5 s).
    poll_delay = 0.005
    keep_result = 3600
