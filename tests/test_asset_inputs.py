"""Every asset works as a provider input, over both storage backends (the local filesystem,
and S3 on a real S3 server), with the simulator's output URLs expiring within seconds:

- an uploaded PNG (no URL anywhere) drives image-to-video on each of the three providers;
- clips generated earlier, past their provider URL's expiry, are extended (Runway,
  PixVerse) and joined by a transition (each provider that offers one);
- each provider received the input's exact bytes (by sha256, from the simulator's record):
  the file itself, or for a transition the first clip's last frame and the second's first.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
import pytest_asyncio

from pixsim.asset.v1 import asset_service_pb2 as asset_pb
from pixsim.job.v1 import job_service_pb2 as job_pb
from pixsim.types.v1 import types_pb2 as t
from pixsim_common.errors import status_details
from pixsim_common.topics import DEFAULT_PARTITIONS, all_topic_names
from pixsim_local.infra import Infra
from pixsim_local.kafka import KafkaBroker
from pixsim_local.processes import free_port
from pixsim_local.s3 import S3Server
from pixsim_local.whole_stack import WholeStack, whole_stack
from pixsim_provider_sim.media import render_png

pytestmark = pytest.mark.e2e
# How long the first clips' provider URLs live (providers' live a day or two).
URL_TTL_SECONDS = 4.0


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def s3_stack(
    infra: Infra, s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[WholeStack]:
    """The whole stack with the asset service on S3 (the shared stack is on local disk)."""
    bucket = f"inputs-{uuid.uuid4().hex[:8]}"
    await s3_server.create_bucket(bucket)
    settings = s3_server.settings(bucket)
    run_dir = tmp_path_factory.mktemp("inputs-kafka-s3")
    broker = await KafkaBroker.start(run_dir, free_port(), free_port())
    try:
        await broker.ensure_topics(all_topic_names(), DEFAULT_PARTITIONS)
        async with whole_stack(infra, broker, settings) as made:
            yield made
    finally:
        broker.stop()


@pytest.fixture(params=["local", "s3"])
def stack(request: pytest.FixtureRequest) -> WholeStack:
    """Each test on both storage backends."""
    name = "whole_stack" if request.param == "local" else "s3_stack"
    made: WholeStack = request.getfixturevalue(name)
    return made


def sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


async def run(
    stack: WholeStack, provider: str, operation: int, inputs: list[t.GenerationInput]
) -> tuple[job_pb.Job, list[str]]:
    """A job to its end; and the sha256 of each input the provider received."""
    prompt = f"from my own media {uuid.uuid4().hex[:10]}"
    job = await stack.until_done(await stack.create(provider, operation, prompt, inputs), 90)
    assert job.state == job_pb.Job.STATE_COMPLETED, (provider, job.error_code, job.error_message)
    (task,) = await stack.sim_tasks(prompt)
    return job, [received["sha256"] for received in task["inputs"]]


async def test_an_uploaded_image_becomes_a_video_on_every_provider(stack: WholeStack) -> None:
    png = render_png(uuid.uuid4().int % 100_000, 64, 48)
    image = await stack.uploaded(png)
    assert image.remote_uri == ""  # no URL a provider could have fetched
    given = [t.GenerationInput(role=t.INPUT_ROLE_IMAGE, asset=image.name)]
    providers = ("pixverse", "runway", "pika")
    outcomes = await asyncio.gather(
        *(run(stack, p, t.OPERATION_TYPE_IMAGE_TO_VIDEO, given) for p in providers)
    )
    for provider, (job, received) in zip(providers, outcomes, strict=True):
        assert received == [sha(png)], provider
        lineage = await stack.assets.GetAssetLineage(
            asset_pb.GetAssetLineageRequest(name=job.asset), metadata=stack.alice
        )
        assert [p.asset for p in lineage.parents] == [image.name]


async def test_clips_past_their_provider_urls_expiry_are_extended_and_joined(
    stack: WholeStack,
) -> None:
    for provider in ("pixverse", "runway"):
        await stack.sim_key(provider, url_ttl_s=URL_TTL_SECONDS)
    try:
        first = await stack.asset_of(
            await stack.until_done(await stack.create("pixverse", prompt="the first clip"), 60)
        )
        second = await stack.asset_of(
            await stack.until_done(await stack.create("runway", prompt="the second clip"), 60)
        )
    finally:
        for provider in ("pixverse", "runway"):
            await stack.sim_key(provider, url_ttl_s=None)
    # Past the providers' URL expiry, their links are dead; our copies are not.
    await asyncio.sleep(URL_TTL_SECONDS + 0.5)
    async with httpx.AsyncClient() as client:
        for clip in (first, second):
            expired = await client.get(clip.remote_uri)
            assert expired.status_code == 403, expired.status_code
    clip_bytes = await stack.content(first.name)
    # A transition goes from where the first clip ends to where the second begins.
    frames = [
        sha(await stack.content(first.name, "last_frame")),
        sha(await stack.content(second.name, "first_frame")),
    ]
    extend = [t.GenerationInput(role=t.INPUT_ROLE_VIDEO, asset=first.name)]
    join = [
        t.GenerationInput(role=t.INPUT_ROLE_START_FRAME, asset=first.name),
        t.GenerationInput(role=t.INPUT_ROLE_END_FRAME, asset=second.name),
    ]
    runs = [("runway", t.OPERATION_TYPE_VIDEO_EXTEND, extend, [sha(clip_bytes)])]
    runs += [("pixverse", t.OPERATION_TYPE_VIDEO_EXTEND, extend, [sha(clip_bytes)])]
    runs += [
        (p, t.OPERATION_TYPE_VIDEO_TRANSITION, join, frames) for p in ("runway", "pika", "pixverse")
    ]
    outcomes = await asyncio.gather(*(run(stack, p, o, i) for p, o, i, _ in runs))
    for (provider, operation, _, expected), (_, received) in zip(runs, outcomes, strict=True):
        assert received == expected, (provider, t.OperationType.Name(operation))


async def test_an_input_the_providers_intake_would_not_take_is_refused_at_create_job(
    stack: WholeStack,
) -> None:
    image = await stack.uploaded(render_png(uuid.uuid4().int % 100_000, 32, 32))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stack.create(
            "pixverse",
            t.OPERATION_TYPE_VIDEO_EXTEND,
            "an image is no video to extend",
            [t.GenerationInput(role=t.INPUT_ROLE_VIDEO, asset=image.name)],
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = status_details(raised.value)["BadRequest"].field_violations
    assert [(v.field, v.reason) for v in violations] == [
        ("job.inputs[0].asset", "INPUT_MEDIA_TYPE")
    ]
