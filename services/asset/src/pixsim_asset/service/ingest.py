"""From a staged file to stored files ready to become an asset: probe it (within the
decoding limits), make its pictures, claim every file it will hold, and put them in the
store. No database transaction is open meanwhile; each claim is its own short one.

A claim is a reference taken before a file is put (see `repository.blobs`): the asset row
that names the file keeps it, and whoever gives up on the file (a duplicate, a failure, a
dead-lettered event) releases it, so the collector can delete what nothing holds.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixsim_asset import repository as repo
from pixsim_asset.decoders import DecodePool
from pixsim_asset.domain import (
    FIRST_FRAME,
    LAST_FRAME,
    THUMBNAIL,
    StoredFile,
    Variant,
    extension_for,
    wants_thumbnail,
)
from pixsim_asset.probe import DecodeLimits, OverLimits, Picture, ProbeFailed
from pixsim_asset.storage import Storage, remove, stage


class NotMedia(Exception):
    """The bytes are not a video, image or audio file we can read, or one over the decoding
    limits (`reason` says which)."""

    def __init__(self, message: str, reason: str = "NOT_MEDIA") -> None:
        super().__init__(message)
        self.reason = reason


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


class Ingest:
    def __init__(
        self,
        lone_statements: async_sessionmaker[AsyncSession],
        storage: Storage,
        limits: DecodeLimits,
        decoders: DecodePool,
    ) -> None:
        # Its claims and releases of files are one statement each.
        self._sessions = lone_statements
        self._storage = storage
        self._limits = limits
        self._decoders = decoders

    async def ingest(self, path: Path, sha256: str) -> StoredFile:
        """Probe a staged file, then claim and put it and its pictures. The staged file is
        gone afterwards whatever happens (moved in, or removed); on a failure every claim
        made is released again."""
        try:
            try:
                seen = await self._decoders.inspect(path, self._limits)
            except OverLimits as error:
                raise NotMedia(str(error), "MEDIA_TOO_LARGE") from error
            except ProbeFailed as error:
                raise NotMedia(str(error)) from error
            info = seen.info
            pictures: dict[str, Picture] = {}
            if wants_thumbnail(info):
                for kind, made in (
                    (THUMBNAIL, seen.thumbnail),
                    (FIRST_FRAME, seen.first_frame),
                    (LAST_FRAME, seen.last_frame),
                ):
                    if made is not None:
                        pictures[kind] = made
            extension = extension_for(info.mime_type)
            variants = tuple(
                Variant(
                    kind,
                    self._storage.uri_for(hashlib.sha256(made.data).hexdigest(), made.extension),
                    made.mime_type,
                    made.width,
                    made.height,
                    len(made.data),
                )
                for kind, made in pictures.items()
            )
            stored = StoredFile(self._storage.uri_for(sha256, extension), sha256, info, variants)
            await self.claim(stored.uris)
            try:
                for made in pictures.values():
                    await self._put_picture(made)
                await self._storage.put(path, sha256, extension, info.mime_type)
            except BaseException:
                await self.release(stored.uris)
                raise
        finally:
            await remove(path)  # moved in already, or refused
        return stored

    async def _put_picture(self, made: Picture) -> None:
        staged = await stage(
            _one(made.data), max_bytes=len(made.data), directory=self._storage.scratch()
        )
        try:
            await self._storage.put(staged.path, staged.sha256, made.extension, made.mime_type)
        finally:
            await remove(staged.path)

    async def claim(self, uris: Iterable[str]) -> None:
        async with self._sessions() as session:  # one statement, committed by itself
            await repo.claim_blobs(session, uris)
            await session.commit()

    async def release(self, uris: Iterable[str]) -> None:
        """Give claims back in a statement of their own; shielded, so a cancelled call
        does not keep a file alive forever."""

        async def give_back() -> None:
            async with self._sessions() as session:
                await repo.release_blobs(session, uris)
                await session.commit()

        await asyncio.shield(give_back())
