"""One storage contract, both backends: the local filesystem and S3 (a real S3 server, the
Versity gateway, started for the test run). Content addressing, idempotent puts, streamed
reads, checksums checked by the store, multipart uploads, presigned URLs, deletion."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from pixsim_asset.storage import ChecksumMismatch, Storage
from pixsim_asset.storage.local import LocalStorage
from pixsim_asset.storage.s3 import S3Storage
from pixsim_local.s3 import S3Server

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(params=["local", "s3"], loop_scope="session")
async def storage(
    request: pytest.FixtureRequest, tmp_path: Path, s3_server: S3Server
) -> AsyncIterator[Storage]:
    made: Storage
    if request.param == "local":
        made = LocalStorage(tmp_path / "store")
    else:
        bucket = f"contract-{uuid.uuid4().hex[:10]}"
        await s3_server.create_bucket(bucket)
        s3 = S3Storage(
            endpoint_url=s3_server.endpoint,
            bucket=bucket,
            access_key_id=s3_server.access_key,
            secret_access_key=s3_server.secret_key,
            scratch_root=tmp_path / "scratch",
            multipart_threshold=5 * 1024 * 1024,  # so an 11 MiB file goes in three parts
            part_bytes=5 * 1024 * 1024,  # S3's smallest part
        )
        await s3.start()
        made = s3
    yield made
    await made.close()


def staged(storage: Storage, body: bytes) -> tuple[Path, str]:
    path = storage.scratch() / f".staging-{uuid.uuid4().hex}"
    path.write_bytes(body)
    return path, hashlib.sha256(body).hexdigest()


async def read_all(storage: Storage, uri: str) -> bytes:
    return b"".join([chunk async for chunk in storage.read(uri, 64 * 1024)])


@pytest.mark.parametrize("size", [0, 10, 11 * 1024 * 1024 + 17], ids=["empty", "small", "parts"])
async def test_a_file_goes_in_by_its_content_and_comes_back_whole(
    storage: Storage, size: int
) -> None:
    body = os.urandom(size)
    path, sha256 = staged(storage, body)
    uri = await storage.put(path, sha256, "mp4", "video/mp4")
    assert uri == storage.uri_for(sha256, "mp4")
    assert sha256 in uri
    assert not path.exists()  # moved in, not copied beside
    assert await storage.exists(uri)
    assert await read_all(storage, uri) == body
    again, _ = staged(storage, body)
    assert await storage.put(again, sha256, "mp4", "video/mp4") == uri  # stored once
    assert not again.exists()


async def test_a_range_of_a_file_reads_back_as_the_bytes_it_names(storage: Storage) -> None:
    body = os.urandom(300_000)
    path, sha256 = staged(storage, body)
    uri = await storage.put(path, sha256, "mp4", "video/mp4")

    async def part(start: int, end: int | None) -> bytes:
        return b"".join([c async for c in storage.read(uri, 64 * 1024, start=start, end=end)])

    assert await part(0, None) == body
    assert await part(1000, 201_000) == body[1000:201_000]
    assert await part(299_990, None) == body[299_990:]
    assert await part(5, 5) == b""


async def test_bytes_that_are_not_the_announced_content_are_refused(storage: Storage) -> None:
    path, _ = staged(storage, b"what actually arrived")
    wrong = hashlib.sha256(b"what was announced").hexdigest()
    with pytest.raises(ChecksumMismatch):
        await storage.put(path, wrong, "png", "image/png")
    assert not await storage.exists(storage.uri_for(wrong, "png"))
    assert not path.exists()


async def test_a_deleted_file_is_gone(storage: Storage) -> None:
    path, sha256 = staged(storage, b"short-lived")
    uri = await storage.put(path, sha256, "png", "image/png")
    await storage.delete(uri)
    assert not await storage.exists(uri)
    await storage.delete(uri)  # twice is fine


async def test_keys_and_uris_outside_the_layout_are_refused(storage: Storage) -> None:
    path, _ = staged(storage, b"x")
    for key in ("../../../../etc/passwd", "a" * 63 + "/", "A" * 64, ""):
        with pytest.raises(ValueError, match="sha256"):
            await storage.put(path, key, "png", "image/png")
    with pytest.raises(ValueError, match="extension"):
        await storage.put(path, "a" * 64, "../../escape", "image/png")
    assert path.exists()  # nothing was moved anywhere
    for uri in ("file:///etc/passwd", "s3://another-bucket/ab/cd/x.png"):
        with pytest.raises(ValueError, match=r"outside the store|not in bucket"):
            await storage.exists(uri)


async def test_a_presigned_url_serves_the_file_for_a_while_where_the_backend_has_urls(
    storage: Storage,
) -> None:
    body = b"for a provider to fetch"
    path, sha256 = staged(storage, body)
    uri = await storage.put(path, sha256, "png", "image/png")
    url = await storage.presign(uri, 60)
    if isinstance(storage, LocalStorage):
        assert url is None  # no server of its own: the gateway sends bytes instead
        return
    assert url is not None
    async with httpx.AsyncClient() as client:
        answer = await client.get(url)
        assert answer.status_code == 200
        assert answer.content == body
        assert (await client.get(url.split("?")[0])).status_code == 403  # not without it
