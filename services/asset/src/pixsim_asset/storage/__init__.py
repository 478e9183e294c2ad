"""Where asset files live: one content-addressed layout (`ab/cd/<sha256>.<ext>`) behind a
small async interface, with two backends: the local filesystem (`make run`'s default, one
replica) and S3-compatible object storage (`local.py`, `s3.py`). Both pass the same
contract tests. Files are staged here first, on local disk, while they are hashed."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


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


class Scratch:
    """Where this process keeps files in progress: a directory of its own under `base`,
    claimed by an flock on `<dir>.lock` beside it. A crash leaves the directory behind with
    its lock released, so the sweep at start removes exactly what dead processes left, and
    never what a live one (another replica on the same volume) is writing."""

    def __init__(self, base: Path) -> None:
        base.mkdir(parents=True, exist_ok=True)
        self._base = base
        name = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        # The lock first: a sweep never sees this directory without its held lock.
        self._lock = (base / f"{name}.lock").open("w")
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.path = base / name
        self.path.mkdir()

    def sweep(self, loose_older_than: float = 3600.0) -> int:
        """Remove what dead processes left; how many entries went. Loose files (staging
        files of the layout before per-process directories) go once they are an hour old."""
        removed = 0
        for entry in sorted(self._base.iterdir()):
            if entry == self.path or entry.name == f"{self.path.name}.lock":
                continue
            if not entry.exists():  # went with its lock file, just now
                continue
            if entry.suffix == ".lock":
                if _claim(entry):
                    shutil.rmtree(entry.with_suffix(""), ignore_errors=True)
                    entry.unlink(missing_ok=True)
                    removed += 1
            elif entry.is_dir():
                if not entry.with_name(f"{entry.name}.lock").exists():
                    shutil.rmtree(entry, ignore_errors=True)
                    removed += 1
            elif time.time() - entry.stat().st_mtime > loose_older_than:
                entry.unlink(missing_ok=True)
                removed += 1
        return removed

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        (self._base / f"{self.path.name}.lock").unlink(missing_ok=True)
        self._lock.close()


def _claim(lock: Path) -> bool:
    """Whether nobody holds `lock` (its process died): then it is ours to remove."""
    try:
        with lock.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
    except (BlockingIOError, FileNotFoundError):
        return False


async def remove(path: Path) -> None:
    """Remove a staged file whatever happens meanwhile (a cancelled RPC included)."""
    with contextlib.suppress(FileNotFoundError):
        await asyncio.shield(asyncio.to_thread(path.unlink, missing_ok=True))


class ChecksumMismatch(Exception):
    """What arrived in the store is not the content it was announced as."""


def content_key(sha256: str, extension: str) -> str:
    """Where content lives in either backend: `ab/cd/<sha256>.<ext>`."""
    if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
        raise ValueError("sha256 must be 64 lowercase hex digits")
    extension = extension.lstrip(".")
    if not (0 < len(extension) <= 8 and extension.isalnum() and extension.isascii()):
        raise ValueError(f"extension {extension!r} must be 1 to 8 letters or digits")
    return f"{sha256[:2]}/{sha256[2:4]}/{sha256}.{extension}"


class Storage(Protocol):
    """A content-addressed store. `uri_for` is known before anything is stored, so a file's
    references can be counted before it exists (see the blob table)."""

    def uri_for(self, sha256: str, extension: str) -> str: ...

    async def put(self, source: Path, sha256: str, extension: str, content_type: str) -> str:
        """Move a finished staged file in (it is gone afterwards); returns its storage URI.
        Idempotent for equal content; the store checks the bytes against `sha256`."""
        ...

    def read(
        self, uri: str, chunk_bytes: int = 1024 * 1024, *, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        """The file's bytes from `start` up to (not including) `end`, in chunks."""
        ...

    async def exists(self, uri: str) -> bool: ...

    async def delete(self, uri: str) -> None: ...

    async def presign(self, uri: str, expires_seconds: int) -> str | None:
        """A time-limited HTTPS URL anyone can GET the file from, or None where the backend
        has none (the local filesystem)."""
        ...

    def scratch(self) -> Path:
        """A directory for files in progress (on the store's filesystem when local)."""
        ...

    def sweep(self) -> int: ...

    async def close(self) -> None: ...
