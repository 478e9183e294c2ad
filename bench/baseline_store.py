"""What both baselines do last with a finished task, as PixSim7's asset service does: stream
the clip from the provider, hash it, and record one row in PostgreSQL."""

from __future__ import annotations

import hashlib

import asyncpg
import httpx


def table_sql(table: str) -> str:
    return f"""CREATE TABLE IF NOT EXISTS {table} (
    job_id text PRIMARY KEY,
    sha256 text NOT NULL,
    size_bytes bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)"""


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
    await database.execute(
        insert,
        job_id,
        digest.hexdigest(),
        size,
    )
    return size
