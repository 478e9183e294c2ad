"""The whole stack as separate processes, as `make run` starts it (the `whole_stack` fixture:
the simulator and the four services over real PostgreSQL and a Kafka broker of their own),
driven through gRPC and the `pixsim` client the way a user would."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import uuid
from pathlib import Path

import av
import grpc
import pytest

from pixsim.asset.v1 import asset_service_pb2 as asset_pb
from pixsim.events.v1 import events_pb2
from pixsim.job.v1 import job_service_pb2 as pb
from pixsim.provider.v1 import provider_gateway_service_pb2 as gw_pb
from pixsim.scene.v1 import scene_service_pb2 as scene_pb
from pixsim.types.v1 import types_pb2 as t
from pixsim_common import topics
from pixsim_local.whole_stack import WholeStack
from pixsim_provider_sim.media import render_mp4, render_png

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack(whole_stack: WholeStack) -> WholeStack:
    return whole_stack


Metadata = tuple[tuple[str, str], ...]


async def test_every_operation_of_every_provider_ends_with_a_probed_asset_and_its_lineage(
    stack: WholeStack,
) -> None:
    def seed() -> int:
        return secrets.randbelow(1_000_000)

    images = [await stack.registered(render_png(seed(), 64, 48), "image/png") for _ in range(3)]
    video = await stack.registered(render_mp4(seed(), 64, 48, 1), "video/mp4")
    by_role = {
        t.INPUT_ROLE_IMAGE: [images[0]],
        t.INPUT_ROLE_START_FRAME: [images[1]],
        t.INPUT_ROLE_END_FRAME: [images[2]],
        t.INPUT_ROLE_REFERENCE: images[:2],
        t.INPUT_ROLE_VIDEO: [video],
    }
    providers = await stack.gateway.ListProviders(
        gw_pb.ListProvidersRequest(), metadata=stack.alice
    )
    started: list[tuple[str, int, list[t.GenerationInput], pb.Job]] = []
    for provider in providers.providers:
        for capability in provider.operations:
            required = list(capability.required_inputs)
            inputs = [
                t.GenerationInput(role=role, asset=name)
                for role in dict.fromkeys(required)
                for name in by_role[role][: required.count(role)]
            ]
            job = await stack.create(
                provider.name.removeprefix("providers/"),
                capability.operation_type,
                prompt="a red fox" if capability.prompt_required or not inputs else "",
                inputs=inputs,
            )
            started.append((provider.name, capability.operation_type, inputs, job))
    assert len(started) >= 12  # pixverse 5, runway 4, pika 4 operations at the time of writing
    finished = await asyncio.gather(*(stack.until_done(job) for *_, job in started))
    for (provider_name, operation, inputs, _), job in zip(started, finished, strict=True):
        label = f"{provider_name} {t.OperationType.Name(operation)}"  # type: ignore[arg-type]
        assert job.state == pb.Job.STATE_COMPLETED, f"{label}: {job}"
        asset = await stack.asset_of(job)
        assert asset.sync_status == asset_pb.Asset.SYNC_STATUS_DOWNLOADED, label
        assert (asset.media_type, asset.codec) == (t.MEDIA_TYPE_VIDEO, "h264"), label
        assert min(asset.width, asset.height, asset.duration.seconds) > 0, label
        # A video's first and last frames are kept too: inputs of frame roles take them.
        assert [v.kind for v in asset.variants] == ["first_frame", "last_frame", "thumbnail"], label
        lineage = await stack.assets.GetAssetLineage(
            asset_pb.GetAssetLineageRequest(name=asset.name), metadata=stack.alice
        )
        assert sorted((e.asset, e.role) for e in lineage.parents) == sorted(
            (i.asset, i.role) for i in inputs
        ), label
        assert {e.operation_type for e in lineage.parents} <= {operation}, label


async def test_an_unsupported_operation_is_refused_at_create_job(stack: WholeStack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stack.create("runway", t.OPERATION_TYPE_FUSION)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "runway does not support" in (refused.value.details() or "")


async def test_moderation_fails_the_job_with_the_providers_code(stack: WholeStack) -> None:
    job = await stack.until_done(await stack.create("pixverse", prompt="a fox [sim:moderation]"))
    assert (job.state, job.error_code) == (pb.Job.STATE_FAILED, "CONTENT_REJECTED")


async def test_a_server_error_is_retried_as_a_second_linked_submission(stack: WholeStack) -> None:
    await stack.sim_key("runway", fault="server_error", fault_count=1)
    job = await stack.until_done(await stack.create("runway"))
    assert job.state == pb.Job.STATE_COMPLETED, job
    submissions = (
        await stack.gateway.ListSubmissions(
            gw_pb.ListSubmissionsRequest(job=job.name), metadata=stack.alice
        )
    ).submissions
    assert [(s.retry_attempt, s.state) for s in submissions] == [
        (0, gw_pb.Submission.STATE_FAILED),
        (1, gw_pb.Submission.STATE_SUCCEEDED),
    ]
    assert submissions[1].previous_submission == submissions[0].name
    assert submissions[0].error_code == t.GENERATION_ERROR_CODE_TRANSIENT


async def test_a_job_cancelled_in_flight_stays_cancelled_and_nothing_follows(
    stack: WholeStack,
) -> None:
    job = await stack.create("pika", prompt="slow [sim:finish_ms=2500]")
    for _ in range(200):
        current = await stack.jobs.GetJob(pb.GetJobRequest(name=job.name), metadata=stack.alice)
        if current.state == pb.Job.STATE_PROCESSING:
            break
        await asyncio.sleep(0.05)
    cancelled = await stack.jobs.CancelJob(pb.CancelJobRequest(name=job.name), metadata=stack.alice)
    assert cancelled.state == pb.Job.STATE_CANCELLED
    await asyncio.sleep(3.5)  # past the moment the provider would have finished
    job_id = job.name.removeprefix("jobs/")
    assert stack.tap.of(topics.GENERATION_COMPLETED.name, job_id) == []
    assert (
        stack.tap.matching(
            topics.ASSET_CREATED.name,
            lambda r: events_pb2.AssetCreated.FromString(r.value).job_id == job_id,
        )
        == []
    )
    final = await stack.jobs.GetJob(pb.GetJobRequest(name=job.name), metadata=stack.alice)
    assert (final.state, final.asset) == (pb.Job.STATE_CANCELLED, "")


async def test_retrying_a_failed_job_completes_it(stack: WholeStack) -> None:
    await stack.sim_key("pika", fault="moderation", fault_count=1)
    failed = await stack.until_done(await stack.create("pika"))
    assert failed.state == pb.Job.STATE_FAILED
    await stack.jobs.RetryJob(pb.RetryJobRequest(name=failed.name), metadata=stack.alice)
    done = await stack.until_done(failed)
    assert (done.state, done.retry_count) == (pb.Job.STATE_COMPLETED, 1)
    assert (await stack.asset_of(done)).size_bytes > 0


async def test_the_same_content_from_two_jobs_is_one_asset(stack: WholeStack) -> None:
    prompt = f"twins [sim:seed={secrets.randbelow(10**6) + 1}]"
    jobs = [await stack.create("pixverse", prompt=prompt) for _ in range(2)]
    first, second = await asyncio.gather(*(stack.until_done(job) for job in jobs))
    assert first.name != second.name
    assert first.state == second.state == pb.Job.STATE_COMPLETED
    assert first.asset == second.asset


async def test_a_deleted_asset_is_detached_from_its_scene(stack: WholeStack) -> None:
    job = await stack.until_done(await stack.create("pixverse"))
    scene = await stack.scenes.CreateScene(
        scene_pb.CreateSceneRequest(scene=scene_pb.Scene(display_name="story")),
        metadata=stack.alice,
    )
    node = await stack.scenes.CreateSceneAsset(
        scene_pb.CreateSceneAssetRequest(
            parent=scene.name, scene_asset=scene_pb.SceneAsset(asset=job.asset)
        ),
        metadata=stack.alice,
    )
    await stack.assets.DeleteAsset(
        asset_pb.DeleteAssetRequest(name=job.asset), metadata=stack.alice
    )
    for _ in range(200):
        graph = await stack.scenes.GetSceneGraph(
            scene_pb.GetSceneGraphRequest(name=scene.name), metadata=stack.alice
        )
        if graph.assets[0].detached:
            break
        await asyncio.sleep(0.05)
    assert [(n.name, n.asset, n.detached) for n in graph.assets] == [(node.name, "", True)]


async def test_one_trace_spans_create_job_to_asset_created(stack: WholeStack) -> None:
    trace_id = secrets.token_hex(16)
    traceparent = f"00-{trace_id}-{secrets.token_hex(8)}-01"
    job = await stack.create("runway", metadata=(*stack.alice, ("traceparent", traceparent)))
    done = await stack.until_done(job)
    assert done.state == pb.Job.STATE_COMPLETED
    job_id = job.name.removeprefix("jobs/")
    (created,) = await stack.tap.wait_matching(
        topics.ASSET_CREATED.name,
        lambda r: events_pb2.AssetCreated.FromString(r.value).job_id == job_id,
    )
    headers = {key: value.decode() for key, value in created.headers}
    assert headers["traceparent"].split("-")[1] == trace_id
    # Each process on the way logged its part of the job under the same trace: the job
    # service its CreateJob, the gateway the task it handed a provider (after job.submitted
    # crossed Kafka), the asset service the generation it stored.
    parts = {
        "job": ("rpc", "CreateJob"),
        "provider-gateway": ("provider accepted a submission", job_id),
        "asset": ("generation stored", job_id),
    }
    for name, (event, mark) in parts.items():
        lines = (stack.services.logs / f"{name}.log").read_text().splitlines()
        # Only the structured lines of that event (a process also writes its
        # dependencies' plain output, which need not be JSON).
        records = [json.loads(line) for line in lines if f'"event": "{event}"' in line]
        traced = [r for r in records if mark in r.values()]
        assert [r["trace_id"] for r in traced][-1:] == [trace_id], name


def test_the_readme_command_ends_with_a_stored_probed_mp4(stack: WholeStack) -> None:
    services = stack.services
    env = {
        **os.environ,
        "PIXSIM_SIGNING_KEY": str(services.keys[0]),
        "PIXSIM_USER": "readme-user",
        "PIXSIM_JOB_ADDR": services.address("job"),
        "PIXSIM_ASSET_ADDR": services.address("asset"),
    }
    command = [sys.executable, "-c", "from pixsim_cli.main import app; app()"]
    result = subprocess.run(
        [*command, "--json", "job", "create", "--provider", "pixverse", "--operation",
         "text-to-video", "--prompt", "a red fox", "--wait"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["job"]["state"] == "STATE_COMPLETED"
    path = Path(answer["asset"]["storageUri"].removeprefix("file://"))
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        assert "mp4" in container.format.name
    unknown = subprocess.run(
        [*command, "job", "get", str(uuid.uuid4())], env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert unknown.returncode == 3
    assert "NOT_FOUND" in unknown.stderr
