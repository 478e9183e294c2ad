"""The asset service through a real gRPC channel and its Kafka consumer, against real
PostgreSQL and Kafka, with media served over loopback HTTP by a small server the test
scripts (whole files, files that break off once, files over the limit)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import signal
import struct
import subprocess
import sys
import uuid
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
import pytest_asyncio
from PIL import Image
from prometheus_client import REGISTRY
from pydantic import SecretStr

from pixsim.asset.v1 import asset_service_pb2 as pb
from pixsim.asset.v1 import asset_service_pb2_grpc as pb_grpc
from pixsim.events.v1 import events_pb2
from pixsim.types.v1 import types_pb2 as t
from pixsim_asset import main as asset_main
from pixsim_asset.collector import BlobCollector
from pixsim_asset.settings import Settings
from pixsim_asset.storage.local import LocalStorage
from pixsim_common import topics
from pixsim_common.auth import issue_token
from pixsim_common.db import create_engine, create_sessionmaker, run_migrations
from pixsim_common.errors import status_details
from pixsim_local.kafka import EventTap, KafkaBroker, publish_events
from pixsim_local.postgres import ServiceDatabase
from pixsim_local.pytest_plugin import DatabaseFactory
from pixsim_provider_sim.media import render_mp4, render_png

pytestmark = pytest.mark.integration

MAX_BYTES = 400_000
Metadata = tuple[tuple[str, str], ...]


@dataclass
class MediaServer:
    """Serves `files` over HTTP/1.1 on loopback; a path in `break_once` is cut off midway the
    first time it is asked for. Counts requests per path."""

    files: dict[str, bytes] = field(default_factory=dict)
    break_once: set[str] = field(default_factory=set)
    # Seconds a path takes before its body starts (a provider's slow CDN).
    slow: dict[str, float] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def add(self, body: bytes, suffix: str = ".mp4") -> str:
        path = f"/{uuid.uuid4().hex}{suffix}"
        self.files[path] = body
        return self.url(path)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readuntil(b"\r\n\r\n")
            path = request.split(b" ", 2)[1].decode()
            self.hits[path] = self.hits.get(path, 0) + 1
            body = self.files.get(path)
            if body is None:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                return
            await asyncio.sleep(self.slow.get(path, 0))
            head = f"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nContent-Length: {len(body)}\r\n"
            writer.write(head.encode() + b"Connection: close\r\n\r\n")
            if path in self.break_once and self.hits[path] == 1:
                writer.write(body[: len(body) // 2])
                return
            writer.write(body)
            await writer.drain()
        finally:
            writer.close()


@dataclass
class Stack:
    assets: pb_grpc.AssetServiceAsyncStub
    tap: EventTap
    kafka: KafkaBroker
    database: ServiceDatabase
    media: MediaServer
    storage: Path
    as_user: Callable[[str], Metadata]

    @property
    def alice(self) -> Metadata:
        return self.as_user("alice")

    @property
    def bob(self) -> Metadata:
        return self.as_user("bob")

    async def completed(self, uri: str, **fields: Any) -> events_pb2.GenerationCompleted:
        """Publish a generation.completed for alice, as the gateway would."""
        event = events_pb2.GenerationCompleted(
            job_id=str(uuid.uuid4()),
            user_id="alice",
            submission_id=str(uuid.uuid4()),
            provider_id="pixverse",
            operation_type=t.OPERATION_TYPE_TEXT_TO_VIDEO,
            provider_asset_id=uuid.uuid4().hex,
            media=events_pb2.GeneratedMedia(uri=uri, media_type=t.MEDIA_TYPE_VIDEO),
        )
        for name, value in fields.items():
            if isinstance(value, list):
                getattr(event, name).extend(value)
            else:
                setattr(event, name, value)
        await publish_events(
            self.kafka.bootstrap, topics.GENERATION_COMPLETED, [(event.job_id, event)]
        )
        return event

    async def answer_to(self, job_id: str, count: int = 1) -> list[events_pb2.AssetCreated]:
        records = await self.tap.wait_matching(
            topics.ASSET_CREATED.name,
            lambda r: events_pb2.AssetCreated.FromString(r.value).job_id == job_id,
            count=count,
        )
        return [events_pb2.AssetCreated.FromString(r.value) for r in records]

    async def failure_of(self, job_id: str) -> events_pb2.GenerationFailed:
        records = await self.tap.wait_for(topics.GENERATION_FAILED.name, job_id)
        return events_pb2.GenerationFailed.FromString(records[0].value)

    async def rows(self, query: str, *args: Any) -> list[asyncpg.Record]:
        connection = await asyncpg.connect(self.database.url)
        try:
            return list(await connection.fetch(query, *args))
        finally:
            await connection.close()

    def stored_files(self) -> list[Path]:
        """Every file in the store and its scratch space (a process's scratch lock aside)."""
        return sorted(p for p in self.storage.rglob("*") if p.is_file() and p.suffix != ".lock")

    async def upload(self, body: bytes, who: Metadata | None = None, **metadata: Any) -> pb.Asset:
        async def requests() -> AsyncIterator[pb.UploadAssetRequest]:
            yield pb.UploadAssetRequest(metadata=pb.UploadAssetRequest.Metadata(**metadata))
            for start in range(0, len(body), 64 * 1024):
                yield pb.UploadAssetRequest(chunk=body[start : start + 64 * 1024])

        return await self.assets.UploadAsset(requests(), metadata=who or self.alice)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def stack(
    own_kafka: KafkaBroker,
    new_database_module: DatabaseFactory,
    signing_keys: tuple[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Stack]:
    database = await new_database_module("assets")
    await asyncio.to_thread(run_migrations, database.url, asset_main.MIGRATIONS)
    storage = tmp_path_factory.mktemp("asset-store")
    app = await asset_main.build(
        Settings(
            database_url=SecretStr(database.url),
            kafka_bootstrap=own_kafka.bootstrap,
            jwt_public_key=signing_keys[1],
            grpc_port=0,
            storage_root=storage,
            max_download_bytes=MAX_BYTES,
            max_upload_bytes=MAX_BYTES,
            download_backoff_seconds=0.05,
            fetch_allow_loopback=True,
            blob_grace_seconds=0,
            blob_collect_seconds=0.1,
        )
    )
    await app.start()
    media = MediaServer()
    server = await asyncio.start_server(media.handle, "127.0.0.1", 0)
    media.port = server.sockets[0].getsockname()[1]
    tap = EventTap(
        own_kafka.bootstrap,
        [
            topics.ASSET_CREATED.name,
            topics.ASSET_DELETED.name,
            topics.GENERATION_FAILED.name,
            topics.GENERATION_COMPLETED.dlq,
        ],
    )
    await tap.start()

    def auth(user: str) -> Metadata:
        return (("authorization", "Bearer " + issue_token(signing_keys[0], user_id=user)),)

    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        yield Stack(
            pb_grpc.AssetServiceStub(channel),
            tap,
            own_kafka,
            database,
            media,
            storage,
            auth,
        )
    await tap.stop()
    server.close()
    await app.stop()


@pytest.fixture
def clip() -> bytes:
    """A small real MP4, different in every test."""
    return render_mp4(uuid.uuid4().int % 10_000, 96, 64, 1)


async def test_a_completed_generation_becomes_one_probed_asset_with_a_thumbnail(
    stack: Stack, clip: bytes
) -> None:
    source = await stack.upload(render_png(7, 40, 30), display_name="start frame")
    event = await stack.completed(
        stack.media.add(clip),
        operation_type=t.OPERATION_TYPE_IMAGE_TO_VIDEO,
        input_assets=[
            events_pb2.InputAsset(
                asset_id=source.name.removeprefix("assets/"), role=t.INPUT_ROLE_IMAGE
            )
        ],
    )
    (answer,) = await stack.answer_to(event.job_id)
    assert not answer.deduplicated
    assert (answer.user_id, answer.sha256) == ("alice", hashlib.sha256(clip).hexdigest())

    asset = await stack.assets.GetAsset(
        pb.GetAssetRequest(name=f"assets/{answer.asset_id}"), metadata=stack.alice
    )
    assert asset.sync_status == pb.Asset.SYNC_STATUS_DOWNLOADED
    assert (asset.media_type, asset.mime_type, asset.codec) == (
        t.MEDIA_TYPE_VIDEO,
        "video/mp4",
        "h264",
    )
    assert (asset.width, asset.height, asset.duration.seconds) == (96, 64, 1)
    assert asset.size_bytes == len(clip)
    assert asset.source_job == f"jobs/{event.job_id}"
    assert (asset.provider_id, asset.provider_asset_id) == ("pixverse", event.provider_asset_id)
    # A video's pictures: its thumbnail, and its first and last frames at full size (what a
    # transition between two clips goes from and to).
    assert sorted((v.kind, v.mime_type, v.width, v.height) for v in asset.variants) == [
        ("first_frame", "image/jpeg", 96, 64),
        ("last_frame", "image/jpeg", 96, 64),
        ("thumbnail", "image/png", 96, 64),
    ]

    content = b"".join(
        [
            r.chunk
            async for r in stack.assets.ReadAssetContent(
                pb.ReadAssetContentRequest(name=asset.name), metadata=stack.alice
            )
        ]
    )
    assert content == clip
    png = b"".join(
        [
            r.chunk
            async for r in stack.assets.ReadAssetContent(
                pb.ReadAssetContentRequest(name=asset.name, variant="thumbnail"),
                metadata=stack.alice,
            )
        ]
    )
    assert png.startswith(b"\x89PNG")
    assert (
        len(png) == asset.variants[[v.kind for v in asset.variants].index("thumbnail")].size_bytes
    )

    # As HttpBody, for a transcoding edge: the type on the first message, then raw bytes;
    # a range is the bytes it names, and one past the end is OUT_OF_RANGE.
    async def download(**fields: Any) -> list[Any]:
        request = pb.DownloadAssetContentRequest(name=asset.name, **fields)
        return [m async for m in stack.assets.DownloadAssetContent(request, metadata=stack.alice)]

    whole = await download()
    assert [m.content_type for m in whole][:1] == ["video/mp4"]
    assert {m.content_type for m in whole[1:]} <= {""}
    assert b"".join(m.data for m in whole) == clip
    assert b"".join(m.data for m in await download(offset=10, length=100)) == clip[10:110]
    assert b"".join(m.data for m in await download(offset=len(clip) - 5)) == clip[-5:]
    (thumbnail,) = await download(variant="thumbnail")
    assert (thumbnail.content_type, thumbnail.data) == ("image/png", png)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await download(offset=len(clip))
    assert refused.value.code() == grpc.StatusCode.OUT_OF_RANGE

    lineage = await stack.assets.GetAssetLineage(
        pb.GetAssetLineageRequest(name=asset.name), metadata=stack.alice
    )
    assert [(e.asset, e.role, e.operation_type) for e in lineage.parents] == [
        (source.name, t.INPUT_ROLE_IMAGE, t.OPERATION_TYPE_IMAGE_TO_VIDEO)
    ]
    parent_side = await stack.assets.GetAssetLineage(
        pb.GetAssetLineageRequest(name=source.name), metadata=stack.alice
    )
    assert [e.asset for e in parent_side.children] == [asset.name]

    by_job = await stack.assets.ListAssets(
        pb.ListAssetsRequest(source_job=f"jobs/{event.job_id}"), metadata=stack.alice
    )
    assert [a.name for a in by_job.assets] == [asset.name]


async def test_the_same_event_twice_and_the_same_bytes_twice_give_one_asset(
    stack: Stack, clip: bytes
) -> None:
    url = stack.media.add(clip)
    first = await stack.completed(url)
    (created,) = await stack.answer_to(first.job_id)
    # The gateway publishes the same result again (a new ce_id, the same provider result).
    again = events_pb2.GenerationCompleted()
    again.CopyFrom(first)
    await publish_events(
        stack.kafka.bootstrap, topics.GENERATION_COMPLETED, [(first.job_id, again)]
    )
    repeated = await stack.answer_to(first.job_id, count=2)
    assert [a.asset_id for a in repeated] == [created.asset_id] * 2
    assert repeated[1].deduplicated
    # Another provider answers another job with the very same bytes.
    other = await stack.completed(url, provider_id="runway", provider_asset_id="runway-task-1")
    (answer,) = await stack.answer_to(other.job_id)
    assert (answer.asset_id, answer.deduplicated) == (created.asset_id, True)
    rows = await stack.rows("SELECT id FROM assets WHERE sha256 = $1", created.sha256)
    assert len(rows) == 1
    # The file was downloaded twice (the same event was recognised without a download).
    assert stack.media.hits[url.removeprefix(stack.media.url(""))] == 2


async def test_an_oversize_download_and_a_refused_address_leave_nothing_behind(
    stack: Stack,
) -> None:
    before = stack.stored_files()
    too_big = await stack.completed(stack.media.add(b"\0" * (MAX_BYTES + 1)))
    # A literal link-local address: refused by the address check, never connected to.
    refused = await stack.completed("http://169.254.169.254/latest/meta-data/clip.mp4")
    for event, reason in ((too_big, "TOO_LARGE"), (refused, "ADDRESS_REFUSED")):
        failure = await stack.failure_of(event.job_id)
        assert failure.error_code == t.GENERATION_ERROR_CODE_ASSET_FAILED
        assert reason in failure.error_message
        assert failure.submission_id == event.submission_id
        rows = await stack.rows("SELECT id FROM assets WHERE source_job_id = $1", event.job_id)
        assert rows == []
    assert stack.stored_files() == before


async def test_a_download_that_breaks_off_midway_is_retried(stack: Stack, clip: bytes) -> None:
    url = stack.media.add(clip)
    path = url.removeprefix(stack.media.url(""))
    stack.media.break_once.add(path)
    event = await stack.completed(url)
    (answer,) = await stack.answer_to(event.job_id)
    assert answer.sha256 == hashlib.sha256(clip).hexdigest()
    assert stack.media.hits[path] == 2
    assert not [p for p in stack.stored_files() if ".scratch" in p.parts]


async def test_twenty_concurrent_creations_of_the_same_content_give_one_asset(
    stack: Stack, clip: bytes
) -> None:
    url = stack.media.add(clip)
    uploads = [stack.upload(clip, display_name=f"copy {i}") for i in range(10)]
    registrations = [
        stack.assets.CreateAsset(pb.CreateAssetRequest(uri=url), metadata=stack.alice)
        for _ in range(10)
    ]
    answers = await asyncio.gather(*uploads, *registrations)
    assert len({a.name for a in answers}) == 1
    rows = await stack.rows(
        "SELECT id FROM assets WHERE sha256 = $1", hashlib.sha256(clip).hexdigest()
    )
    assert len(rows) == 1
    announced = await stack.tap.wait_for(topics.ASSET_CREATED.name, str(rows[0]["id"]), count=20)
    flags = [events_pb2.AssetCreated.FromString(r.value).deduplicated for r in announced]
    assert flags.count(False) == 1


async def test_assets_are_scoped_to_their_owner(stack: Stack, clip: bytes) -> None:
    mine = await stack.upload(clip)
    theirs = await stack.upload(clip, who=stack.bob)
    assert mine.name != theirs.name  # dedup is per user: bob has his own copy
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stack.assets.GetAsset(pb.GetAssetRequest(name=mine.name), metadata=stack.bob)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    batch = await stack.assets.BatchGetAssets(
        pb.BatchGetAssetsRequest(names=[theirs.name, mine.name, f"assets/{uuid.uuid4()}"]),
        metadata=stack.alice,
    )
    assert [a.name for a in batch.assets] == [mine.name]
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await stack.assets.DeleteAsset(pb.DeleteAssetRequest(name=mine.name), metadata=stack.bob)
    assert denied.value.code() == grpc.StatusCode.NOT_FOUND


async def test_listing_filters_and_pages(stack: Stack) -> None:
    who = stack.as_user(f"lister-{uuid.uuid4().hex[:6]}")
    images = [await stack.upload(render_png(i, 20, 20), who=who) for i in range(3)]
    video = await stack.upload(render_mp4(99, 32, 32, 1), who=who)
    page1 = await stack.assets.ListAssets(pb.ListAssetsRequest(page_size=2), metadata=who)
    page2 = await stack.assets.ListAssets(
        pb.ListAssetsRequest(page_size=2, page_token=page1.next_page_token), metadata=who
    )
    assert [a.name for a in [*page1.assets, *page2.assets]] == [
        video.name,
        *reversed([i.name for i in images]),
    ]
    assert page2.next_page_token == ""
    only_images = await stack.assets.ListAssets(
        pb.ListAssetsRequest(media_type=t.MEDIA_TYPE_IMAGE), metadata=who
    )
    assert {a.name for a in only_images.assets} == {i.name for i in images}
    later = await stack.assets.ListAssets(
        pb.ListAssetsRequest(create_time_start=video.create_time), metadata=who
    )
    assert [a.name for a in later.assets] == [video.name]
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stack.assets.ListAssets(
            pb.ListAssetsRequest(media_type=t.MEDIA_TYPE_VIDEO, page_token=page1.next_page_token),
            metadata=who,
        )
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_deleting_hides_the_asset_and_announces_it(stack: Stack, clip: bytes) -> None:
    asset = await stack.upload(clip)
    await stack.assets.DeleteAsset(pb.DeleteAssetRequest(name=asset.name), metadata=stack.alice)
    asset_id = asset.name.removeprefix("assets/")
    (deleted,) = await stack.tap.wait_for(topics.ASSET_DELETED.name, asset_id)
    assert events_pb2.AssetDeleted.FromString(deleted.value).user_id == "alice"
    for call in (
        stack.assets.GetAsset(pb.GetAssetRequest(name=asset.name), metadata=stack.alice),
        stack.assets.DeleteAsset(pb.DeleteAssetRequest(name=asset.name), metadata=stack.alice),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await call
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    again = await stack.upload(clip)  # the same bytes after deletion are a new asset
    assert again.name != asset.name


async def test_bad_uploads_and_urls_are_refused_and_write_nothing(stack: Stack) -> None:
    who = stack.as_user(f"refused-{uuid.uuid4().hex[:6]}")
    cases: list[tuple[Any, str]] = [
        (stack.upload(b"not a video at all", who=who), "chunk"),
        (stack.upload(b"\0" * (MAX_BYTES + 1), who=who), "chunk"),
        (stack.upload(render_png(1, 8, 8), who=who, size_bytes=5), "metadata.size_bytes"),
        (stack.upload(b"", who=who), "metadata.size_bytes"),
        (
            stack.assets.CreateAsset(
                pb.CreateAssetRequest(uri="http://10.0.0.1/a.mp4"), metadata=who
            ),
            "uri",
        ),
    ]

    async def chunk_first() -> AsyncIterator[pb.UploadAssetRequest]:
        yield pb.UploadAssetRequest(chunk=b"abc")

    cases.append((stack.assets.UploadAsset(chunk_first(), metadata=who), "metadata"))
    for call, field_name in cases:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
        violations = status_details(refused.value)["BadRequest"].field_violations
        assert [v.field for v in violations] == [field_name], refused.value.details()
    listed = await stack.assets.ListAssets(pb.ListAssetsRequest(), metadata=who)
    assert list(listed.assets) == []
    assert not [p for p in stack.stored_files() if ".scratch" in p.parts]


async def test_a_malformed_generation_event_is_dead_lettered(stack: Stack) -> None:
    job_id = str(uuid.uuid4())
    broken = events_pb2.GenerationCompleted(job_id=job_id, user_id="alice")  # no media
    await publish_events(stack.kafka.bootstrap, topics.GENERATION_COMPLETED, [(job_id, broken)])
    (dead,) = await stack.tap.wait_for(topics.GENERATION_COMPLETED.dlq, job_id)
    assert dict(dead.headers)["pixsim_error_reason"] == b"INVALID_EVENT"


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares `width`x`height` and whose data backs none of it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def _real_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (_png_claiming(30000, 30000), "NOT_MEDIA"),
        (_png_claiming(4000, 4000), "NOT_MEDIA"),
        (_real_png(20000, 2), "MEDIA_TOO_LARGE"),  # over the 16,384-pixel side
    ],
    ids=["74 bytes declaring 30000x30000", "74 bytes declaring 4000x4000", "a side too long"],
)
async def test_media_over_the_decoding_limits_or_undecodable_is_refused_and_stores_nothing(
    stack: Stack, body: bytes, reason: str
) -> None:
    who = stack.as_user(f"limits-{uuid.uuid4().hex[:6]}")
    before = stack.stored_files()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stack.upload(body, who=who)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    (violation,) = status_details(refused.value)["BadRequest"].field_violations
    assert (violation.field, violation.reason) == ("chunk", reason)
    listed = await stack.assets.ListAssets(pb.ListAssetsRequest(), metadata=who)
    assert list(listed.assets) == []
    assert stack.stored_files() == before


async def test_an_upload_cancelled_midway_leaves_no_staging_file(stack: Stack, clip: bytes) -> None:
    who = stack.as_user(f"cancel-{uuid.uuid4().hex[:6]}")
    sent = asyncio.Event()

    async def parts() -> AsyncIterator[pb.UploadAssetRequest]:
        yield pb.UploadAssetRequest(metadata=pb.UploadAssetRequest.Metadata())
        yield pb.UploadAssetRequest(chunk=clip[: len(clip) // 2])
        sent.set()
        await asyncio.sleep(60)  # never finishes: the client gives up first

    call = stack.assets.UploadAsset(parts(), metadata=who)
    task = asyncio.ensure_future(call)
    await sent.wait()
    await asyncio.sleep(0.3)  # the first half is being staged
    call.cancel()
    with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
        await task
    for _ in range(50):
        if not [p for p in stack.stored_files() if ".scratch" in p.parts]:
            break
        await asyncio.sleep(0.1)
    assert not [p for p in stack.stored_files() if ".scratch" in p.parts]


LEAVE_A_STAGING_FILE = """
import os, signal, sys
from pathlib import Path
from pixsim_asset.storage.local import LocalStorage
storage = LocalStorage(Path(sys.argv[1]))
(storage.scratch() / ".staging-half").write_bytes(b"half an upload")
print(storage.scratch(), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


async def test_a_sweep_at_start_removes_what_a_killed_process_left_and_nothing_live(
    tmp_path: Path,
) -> None:
    killed = subprocess.run(
        [sys.executable, "-c", LEAVE_A_STAGING_FILE, str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL
    left = Path(killed.stdout.strip())
    assert (left / ".staging-half").exists()
    live = LocalStorage(tmp_path)  # another replica, writing right now
    (live.scratch() / ".staging-mine").write_bytes(b"in progress")
    restarted = LocalStorage(tmp_path)
    assert restarted.sweep() == 1
    assert not left.exists()
    assert (live.scratch() / ".staging-mine").exists()
    await live.close()
    await restarted.close()


async def _read(stack: Stack, asset: str, who: Metadata) -> bytes:
    return b"".join(
        [
            r.chunk
            async for r in stack.assets.ReadAssetContent(
                pb.ReadAssetContentRequest(name=asset), metadata=who
            )
        ]
    )


def _files_deleted() -> float:
    return REGISTRY.get_sample_value("pixsim_asset_files_deleted_total") or 0.0


async def _until(condition: Callable[[], bool], timeout: float = 15) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "not in time"
        await asyncio.sleep(0.05)


async def test_a_file_goes_when_nothing_holds_it_and_stays_while_anyone_does(stack: Stack) -> None:
    """Dedup shares one file between alice's and bob's assets: it stays through her deletion
    and goes (with its pictures) after his, once the collector runs (grace 0 here)."""
    body = render_png(uuid.uuid4().int % 100_000, 20, 20)
    hers = await stack.upload(body, who=stack.alice)
    his = await stack.upload(body, who=stack.bob)
    assert hers.storage_uri == his.storage_uri
    held = [
        Path(u.removeprefix("file://"))
        for u in [hers.storage_uri] + [v.storage_uri for v in hers.variants]
    ]
    await stack.assets.DeleteAsset(pb.DeleteAssetRequest(name=hers.name), metadata=stack.alice)
    await asyncio.sleep(0.5)  # the collector has had its chance
    assert all(p.exists() for p in held)
    assert await _read(stack, his.name, stack.bob) == body
    deleted_before = _files_deleted()
    await stack.assets.DeleteAsset(pb.DeleteAssetRequest(name=his.name), metadata=stack.bob)
    await _until(lambda: not any(p.exists() for p in held))
    assert not await stack.rows("SELECT 1 FROM blobs WHERE uri = $1", hers.storage_uri)
    assert _files_deleted() - deleted_before >= len(held)


async def test_a_deletion_racing_a_dedup_onto_the_same_file_never_loses_it(stack: Stack) -> None:
    """Alice deletes the last asset of some content while bob uploads the same bytes and two
    collectors run: whichever order they meet in, bob's asset reads back whole."""
    engine = create_engine(stack.database.url, pool_size=4)
    collector = BlobCollector(
        create_sessionmaker(engine), LocalStorage(stack.storage), grace_seconds=0
    )
    try:
        for round_ in range(25):
            body = render_png(uuid.uuid4().int % 1_000_000, 16 + round_ % 4, 16)
            first = await stack.upload(body, who=stack.alice)
            _, second, _, _ = await asyncio.gather(
                stack.assets.DeleteAsset(
                    pb.DeleteAssetRequest(name=first.name), metadata=stack.alice
                ),
                stack.upload(body, who=stack.bob),
                collector.collect_once(),
                collector.collect_once(),
            )
            await collector.collect_once()
            assert await _read(stack, second.name, stack.bob) == body, f"round {round_}"
            await stack.assets.DeleteAsset(
                pb.DeleteAssetRequest(name=second.name), metadata=stack.bob
            )
    finally:
        await engine.dispose()
