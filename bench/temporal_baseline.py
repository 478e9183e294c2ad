"""A durable peer as the second baseline: each job is a Temporal workflow whose steps are
activities (submit to the simulator, check it until the task is finished, download + sha256 +
one row in PostgreSQL), on a Temporal dev server that keeps its state in a SQLite file. Every
step's result is in the workflow's history before the next step starts, and the waits between
checks are durable timers: a worker or server that dies loses no job, which is what
PixSim7's outbox, inbox and Kafka buy and the ARQ baseline does not.

It speaks to the simulator through the gateway's own PixVerse adapter, as the ARQ baseline
does, so every side sends the same requests.

Run as `python -m bench.temporal_baseline` with BENCH_TEMPORAL_ADDRESS, BENCH_DATABASE_URL
and BENCH_SIMULATOR_URL set.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.common import RetryPolicy
from temporalio.worker import Worker

with workflow.unsafe.imports_passed_through():
    import asyncpg
    import httpx

    from bench import baseline_steps
    from bench.baseline_steps import POLL_CAP, POLL_FIRST, TaskFailed, table_sql
    from pixsim_provider_gateway.providers.pixverse import PixverseProvider

TASK_QUEUE = "bench-generate"
TABLE = "temporal_assets"
MAX_ACTIVITIES = 64
STEP_TIMEOUT = timedelta(seconds=30)
# A failed step is tried again (Temporal's default is forever); a failed task is final.
STEP_RETRIES = RetryPolicy(maximum_attempts=5, non_retryable_error_types=[TaskFailed.__name__])


@dataclass(frozen=True)
class JobInput:
    job_id: str
    api_key: str
    prompt: str


class Steps:
    """The activities, over one provider adapter, HTTP client and database pool."""

    def __init__(self, simulator_url: str, database: asyncpg.Pool) -> None:
        self.provider = PixverseProvider(simulator_url, timeout=30)
        self.http = httpx.AsyncClient(timeout=30)
        self.database = database

    @activity.defn
    async def submit(self, job: JobInput) -> str:
        return await baseline_steps.submit(self.provider, job.api_key, job.prompt)

    @activity.defn
    async def check(self, api_key: str, task_id: str) -> str | None:
        return await baseline_steps.output_when_done(self.provider, api_key, task_id)

    @activity.defn
    async def store(self, job_id: str, uri: str) -> int:
        return await baseline_steps.store(self.http, self.database, TABLE, job_id, uri)


@workflow.defn
class GenerateWorkflow:
    @workflow.run
    async def run(self, job: JobInput) -> int:
        task_id = await workflow.execute_activity_method(
            Steps.submit, job, start_to_close_timeout=STEP_TIMEOUT, retry_policy=STEP_RETRIES
        )
        delay = POLL_FIRST
        while True:
            await workflow.sleep(delay)
            uri = await workflow.execute_activity_method(
                Steps.check,
                args=[job.api_key, task_id],
                start_to_close_timeout=STEP_TIMEOUT,
                retry_policy=STEP_RETRIES,
            )
            if uri is not None:
                break
            delay = min(delay * 1.5, POLL_CAP)
        return await workflow.execute_activity_method(
            Steps.store,
            args=[job.job_id, uri],
            start_to_close_timeout=STEP_TIMEOUT,
            retry_policy=STEP_RETRIES,
        )


async def serve() -> None:
    client = await Client.connect(os.environ["BENCH_TEMPORAL_ADDRESS"])
    async with asyncpg.create_pool(os.environ["BENCH_DATABASE_URL"], max_size=10) as database:
        await database.execute(table_sql(TABLE))
        steps = Steps(os.environ["BENCH_SIMULATOR_URL"], database)
        worker = Worker(
            client,
            task_queue=TASK_QUEUE,
            workflows=[GenerateWorkflow],
            activities=[steps.submit, steps.check, steps.store],
            max_concurrent_activities=MAX_ACTIVITIES,
        )
        try:
            await worker.run()
        finally:
            await steps.http.aclose()
            await steps.provider.aclose()


if __name__ == "__main__":
    asyncio.run(serve())
