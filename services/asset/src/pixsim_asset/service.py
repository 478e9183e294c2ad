"""`AssetService`: the use cases. `create` is the only code that inserts an asset, and it
announces every asset it answers with (new or the duplicate it resolved to) as
`asset.created` in the same transaction.

Files are stored before their row is written: a row only ever names a stored, probed file,
and a failure before the row leaves at most a content-addressed file that the same bytes
would reuse. A generation whose media cannot be had (refused, too large, not media, or still
failing after the retries) answers the job with `generation.failed` (`ASSET_FAILED`) instead,
so the job ends rather than waiting forever.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixsim.asset.v1 import asset_service_pb2 as pb
from pixsim.events.v1 import events_pb2
from pixsim.types.v1 import types_pb2
from pixsim_asset import repository as repo
from pixsim_asset.domain import (
    THUMBNAIL,
    Asset,
    Origin,
    Relative,
    StoredFile,
    Variant,
    extension_for,
    lineage_edges,
    wants_thumbnail,
)
from pixsim_asset.fetch import Downloader, FetchFailed, FetchRefused
from pixsim_asset.probe import DecodeLimits, OverLimits, ProbeFailed, inspect
from pixsim_asset.storage import Storage, TooLarge, remove, stage
from pixsim_common import topics
from pixsim_common.auth import Identity
from pixsim_common.db import UnitOfWork
from pixsim_common.errors import (
    Aborted,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from pixsim_common.outbox import enqueue
from pixsim_common.timestamps import now_timestamp, to_timestamp

log = structlog.get_logger("pixsim.asset")
SOURCE = "/asset"
READ_CHUNK_BYTES = 1024 * 1024


class NotMedia(Exception):
    """The bytes are not a video, image or audio file we can read, or one over the decoding
    limits (`reason` says which)."""

    def __init__(self, message: str, reason: str = "NOT_MEDIA") -> None:
        super().__init__(message)
        self.reason = reason


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


class AssetService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        storage: Storage,
        downloader: Downloader,
        *,
        max_upload_bytes: int,
        limits: DecodeLimits | None = None,
    ) -> None:
        self._sessions = sessions
        self._storage = storage
        self._downloader = downloader
        self._max_upload_bytes = max_upload_bytes
        self._limits = limits or DecodeLimits()

    # ---- the one way in ---------------------------------------------------------------

    async def create(
        self, session: AsyncSession, origin: Origin, stored: StoredFile, *, job_id: str = ""
    ) -> tuple[Asset, bool]:
        """The asset for `stored` (new, or the owner's existing one with the same content or
        provider result) and whether it was a duplicate; announced as `asset.created`."""
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
        await self._announce(session, asset, job_id=job_id, deduplicated=deduplicated)
        return asset, deduplicated

    async def _announce(
        self, session: AsyncSession, asset: Asset, *, job_id: str, deduplicated: bool
    ) -> None:
        await enqueue(
            session,
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
            source=SOURCE,
        )

    async def _ingest(self, path: Path, sha256: str) -> StoredFile:
        """Probe a staged file and move it into the store with its thumbnail. The staged
        file is gone afterwards whatever happens (moved in, or removed)."""
        try:
            try:
                info, made = await asyncio.to_thread(inspect, path, self._limits)
            except OverLimits as error:
                raise NotMedia(str(error), "MEDIA_TOO_LARGE") from error
            except ProbeFailed as error:
                raise NotMedia(str(error)) from error
            variants: tuple[Variant, ...] = ()
            if made is not None and wants_thumbnail(info):
                png, width, height = made
                staged = await stage(
                    _one(png), max_bytes=len(png), directory=self._storage.scratch()
                )
                try:
                    uri = await asyncio.to_thread(
                        self._storage.put, staged.path, staged.sha256, "png"
                    )
                finally:
                    await remove(staged.path)
                variants = (Variant(THUMBNAIL, uri, "image/png", width, height, len(png)),)
            storage_uri = await asyncio.to_thread(
                self._storage.put, path, sha256, extension_for(info.mime_type)
            )
        finally:
            await remove(path)  # moved in already, or refused
        return StoredFile(storage_uri, sha256, info, variants)

    # ---- sources ----------------------------------------------------------------------

    async def from_generation(
        self, session: AsyncSession, event: events_pb2.GenerationCompleted
    ) -> None:
        """Store a provider's result and answer its job, inside the consumer's transaction."""
        origin = Origin(
            owner_id=event.user_id,
            remote_uri=event.media.uri,
            provider_id=event.provider_id,
            provider_asset_id=event.provider_asset_id,
            source_job_id=event.job_id,
        )
        asset = await repo.find_duplicate(
            session, origin.owner_id, provider_key=(origin.provider_id, origin.provider_asset_id)
        )
        deduplicated = asset is not None
        if asset is None:
            try:
                fetched = await self._downloader.download(event.media.uri)
                stored = await self._ingest(fetched.path, fetched.sha256)
            except (FetchRefused, FetchFailed, NotMedia) as error:
                await self._generation_failed(session, event, error)
                return
            asset, deduplicated = await self.create(session, origin, stored, job_id=event.job_id)
        else:
            await self._announce(session, asset, job_id=event.job_id, deduplicated=True)
        inputs = [(i.asset_id, i.role) for i in event.input_assets]
        owned = await repo.owned_ids(session, (i for i, _ in inputs), origin.owner_id)
        await repo.add_lineage(
            session, asset.id, lineage_edges(inputs, event.operation_type, owned, asset.id)
        )
        log.info(
            "generation stored",
            job_id=event.job_id,
            asset_id=asset.id,
            deduplicated=deduplicated,
        )

    async def _generation_failed(
        self,
        session: AsyncSession,
        event: events_pb2.GenerationCompleted,
        error: Exception,
    ) -> None:
        reason = getattr(error, "reason", type(error).__name__)
        log.warning(
            "generation media refused", job_id=event.job_id, reason=reason, error=str(error)
        )
        await enqueue(
            session,
            topics.GENERATION_FAILED,
            event.job_id,
            events_pb2.GenerationFailed(
                job_id=event.job_id,
                user_id=event.user_id,
                submission_id=event.submission_id,
                provider_id=event.provider_id,
                error_code=types_pb2.GENERATION_ERROR_CODE_ASSET_FAILED,
                error_message=f"the result could not be stored ({reason}): {error}"[:2000],
                fail_time=now_timestamp(),
                job_retry_count=event.job_retry_count,
            ),
            source=SOURCE,
        )

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
            return await self._ingest(path, sha256)
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
        async with UnitOfWork(self._sessions) as uow:
            asset, _ = await self.create(uow.session, origin, stored)
            await uow.commit()
        return asset

    # ---- reads and deletion -----------------------------------------------------------

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
        async with UnitOfWork(self._sessions) as uow:
            asset = await repo.soft_delete(uow.session, asset_id, identity.user_id)
            if asset is None:
                raise NotFound(f"assets/{asset_id} does not exist", reason="ASSET_NOT_FOUND")
            await enqueue(
                uow.session,
                topics.ASSET_DELETED,
                asset.id,
                events_pb2.AssetDeleted(
                    asset_id=asset.id, user_id=asset.owner_id, delete_time=now_timestamp()
                ),
                source=SOURCE,
            )
            await uow.commit()

    async def read(self, identity: Identity, asset_id: str, variant: str) -> AsyncIterator[bytes]:
        """The stored bytes of the asset or of one of its variants, in chunks."""
        asset = await self.get(identity, asset_id)
        uri = asset.storage_uri
        if variant:
            found = asset.variant(variant)
            if found is None:
                raise NotFound(
                    f"assets/{asset_id} has no {variant} variant", reason="VARIANT_NOT_FOUND"
                )
            uri = found.storage_uri
        handle = await asyncio.to_thread(self._storage.open, uri)
        try:
            while chunk := await asyncio.to_thread(handle.read, READ_CHUNK_BYTES):
                yield chunk
        finally:
            handle.close()


def _bad_upload(field: str, why: str) -> InvalidArgument:
    return InvalidArgument(why, [FieldViolation(field, why)])


def _too_large(field: str, limit: int) -> InvalidArgument:
    why = f"the file is over the {limit}-byte limit"
    return InvalidArgument(why, [FieldViolation(field, why, "TOO_LARGE")], reason="TOO_LARGE")
