"""The local filesystem backend: `file://<root>/ab/cd/<sha256>.<ext>`, for one replica."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

from pixsim_asset.storage import ChecksumMismatch, Scratch, content_key


class LocalStorage:
    """The same bytes are stored once; a finished file moves in atomically."""

    def __init__(self, root: Path) -> None:
        self._root = root.resolve()
        # On the store's own filesystem, so a finished file moves in atomically.
        self._scratch = Scratch(self._root / ".scratch")

    def scratch(self) -> Path:
        return self._scratch.path

    def sweep(self) -> int:
        """Remove staging files that processes which died left behind."""
        return self._scratch.sweep()

    async def close(self) -> None:
        self._scratch.close()

    def uri_for(self, sha256: str, extension: str) -> str:
        return f"file://{self._root / content_key(sha256, extension)}"

    def _path(self, uri: str) -> Path:
        path = Path(uri.removeprefix("file://")).resolve()
        if self._root not in path.parents:
            raise ValueError(f"{uri} is outside the store")
        return path

    async def put(self, source: Path, sha256: str, extension: str, content_type: str) -> str:
        uri = self.uri_for(sha256, extension)
        await asyncio.to_thread(self._move_in, source, self._path(uri), sha256)
        return uri

    @staticmethod
    def _move_in(source: Path, target: Path, sha256: str) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            source.unlink(missing_ok=True)  # already stored: content addressing dedups
            return
        digest = hashlib.sha256()
        with source.open("rb") as handle:
            while block := handle.read(1024 * 1024):
                digest.update(block)
        if digest.hexdigest() != sha256:
            source.unlink(missing_ok=True)
            raise ChecksumMismatch(f"the file's sha256 is {digest.hexdigest()}, not {sha256}")
        os.replace(source, target)  # atomic: a reader never sees half a file

    async def read(
        self, uri: str, chunk_bytes: int = 1024 * 1024, *, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        handle = await asyncio.to_thread(self._path(uri).open, "rb")
        try:
            await asyncio.to_thread(handle.seek, start)
            left = None if end is None else max(end - start, 0)
            while left is None or left > 0:
                wanted = chunk_bytes if left is None else min(chunk_bytes, left)
                chunk = await asyncio.to_thread(handle.read, wanted)
                if not chunk:
                    break
                if left is not None:
                    left -= len(chunk)
                yield chunk
        finally:
            handle.close()

    async def exists(self, uri: str) -> bool:
        return await asyncio.to_thread(self._path(uri).exists)

    async def delete(self, uri: str) -> None:
        await asyncio.to_thread(self._path(uri).unlink, missing_ok=True)

    async def presign(self, uri: str, expires_seconds: int) -> str | None:
        return None
