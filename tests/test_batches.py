"""Batches and labels on the real stack: BatchCreateJobs answers each item on its own (a bad
item is refused alone) and idempotently; ListJobs finds jobs by their labels; CancelJobs
cancels exactly the unfinished jobs that match and says how many."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2

from pixsim.job.v1 import job_service_pb2 as pb
from pixsim.types.v1 import types_pb2 as t
from pixsim_local.whole_stack import WholeStack

pytestmark = pytest.mark.e2e


def item(prompt: str, labels: dict[str, str], request_id: str = "", **job: object) -> Any:
    return pb.CreateJobRequest(
        job=pb.Job(
            provider_id=job.pop("provider_id", "pika"),  # type: ignore[arg-type]
            operation_type=t.OPERATION_TYPE_TEXT_TO_VIDEO,
            prompt=prompt,
            labels=labels,
            **job,  # type: ignore[arg-type]
        ),
        request_id=request_id,
    )


async def test_a_batch_answers_each_item_and_a_bad_one_alone(whole_stack: WholeStack) -> None:
    stack = whole_stack
    run = uuid.uuid4().hex[:8]
    labels = {"batch": run, "team": "fox"}
    requests = [
        item("a fox runs", labels, f"{run}-0"),
        item("x" * 5000, labels, f"{run}-1"),  # over the prompt's 4000 characters
        item("a fox sleeps", labels, f"{run}-2"),
        item("a fox", labels, f"{run}-3", provider_id="nobody"),  # no such provider
        item("a fox jumps", labels, f"{run}-4"),
    ]
    answer = await stack.jobs.BatchCreateJobs(
        pb.BatchCreateJobsRequest(requests=requests), metadata=stack.alice
    )
    kinds = [result.WhichOneof("result") for result in answer.results]
    assert kinds == ["job", "error", "job", "error", "job"]
    too_long = answer.results[1].error
    assert too_long.code == code_pb2.INVALID_ARGUMENT
    bad_request = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad_request) for d in too_long.details)
    assert [v.field for v in bad_request.field_violations] == ["job.prompt"]
    assert answer.results[3].error.code == code_pb2.INVALID_ARGUMENT
    jobs = [r.job for r in answer.results if r.HasField("job")]
    assert all(dict(job.labels) == labels for job in jobs)
    done = await asyncio.gather(*(stack.until_done(job) for job in jobs))
    assert {job.state for job in done} == {pb.Job.STATE_COMPLETED}

    # The same batch again: the same jobs, none made twice.
    again = await stack.jobs.BatchCreateJobs(
        pb.BatchCreateJobsRequest(requests=requests), metadata=stack.alice
    )
    assert [r.job.name for r in again.results if r.HasField("job")] == [j.name for j in jobs]

    listed = await stack.jobs.ListJobs(
        pb.ListJobsRequest(labels={"batch": run}), metadata=stack.alice
    )
    assert sorted(j.name for j in listed.jobs) == sorted(j.name for j in jobs)
    none = await stack.jobs.ListJobs(
        pb.ListJobsRequest(labels={"batch": run, "team": "owl"}), metadata=stack.alice
    )
    assert list(none.jobs) == []
    # Labels are the caller's own: another user's filter finds nothing of alice's.
    others = await stack.jobs.ListJobs(
        pb.ListJobsRequest(labels={"batch": run}), metadata=stack.auth("bob")
    )
    assert list(others.jobs) == []


@pytest.mark.parametrize("size", [0, 101])
async def test_a_batch_out_of_bounds_is_refused_whole(whole_stack: WholeStack, size: int) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await whole_stack.jobs.BatchCreateJobs(
            pb.BatchCreateJobsRequest(requests=[item("a fox", {})] * size),
            metadata=whole_stack.alice,
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def gateway_cancelled(stack: WholeStack, jobs: list[str]) -> None:
    """Until the gateway has taken in the cancels of `jobs` (its `cancelled_jobs`): from then
    on it sends none of them, whenever their job.submitted arrives."""
    ids = [name.removeprefix("jobs/") for name in jobs]
    connection = await asyncpg.connect(stack.services.databases["provider-gateway"].url)
    try:
        for _ in range(300):
            known = await connection.fetchval(
                "SELECT count(*) FROM cancelled_jobs WHERE job_id = ANY($1::uuid[])", ids
            )
            if known == len(ids):
                return
            await asyncio.sleep(0.1)
    finally:
        await connection.close()
    raise AssertionError(f"the gateway took in {known} of {len(ids)} cancels")


async def test_cancel_jobs_cancels_exactly_the_unfinished_matching_ones(
    whole_stack: WholeStack,
) -> None:
    stack = whole_stack
    run = uuid.uuid4().hex[:8]
    finished = await stack.jobs.CreateJob(item("done before", {"sweep": run}), metadata=stack.alice)
    assert (await stack.until_done(finished)).state == pb.Job.STATE_COMPLETED
    async with stack.starved("pika"):
        waiting = (
            await stack.jobs.BatchCreateJobs(
                pb.BatchCreateJobsRequest(
                    requests=[item(f"waits {n}", {"sweep": run}) for n in range(12)]
                ),
                metadata=stack.alice,
            )
        ).results
        kept = await stack.jobs.CreateJob(item("kept", {"sweep": "other"}), metadata=stack.alice)
        bobs = await stack.jobs.CreateJob(item("bob's", {"sweep": run}), metadata=stack.auth("bob"))
        answer = await stack.jobs.CancelJobs(
            pb.CancelJobsRequest(labels={"sweep": run}), metadata=stack.alice
        )
        assert answer.cancelled_count == 12
        states = {
            job.name: job.state
            for job in (
                await stack.jobs.ListJobs(
                    pb.ListJobsRequest(labels={"sweep": run}), metadata=stack.alice
                )
            ).jobs
        }
        assert states.pop(finished.name) == pb.Job.STATE_COMPLETED
        assert set(states) == {r.job.name for r in waiting}
        assert set(states.values()) == {pb.Job.STATE_CANCELLED}
        for other, who in ((kept, stack.alice), (bobs, stack.auth("bob"))):
            got = await stack.jobs.GetJob(pb.GetJobRequest(name=other.name), metadata=who)
            assert got.state != pb.Job.STATE_CANCELLED
        again = await stack.jobs.CancelJobs(
            pb.CancelJobsRequest(labels={"sweep": run}), metadata=stack.alice
        )
        assert again.cancelled_count == 0
        for other, who in ((kept, stack.alice), (bobs, stack.auth("bob"))):
            await stack.jobs.CancelJob(pb.CancelJobRequest(name=other.name), metadata=who)
        # The gateway hears of the cancels by event: credits come back only once it has.
        await gateway_cancelled(stack, [*states, kept.name, bobs.name])
    prompts = [f"waits {n}" for n in range(12)]
    assert [await stack.sim_tasks(p) for p in prompts] == [[]] * 12  # none was ever sent

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stack.jobs.CancelJobs(pb.CancelJobsRequest(), metadata=stack.alice)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_priority_is_answered_and_reaches_the_gateway(whole_stack: WholeStack) -> None:
    stack = whole_stack
    low = await stack.jobs.CreateJob(
        item("a slow fox", {}, priority=pb.Job.PRIORITY_LOW), metadata=stack.alice
    )
    plain = await stack.jobs.CreateJob(item("a fox", {}), metadata=stack.alice)
    assert (low.priority, plain.priority) == (pb.Job.PRIORITY_LOW, pb.Job.PRIORITY_NORMAL)
    await asyncio.gather(stack.until_done(low), stack.until_done(plain))
    connection = await asyncpg.connect(stack.services.databases["provider-gateway"].url)
    try:
        rows = await connection.fetch(
            "SELECT job_id::text AS job, priority, turn_at - create_time AS delay"
            " FROM provider_submissions WHERE job_id = ANY($1::uuid[])",
            [job.name.removeprefix("jobs/") for job in (low, plain)],
        )
    finally:
        await connection.close()
    seen = {row["job"]: (row["priority"], row["delay"].total_seconds()) for row in rows}
    # The default aging bound is 300 s: LOW turns 300 s after arrival, NORMAL 150 s.
    assert seen[low.name.removeprefix("jobs/")][0] == "LOW"
    assert seen[plain.name.removeprefix("jobs/")][0] == "NORMAL"
    assert seen[low.name.removeprefix("jobs/")][1] == pytest.approx(300, abs=1)
    assert seen[plain.name.removeprefix("jobs/")][1] == pytest.approx(150, abs=1)
