"""A finished generation becomes an asset in two steps, so that no download holds a
database connection:

1. `stage`, before the consumer's transaction: find whether the result is stored already
   (by its provider key), else download, hash, probe and store it (claiming its files);
2. `record`, inside the consumer's transaction with its inbox row: the asset (or the
   duplicate it resolves to), its lineage and `asset.created`; or, when the media could not
   be had, `generation.failed` (`ASSET_FAILED`) so the job ends instead of waiting forever.

`discard` gives back what `stage` claimed when `record` never commits (a redelivered
duplicate, a dead letter).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixsim.events.v1 import events_pb2
from pixsim.types.v1 import types_pb2
from pixsim_asset import repository as repo
from pixsim_asset.domain import Asset, Origin, StoredFile, lineage_edges
from pixsim_asset.fetch import Downloader, FetchFailed, FetchRefused
from pixsim_asset.service.ingest import Ingest, NotMedia
from pixsim_common import topics
from pixsim_common.cloudevents import EventMeta
from pixsim_common.outbox import Outgoing, collect
from pixsim_common.timestamps import now_timestamp

log = structlog.get_logger("pixsim.asset")
SOURCE = "/asset"


@dataclass(frozen=True)
class Staged:
    """What `stage` found: the stored result, why it could not be had, or neither (it was
    stored already)."""

    stored: StoredFile | None = None
    failure: Exception | None = None


def origin_of(event: events_pb2.GenerationCompleted) -> Origin:
    return Origin(
        owner_id=event.user_id,
        remote_uri=event.media.uri,
        provider_id=event.provider_id,
        provider_asset_id=event.provider_asset_id,
        source_job_id=event.job_id,
    )


class Assets(Protocol):
    """The one way in (`AssetService.create`) and its announcement."""

    async def create(
        self, session: AsyncSession, origin: Origin, stored: StoredFile, *, job_id: str = ""
    ) -> tuple[Asset, bool]: ...

    async def announce(
        self, session: AsyncSession, asset: Asset, *, job_id: str, deduplicated: bool
    ) -> None: ...


class Generations:
    def __init__(
        self,
        reads: async_sessionmaker[AsyncSession],
        downloader: Downloader,
        ingest: Ingest,
        assets: Assets,
    ) -> None:
        self._reads = reads  # its look for a stored result before staging is one statement
        self._downloader = downloader
        self._ingest = ingest
        self._assets = assets

    async def stage(self, event: events_pb2.GenerationCompleted, meta: EventMeta) -> Staged:
        origin = origin_of(event)
        async with self._reads() as session:
            existing = await repo.find_duplicate(
                session,
                origin.owner_id,
                provider_key=(origin.provider_id, origin.provider_asset_id),
            )
        if existing is not None:
            return Staged()
        try:
            fetched = await self._downloader.download(event.media.uri)
            return Staged(await self._ingest.ingest(fetched.path, fetched.sha256))
        except (FetchRefused, FetchFailed, NotMedia) as error:
            return Staged(failure=error)

    async def discard(self, staged: Staged) -> None:
        if staged.stored is not None:
            await self._ingest.release(staged.stored.uris)

    async def record(
        self,
        session: AsyncSession,
        event: events_pb2.GenerationCompleted,
        meta: EventMeta,
        staged: Staged,
    ) -> None:
        """Inside the consumer's transaction, with its inbox row."""
        origin = origin_of(event)
        asset = await repo.find_duplicate(
            session, origin.owner_id, provider_key=(origin.provider_id, origin.provider_asset_id)
        )
        deduplicated = asset is not None
        if asset is not None:
            if staged.stored is not None:  # stored meanwhile by another replica
                await repo.release_blobs(session, staged.stored.uris)
            await self._assets.announce(session, asset, job_id=event.job_id, deduplicated=True)
        elif staged.failure is not None:
            await self._failed(session, event, staged.failure)
            return
        elif staged.stored is None:  # it was there at stage time and is gone now
            raise FetchFailed("the stored result was deleted meanwhile; stage it again")
        else:
            asset, deduplicated = await self._assets.create(
                session, origin, staged.stored, job_id=event.job_id
            )
        inputs = [(i.asset_id, i.role) for i in event.input_assets]
        owned = await repo.owned_ids(session, (i for i, _ in inputs), origin.owner_id)
        await repo.add_lineage(
            session, asset.id, lineage_edges(inputs, event.operation_type, owned, asset.id)
        )
        log.info(
            "generation stored", job_id=event.job_id, asset_id=asset.id, deduplicated=deduplicated
        )

    async def _failed(
        self, session: AsyncSession, event: events_pb2.GenerationCompleted, error: Exception
    ) -> None:
        reason = getattr(error, "reason", type(error).__name__)
        log.warning(
            "generation media refused", job_id=event.job_id, reason=reason, error=str(error)
        )
        collect(
            session,
            [
                Outgoing(
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
                    SOURCE,
                )
            ],
        )
