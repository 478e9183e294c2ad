"""Real, small media for simulated tasks: an H.264 MP4 or a PNG derived from the task's seed,
so every task's file (and sha256) differs and the same seed gives the same bytes. The file
has exactly the width, height and duration the task reports.

Encoding a video costs about 140 ms of CPU, which would make the simulator, not the system
under test, the bottleneck of any load. So a video is encoded once per shape and one of a
few looks, and each seed's file is that encoding with a trailing MP4 `free` box carrying the
seed: a valid file that players and probes read as the same video, with bytes of its own."""

from __future__ import annotations

import functools
import io
import random
import struct
from fractions import Fraction

import av
import numpy as np

FRAMES_PER_SECOND = 4  # enough for a real, probe-able video; cheap to encode
LOOKS = 8  # distinct encodings per shape


def _frame(rng: random.Random, width: int, height: int, index: int) -> np.ndarray:
    base = np.array([rng.randrange(256) for _ in range(3)], dtype=np.uint8)
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = base
    # A moving band makes frames differ, so the encoder has real content to encode.
    band = (index * 7) % max(height, 1)
    image[band : band + max(height // 8, 1), :, :] = 255 - base
    return image


def render_mp4(seed: int, width: int, height: int, seconds: float) -> bytes:
    """An MP4 (H.264, yuv420p) of `seconds` at `width`x`height` (both made even), its
    bytes unique to `seed`."""
    payload = b"pixsim-sim seed " + struct.pack(">Q", seed % 2**64)
    free_box = struct.pack(">I", 8 + len(payload)) + b"free" + payload
    return _encode_mp4(seed % LOOKS, width - width % 2, height - height % 2, seconds) + free_box


@functools.lru_cache(maxsize=64)
def _encode_mp4(look: int, width: int, height: int, seconds: float) -> bytes:
    rng = random.Random(look)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=FRAMES_PER_SECOND)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = Fraction(1, FRAMES_PER_SECOND)
        stream.options = {"preset": "ultrafast", "tune": "stillimage", "x264-params": "log=-1"}
        frames = max(1, round(seconds * FRAMES_PER_SECOND))
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(_frame(rng, width, height, index), format="rgb24")
            frame.pts = index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def render_png(seed: int, width: int, height: int) -> bytes:
    """A PNG at `width`x`height` (a PNG file is exactly one encoded packet)."""
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "rgb24"
    frame = av.VideoFrame.from_ndarray(
        _frame(random.Random(seed), width, height, 0), format="rgb24"
    )
    return b"".join(bytes(packet) for packet in [*codec.encode(frame), *codec.encode(None)])
