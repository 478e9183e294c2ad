"""Where asset files live: a content-addressed layout behind a small interface, so an
S3-compatible store can stand in for the local filesystem."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Protocol


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
        target = self._root / sha256[:2] / sha256[2:4] / f"{sha256}.{extension.lstrip('.')}"
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
