"""Priority inside the per-user fairness, with aging: a low-priority job is passed only by
work that arrived less than the aging bound after it, so under sustained high-priority load
it still starts in bounded time. Time is the test's: arrivals are stamped by a virtual clock
and one slot frees per tick, so nothing sleeps."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, insert, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixsim_provider_gateway import repository as repo
from pixsim_provider_gateway.domain import Priority, SubmissionState, turn_delay

pytestmark = pytest.mark.integration
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_a_lower_priority_turns_later_by_its_share_of_the_bound() -> None:
    bound = timedelta(seconds=60)
    assert [turn_delay(p, bound) for p in Priority] == [
        timedelta(0),
        timedelta(seconds=30),
        timedelta(seconds=60),
    ]


class Queue:
    """Waiting submissions stamped by a virtual clock; `serve` frees one slot."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], aging: timedelta) -> None:
        self.sessions, self.aging = sessions, aging
        self.arrived: dict[str, datetime] = {}

    async def arrive(self, user: str, priority: Priority, at: datetime) -> str:
        job_id = str(uuid.uuid4())
        self.arrived[job_id] = at
        async with self.sessions.begin() as session:
            await session.execute(
                insert(repo.submissions).values(
                    id=repo.new_id(),
                    job_id=job_id,
                    user_id=user,
                    provider_id="runway",
                    operation_type=1,
                    request={"prompt": priority.value},
                    job_retry_count=0,
                    retry_attempt=0,
                    state=SubmissionState.WAITING.value,
                    priority=priority.value,
                    available_at=T0 - timedelta(days=1),  # due; order is by turn alone
                    create_time=at,
                    turn_at=at + turn_delay(priority, self.aging),
                )
            )
        return job_id

    async def serve(self) -> str | None:
        """The job whose turn it is, as dispatch would take it, taken out of the queue."""
        async with self.sessions.begin() as session:
            claimed = await repo.claim_waiting(session, 1)
            if not claimed:
                return None
            await session.execute(
                update(repo.submissions)
                .where(repo.submissions.c.id == claimed[0].id)
                # Served now, as dispatch stamps it: who was served last decides the next turn.
                .values(state=SubmissionState.SUCCEEDED.value, submit_time=func.now())
            )
            return str(claimed[0].job_id)


async def run_under_high_load(queue: Queue, ticks: int) -> tuple[str, list[str]]:
    """A LOW job at T0 behind a backlog of HIGH work, one HIGH arrival and one slot per
    virtual second; the LOW job and the order jobs were served in."""
    for k in range(5):
        await queue.arrive("alice", Priority.HIGH, T0 - timedelta(seconds=5 - k))
    low = await queue.arrive("alice", Priority.LOW, T0)
    served = []
    for tick in range(ticks):
        await queue.arrive("alice", Priority.HIGH, T0 + timedelta(seconds=tick))
        job = await queue.serve()
        assert job is not None
        served.append(job)
    return low, served


async def test_a_low_job_under_sustained_high_load_starts_within_the_aging_bound(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    aging = timedelta(seconds=10)
    queue = Queue(sessions, aging)
    low, served = await run_under_high_load(queue, ticks=30)
    assert low in served
    passed_by = [queue.arrived[job] for job in served[: served.index(low)]]
    # Passed only by work that arrived before T0 + aging: the 5 of the backlog and 10 more.
    assert len(passed_by) == 15
    assert max(passed_by) < T0 + aging


async def test_without_aging_to_speak_of_high_load_starves_the_low_job(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """The same load with an aging bound longer than the run: the LOW job never starts,
    which is what the bound is for."""
    queue = Queue(sessions, timedelta(hours=1))
    low, served = await run_under_high_load(queue, ticks=30)
    assert low not in served


async def test_priority_orders_a_users_own_work_not_their_share(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """Alice's HIGH work does not pass Bob's LOW job: users still take turns."""
    queue = Queue(sessions, timedelta(seconds=10))
    alices = [await queue.arrive("alice", Priority.HIGH, T0) for _ in range(5)]
    bobs = await queue.arrive("bob", Priority.LOW, T0 + timedelta(seconds=1))
    first_two = [await queue.serve(), await queue.serve()]
    assert bobs in first_two
    assert set(first_two) - {bobs} <= set(alices)
