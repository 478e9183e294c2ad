"""`AssetService`: the use cases. `create` is the only code that inserts an asset, and it
announces every asset it answers with (new or the duplicate it resolved to) as
`asset.created` in the same transaction.

Files are stored before their row is written (`ingest.py`), with no transaction open while
bytes move: a row only ever names a stored, probed file it holds a reference to. A
generation's result is staged before the consumer's transaction (`generations.py`).
Deleting an asset gives its files' references back; the collector deletes what nothing
holds (`collector.py`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixsim.asset.v1 import asset_service_pb2 as pb
from pixsim.events.v1 import events_pb2
from pixsim.types.v1 import types_pb2
from pixsim_asset import repository as repo
from pixsim_asset.decoders import DecodePool
from pixsim_asset.domain import Asset, Origin, Relative, StoredFile, byte_range
from pixsim_asset.fetch import Downloader, FetchFailed, FetchRefused
from pixsim_asset.probe import DecodeLimits
from pixsim_asset.service.generations import Generations, Staged
from pixsim_asset.service.ingest import Ingest, NotMedia
from pixsim_asset.storage import Storage, TooLarge, remove, stage
from pixsim_common import topics
from pixsim_common.auth import Identity
from pixsim_common.cloudevents import EventMeta
from pixsim_common.db import UnitOfWork
from pixsim_common.errors import (
    Aborted,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    OutOfRange,
)
from pixsim_common.outbox import Outgoing, collect
from pixsim_common.timestamps import now_timestamp, to_timestamp

log = structlog.get_logger("pixsim.asset")
SOURCE = "/asset"
READ_CHUNK_BYTES = 1024 * 1024
MAX_URL_SECONDS = 3600


@dataclass(frozen=True)
class Content:
    """One stored file of an asset (the asset's own, or a variant's), to read."""

    uri: str
    mime_type: str
    size_bytes: int


@dataclass(frozen=True)
class DownloadUrl:
    url: str
    expire_time: datetime


class AssetService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        storage: Storage,
        downloader: Downloader,
        *,
        max_upload_bytes: int,
        limits: DecodeLimits | None = None,
        decoders: DecodePool,
        lone_statements: async_sessionmaker[AsyncSession] | None = None,
    ) -> None:
        self._sessions = sessions
        self._storage = storage
        self._downloader = downloader
        self._max_upload_bytes = max_upload_bytes
        # For work that is one statement (a look, a claim of files): autocommit sessions
        # (`db.create_read_sessionmaker`) where given, one round trip instead of three.
        lone = lone_statements or sessions
        self._ingest = Ingest(lone, storage, limits or DecodeLimits(), decoders)
        self.generations = Generations(lone, downloader, self._ingest, self)

    async def create(
        self, session: AsyncSession, origin: Origin, stored: StoredFile, *, job_id: str = ""
    ) -> tuple[Asset, bool]:
        """The asset for `stored` (new, or the owner's existing one with the same content or
        provider result) and whether it was a duplicate; announced as `asset.created`. A
        new asset keeps the references `stored` claimed; a duplicate gives them back."""
        asset = await repo.insert_new(session, origin, stored)
        deduplicated = asset is None
        if asset is None:
            asset = await repo.find_duplicate(
                session,
                origin.owner_id,
                sha256=stored.sha256,
                provider_key=(origin.provider_id, origin.provider_asset_id),
            )
            if asset is None:  # the one we collided with was deleted meanwhile
                raise Aborted("a concurrent change; try again", reason="CONCURRENT_CHANGE")
            await repo.release_blobs(session, stored.uris)
        await self.announce(session, asset, job_id=job_id, deduplicated=deduplicated)
        return asset, deduplicated

    async def announce(
        self, session: AsyncSession, asset: Asset, *, job_id: str, deduplicated: bool
    ) -> None:
        collect(
            session,
            [
                Outgoing(
                    topics.ASSET_CREATED,
                    asset.id,
                    events_pb2.AssetCreated(
                        asset_id=asset.id,
                        user_id=asset.owner_id,
                        job_id=job_id,
                        media_type=types_pb2.MediaType.ValueType(asset.media_type),
                        sha256=asset.sha256,
                        size_bytes=asset.size_bytes,
                        deduplicated=deduplicated,
                        create_time=to_timestamp(asset.create_time),
                    ),
                    SOURCE,
                )
            ],
        )

    async def stage_generation(
        self, event: events_pb2.GenerationCompleted, meta: EventMeta
    ) -> Staged:
        return await self.generations.stage(event, meta)

    async def record_generation(
        self,
        session: AsyncSession,
        event: events_pb2.GenerationCompleted,
        meta: EventMeta,
        staged: Staged,
    ) -> None:
        await self.generations.record(session, event, meta, staged)

    async def discard_generation(self, staged: Staged) -> None:
        await self.generations.discard(staged)

    async def register(self, identity: Identity, uri: str, display_name: str) -> Asset:
        """CreateAsset: fetch a URL the caller names and keep it as their asset."""
        try:
            fetched = await self._downloader.download(uri)
        except FetchRefused as error:
            raise InvalidArgument(
                f"uri cannot be fetched: {error}",
                [FieldViolation("uri", str(error), error.reason)],
            ) from error
        except FetchFailed as error:
            raise FailedPrecondition(
                f"uri could not be fetched: {error}", reason="FETCH_FAILED"
            ) from error
        stored = await self._ingest_or_refuse(fetched.path, fetched.sha256, "uri")
        return await self._create_now(
            Origin(identity.user_id, display_name=display_name, remote_uri=uri), stored
        )

    async def upload(
        self, identity: Identity, requests: AsyncIterator[pb.UploadAssetRequest]
    ) -> Asset:
        """UploadAsset: metadata first, then chunks, under the upload limit."""
        first = await anext(requests, None)
        if first is None or first.WhichOneof("part") != "metadata":
            raise _bad_upload("metadata", "the first message must carry the metadata")
        metadata = first.metadata
        if metadata.size_bytes > self._max_upload_bytes:
            raise _too_large("metadata.size_bytes", self._max_upload_bytes)

        async def chunks() -> AsyncIterator[bytes]:
            async for request in requests:
                if request.WhichOneof("part") != "chunk":
                    raise _bad_upload("metadata", "only the first message may carry metadata")
                yield request.chunk

        try:
            staged = await stage(
                chunks(), max_bytes=self._max_upload_bytes, directory=self._storage.scratch()
            )
        except TooLarge as error:
            raise _too_large("chunk", self._max_upload_bytes) from error
        if staged.size == 0 or (metadata.size_bytes and staged.size != metadata.size_bytes):
            await remove(staged.path)
            raise _bad_upload(
                "metadata.size_bytes",
                f"{staged.size} bytes arrived, {metadata.size_bytes or 'some'} were announced",
            )
        stored = await self._ingest_or_refuse(staged.path, staged.sha256, "chunk")
        return await self._create_now(
            Origin(identity.user_id, display_name=metadata.display_name), stored
        )

    async def _ingest_or_refuse(self, path: Path, sha256: str, field: str) -> StoredFile:
        try:
            return await self._ingest.ingest(path, sha256)
        except NotMedia as error:
            why = (
                f"over the decoding limits: {error}"
                if error.reason == "MEDIA_TOO_LARGE"
                else f"not a video, image or audio file we can decode: {error}"
            )
            raise InvalidArgument(
                why, [FieldViolation(field, why, error.reason)], reason=error.reason
            ) from error

    async def _create_now(self, origin: Origin, stored: StoredFile) -> Asset:
        try:
            async with UnitOfWork(self._sessions) as uow:
                asset, _ = await self.create(uow.session, origin, stored)
                await uow.commit()
        except BaseException:
            await self._ingest.release(stored.uris)  # nothing committed holds them
            raise
        return asset

    async def get(self, identity: Identity, asset_id: str) -> Asset:
        async with self._sessions() as session:
            asset = await repo.load(session, asset_id, identity.user_id)
        if asset is None:
            raise NotFound(f"assets/{asset_id} does not exist", reason="ASSET_NOT_FOUND")
        return asset

    async def batch_get(self, identity: Identity, asset_ids: list[str]) -> list[Asset]:
        async with self._sessions() as session:
            return await repo.load_many(session, asset_ids, identity.user_id)

    async def lineage(
        self, identity: Identity, asset_id: str
    ) -> tuple[list[Relative], list[Relative]]:
        async with self._sessions() as session:
            asset = await repo.load(session, asset_id, identity.user_id)
            if asset is None:
                raise NotFound(f"assets/{asset_id} does not exist", reason="ASSET_NOT_FOUND")
            parents, children = await repo.lineage(session, asset_id, identity.user_id)
        return parents, children

    async def delete(self, identity: Identity, asset_id: str) -> None:
        """Soft: gone from every read at once; its files' references are given back."""
        async with UnitOfWork(self._sessions) as uow:
            asset = await repo.soft_delete(uow.session, asset_id, identity.user_id)
            if asset is None:
                raise NotFound(f"assets/{asset_id} does not exist", reason="ASSET_NOT_FOUND")
            await repo.release_blobs(uow.session, await repo.uris_of(uow.session, asset.id))
            collect(
                uow.session,
                [
                    Outgoing(
                        topics.ASSET_DELETED,
                        asset.id,
                        events_pb2.AssetDeleted(
                            asset_id=asset.id, user_id=asset.owner_id, delete_time=now_timestamp()
                        ),
                        SOURCE,
                    )
                ],
            )
            await uow.commit()

    async def _stored(self, identity: Identity, asset_id: str, variant: str) -> Content:
        asset = await self.get(identity, asset_id)
        if not variant:
            return Content(asset.storage_uri, asset.mime_type, asset.size_bytes)
        found = asset.variant(variant)
        if found is None:
            raise NotFound(
                f"assets/{asset_id} has no {variant} variant", reason="VARIANT_NOT_FOUND"
            )
        return Content(found.storage_uri, found.mime_type, found.size_bytes)

    async def _uri(self, identity: Identity, asset_id: str, variant: str) -> str:
        return (await self._stored(identity, asset_id, variant)).uri

    async def read(self, identity: Identity, asset_id: str, variant: str) -> AsyncIterator[bytes]:
        """The stored bytes of the asset or of one of its variants, in chunks."""
        uri = await self._uri(identity, asset_id, variant)
        async for chunk in self._storage.read(uri, READ_CHUNK_BYTES):
            yield chunk

    async def open_range(
        self, identity: Identity, asset_id: str, variant: str, offset: int, length: int
    ) -> tuple[Content, AsyncIterator[bytes]]:
        """The file (its type and size) and its bytes from `offset`, `length` of them at most
        (0: to the end); OUT_OF_RANGE for a range that starts past the end."""
        stored = await self._stored(identity, asset_id, variant)
        span = byte_range(stored.size_bytes, offset, length)
        if span is None:
            raise OutOfRange(
                f"the range starts at byte {offset}, past the end ({stored.size_bytes} bytes)",
                reason="RANGE_NOT_SATISFIABLE",
                metadata={"size_bytes": str(stored.size_bytes)},
            )
        start, end = span
        return stored, self._storage.read(stored.uri, READ_CHUNK_BYTES, start=start, end=end)

    async def download_url(
        self, identity: Identity, asset_id: str, variant: str, seconds: int
    ) -> DownloadUrl:
        """A time-limited URL of the stored bytes, for a provider to fetch; where the store
        has no URLs (the local filesystem) FAILED_PRECONDITION, and the caller sends the
        bytes themselves."""
        uri = await self._uri(identity, asset_id, variant)
        seconds = min(max(seconds, 1), MAX_URL_SECONDS)
        url = await self._storage.presign(uri, seconds)
        if url is None:
            raise FailedPrecondition(
                "this store makes no download URLs; read the content instead",
                reason="NO_DOWNLOAD_URLS",
            )
        return DownloadUrl(url, datetime.now(UTC) + timedelta(seconds=seconds))


def _bad_upload(field: str, why: str) -> InvalidArgument:
    return InvalidArgument(why, [FieldViolation(field, why)])


def _too_large(field: str, limit: int) -> InvalidArgument:
    why = f"the file is over the {limit}-byte limit"
    return InvalidArgument(why, [FieldViolation(field, why, "TOO_LARGE")], reason="TOO_LARGE")
