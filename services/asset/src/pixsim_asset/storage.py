"""Where asset files live: a content-addressed layout behind a small interface, so an
S3-compatible store can stand in for the local filesystem."""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from collections.abc import AsyncIterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol


class TooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"more than the {limit}-byte limit")
        self.limit = limit


@dataclass(frozen=True, slots=True)
class Staged:
    """A finished file in scratch space, not yet in the store; its owner removes or puts it."""

    path: Path
    sha256: str
    size: int


async def stage(chunks: AsyncIterable[bytes], *, max_bytes: int, directory: Path) -> Staged:
    """Write `chunks` to a new file in `directory`, hashing as they come; over `max_bytes`
    is `TooLarge`. Whatever ends the stream early, the partial file is removed."""
    digest = hashlib.sha256()
    size = 0
    handle, name = tempfile.mkstemp(dir=directory, prefix=".staging-")
    path = Path(name)
    try:
        with os.fdopen(handle, "wb") as out:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise TooLarge(max_bytes)
                digest.update(chunk)
                await asyncio.to_thread(out.write, chunk)  # disk writes off the event loop
    except BaseException:
        await asyncio.shield(asyncio.to_thread(path.unlink, missing_ok=True))
        raise
    return Staged(path, digest.hexdigest(), size)


class Storage(Protocol):
    def put(self, source: Path, sha256: str, extension: str) -> str:
        """Move a finished file in; returns its storage URI. Idempotent for equal content."""
        ...

    def open(self, uri: str) -> BinaryIO: ...

    def delete(self, uri: str) -> None: ...

    def scratch(self) -> Path:
        """A directory for downloads in progress, on the same filesystem as the store."""
        ...


class LocalStorage:
    """`file://<root>/ab/cd/<sha256>.<ext>`: the same bytes are stored once."""

    def __init__(self, root: Path) -> None:
        self._root = root.resolve()
        (self._root / ".scratch").mkdir(parents=True, exist_ok=True)

    def scratch(self) -> Path:
        return self._root / ".scratch"

    def _path(self, uri: str) -> Path:
        path = Path(uri.removeprefix("file://")).resolve()
        if self._root not in path.parents:
            raise ValueError(f"{uri} is outside the store")
        return path

    def put(self, source: Path, sha256: str, extension: str) -> str:
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        extension = extension.lstrip(".")
        if not (0 < len(extension) <= 8 and extension.isalnum() and extension.isascii()):
            raise ValueError(f"extension {extension!r} must be 1 to 8 letters or digits")
        target = self._root / sha256[:2] / sha256[2:4] / f"{sha256}.{extension}"
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            source.unlink(missing_ok=True)  # already stored: content addressing dedups
        else:
            os.replace(source, target)  # atomic: a reader never sees half a file
        return f"file://{target}"

    def open(self, uri: str) -> BinaryIO:
        return self._path(uri).open("rb")

    def delete(self, uri: str) -> None:
        self._path(uri).unlink(missing_ok=True)
