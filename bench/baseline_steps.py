"""The steps both baselines take for a job, through the gateway's own PixVerse adapter so
every side sends the same requests: submit the task, check it on one schedule until it is
done, then, as PixSim7's asset service does, stream the clip, hash it and record one row in
PostgreSQL. Each baseline arranges them its own way (one ARQ function; Temporal activities
with durable timers between checks)."""

from __future__ import annotations

import asyncio
import hashlib

import asyncpg
import httpx

from pixsim.types.v1 import types_pb2 as t
from pixsim_provider_gateway.providers.base import Credentials, GenerationRequest, TaskState
from pixsim_provider_gateway.providers.pixverse import PixverseProvider

# The gateway's schedule in the pipeline benchmark: first check after 20 ms, then x1.5 up
# to 0.3 s.
POLL_FIRST, POLL_CAP = 0.02, 0.3


class TaskFailed(RuntimeError):
    """The provider ended the task without an output: no retry changes that."""


def table_sql(table: str) -> str:
    return f"""CREATE TABLE IF NOT EXISTS {table} (
    job_id text PRIMARY KEY,
    sha256 text NOT NULL,
    size_bytes bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)"""


async def submit(provider: PixverseProvider, api_key: str, prompt: str) -> str:
    """A text-to-video task started at the provider; its id there."""
    operation = t.OPERATION_TYPE_TEXT_TO_VIDEO
    payload = provider.map_parameters(operation, GenerationRequest(operation, prompt))
    accepted = await provider.execute(operation, Credentials(api_key), payload)
    return accepted.provider_job_id


async def output_when_done(provider: PixverseProvider, api_key: str, task_id: str) -> str | None:
    """The output's address once the task succeeded; None while it runs."""
    status = await provider.check_status(Credentials(api_key), task_id)
    if status.state is TaskState.SUCCEEDED:
        return status.outputs[0].uri
    if status.state in (TaskState.PENDING, TaskState.RUNNING):
        return None
    raise TaskFailed(f"task ended {status.state}")


async def output_on_schedule(
    provider: PixverseProvider, api_key: str, task_id: str, first: float, cap: float
) -> str:
    """The output's address, the task checked after `first` seconds and then x1.5 apart up
    to `cap`."""
    delay = first
    while True:
        await asyncio.sleep(delay)
        if (uri := await output_when_done(provider, api_key, task_id)) is not None:
            return uri
        delay = min(delay * 1.5, cap)


async def store(
    http: httpx.AsyncClient, database: asyncpg.Pool, table: str, job_id: str, uri: str
) -> int:
    """The clip at `uri` hashed and recorded for `job_id` (once, if tried again); its size."""
    digest, size = hashlib.sha256(), 0
    async with http.stream("GET", uri) as response:
        response.raise_for_status()
        async for chunk in response.aiter_bytes():
            digest.update(chunk)
            size += len(chunk)
    # `table` is each baseline's own constant, never input.
    insert = (
        f"INSERT INTO {table} (job_id, sha256, size_bytes) VALUES ($1, $2, $3)"  # noqa: S608
        " ON CONFLICT (job_id) DO NOTHING"
    )
    await database.execute(insert, job_id, digest.hexdigest(), size)
    return size
