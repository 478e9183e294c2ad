"""What a stored file is, read from its own bytes with PyAV (never trusted from a provider),
and its thumbnail."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import av


class ProbeFailed(Exception):
    pass


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


def probe(path: Path) -> MediaInfo:
    try:
        with av.open(str(path), mode="r") as container:
            size = path.stat().st_size
            if container.streams.video:
                stream = container.streams.video[0]
                codec = stream.codec_context.name
                if codec in IMAGE_CODECS and (container.duration or 0) <= 0:
                    return MediaInfo(
                        "image", IMAGE_CODECS[codec], stream.width, stream.height, 0.0, codec, size
                    )
                duration = (container.duration or 0) / 1_000_000
                return MediaInfo(
                    "video",
                    "video/mp4"
                    if "mp4" in container.format.name
                    else f"video/{container.format.name.split(',')[0]}",
                    stream.width,
                    stream.height,
                    duration,
                    codec,
                    size,
                )
            if container.streams.audio:
                audio = container.streams.audio[0]
                return MediaInfo(
                    "audio",
                    f"audio/{container.format.name.split(',')[0]}",
                    0,
                    0,
                    (container.duration or 0) / 1_000_000,
                    audio.codec_context.name,
                    size,
                )
    except av.FFmpegError as error:
        raise ProbeFailed(f"not a media file: {error}") from error
    raise ProbeFailed("no video, image or audio stream")


def thumbnail(path: Path, max_side: int = 320) -> tuple[bytes, int, int]:
    """A PNG of the first frame, at most `max_side` pixels on its longer side."""
    try:
        with av.open(str(path), mode="r") as container:
            frame = next(container.decode(video=0))
            image = frame.to_image()  # type: ignore[no-untyped-call]
    except (av.FFmpegError, StopIteration) as error:
        raise ProbeFailed(f"no frame to make a thumbnail of: {error}") from error
    image.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue(), image.width, image.height
