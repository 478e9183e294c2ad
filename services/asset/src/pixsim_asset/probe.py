"""What a stored file is, read from its own bytes with PyAV (never trusted from a provider),
and its thumbnail.

Decoding is bounded before it starts: the container's header says each stream's size and
duration, and a file over the limits is refused unread (as Pillow's `MAX_IMAGE_PIXELS`
does), so a 74-byte PNG declaring 30000x30000 never allocates 3.6 GB. Within the limits, a
file must also back what its header claims: its first frame has to decode, or the file is
refused as undecodable.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ProbeFailed(Exception):
    """Not a file we can read: no media, or its first frame does not decode."""


class OverLimits(ProbeFailed):
    """A file whose header says it is larger than the decoding limits allow."""


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    max_pixels: int = 40_000_000  # per frame; Pillow's own default is 89 million
    max_side: int = 16_384  # pixels, width or height
    max_duration_seconds: float = 600.0


@dataclass(frozen=True, slots=True)
class MediaInfo:
    media_type: str  # "video", "image" or "audio"
    mime_type: str
    width: int
    height: int
    duration_seconds: float
    codec: str
    size_bytes: int


IMAGE_CODECS = {"png": "image/png", "mjpeg": "image/jpeg", "webp": "image/webp", "gif": "image/gif"}


def _check(width: int, height: int, duration: float, limits: DecodeLimits) -> None:
    if width <= 0 or height <= 0:
        raise ProbeFailed(f"a frame of {width}x{height} has nothing to show")
    if max(width, height) > limits.max_side:
        raise OverLimits(f"{width}x{height} is over the {limits.max_side}-pixel side limit")
    if width * height > limits.max_pixels:
        raise OverLimits(f"{width}x{height} is over the {limits.max_pixels}-pixel limit")
    if duration > limits.max_duration_seconds:
        raise OverLimits(f"{duration:.0f}s is over the {limits.max_duration_seconds:.0f}s limit")


@dataclass(frozen=True, slots=True)
class Picture:
    """A still made of a file: its encoded bytes, type and size."""

    data: bytes
    mime_type: str
    width: int
    height: int

    @property
    def extension(self) -> str:
        return "png" if self.mime_type == "image/png" else "jpg"


@dataclass(frozen=True, slots=True)
class Inspection:
    """What a file is, and the pictures made of it: a thumbnail of its first frame (PNG),
    and for a video its first and last frames at full size (what a transition between two
    clips starts from and ends at). The frames are JPEG at high quality: encoding a
    full-size PNG costs ten times the CPU, and the video they come from is lossy anyway."""

    info: MediaInfo
    thumbnail: Picture | None = None
    first_frame: Picture | None = None
    last_frame: Picture | None = None


FRAME_QUALITY = 95


def _encoded(image: Any, format_: str, **options: Any) -> Picture:
    buffer = io.BytesIO()
    image.save(buffer, format=format_, **options)
    return Picture(buffer.getvalue(), f"image/{format_.lower()}", image.width, image.height)


def _thumbnail(frame: Any, max_side: int) -> Picture:
    """The frame scaled (by libswscale, area-averaged: a tenth of Pillow's cost) to at most
    `max_side` on its longer side, as a PNG."""
    scale = min(1.0, max_side / max(frame.width, frame.height))
    width, height = max(1, round(frame.width * scale)), max(1, round(frame.height * scale))
    return _encoded(frame.to_image(width=width, height=height, interpolation="AREA"), "PNG")


def _frame(frame: Any) -> Picture:
    return _encoded(frame.to_image(), "JPEG", quality=FRAME_QUALITY)


def _last_frame(container: Any, duration: float) -> Any:
    """The last frame of the first video stream: decoded from a second before the end, so a
    long clip is not decoded whole."""
    if duration > 2:
        container.seek(int((duration - 1.5) * 1_000_000), any_frame=False, backward=True)
    last = None
    for frame in container.decode(video=0):
        last = frame
    return last


def _read(path: Path, limits: DecodeLimits, thumbnail_side: int, frames: bool) -> Inspection:
    """Info and pictures of the file, within the limits."""
    import av  # here, not at the top: the service decodes in worker processes (decoders.py)

    with av.open(str(path), mode="r") as container:
        size = path.stat().st_size
        duration = max(container.duration or 0, 0) / 1_000_000
        if container.streams.video:
            stream = container.streams.video[0]
            codec = stream.codec_context.name
            _check(stream.width, stream.height, duration, limits)
            # One decoding thread: frame threading keeps a frame set per thread, and the
            # service bounds how many files it probes at once instead.
            stream.thread_type = "NONE"
            frame = next(container.decode(video=0), None)
            if frame is None:
                raise ProbeFailed("its first frame does not decode")
            thumbnail = _thumbnail(frame, thumbnail_side) if thumbnail_side > 0 else None
            if codec in IMAGE_CODECS and duration <= 0:
                info = MediaInfo(
                    "image", IMAGE_CODECS[codec], stream.width, stream.height, 0.0, codec, size
                )
                return Inspection(info, thumbnail)
            mime = (
                "video/mp4"
                if "mp4" in container.format.name
                else f"video/{container.format.name.split(',')[0]}"
            )
            info = MediaInfo("video", mime, stream.width, stream.height, duration, codec, size)
            if not frames:
                return Inspection(info, thumbnail)
            first = _frame(frame)
            last = _last_frame(container, duration)
            return Inspection(info, thumbnail, first, _frame(last) if last is not None else first)
        if container.streams.audio:
            audio = container.streams.audio[0]
            if duration > limits.max_duration_seconds:
                raise OverLimits(f"{duration:.0f}s is over the limit")
            if next(container.decode(audio=0), None) is None:
                raise ProbeFailed("its first frame does not decode")
            mime = f"audio/{container.format.name.split(',')[0]}"
            return Inspection(
                MediaInfo("audio", mime, 0, 0, duration, audio.codec_context.name, size)
            )
    raise ProbeFailed("no video, image or audio stream")


DEFAULT_LIMITS = DecodeLimits()


def probe(path: Path, limits: DecodeLimits = DEFAULT_LIMITS) -> MediaInfo:
    return inspect(path, limits, thumbnail_side=0).info


def inspect(
    path: Path,
    limits: DecodeLimits = DEFAULT_LIMITS,
    thumbnail_side: int = 320,
    frames: bool = False,
) -> Inspection:
    """What the file is and its pictures (one open, one decode of the first frame)."""
    import av

    try:
        return _read(path, limits, thumbnail_side, frames)
    except ProbeFailed:
        raise
    except av.FFmpegError as error:
        # Its own text names the file, a path of ours the caller has no business knowing.
        reason = error.strerror or "the decoder refused it"
        raise ProbeFailed(f"not a media file we can read: {reason}") from error
    except (ValueError, MemoryError) as error:
        raise ProbeFailed(f"not a media file we can read: {error}") from error


def thumbnail(path: Path, max_side: int = 320) -> Picture:
    """A PNG of the first frame, at most `max_side` pixels on its longer side."""
    made = inspect(path, thumbnail_side=max_side).thumbnail
    if made is None:
        raise ProbeFailed("no frame to make a thumbnail of")
    return made
