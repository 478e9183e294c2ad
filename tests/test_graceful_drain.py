"""SIGTERM to each service while work flows through it, then a restart, as a rolling update
does: calls it had accepted finish; calls that raced the shutdown are refused (UNAVAILABLE,
or CANCELLED when gRPC had taken the call but not started it) with nothing written, and a
client retrying those with its request_id gets each job once. Afterwards every job
completes once: one asset.created and one COMPLETED per job, nothing redone or lost."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import grpc
import pytest

from pixsim.asset.v1 import asset_service_pb2 as asset_pb
from pixsim.events.v1 import events_pb2
from pixsim.job.v1 import job_service_pb2 as pb
from pixsim.scene.v1 import scene_service_pb2 as scene_pb
from pixsim_common import topics
from pixsim_local.whole_stack import WholeStack
from pixsim_provider_gateway.service import REPLICA_STOPPED
from pixsim_provider_sim.media import render_png

pytestmark = pytest.mark.e2e
RACED_SHUTDOWN = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}


def split(results: list[Any]) -> tuple[list[Any], list[grpc.aio.AioRpcError]]:
    done = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    bugs = [r for r in results if isinstance(r, BaseException) and r not in refused]
    assert bugs == []
    assert {e.code() for e in refused} <= RACED_SHUTDOWN, [(e.code(), e.details()) for e in refused]
    return done, refused


@pytest.mark.parametrize("name", ["job", "provider-gateway", "asset"])
async def test_a_service_drained_under_load_loses_and_repeats_nothing(
    whole_stack: WholeStack, name: str
) -> None:
    stack = whole_stack

    requests: dict[str, str] = {}

    async def burst(label: str, count: int) -> list[Any]:
        keys = [f"drain-{name}-{label}-{i}-{uuid.uuid4().hex[:6]}" for i in range(count)]
        for key in keys:
            requests[key] = f"drain {name} {label}"
        return await asyncio.gather(
            *(stack.create("pixverse", prompt=requests[key], request_id=key) for key in keys),
            return_exceptions=True,
        )

    # Slow submits, so the gateway's SIGTERM lands while it is calling the provider.
    await stack.sim_key("pixverse", latency_ms=400 if name == "provider-gateway" else 0)
    try:
        before = await burst("before", 8)  # these are on their way through the pipeline
        during = asyncio.ensure_future(burst("during", 8))  # in flight as the SIGTERM lands
        await asyncio.sleep(0.02)
        await stack.services.restart(name)
        after = await burst("after", 4)
    finally:
        await stack.sim_key("pixverse", latency_ms=0)
    answered, _ = split([*before, *(await during), *after])
    # A client retries what was refused, with the same request_id: one job per request.
    created = [
        await stack.create("pixverse", prompt=requests[key], request_id=key) for key in requests
    ]
    assert {job.name for job in answered} <= {job.name for job in created}
    assert len({job.name for job in created}) == len(requests)
    finished = await asyncio.gather(*(stack.until_done(job, timeout=90) for job in created))
    assert [j.state for j in finished] == [pb.Job.STATE_COMPLETED] * len(created)
    for job in finished:
        job_id = job.name.removeprefix("jobs/")

        def answers(job_id: str = job_id) -> list[Any]:
            return stack.tap.matching(
                topics.ASSET_CREATED.name,
                lambda r: events_pb2.AssetCreated.FromString(r.value).job_id == job_id,
            )

        def completions(job_id: str = job_id) -> list[Any]:
            return [
                r
                for r in stack.tap.of(topics.JOB_STATUS_CHANGED.name, job_id)
                if events_pb2.JobStatusChanged.FromString(r.value).state == pb.Job.STATE_COMPLETED
            ]

        for _ in range(200):  # events follow the state by a relay's moment
            if answers() and completions():
                break
            await asyncio.sleep(0.05)
        assert (len(answers()), len(completions())) == (1, 1), job.name
        assert events_pb2.AssetCreated.FromString(answers()[0].value).asset_id == job.asset[7:]
    # A drained gateway finished the calls it had under way: no attempt was left for
    # recovery to find when its lease ran out.
    connection = await asyncpg.connect(stack.services.databases["provider-gateway"].url)
    try:
        stranded = await connection.fetchval(
            "SELECT count(*) FROM provider_submissions"
            " WHERE job_id = ANY($1::uuid[]) AND error_message = $2",
            [job.name.removeprefix("jobs/") for job in created],
            REPLICA_STOPPED,
        )
    finally:
        await connection.close()
    assert stranded == 0


async def test_the_scene_service_drained_under_load_keeps_its_writes_and_its_events(
    whole_stack: WholeStack,
) -> None:
    stack = whole_stack
    asset = await stack.registered(render_png(4242, 24, 24), "image/png")
    holder = await stack.scenes.CreateScene(
        scene_pb.CreateSceneRequest(scene=scene_pb.Scene(display_name="holder")),
        metadata=stack.alice,
    )
    node = await stack.scenes.CreateSceneAsset(
        scene_pb.CreateSceneAssetRequest(
            parent=holder.name, scene_asset=scene_pb.SceneAsset(asset=asset)
        ),
        metadata=stack.alice,
    )

    async def burst(label: str) -> list[Any]:
        return await asyncio.gather(
            *(
                stack.scenes.CreateScene(
                    scene_pb.CreateSceneRequest(
                        scene=scene_pb.Scene(display_name=f"{label} {i}", tags=["drain"])
                    ),
                    metadata=stack.alice,
                )
                for i in range(8)
            ),
            return_exceptions=True,
        )

    during = asyncio.ensure_future(burst("during"))
    await asyncio.sleep(0.02)
    restarting = asyncio.ensure_future(stack.services.restart("scene"))
    # Deleted while the scene service is away: its consumer must catch up after the restart.
    await stack.assets.DeleteAsset(asset_pb.DeleteAssetRequest(name=asset), metadata=stack.alice)
    await restarting
    created, _ = split(await during)
    listed = await stack.scenes.ListScenes(
        scene_pb.ListScenesRequest(tag="drain", page_size=100), metadata=stack.alice
    )
    # Everything answered was written, and nothing refused was.
    assert {s.name for s in created} == {s.name for s in listed.scenes}
    for _ in range(200):
        graph = await stack.scenes.GetSceneGraph(
            scene_pb.GetSceneGraphRequest(name=holder.name), metadata=stack.alice
        )
        if graph.assets[0].detached:
            break
        await asyncio.sleep(0.05)
    assert [(n.name, n.detached) for n in graph.assets] == [(node.name, True)]
