"""Decoding runs in worker processes: a crash in the decoder costs a worker and one file, and
a file that needs more memory than a worker may map is refused, with the service unharmed."""

from __future__ import annotations

import asyncio
import shutil
import struct
import sys
import zlib
from pathlib import Path

import pytest

from pixsim_asset.decoders import DecodePool
from pixsim_asset.probe import DecodeLimits, ProbeFailed
from pixsim_provider_sim.media import render_mp4

pytestmark = pytest.mark.integration

GIB = 1024 * 1024 * 1024


def _blank_png(width: int, height: int) -> bytes:
    """A black RGB PNG, compressed row by row (never whole in memory)."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * width)  # filter byte, then the pixels
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


def _video(path: Path, seed: int) -> Path:
    path.write_bytes(render_mp4(seed, 320, 180, 2.0))
    return path


async def test_a_crashing_decoder_costs_one_file_and_the_pool_goes_on(tmp_path: Path) -> None:
    pool = DecodePool(
        2, address_space_bytes=GIB, command=[sys.executable, "-m", "pixsim_local.decoder_faults"]
    )
    try:
        good = [_video(tmp_path / f"good-{n}.mp4", n) for n in range(4)]
        crashing = Path(shutil.copy(good[0], tmp_path / "crash.mp4"))
        outcomes = await asyncio.gather(
            *(pool.inspect(path, DecodeLimits()) for path in [*good[:2], crashing, *good[2:]]),
            return_exceptions=True,
        )
        refused = outcomes.pop(2)
        assert isinstance(refused, ProbeFailed)
        assert "crashed" in str(refused)
        # Only the file in the worker that died is lost; the other worker went on.
        for outcome in outcomes:
            assert not isinstance(outcome, BaseException), outcome
            assert (outcome.info.media_type, outcome.info.width) == ("video", 320)
        again = await asyncio.gather(*(pool.inspect(path, DecodeLimits()) for path in good))
        assert all(seen.last_frame is not None for seen in again)
    finally:
        await pool.close()


async def test_a_file_that_keeps_its_decoder_busy_is_refused_at_the_deadline(
    tmp_path: Path,
) -> None:
    pool = DecodePool(
        1,
        address_space_bytes=GIB,
        seconds_per_file=2.0,
        command=[sys.executable, "-m", "pixsim_local.decoder_faults"],
    )
    try:
        good = _video(tmp_path / "good.mp4", 1)
        hanging = Path(shutil.copy(good, tmp_path / "hang.mp4"))
        with pytest.raises(ProbeFailed, match="longer than 2 s"):
            await pool.inspect(hanging, DecodeLimits())
        # The one slot it held is free again, with a fresh worker.
        seen = await pool.inspect(good, DecodeLimits())
        assert seen.info.media_type == "video"
    finally:
        await pool.close()


async def test_a_file_needing_more_memory_than_a_worker_may_map_is_refused(
    tmp_path: Path,
) -> None:
    """A 10000x10000 PNG (a few hundred KiB) is within these decoding limits, but its one
    frame is 300 MiB (a worker maps about 470 MiB to decode it): refused under a 300 MiB
    address-space cap, read without one."""
    big = tmp_path / "big.png"
    big.write_bytes(_blank_png(10_000, 10_000))
    generous = DecodeLimits(max_pixels=100_000_000, max_side=10_000)
    capped = DecodePool(1, address_space_bytes=300 * 1024 * 1024)
    uncapped = DecodePool(1, address_space_bytes=0)
    try:
        with pytest.raises(ProbeFailed):
            await capped.inspect(big, generous)
        seen = await uncapped.inspect(big, generous)
        assert (seen.info.media_type, seen.info.width, seen.info.height) == (
            "image",
            10_000,
            10_000,
        )
        # The capped pool still serves a file that fits.
        small = await capped.inspect(_video(tmp_path / "small.mp4", 1), generous)
        assert small.info.media_type == "video"
    finally:
        await capped.close()
        await uncapped.close()
