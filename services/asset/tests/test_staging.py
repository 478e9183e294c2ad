"""No download inside a database transaction: twenty generations whose media is slow to
come, on a pool of five connections and no overflow, while other RPCs keep answering. A
download held inside the consumer's transaction would hold a connection for its whole
length (one per partition being consumed), and the RPCs would wait for the pool."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from pydantic import SecretStr

from pixsim.asset.v1 import asset_service_pb2 as pb
from pixsim.asset.v1 import asset_service_pb2_grpc as pb_grpc
from pixsim.events.v1 import events_pb2
from pixsim.types.v1 import types_pb2 as t
from pixsim_asset import main as asset_main
from pixsim_asset.settings import Settings
from pixsim_common import topics
from pixsim_common.app import ServiceApp
from pixsim_common.auth import issue_token
from pixsim_common.db import run_migrations
from pixsim_local.kafka import EventTap, KafkaBroker, publish_events
from pixsim_local.pytest_plugin import DatabaseFactory
from pixsim_provider_sim.media import render_mp4

from .test_asset_service import MediaServer

pytestmark = pytest.mark.integration
SLOW_SECONDS = 4.0


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def slow_media() -> AsyncIterator[MediaServer]:
    media = MediaServer()
    server = await asyncio.start_server(media.handle, "127.0.0.1", 0)
    media.port = server.sockets[0].getsockname()[1]
    yield media
    server.close()


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def small_pool_app(
    own_kafka: KafkaBroker,
    new_database_module: DatabaseFactory,
    signing_keys: tuple[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[ServiceApp]:
    database = await new_database_module("assets_staging")
    await asyncio.to_thread(run_migrations, database.url, asset_main.MIGRATIONS)
    app = await asset_main.build(
        Settings(
            database_url=SecretStr(database.url),
            database_pool_size=5,
            database_max_overflow=0,
            kafka_bootstrap=own_kafka.bootstrap,
            jwt_public_key=signing_keys[1],
            grpc_port=0,
            storage_root=tmp_path_factory.mktemp("staging-store"),
            fetch_allow_loopback=True,
        )
    )
    await app.start()
    yield app
    await app.stop()


async def test_slow_downloads_hold_no_connection_and_rpcs_keep_answering(
    own_kafka: KafkaBroker,
    small_pool_app: ServiceApp,
    slow_media: MediaServer,
    signing_keys: tuple[str, str],
) -> None:
    alice = (("authorization", "Bearer " + issue_token(signing_keys[0], user_id="alice")),)
    tap = EventTap(own_kafka.bootstrap, [topics.ASSET_CREATED.name])
    await tap.start()
    try:
        events = []
        for index in range(20):
            url = slow_media.add(render_mp4(index + 1, 64, 48, 1.0))
            path = "/" + url.split("/", 3)[3]
            slow_media.slow[path] = SLOW_SECONDS
            events.append(
                events_pb2.GenerationCompleted(
                    job_id=str(uuid.uuid4()),
                    user_id="alice",
                    submission_id=str(uuid.uuid4()),
                    provider_id="pixverse",
                    operation_type=t.OPERATION_TYPE_TEXT_TO_VIDEO,
                    provider_asset_id=uuid.uuid4().hex,
                    media=events_pb2.GeneratedMedia(uri=url, media_type=t.MEDIA_TYPE_VIDEO),
                )
            )
        await publish_events(
            own_kafka.bootstrap, topics.GENERATION_COMPLETED, [(e.job_id, e) for e in events]
        )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{small_pool_app.port}") as channel:
            stub = pb_grpc.AssetServiceStub(channel)
            started = time.monotonic()
            answered = 0
            while time.monotonic() - started < 2 * SLOW_SECONDS:
                # Each would wait for a pooled connection if the downloads held them.
                await stub.ListAssets(pb.ListAssetsRequest(), metadata=alice, timeout=2)
                answered += 1
                await asyncio.sleep(0.2)
            assert answered >= 10
            jobs = {e.job_id for e in events}

            def answers(record: Any) -> bool:
                return events_pb2.AssetCreated.FromString(record.value).job_id in jobs

            await tap.wait_matching(
                topics.ASSET_CREATED.name, answers, count=len(events), timeout=90
            )
        assert all(slow_media.hits.get("/" + e.media.uri.split("/", 3)[3]) for e in events)
    finally:
        await tap.stop()
