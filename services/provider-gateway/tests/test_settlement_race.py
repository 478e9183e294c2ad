"""An attempt's cost is settled once, over real PostgreSQL: two replicas that both read the
running attempt and both hear it end (a poll and a callback, or a poll whose lease another
took over) settle it once between them: the account keeps the cost once, one
generation.settled leaves, and the loser's transaction changes nothing."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixsim.events.v1 import events_pb2
from pixsim.types.v1 import types_pb2 as t
from pixsim_common import topics
from pixsim_common.cloudevents import EventMeta
from pixsim_common.outbox import outbox_table
from pixsim_provider_gateway import repository as repo
from pixsim_provider_gateway.domain import Billing, Charge, MediaOutput, RetryPolicy
from pixsim_provider_gateway.events import on_job_submitted
from pixsim_provider_gateway.providers.base import ProviderStatusResult, TaskState
from pixsim_provider_gateway.providers.runway import RunwayProvider
from pixsim_provider_gateway.service.poll import record_status
from pixsim_provider_gateway.service.units import GatewayUnit

pytestmark = pytest.mark.integration
META = EventMeta(id="e", type="t", source="/test", time="", trace_headers={})
CREDITS, RESERVED, REPORTED = 1000, 25, 20
VIDEO = MediaOutput("https://cdn.example/clip.mp4", t.MEDIA_TYPE_VIDEO)


async def running_attempt(sessions: async_sessionmaker[AsyncSession]) -> tuple[str, str, str]:
    """A Runway job's attempt, reserved on an account at $0.01 a credit and accepted: its
    job, attempt and account ids."""
    job_id = str(uuid.uuid4())
    async with sessions.begin() as session:
        account = await repo.Accounts(session).create(
            id=str(uuid.uuid4()),
            provider_id="runway",
            credentials_key_id="k1",
            credentials=b"sealed",
            credits=CREDITS,
            max_concurrency=2,
        )
        event = events_pb2.JobSubmitted(
            job_id=job_id,
            user_id="alice",
            operation_type=t.OPERATION_TYPE_TEXT_TO_VIDEO,
            provider_id="runway",
            prompt="a cat",
        )
        await on_job_submitted(session, event, META)
    async with GatewayUnit(sessions) as unit:
        (waiting,) = await unit.submissions.claim_waiting(10)
        reserved = await unit.accounts.reserve("runway", RESERVED)
        assert reserved is not None
        waiting.send(
            reserved.id, RESERVED, {"body": {}}, "replica-a", timedelta(seconds=30), 10_000
        )
        await unit.submissions.save(waiting)
        waiting.accepted("task-1", RESERVED, timedelta(seconds=1), timedelta(minutes=15))
        await unit.submissions.save(waiting)
        await unit.commit()
    return job_id, waiting.id, account.id


async def test_two_replicas_hearing_one_end_settle_it_once(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    job_id, attempt_id, account_id = await running_attempt(sessions)
    provider, policy = RunwayProvider(), RetryPolicy()
    ended = ProviderStatusResult(TaskState.SUCCEEDED, 1.0, (VIDEO,), cost=REPORTED)

    first, second = GatewayUnit(sessions), GatewayUnit(sessions)
    async with first, second:
        # Both read it RUNNING before either writes (no lock: as a poll whose lease was
        # taken over, and a callback).
        mine = await first.submissions.get(attempt_id)
        theirs = await second.submissions.get(attempt_id)
        assert mine is not None
        assert theirs is not None
        await record_status(first, mine, ended, provider, policy)
        await first.commit()
        # The second's account release waits for nothing (the first committed) and its
        # compare-and-set save finds the attempt settled already: all of it rolls back.
        with pytest.raises(repo.StaleSubmission):
            await record_status(second, theirs, ended, provider, policy)
    await provider.aclose()

    async with sessions() as session:
        account = (
            await session.execute(select(repo.accounts).where(repo.accounts.c.id == account_id))
        ).one()
        attempt = await repo.get_submission(session, attempt_id, False)
        settled_events = await session.scalar(
            select(func.count())
            .select_from(outbox_table)
            .where(
                outbox_table.c.topic == topics.GENERATION_SETTLED.name,
                outbox_table.c.key == job_id,
            )
        )
    assert (account.in_flight, account.credits) == (0, CREDITS - REPORTED)
    assert attempt is not None
    assert (attempt.settled_credits, attempt.settled_micros, attempt.billing) == (
        REPORTED,
        REPORTED * 10_000,
        "REPORTED",
    )
    assert settled_events == 1


async def test_a_second_settlement_of_a_settled_attempt_is_refused_by_the_database(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """The compare-and-set holds even for a writer that skipped the aggregate's own check
    (a stale copy loaded before the first settlement, saved after it)."""
    _, attempt_id, _ = await running_attempt(sessions)
    async with GatewayUnit(sessions) as unit:
        stale = await unit.submissions.get(attempt_id)
        assert stale is not None
    async with GatewayUnit(sessions) as unit:
        fresh = await unit.submissions.get(attempt_id, lock=True)
        assert fresh is not None
        fresh.settle(Charge(5, Billing.REPORTED))
        await unit.submissions.save(fresh)
        await unit.commit()
    async with GatewayUnit(sessions) as unit:
        stale.settle(Charge(7, Billing.REPORTED))
        with pytest.raises(repo.StaleSubmission):
            await unit.submissions.save(stale)
