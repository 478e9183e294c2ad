"""Downloads over loopback HTTP (the simulator's real media, and a server that breaks off),
storage, and probing the stored bytes."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from pixsim_asset.fetch import AddressPolicy, FetchFailed, FetchRefused, fetch
from pixsim_asset.probe import ProbeFailed, inspect, probe, thumbnail
from pixsim_asset.storage.local import LocalStorage
from pixsim_provider_sim.media import render_mp4, render_png

pytestmark = pytest.mark.integration
LOCAL = AddressPolicy(allow_loopback=True)


async def sim_media_url(sim: str) -> str:
    headers = {"Authorization": "Bearer asset-key", "X-Runway-Version": "2024-11-06"}
    async with httpx.AsyncClient() as client:
        await client.put(f"{sim}/_sim/keys/asset-key", json={"finish_ms": 0})
        task = (
            await client.post(
                f"{sim}/v1/text_to_video",
                headers=headers,
                json={"model": "gen4.5", "promptText": "x", "ratio": "640:360", "duration": 2},
            )
        ).json()
        body = (await client.get(f"{sim}/v1/tasks/{task['id']}", headers=headers)).json()
    return str(body["output"][0])


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as http:
        yield http


async def test_a_download_is_stored_once_by_content_and_probed(
    provider_sim: str, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    storage = LocalStorage(tmp_path / "store")
    url = await sim_media_url(provider_sim)
    first = await fetch(
        url, client=client, policy=LOCAL, max_bytes=10_000_000, directory=storage.scratch()
    )
    expected = hashlib.sha256((await client.get(url)).content).hexdigest()
    assert (first.sha256, first.content_type) == (expected, "video/mp4")
    uri = await storage.put(first.path, first.sha256, "mp4", "video/mp4")
    again = await fetch(
        url, client=client, policy=LOCAL, max_bytes=10_000_000, directory=storage.scratch()
    )
    assert await storage.put(again.path, again.sha256, "mp4", "video/mp4") == uri  # one file
    assert list(storage.scratch().iterdir()) == []
    stored = Path(uri.removeprefix("file://"))
    info = probe(stored)
    assert (info.media_type, info.width, info.height, info.duration_seconds, info.codec) == (
        "video",
        640,
        360,
        2.0,
        "h264",
    )
    assert info.size_bytes == first.size
    made = thumbnail(stored)
    assert made.data.startswith(b"\x89PNG")
    assert (made.mime_type, made.width, made.height) == ("image/png", 320, 180)
    seen = inspect(stored, frames=True)
    assert seen.first_frame is not None
    assert seen.last_frame is not None
    for frame in (seen.first_frame, seen.last_frame):
        assert frame.data.startswith(b"\xff\xd8\xff")  # JPEG
        assert (frame.mime_type, frame.width, frame.height) == ("image/jpeg", 640, 360)
    assert seen.first_frame.data != seen.last_frame.data


async def test_an_oversize_download_leaves_nothing(
    provider_sim: str, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    storage = LocalStorage(tmp_path / "store")
    with pytest.raises(FetchRefused) as raised:
        await fetch(
            await sim_media_url(provider_sim),
            client=client,
            policy=LOCAL,
            max_bytes=1000,
            directory=storage.scratch(),
        )
    assert raised.value.reason == "TOO_LARGE"
    assert list(storage.scratch().iterdir()) == []


async def test_a_refused_address_is_never_connected_to(
    provider_sim: str, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    storage = LocalStorage(tmp_path / "store")
    url = await sim_media_url(provider_sim)
    with pytest.raises(FetchRefused) as raised:
        await fetch(
            url,
            client=client,
            policy=AddressPolicy(),
            max_bytes=10_000_000,
            directory=storage.scratch(),
        )
    assert raised.value.reason == "ADDRESS_REFUSED"
    assert list(storage.scratch().iterdir()) == []


async def test_a_download_broken_off_midway_is_a_retryable_failure_and_leaves_nothing(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    async def half_then_hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\n"
            b"Content-Length: 100000\r\n\r\n" + b"x" * 5000
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(half_then_hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    storage = LocalStorage(tmp_path / "store")
    try:
        with pytest.raises(FetchFailed):
            await fetch(
                f"http://127.0.0.1:{port}/clip.mp4",
                client=client,
                policy=LOCAL,
                max_bytes=10_000_000,
                directory=storage.scratch(),
            )
    finally:
        server.close()
    assert list(storage.scratch().iterdir()) == []


def test_probe_reads_images_and_refuses_garbage(tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(render_png(3, 300, 200))
    info = probe(image)
    assert (info.media_type, info.mime_type, info.width, info.height) == (
        "image",
        "image/png",
        300,
        200,
    )
    clip = tmp_path / "b.mp4"
    clip.write_bytes(render_mp4(4, 128, 96, 1.5))
    assert probe(clip).duration_seconds == 1.5
    garbage = tmp_path / "c.mp4"
    garbage.write_bytes(b"not media at all")
    with pytest.raises(ProbeFailed) as refused:
        probe(garbage)
    # The caller hears why, never where we keep their bytes.
    assert "Invalid data found" in str(refused.value)
    assert str(tmp_path) not in str(refused.value)


async def test_a_redirect_to_a_refused_address_or_scheme_is_refused_before_connecting(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """The loopback server redirects; the target is checked like the first URL, so the
    private address is refused by the address check and never connected to."""
    hits: list[bytes] = []

    async def redirect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        hits.append(request.split(b" ", 2)[1])
        target = {b"/to-private": "http://10.1.2.3/clip.mp4", b"/to-file": "file:///etc/passwd"}
        location = target.get(request.split(b" ", 2)[1], "http://[fd00::1]/clip.mp4")
        writer.write(
            f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n".encode()
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(redirect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    storage = LocalStorage(tmp_path / "store")
    try:
        for path, reason in (
            ("/to-private", "ADDRESS_REFUSED"),
            ("/to-file", "BAD_SCHEME"),
            ("/to-unique-local", "ADDRESS_REFUSED"),
        ):
            with pytest.raises(FetchRefused) as refused:
                await fetch(
                    f"http://127.0.0.1:{port}{path}",
                    client=client,
                    policy=LOCAL,
                    max_bytes=10_000,
                    directory=storage.scratch(),
                )
            assert refused.value.reason == reason
    finally:
        server.close()
    assert hits == [b"/to-private", b"/to-file", b"/to-unique-local"]  # one request each
    assert list(storage.scratch().iterdir()) == []
