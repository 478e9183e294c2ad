"""Deadlines on the real stack: a job unsent by its start deadline ends EXPIRED with nothing
sent, reserved or spent; a job past its run deadline fails and its task is cancelled at the
provider; a deadline given as a time is kept as given, and one already past is refused."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from pixsim.events.v1 import events_pb2
from pixsim.job.v1 import job_service_pb2 as pb
from pixsim.types.v1 import types_pb2 as t
from pixsim_common.errors import status_details
from pixsim_local.whole_stack import WholeStack

pytestmark = pytest.mark.e2e


def seconds(value: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromTimedelta(timedelta(seconds=value))
    return duration


def at(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


async def create(stack: WholeStack, provider: str, prompt: str, **deadlines: object) -> pb.Job:
    return await stack.jobs.CreateJob(
        pb.CreateJobRequest(
            job=pb.Job(
                provider_id=provider,
                operation_type=t.OPERATION_TYPE_TEXT_TO_VIDEO,
                prompt=prompt,
                **deadlines,  # type: ignore[arg-type]
            )
        ),
        metadata=stack.alice,
    )


async def test_a_job_unsent_by_its_start_deadline_expires_with_nothing_sent_or_reserved(
    whole_stack: WholeStack,
) -> None:
    stack = whole_stack
    prompt = f"never sent {uuid.uuid4()}"
    before = await stack.account_of("pika")
    async with stack.starved("pika"):
        job = await create(stack, "pika", prompt, start_timeout=seconds(1.5))
        assert job.HasField("start_deadline_time")
        assert not job.HasField("start_timeout")  # answered as the time it makes
        done = await stack.until_done(job, timeout=20)
        during = await stack.account_of("pika")
    assert (done.state, done.error_code) == (pb.Job.STATE_EXPIRED, "START_DEADLINE_EXCEEDED")
    assert done.complete_time.ToDatetime() >= done.start_deadline_time.ToDatetime()
    assert await stack.sim_tasks(prompt) == []  # the provider never heard of it
    assert (during.in_flight, during.credits) == (0, before.credits)  # nothing reserved
    assert (await stack.account_of("pika")).credits == before.credits
    (record,) = await stack.tap.wait_for(
        "pixsim.generation.failed.v1", job.name.removeprefix("jobs/")
    )
    failed = events_pb2.GenerationFailed.FromString(record.value)
    assert failed.error_code == t.GENERATION_ERROR_CODE_START_DEADLINE_EXCEEDED


async def test_a_job_sent_before_its_start_deadline_runs_to_the_end(
    whole_stack: WholeStack,
) -> None:
    job = await create(whole_stack, "pika", f"in time {uuid.uuid4()}", start_timeout=seconds(60))
    assert (await whole_stack.until_done(job, timeout=30)).state == pb.Job.STATE_COMPLETED


async def test_a_job_past_its_run_deadline_fails_and_its_task_is_cancelled(
    whole_stack: WholeStack,
) -> None:
    stack = whole_stack
    prompt = f"too slow {uuid.uuid4()} [sim:finish_ms=60000]"
    job = await create(stack, "runway", prompt, run_timeout=seconds(2))
    done = await stack.until_done(job, timeout=30)
    assert (done.state, done.error_code) == (pb.Job.STATE_FAILED, "DEADLINE_EXCEEDED")
    assert done.complete_time.ToDatetime() >= done.run_deadline_time.ToDatetime()

    async def cancelled() -> bool:
        return [task["phase"] for task in await stack.sim_tasks(prompt)] == ["cancelled"]

    for _ in range(100):
        if await cancelled():
            break
        await asyncio.sleep(0.1)
    assert await cancelled()
    slots = await stack.account_of("runway")
    assert slots.in_flight == 0


async def test_a_deadline_given_as_a_time_is_kept_and_one_past_is_refused(
    whole_stack: WholeStack,
) -> None:
    stack = whole_stack
    when = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=10)
    job = await create(stack, "pika", f"by a time {uuid.uuid4()}", start_deadline_time=at(when))
    assert job.start_deadline_time.ToDatetime(tzinfo=UTC) == when
    got = await stack.jobs.GetJob(pb.GetJobRequest(name=job.name), metadata=stack.alice)
    assert got.start_deadline_time == job.start_deadline_time

    for deadline in (
        {"start_deadline_time": at(datetime.now(UTC) - timedelta(seconds=5))},
        {"run_deadline_time": at(datetime.now(UTC) + timedelta(days=30))},
        {"start_timeout": seconds(0)},
        {"run_timeout": seconds(8 * 86400)},
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await create(stack, "pika", "refused", **deadline)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        violations = status_details(refused.value)["BadRequest"].field_violations
        fields = [v.field for v in violations]
        assert fields == [f"job.{next(iter(deadline))}"], fields
