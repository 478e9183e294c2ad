"""The job service through a real gRPC channel, against real PostgreSQL, Kafka, the real
provider gateway (for capabilities and to run jobs) and the provider simulator."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import httpx
import pytest
import pytest_asyncio
from google.protobuf import struct_pb2
from google.type import date_pb2, money_pb2
from prometheus_client import REGISTRY
from pydantic import SecretStr

from pixsim.events.v1 import events_pb2
from pixsim.job.v1 import job_service_pb2 as pb
from pixsim.job.v1 import job_service_pb2_grpc as pb_grpc
from pixsim.provider.v1 import provider_gateway_service_pb2 as gw_pb
from pixsim.provider.v1 import provider_gateway_service_pb2_grpc as gw_grpc
from pixsim.types.v1 import types_pb2 as t
from pixsim_common import topics
from pixsim_common.app import ServiceApp
from pixsim_common.auth import issue_token
from pixsim_common.db import run_migrations
from pixsim_common.errors import status_details
from pixsim_common.money import micros_of
from pixsim_common.timestamps import now_timestamp
from pixsim_job import main as job_main
from pixsim_job.settings import Settings as JobSettings
from pixsim_local.kafka import EventTap, KafkaBroker, publish_events
from pixsim_local.postgres import ServiceDatabase
from pixsim_local.pytest_plugin import DatabaseFactory
from pixsim_provider_gateway import main as gateway_main
from pixsim_provider_gateway.crypto import new_key
from pixsim_provider_gateway.settings import Settings as GatewaySettings

pytestmark = pytest.mark.integration


@dataclass
class Stack:
    jobs: pb_grpc.JobServiceAsyncStub
    tap: EventTap
    kafka: KafkaBroker
    database: ServiceDatabase
    alice: tuple[tuple[str, str], ...]
    bob: tuple[tuple[str, str], ...]
    admin: tuple[tuple[str, str], ...]
    auth: Any

    async def create(
        self,
        provider: str = "pixverse",
        prompt: str = "a cat",
        operation: int = t.OPERATION_TYPE_TEXT_TO_VIDEO,
        **extra: Any,
    ) -> pb.Job:
        job = pb.Job(
            provider_id=provider,
            operation_type=operation,  # type: ignore[arg-type]
            prompt=prompt,
        )
        return await self.jobs.CreateJob(pb.CreateJobRequest(job=job, **extra), metadata=self.alice)

    async def publish(self, topic: topics.Topic, key: str, event: Any) -> None:
        await publish_events(self.kafka.bootstrap, topic, [(key, event)])

    async def state_of(
        self, name: str, want: pb.Job.State.ValueType, timeout: float = 30
    ) -> pb.Job:
        for _ in range(int(timeout * 20)):
            job = await self.jobs.GetJob(pb.GetJobRequest(name=name), metadata=self.alice)
            if job.state == want:
                return job
            await asyncio.sleep(0.05)
        raise AssertionError(f"{name} never reached {pb.Job.State.Name(want)}: {job}")


async def start_app(app: ServiceApp) -> ServiceApp:
    await app.start()
    return app


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def stack(
    own_kafka: KafkaBroker,
    new_database_module: DatabaseFactory,
    provider_sim: str,
    signing_keys: tuple[str, str],
) -> AsyncIterator[Stack]:
    gateway_db = await new_database_module("gateway")
    job_db = await new_database_module("jobs")
    await asyncio.to_thread(run_migrations, gateway_db.url, gateway_main.MIGRATIONS)
    await asyncio.to_thread(run_migrations, job_db.url, job_main.MIGRATIONS)
    common: dict[str, Any] = {
        "kafka_bootstrap": own_kafka.bootstrap,
        "jwt_public_key": signing_keys[1],
        "grpc_port": 0,
    }
    gateway = await start_app(
        await gateway_main.build(
            GatewaySettings(
                database_url=SecretStr(gateway_db.url),
                credentials_keys=SecretStr(f"k:{new_key()}"),
                pixverse_base_url=provider_sim,
                runway_base_url=provider_sim,
                pika_base_url=provider_sim,
                poll_first_seconds=0.1,
                poll_cap_seconds=0.3,
                **common,
            )
        )
    )
    jobs = await start_app(
        await job_main.build(
            JobSettings(
                database_url=SecretStr(job_db.url),
                gateway_address=f"127.0.0.1:{gateway.port}",
                **common,
            )
        )
    )
    admin = (
        (
            "authorization",
            "Bearer " + issue_token(signing_keys[0], user_id="root", roles=["admin"]),
        ),
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        key = f"jobs-{uuid.uuid4().hex[:6]}"
        async with httpx.AsyncClient() as client:
            await client.put(f"{provider_sim}/_sim/keys/{key}", json={"finish_ms": 400})
        await gw_grpc.ProviderGatewayServiceStub(channel).CreateAccount(
            gw_pb.CreateAccountRequest(
                account=gw_pb.Account(
                    provider_id="pixverse",
                    credentials={"api_key": key},
                    credits=100_000,
                    # Several tests leave a ten-minute task holding a slot (their jobs end
                    # in the job service alone); the later tests' jobs need slots of
                    # their own, or they queue behind those tasks on a slow machine.
                    max_concurrency=16,
                )
            ),
            metadata=admin,
        )
    tap = EventTap(
        own_kafka.bootstrap, [name for t in topics.ALL_TOPICS for name in (t.name, t.dlq)]
    )
    await tap.start()

    def auth(user: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", "Bearer " + issue_token(signing_keys[0], user_id=user)),)

    async with grpc.aio.insecure_channel(f"127.0.0.1:{jobs.port}") as channel:
        yield Stack(
            pb_grpc.JobServiceStub(channel),
            tap,
            own_kafka,
            job_db,
            auth("alice"),
            auth("bob"),
            admin,
            auth,
        )
    await tap.stop()
    await jobs.stop()
    await gateway.stop()


async def test_a_job_runs_to_completion_and_watch_streams_every_state(stack: Stack) -> None:
    job = await stack.create()
    assert job.state == pb.Job.STATE_PENDING
    assert job.owner == "users/alice"
    job_id = job.name.removeprefix("jobs/")
    submitted = await stack.tap.wait_for(topics.JOB_SUBMITTED.name, job_id)
    assert events_pb2.JobSubmitted.FromString(submitted[0].value).prompt == "a cat"

    watched: list[int] = []

    async def watch() -> None:
        async for update in stack.jobs.WatchJob(
            pb.WatchJobRequest(name=job.name), metadata=stack.alice
        ):
            watched.append(update.state)

    watcher = asyncio.create_task(watch())
    await stack.state_of(job.name, pb.Job.STATE_PROCESSING)
    # The gateway finished; the asset service (not built yet) would answer with this.
    await stack.tap.wait_for(topics.GENERATION_COMPLETED.name, job_id)
    asset_id = str(uuid.uuid4())
    await stack.publish(
        topics.ASSET_CREATED,
        asset_id,
        events_pb2.AssetCreated(asset_id=asset_id, user_id="alice", job_id=job_id),
    )
    done = await stack.state_of(job.name, pb.Job.STATE_COMPLETED)
    assert done.asset == f"assets/{asset_id}"
    # AIP-148: update_time records the last change, here the completion.
    assert done.update_time.ToDatetime() >= done.complete_time.ToDatetime()
    assert done.update_time.ToDatetime() > job.create_time.ToDatetime()
    await asyncio.wait_for(watcher, timeout=10)
    assert watched[-2:] == [pb.Job.STATE_PROCESSING, pb.Job.STATE_COMPLETED]
    assert watched[0] in (pb.Job.STATE_PENDING, pb.Job.STATE_QUEUED, pb.Job.STATE_PROCESSING)
    await stack.tap.wait_matching(
        topics.JOB_STATUS_CHANGED.name,
        lambda r: (
            r.key.decode() == job_id
            and events_pb2.JobStatusChanged.FromString(r.value).state == pb.Job.STATE_COMPLETED
        ),
    )
    states = [
        events_pb2.JobStatusChanged.FromString(r.value).state
        for r in stack.tap.of(topics.JOB_STATUS_CHANGED.name, job_id)
    ]
    # QUEUED when the gateway took it in, PROCESSING when the provider accepted it. The
    # queued and started events travel on different topics, so a start that overtakes its
    # queued event takes the job past QUEUED, never back to it.
    assert states in (
        [pb.Job.STATE_QUEUED, pb.Job.STATE_PROCESSING, pb.Job.STATE_COMPLETED],
        [pb.Job.STATE_PROCESSING, pb.Job.STATE_COMPLETED],
    )
    # A late, repeated start leaves it COMPLETED.
    await stack.publish(
        topics.GENERATION_STARTED,
        job_id,
        events_pb2.GenerationStarted(
            job_id=job_id, user_id="alice", submission_id=str(uuid.uuid4()), provider_id="pixverse"
        ),
    )
    await asyncio.sleep(1)
    assert (await stack.state_of(job.name, pb.Job.STATE_COMPLETED)).asset == done.asset


async def test_a_completed_job_reports_its_timings_and_our_overhead(stack: Stack) -> None:
    def observed() -> float:
        return (
            REGISTRY.get_sample_value("pixsim_job_overhead_seconds_count", {"provider": "pixverse"})
            or 0.0
        )

    before = observed()
    job = await stack.create(prompt="timed [sim:finish_ms=1500]")
    job_id = job.name.removeprefix("jobs/")
    await stack.tap.wait_for(topics.GENERATION_COMPLETED.name, job_id)
    asset_id = str(uuid.uuid4())
    await stack.publish(
        topics.ASSET_CREATED,
        asset_id,
        events_pb2.AssetCreated(asset_id=asset_id, user_id="alice", job_id=job_id),
    )
    done = await stack.state_of(job.name, pb.Job.STATE_COMPLETED)
    for _ in range(100):  # generation.completed and asset.created come in any order
        if done.HasField("overhead_duration"):
            break
        await asyncio.sleep(0.05)
        done = await stack.jobs.GetJob(pb.GetJobRequest(name=job.name), metadata=stack.alice)
    times = [
        getattr(done, field).ToDatetime()
        for field in (
            "create_time",
            "queue_time",
            "dispatch_time",
            "provider_start_time",
            "provider_end_time",
            "complete_time",
        )
    ]
    assert times == sorted(times), times
    provider = done.provider_duration.ToTimedelta().total_seconds()
    overhead = done.overhead_duration.ToTimedelta().total_seconds()
    total = (times[-1] - times[0]).total_seconds()
    # The task took 1.5 s at the provider. Our start is stamped when its acceptance is
    # recorded, a moment after the provider's own; its end when it is noticed, at once by a
    # callback or at the next poll. So the figure is 1.5 s less that moment, or more.
    assert provider >= 1.3
    assert overhead == pytest.approx(total - provider, abs=0.01)
    assert observed() == before + 1


FAIL_JOB_ELSEWHERE = """
import asyncio, sys, asyncpg
async def main():
    connection = await asyncpg.connect(sys.argv[1])
    await connection.execute(
        "UPDATE jobs SET state = 'FAILED', error_code = 'X' WHERE id = $1", sys.argv[2])
asyncio.run(main())
"""


async def test_watch_sees_a_change_made_by_another_process(stack: Stack) -> None:
    job = await stack.create(prompt="slow [sim:finish_ms=600000]")
    updates = aiter(stack.jobs.WatchJob(pb.WatchJobRequest(name=job.name), metadata=stack.alice))
    first = await anext(updates)
    assert first.state in (pb.Job.STATE_PENDING, pb.Job.STATE_PROCESSING)
    await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-c",
            FAIL_JOB_ELSEWHERE,
            stack.database.url,
            job.name.removeprefix("jobs/"),
        ],
        check=True,
    )
    update = first
    while update.state != pb.Job.STATE_FAILED:  # PROCESSING (from the gateway) may come first
        update = await asyncio.wait_for(anext(updates), timeout=5)
    assert update.error_code == "X"


async def test_the_same_request_id_raced_20_times_makes_one_job(stack: Stack) -> None:
    key = f"req-{uuid.uuid4().hex}"
    made = await asyncio.gather(*(stack.create(request_id=key) for _ in range(20)))
    assert len({job.name for job in made}) == 1
    job_id = made[0].name.removeprefix("jobs/")
    await stack.tap.wait_for(topics.JOB_SUBMITTED.name, job_id)
    await asyncio.sleep(1)
    assert len(stack.tap.of(topics.JOB_SUBMITTED.name, job_id)) == 1
    other = await stack.jobs.CreateJob(
        pb.CreateJobRequest(
            job=pb.Job(
                provider_id="pixverse",
                operation_type=t.OPERATION_TYPE_TEXT_TO_VIDEO,
                prompt="a cat",
            ),
            request_id=key,
        ),
        metadata=stack.bob,
    )
    assert other.name != made[0].name  # keys are per caller


@pytest.mark.parametrize(
    ("job", "code", "fields"),
    [
        (
            pb.Job(prompt="no identity"),
            grpc.StatusCode.INVALID_ARGUMENT,
            {"job.provider_id", "job.operation_type"},
        ),
        (
            pb.Job(provider_id="sora", operation_type=t.OPERATION_TYPE_TEXT_TO_VIDEO, prompt="x"),
            grpc.StatusCode.INVALID_ARGUMENT,
            {"job.provider_id"},
        ),
        (
            pb.Job(
                provider_id="pixverse",
                operation_type=t.OPERATION_TYPE_TEXT_TO_VIDEO,
                prompt="x",
                params=struct_pb2.Struct(
                    fields={
                        "duration": struct_pb2.Value(number_value=7),
                        "speed": struct_pb2.Value(number_value=1),
                    }
                ),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            {"job.params.duration", "job.params.speed"},
        ),
        (
            pb.Job(
                provider_id="pixverse", operation_type=t.OPERATION_TYPE_IMAGE_TO_VIDEO, prompt="x"
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            {"job.inputs"},
        ),
    ],
    ids=["no identity", "unknown provider", "bad params", "missing input"],
)
async def test_bad_requests_name_their_fields(
    stack: Stack, job: pb.Job, code: grpc.StatusCode, fields: set[str]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stack.jobs.CreateJob(pb.CreateJobRequest(job=job), metadata=stack.alice)
    assert raised.value.code() == code
    assert {v.field for v in status_details(raised.value)["BadRequest"].field_violations} == fields


async def test_an_unsupported_operation_lists_what_the_provider_supports(stack: Stack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stack.create(provider="pika", operation=t.OPERATION_TYPE_VIDEO_EXTEND)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = status_details(raised.value)["ErrorInfo"]
    assert info.reason == "UNSUPPORTED_OPERATION"
    assert "OPERATION_TYPE_FUSION" in info.metadata["supported_operations"]
    assert "OPERATION_TYPE_VIDEO_EXTEND" not in info.metadata["supported_operations"]


async def test_cancel_and_retry(stack: Stack) -> None:
    job = await stack.create(prompt="slow [sim:finish_ms=600000]")
    job_id = job.name.removeprefix("jobs/")
    cancelled = await stack.jobs.CancelJob(pb.CancelJobRequest(name=job.name), metadata=stack.alice)
    assert cancelled.state == pb.Job.STATE_CANCELLED
    await stack.tap.wait_for(topics.JOB_CANCELLED.name, job_id)
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await stack.jobs.CancelJob(pb.CancelJobRequest(name=job.name), metadata=stack.alice)
    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    failing = await stack.create(prompt="a cat [sim:moderation]")
    failed = await stack.state_of(failing.name, pb.Job.STATE_FAILED)
    assert failed.error_code == "CONTENT_REJECTED"
    retried = await stack.jobs.RetryJob(pb.RetryJobRequest(name=failing.name), metadata=stack.alice)
    assert (retried.state, retried.retry_count) == (pb.Job.STATE_PENDING, 1)
    resubmitted = await stack.tap.wait_for(
        topics.JOB_SUBMITTED.name, failing.name.removeprefix("jobs/"), count=2
    )
    assert events_pb2.JobSubmitted.FromString(resubmitted[1].value).retry_count == 1
    # Only a FAILED job retries. (Not the retried one: its moderated prompt may fail it
    # again any moment; the cancelled job stays cancelled.)
    with pytest.raises(grpc.aio.AioRpcError) as not_failed:
        await stack.jobs.RetryJob(pb.RetryJobRequest(name=job.name), metadata=stack.alice)
    assert not_failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert status_details(not_failed.value)["ErrorInfo"].reason == "JOB_NOT_FAILED"


async def test_other_users_jobs_are_not_found(stack: Stack) -> None:
    job = await stack.create()
    for call in (
        stack.jobs.GetJob(pb.GetJobRequest(name=job.name), metadata=stack.bob),
        stack.jobs.CancelJob(pb.CancelJobRequest(name=job.name), metadata=stack.bob),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_list_filters_and_pages_newest_first(stack: Stack) -> None:
    made = [await stack.create(prompt=f"list {i}") for i in range(5)]
    first = await stack.jobs.ListJobs(pb.ListJobsRequest(page_size=3), metadata=stack.alice)
    second = await stack.jobs.ListJobs(
        pb.ListJobsRequest(page_size=3, page_token=first.next_page_token), metadata=stack.alice
    )
    names = [j.name for j in [*first.jobs, *second.jobs]]
    assert names[:5] == [j.name for j in reversed(made)]
    cancelled = await stack.jobs.ListJobs(
        pb.ListJobsRequest(states=[pb.Job.STATE_CANCELLED], provider_id="pixverse"),
        metadata=stack.alice,
    )
    assert all(j.state == pb.Job.STATE_CANCELLED for j in cancelled.jobs)
    bobs = await stack.jobs.CreateJob(
        pb.CreateJobRequest(
            job=pb.Job(
                provider_id="pixverse",
                operation_type=t.OPERATION_TYPE_TEXT_TO_VIDEO,
                prompt="bob's",
            )
        ),
        metadata=stack.bob,
    )
    seen_by_bob = (await stack.jobs.ListJobs(pb.ListJobsRequest(), metadata=stack.bob)).jobs
    assert bobs.name in {j.name for j in seen_by_bob}
    assert not {j.name for j in made} & {j.name for j in seen_by_bob}  # alice's stay hers
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stack.jobs.ListJobs(pb.ListJobsRequest(page_token="garbage!"), metadata=stack.alice)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_an_event_for_no_job_goes_to_the_dlq(stack: Stack) -> None:
    ghost = str(uuid.uuid4())
    await stack.publish(
        topics.GENERATION_STARTED,
        ghost,
        events_pb2.GenerationStarted(
            job_id=ghost, user_id="alice", submission_id=str(uuid.uuid4()), provider_id="x"
        ),
    )
    (dead,) = await stack.tap.wait_for(topics.GENERATION_STARTED.dlq, ghost)
    assert dict(dead.headers)["pixsim_error_reason"] == b"UNKNOWN_JOB"


@pytest.mark.parametrize("owner", ["without a budget", "with a budget"])
async def test_a_failure_between_the_job_and_its_event_leaves_neither(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, owner: str
) -> None:
    import pixsim_common.outbox as outbox_module
    import pixsim_job.service as service_module

    if owner == "without a budget":
        # One statement writes both rows: PostgreSQL refuses the event row (no topic), so
        # the job row of the same statement goes too.
        def refused(event: Any) -> dict[str, Any]:
            return {**outbox_module.outbox_row(event), "topic": None}

        monkeypatch.setattr(service_module, "outbox_row", refused)
        auth = stack.alice
    else:
        _, auth = await budgeted_user(stack, 10_000)

        # The budget's transaction writes the collected events just before it commits.
        async def broken(*_args: Any, **_kwargs: Any) -> None:
            raise RuntimeError("the outbox write failed")

        monkeypatch.setattr(outbox_module, "write_collected", broken)
    # Counted by this request's own prompt: other tests' jobs still make events meanwhile.
    prompt = f"doomed {uuid.uuid4().hex}"
    jobs = "SELECT count(*) FROM jobs WHERE request->>'prompt' = $1"
    events = "SELECT count(*) FROM outbox WHERE position(convert_to($1, 'UTF8') in payload) > 0"
    connection = await asyncpg.connect(stack.database.url)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stack.jobs.CreateJob(pb.CreateJobRequest(job=pixverse_job(prompt)), metadata=auth)
        assert raised.value.code() == grpc.StatusCode.INTERNAL
        assert await connection.fetchval(jobs, prompt) == 0
        assert await connection.fetchval(events, prompt) == 0
    finally:
        await connection.close()


async def test_a_request_id_reused_with_another_request_is_already_exists(stack: Stack) -> None:
    key = f"reuse-{uuid.uuid4().hex}"
    original = await stack.create(prompt="a cat", request_id=key)
    again = await stack.create(prompt="a cat", request_id=key)
    assert again.name == original.name  # the same request: the same job
    for provider, prompt in (("pixverse", "a dog"), ("pika", "a cat")):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stack.create(provider, prompt, request_id=key)
        assert raised.value.code() == grpc.StatusCode.ALREADY_EXISTS
        info = status_details(raised.value)["ErrorInfo"]
        assert info.reason == "REQUEST_ID_REUSED"
        assert info.metadata["job"] == original.name


async def test_events_naming_another_owner_change_nothing_of_theirs(stack: Stack) -> None:
    """A crafted generation or asset event carries alice's job id under bob's name: it is
    poison, and her job goes on as if it never came."""
    job = await stack.create(prompt="slow [sim:finish_ms=600000]")
    job_id = job.name.removeprefix("jobs/")
    await stack.state_of(job.name, pb.Job.STATE_PROCESSING)
    asset_id = str(uuid.uuid4())
    await stack.publish(
        topics.ASSET_CREATED,
        asset_id,
        events_pb2.AssetCreated(asset_id=asset_id, user_id="bob", job_id=job_id),
    )
    await stack.publish(
        topics.GENERATION_FAILED,
        job_id,
        events_pb2.GenerationFailed(
            job_id=job_id,
            user_id="bob",
            provider_id="pixverse",
            error_code=t.GENERATION_ERROR_CODE_TRANSIENT,
        ),
    )
    (dead,) = await stack.tap.wait_for(topics.ASSET_CREATED.dlq, asset_id)
    assert dict(dead.headers)["pixsim_error_reason"] == b"OWNER_MISMATCH"
    (dead,) = await stack.tap.wait_for(topics.GENERATION_FAILED.dlq, job_id)
    assert dict(dead.headers)["pixsim_error_reason"] == b"OWNER_MISMATCH"
    unchanged = await stack.jobs.GetJob(pb.GetJobRequest(name=job.name), metadata=stack.alice)
    assert (unchanged.state, unchanged.asset) == (pb.Job.STATE_PROCESSING, "")


async def test_a_submission_that_can_never_be_published_fails_its_job_alone(
    stack: Stack,
) -> None:
    """An outbox row the broker would refuse (written here by hand, past every check that
    keeps requests from making one) is set aside: its job fails with a clear code, and the
    next caller's job is not held up behind it."""
    doomed = await stack.create(prompt="slow [sim:finish_ms=600000]")
    doomed_id = doomed.name.removeprefix("jobs/")
    await stack.tap.wait_for(topics.JOB_SUBMITTED.name, doomed_id)
    connection = await asyncpg.connect(stack.database.url)
    try:
        # A second, oversized submission of the same job, as a bug might write it.
        await connection.execute(
            "INSERT INTO outbox (event_id, topic, key, payload, headers)"
            " VALUES ($1, $2, $3, $4, $5::jsonb)",
            str(uuid.uuid4()),
            topics.JOB_SUBMITTED.name,
            doomed_id,
            b"\x0a" + b"x" * (2 * 1024 * 1024),
            '{"ce_id": "x"}',
        )
        await connection.execute("UPDATE jobs SET state = 'PENDING' WHERE id = $1", doomed_id)
    finally:
        await connection.close()
    other = await stack.jobs.CreateJob(
        pb.CreateJobRequest(
            job=pb.Job(
                provider_id="pixverse",
                operation_type=t.OPERATION_TYPE_TEXT_TO_VIDEO,
                prompt="a normal job",
            )
        ),
        metadata=stack.bob,
    )
    await stack.tap.wait_for(topics.JOB_SUBMITTED.name, other.name.removeprefix("jobs/"))
    failed = await stack.state_of(doomed.name, pb.Job.STATE_FAILED)
    assert failed.error_code == "EVENT_UNPUBLISHABLE"


def fallback(provider: str, **params: Any) -> pb.Fallback:
    made = pb.Fallback(provider_id=provider)
    made.params.update(params)
    return made


async def test_fallbacks_are_checked_against_their_providers_and_travel_with_the_job(
    stack: Stack,
) -> None:
    refusals = {
        "job.fallbacks[0].provider_id": [fallback("sora")],
        "job.fallbacks[1].provider_id": [fallback("runway"), fallback("pixverse")],
        "job.fallbacks[0].params.nonsense": [fallback("runway", nonsense=1)],
    }
    for field, fallbacks in refusals.items():
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stack.jobs.CreateJob(
                pb.CreateJobRequest(
                    job=pb.Job(
                        provider_id="pixverse",
                        operation_type=t.OPERATION_TYPE_TEXT_TO_VIDEO,
                        prompt="a cat",
                        fallbacks=fallbacks,
                    )
                ),
                metadata=stack.alice,
            )
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        violations = status_details(raised.value)["BadRequest"].field_violations
        assert field in [v.field for v in violations], (field, violations)

    job = await stack.jobs.CreateJob(
        pb.CreateJobRequest(
            job=pb.Job(
                provider_id="pixverse",
                operation_type=t.OPERATION_TYPE_TEXT_TO_VIDEO,
                prompt="a cat",
                fallbacks=[fallback("runway", duration=10), fallback("pika")],
            )
        ),
        metadata=stack.alice,
    )
    assert [f.provider_id for f in job.fallbacks] == ["runway", "pika"]
    assert job.fallbacks[0].params["duration"] == 10
    job_id = job.name.removeprefix("jobs/")
    (record,) = await stack.tap.wait_for(topics.JOB_SUBMITTED.name, job_id)
    submitted = events_pb2.JobSubmitted.FromString(record.value)
    assert [f.provider_id for f in submitted.fallbacks] == ["runway", "pika"]
    again = await stack.jobs.GetJob(pb.GetJobRequest(name=job.name), metadata=stack.alice)
    assert list(again.fallbacks) == list(job.fallbacks)


async def usage_today(stack: Stack, metadata: Any) -> tuple[int, int, int]:
    """Jobs, credits and micros of today's PixVerse text-to-video usage."""
    usage = await stack.jobs.GetUsage(pb.GetUsageRequest(), metadata=metadata)
    rows = [
        row
        for row in usage.rows
        if (row.provider_id, row.operation_type) == ("pixverse", t.OPERATION_TYPE_TEXT_TO_VIDEO)
        and (row.date.year, row.date.month, row.date.day)
        == (usage.end_date.year, usage.end_date.month, usage.end_date.day)
    ]
    return (
        sum(r.jobs for r in rows),
        sum(r.cost.credits for r in rows),
        sum(micros_of(r.cost.price) for r in rows),
    )


async def test_a_completed_job_reports_what_it_cost_and_its_owners_usage_counts_it(
    stack: Stack,
) -> None:
    user = f"spender-{uuid.uuid4().hex[:8]}"
    auth = stack.auth(user)
    before = await usage_today(stack, auth)
    job = await stack.jobs.CreateJob(pb.CreateJobRequest(job=pixverse_job("costed")), metadata=auth)
    job_id = job.name.removeprefix("jobs/")
    await stack.tap.wait_for(topics.GENERATION_SETTLED.name, job_id)
    asset_id = str(uuid.uuid4())
    await stack.publish(
        topics.ASSET_CREATED,
        asset_id,
        events_pb2.AssetCreated(asset_id=asset_id, user_id=user, job_id=job_id),
    )
    for _ in range(200):  # the settlement and the asset come on different topics
        done = await stack.jobs.GetJob(pb.GetJobRequest(name=job.name), metadata=auth)
        if done.cost.final and done.state == pb.Job.STATE_COMPLETED:
            break
        await asyncio.sleep(0.05)
    # PixVerse reports no cost: a 5 s clip is the adapter's 45 credits, at $0.004 a credit.
    assert (done.cost.settled.credits, done.cost.settled_attempts, done.cost.final) == (45, 1, True)
    assert micros_of(done.cost.settled.price) == 180_000
    assert done.cost.settled.price.currency_code == "USD"
    jobs, credits, micros = await usage_today(stack, auth)
    assert (jobs - before[0], credits - before[1], micros - before[2]) == (1, 45, 180_000)
    spent = REGISTRY.get_sample_value(
        "pixsim_job_spend_usd_total", {"user": user, "provider": "pixverse"}
    )
    assert spent is not None
    assert spent >= 0.18


async def test_usage_is_the_callers_own_unless_they_are_an_admin(stack: Stack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stack.jobs.GetUsage(pb.GetUsageRequest(user="users/alice"), metadata=stack.bob)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    someone = f"idle-{uuid.uuid4().hex[:8]}"
    mine = await stack.jobs.GetUsage(pb.GetUsageRequest(), metadata=stack.auth(someone))
    assert (mine.user, list(mine.rows), mine.total_jobs) == (f"users/{someone}", [], 0)
    theirs = await stack.jobs.GetUsage(
        pb.GetUsageRequest(user=f"users/{someone}"), metadata=stack.admin
    )
    assert theirs.user == f"users/{someone}"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stack.jobs.GetUsage(
            pb.GetUsageRequest(start_date=date_pb2.Date(year=2026, month=13, day=1)),
            metadata=stack.alice,
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    (violation,) = status_details(raised.value)["BadRequest"].field_violations
    assert violation.field == "start_date"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stack.jobs.GetUsage(
            pb.GetUsageRequest(
                start_date=date_pb2.Date(year=2020, month=1, day=1),
                end_date=date_pb2.Date(year=2026, month=1, day=1),
            ),
            metadata=stack.alice,
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_crafted_cost_changes_no_job_and_no_usage(stack: Stack) -> None:
    """A settlement with a cost past any real one, in another currency, or for another
    user's job, is poison: it goes to the dead letters and counts nowhere."""
    # A user of its own: alice's jobs from other tests may settle while this one looks.
    owner = f"crafted-{uuid.uuid4().hex[:8]}"
    auth = stack.auth(owner)
    job = await stack.jobs.CreateJob(pb.CreateJobRequest(job=pixverse_job()), metadata=auth)
    job_id = job.name.removeprefix("jobs/")
    before = await usage_today(stack, auth)

    def settled(user: str, units: int, currency: str = "USD") -> events_pb2.GenerationSettled:
        return events_pb2.GenerationSettled(
            job_id=job_id,
            user_id=user,
            submission_id=str(uuid.uuid4()),
            provider_id="pixverse",
            operation_type=t.OPERATION_TYPE_TEXT_TO_VIDEO,
            cost=t.Cost(credits=1, price=money_pb2.Money(currency_code=currency, units=units)),
            billing=t.BILLING_REPORTED,
            settle_time=now_timestamp(),
        )

    crafted = (
        (settled(owner, 2**62), b"BAD_COST"),
        (settled(owner, 1, "EUR"), b"BAD_COST"),
        (settled(owner, -1), b"BAD_COST"),
        (settled("bob", 1), b"OWNER_MISMATCH"),
    )
    for count, (event, reason) in enumerate(crafted, start=1):
        await stack.publish(topics.GENERATION_SETTLED, job_id, event)
        dead = await stack.tap.wait_for(topics.GENERATION_SETTLED.dlq, job_id, count=count)
        assert dict(dead[-1].headers)["pixsim_error_reason"] == reason
    unchanged = await stack.jobs.GetJob(pb.GetJobRequest(name=job.name), metadata=auth)
    assert (unchanged.cost.settled.credits, unchanged.cost.settled_attempts) == (0, 0)
    assert await usage_today(stack, auth) == before


def dollars_money(cents: int) -> money_pb2.Money:
    return money_pb2.Money(currency_code="USD", units=cents // 100, nanos=(cents % 100) * 10**7)


async def budgeted_user(stack: Stack, cents: int) -> tuple[str, Any]:
    """A new user with a daily budget of `cents`, and their credentials."""
    user = f"budgeted-{uuid.uuid4().hex[:8]}"
    budget = pb.Budget(
        name=f"users/{user}/budget", period=pb.Budget.PERIOD_DAY, limit=dollars_money(cents)
    )
    await stack.jobs.SetBudget(pb.SetBudgetRequest(budget=budget), metadata=stack.admin)
    return user, stack.auth(user)


def pixverse_job(prompt: str = "a cat [sim:finish_ms=600000]") -> pb.Job:
    return pb.Job(
        provider_id="pixverse", operation_type=t.OPERATION_TYPE_TEXT_TO_VIDEO, prompt=prompt
    )


async def test_a_job_past_its_owners_budget_is_refused_with_what_remains(stack: Stack) -> None:
    # PixVerse's 5 s clip is estimated at 45 credits, $0.18: two fit in $0.50, a third not.
    user, auth = await budgeted_user(stack, 50)
    first = await stack.jobs.CreateJob(pb.CreateJobRequest(job=pixverse_job()), metadata=auth)
    assert (first.cost.estimated.credits, micros_of(first.cost.estimated.price)) == (45, 180_000)
    await stack.jobs.CreateJob(pb.CreateJobRequest(job=pixverse_job()), metadata=auth)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stack.jobs.CreateJob(pb.CreateJobRequest(job=pixverse_job()), metadata=auth)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = status_details(raised.value)
    info = details["ErrorInfo"]
    assert info.reason == "BUDGET_EXCEEDED"
    assert (info.metadata["remaining"], info.metadata["remaining_micros"]) == ("$0.14", "140000")
    assert (info.metadata["estimate"], info.metadata["period"]) == ("$0.18", "DAY")
    (quota,) = details["QuotaFailure"].violations
    assert quota.subject == f"users/{user}/budget"

    budget = await stack.jobs.GetBudget(
        pb.GetBudgetRequest(name=f"users/{user}/budget"), metadata=auth
    )
    standing = [micros_of(m) for m in (budget.spent, budget.held, budget.remaining)]
    assert sum(standing[:2]) == 360_000  # held, or spent once settled
    assert standing[2] == 140_000
    # A batch takes what fits and refuses the rest, item by item.
    await stack.jobs.SetBudget(
        pb.SetBudgetRequest(
            budget=pb.Budget(
                name=f"users/{user}/budget",
                period=pb.Budget.PERIOD_DAY,
                limit=dollars_money(54),
            )
        ),
        metadata=stack.admin,
    )
    batch = await stack.jobs.BatchCreateJobs(
        pb.BatchCreateJobsRequest(
            requests=[pb.CreateJobRequest(job=pixverse_job()) for _ in range(2)]
        ),
        metadata=auth,
    )
    outcomes = sorted(str(r.WhichOneof("result")) for r in batch.results)
    assert outcomes == ["error", "job"]
    (refused,) = [r.error for r in batch.results if r.HasField("error")]
    assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    for limit in (
        money_pb2.Money(currency_code="EUR", units=1),
        money_pb2.Money(currency_code="USD", units=1, nanos=-5),
        money_pb2.Money(currency_code="USD", units=-1),
        money_pb2.Money(currency_code="USD", units=2**62),
    ):
        bad = pb.Budget(name=f"users/{user}/budget", period=pb.Budget.PERIOD_DAY, limit=limit)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stack.jobs.SetBudget(pb.SetBudgetRequest(budget=bad), metadata=stack.admin)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, limit
    # Without a budget nothing is refused for cost.
    await stack.jobs.DeleteBudget(
        pb.DeleteBudgetRequest(name=f"users/{user}/budget"), metadata=stack.admin
    )
    await stack.jobs.CreateJob(pb.CreateJobRequest(job=pixverse_job()), metadata=auth)


async def test_50_concurrent_creates_never_commit_more_than_the_budget(stack: Stack) -> None:
    # $1.00 holds five jobs at $0.18 ($0.90); a sixth would be $1.08.
    user, auth = await budgeted_user(stack, 100)

    async def create() -> grpc.StatusCode:
        try:
            await stack.jobs.CreateJob(pb.CreateJobRequest(job=pixverse_job()), metadata=auth)
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    answers = await asyncio.gather(*(create() for _ in range(50)))
    assert sorted(a.name for a in answers) == ["OK"] * 5 + ["RESOURCE_EXHAUSTED"] * 45
    connection = await asyncpg.connect(stack.database.url)
    try:
        committed = await connection.fetchval(
            "SELECT sum(estimated_micros) FROM jobs WHERE user_id = $1", user
        )
    finally:
        await connection.close()
    assert committed == 900_000
