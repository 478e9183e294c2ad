"""What an asset is and the rules about it, without I/O: its record, where a new one comes
from, how a probed file is named in the store, and which lineage edges are kept."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from pixsim.types.v1 import types_pb2
from pixsim_asset.probe import MediaInfo

MEDIA_TYPES = {
    "video": types_pb2.MEDIA_TYPE_VIDEO,
    "image": types_pb2.MEDIA_TYPE_IMAGE,
    "audio": types_pb2.MEDIA_TYPE_AUDIO,
}

# The store names files by content; the extension is for people and for `Content-Type`
# guesses of whoever serves the store, so it follows the probed type, not the URL.
EXTENSIONS = {
    "video/mp4": "mp4",
    "video/webm": "webm",
    "video/quicktime": "mov",
    "video/matroska": "mkv",
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/webp": "webp",
    "image/gif": "gif",
    "audio/mp3": "mp3",
    "audio/wav": "wav",
    "audio/ogg": "ogg",
}

THUMBNAIL = "thumbnail"
# A video's first and last frames at full size: a transition between two clips goes from
# the first clip's last frame to the second clip's first.
FIRST_FRAME = "first_frame"
LAST_FRAME = "last_frame"


def extension_for(mime_type: str) -> str:
    return EXTENSIONS.get(mime_type, "bin")


def media_type_of(info: MediaInfo) -> int:
    return MEDIA_TYPES[info.media_type]


def wants_thumbnail(info: MediaInfo) -> bool:
    """Videos and images get a thumbnail; audio has no frame to show."""
    return info.media_type in ("video", "image")


@dataclass(frozen=True, slots=True)
class Variant:
    kind: str
    storage_uri: str
    mime_type: str
    width: int
    height: int
    size_bytes: int


@dataclass(frozen=True, slots=True)
class StoredFile:
    """A file in the store with what its bytes say, ready to become an asset."""

    storage_uri: str
    sha256: str
    info: MediaInfo
    variants: tuple[Variant, ...] = ()

    @property
    def uris(self) -> list[str]:
        """Every file it holds (a reference each, claimed before they were put)."""
        return [self.storage_uri, *(v.storage_uri for v in self.variants)]


@dataclass(frozen=True, slots=True)
class Origin:
    """Who a new asset belongs to and where it came from."""

    owner_id: str
    display_name: str = ""
    remote_uri: str = ""
    provider_id: str = ""
    provider_asset_id: str = ""
    source_job_id: str = ""


@dataclass(frozen=True, slots=True)
class LineageEdge:
    parent_id: str
    role: int
    operation_type: int


@dataclass(frozen=True, slots=True)
class Relative:
    """An asset on the other end of a lineage edge, seen from one asset."""

    asset_id: str
    role: int
    operation_type: int


@dataclass(frozen=True, slots=True)
class Asset:
    id: str
    owner_id: str
    media_type: int
    sha256: str
    size_bytes: int
    mime_type: str
    width: int
    height: int
    duration_seconds: float
    codec: str
    storage_uri: str
    sync_status: str
    create_time: datetime
    update_time: datetime
    display_name: str = ""
    remote_uri: str = ""
    provider_id: str = ""
    provider_asset_id: str = ""
    source_job_id: str = ""
    sync_error: str = ""
    variants: Sequence[Variant] = field(default_factory=tuple)

    def variant(self, kind: str) -> Variant | None:
        return next((v for v in self.variants if v.kind == kind), None)


def byte_range(size: int, offset: int, length: int) -> tuple[int, int] | None:
    """The [start, end) of a file of `size` bytes that `offset` and `length` (0: to the end)
    select, clipped to the file; None when the range starts past its end (an empty file's
    whole range, offset 0, is empty, not past it)."""
    if offset > 0 and offset >= size:
        return None
    end = size if length == 0 else min(size, offset + length)
    return offset, end


def lineage_edges(
    inputs: Iterable[tuple[str, int]], operation_type: int, owned: set[str], child_id: str
) -> list[LineageEdge]:
    """The edges to record for a generated asset: one per distinct (input, role), only for
    inputs the owner has (another user's id in an event names nothing of theirs), and never
    an asset as its own parent (a generation that returned its input unchanged)."""
    edges: dict[tuple[str, int], LineageEdge] = {}
    for asset_id, role in inputs:
        if asset_id in owned and asset_id != child_id:
            edges.setdefault((asset_id, role), LineageEdge(asset_id, role, operation_type))
    return list(edges.values())
