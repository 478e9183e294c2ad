"""Queue position and progress on the real stack: a job waiting for a provider slot is
QUEUED with its place in line, which only falls and reaches 0 before it starts; WatchJob
says so as it changes; a running Runway task reports the provider's progress."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from pixsim.job.v1 import job_service_pb2 as pb
from pixsim.types.v1 import types_pb2 as t
from pixsim_local.whole_stack import WholeStack

pytestmark = pytest.mark.e2e


async def watched(stack: WholeStack, job: pb.Job) -> list[pb.Job]:
    """Every message WatchJob sends for `job`, to its end."""
    seen = []
    async for update in stack.jobs.WatchJob(
        pb.WatchJobRequest(name=job.name), metadata=stack.alice
    ):
        seen.append(update)
    return seen


async def test_twenty_jobs_on_one_slot_count_down_their_place_in_line(
    whole_stack: WholeStack,
) -> None:
    stack = whole_stack
    run = uuid.uuid4().hex[:8]
    await stack.sim_key("pika", finish_ms=700)  # a slot frees every 0.7 s or so
    try:
        async with stack.account_changed("pika", max_concurrency=1):
            jobs = [
                await stack.jobs.CreateJob(
                    pb.CreateJobRequest(
                        job=pb.Job(
                            provider_id="pika",
                            operation_type=t.OPERATION_TYPE_TEXT_TO_VIDEO,
                            prompt=f"in line {run} {n}",
                        )
                    ),
                    metadata=stack.alice,
                )
                for n in range(20)
            ]
            histories = await asyncio.wait_for(
                asyncio.gather(*(watched(stack, job) for job in jobs)), timeout=120
            )
    finally:
        await stack.sim_key("pika", finish_ms=300)

    waited = reached_front = 0
    for history in histories:
        assert history[-1].state == pb.Job.STATE_COMPLETED
        queued = [u for u in history if u.state == pb.Job.STATE_QUEUED]
        positions = [u.queue_position for u in queued if u.HasField("queue_position")]
        assert positions == sorted(positions, reverse=True), positions  # only ever falls
        if positions:
            waited += 1
            trail = [
                (
                    pb.Job.State.Name(u.state),
                    u.queue_position if u.HasField("queue_position") else None,
                )
                for u in history
            ]
            # Next in line before it started, as the last answered look said, unless the
            # looks after that went unanswered (GetJob answers without the gateway's figures
            # rather than late when it is slow): then the front was not seen, not skipped.
            last_answered = max(i for i, u in enumerate(queued) if u.HasField("queue_position"))
            unanswered_after = any(
                not u.HasField("queue_position") for u in queued[last_answered + 1 :]
            )
            assert positions[-1] == 0 or unanswered_after, trail
            reached_front += positions[-1] == 0
            assert all(u.queue_time.seconds for u in queued)
        started = [i for i, u in enumerate(history) if u.state == pb.Job.STATE_PROCESSING]
        assert not started or all(
            i < started[0] for i, u in enumerate(history) if u.state == pb.Job.STATE_QUEUED
        )
    # All but the first few waited behind the one slot, and said where they stood.
    assert waited >= 15
    assert reached_front >= waited // 2  # most were seen at the front
    longest = max(histories, key=len)
    first = next(u.queue_position for u in longest if u.HasField("queue_position"))
    assert first >= 10


async def test_a_running_runway_task_reports_its_progress(whole_stack: WholeStack) -> None:
    stack = whole_stack
    job = await stack.create("runway", prompt=f"slowly {uuid.uuid4()} [sim:finish_ms=3000]")
    history = await asyncio.wait_for(watched(stack, job), timeout=60)
    progress = [u.progress for u in history if u.HasField("progress")]
    assert len(progress) >= 2, history
    assert progress == sorted(progress)
    assert 0 < progress[0] < progress[-1] <= 1
    assert {u.provider_state for u in history if u.state == pb.Job.STATE_PROCESSING} >= {"RUNNING"}
    assert history[-1].state == pb.Job.STATE_COMPLETED
