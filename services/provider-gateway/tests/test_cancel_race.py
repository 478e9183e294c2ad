"""A job's `job.submitted` and `job.cancelled` handled at once, by two replicas' consumers
(different topics, so different partitions and transactions), over real PostgreSQL: in either
order of commit the job ends with no attempt left to send."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixsim.events.v1 import events_pb2
from pixsim.types.v1 import types_pb2 as t
from pixsim_common.cloudevents import EventMeta
from pixsim_provider_gateway import repository as repo
from pixsim_provider_gateway.domain import SubmissionState
from pixsim_provider_gateway.events import on_job_cancelled, on_job_submitted

pytestmark = pytest.mark.integration
META = EventMeta(id="e", type="t", source="/test", time="", trace_headers={})


def submitted(job_id: str) -> events_pb2.JobSubmitted:
    return events_pb2.JobSubmitted(
        job_id=job_id,
        user_id="alice",
        operation_type=t.OPERATION_TYPE_TEXT_TO_VIDEO,
        provider_id="pika",
        prompt="a cat",
    )


async def unfinished_attempts(sessions: async_sessionmaker[AsyncSession], job_id: str) -> int:
    async with sessions() as session:
        states = (
            await session.scalars(
                select(repo.submissions.c.state).where(repo.submissions.c.job_id == job_id)
            )
        ).all()
    return sum(not SubmissionState(s).terminal for s in states)


@pytest.mark.parametrize("first", ["submitted", "cancelled"])
async def test_a_cancellation_racing_the_submission_leaves_nothing_to_send(
    sessions: async_sessionmaker[AsyncSession], first: str
) -> None:
    job_id = str(uuid.uuid4())
    handlers: dict[str, Callable[[AsyncSession], Awaitable[None]]] = {
        "submitted": lambda s: on_job_submitted(s, submitted(job_id), META),
        "cancelled": lambda s: on_job_cancelled(
            s, events_pb2.JobCancelled(job_id=job_id, user_id="alice"), META
        ),
    }
    second = "cancelled" if first == "submitted" else "submitted"
    async with sessions.begin() as early:
        await handlers[first](early)
        # The other handler starts while the first has written but not committed.
        late = asyncio.create_task(run_in_own_transaction(sessions, handlers[second]))
        await asyncio.sleep(0.3)
    await asyncio.wait_for(late, timeout=10)
    assert await unfinished_attempts(sessions, job_id) == 0


async def run_in_own_transaction(
    sessions: async_sessionmaker[AsyncSession], handler: Callable[[AsyncSession], Awaitable[None]]
) -> None:
    async with sessions.begin() as session:
        await handler(session)
