"""Deletes stored files that nothing holds any more (`repository.blobs`), a grace period
after the last reference went. Each file is deleted while its row is locked, so a new asset
deduplicating onto the same content at that moment waits, then puts the file again."""

from __future__ import annotations

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixsim_asset import repository as repo
from pixsim_asset.metrics import FILES_DELETED
from pixsim_asset.storage import Storage
from pixsim_common.db import UnitOfWork

log = structlog.get_logger("pixsim.asset.collector")


class BlobCollector:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        storage: Storage,
        *,
        grace_seconds: float,
        batch: int = 50,
    ) -> None:
        self._sessions = sessions
        self._storage = storage
        self._grace = grace_seconds
        self._batch = batch

    async def collect_once(self) -> int:
        """Delete one batch of orphaned files; how many went."""
        async with UnitOfWork(self._sessions) as uow:
            uris = await repo.collectable_blobs(uow.session, self._grace, self._batch)
            for uri in uris:
                await self._storage.delete(uri)
                await repo.forget_blob(uow.session, uri)
            await uow.commit()
        if uris:
            FILES_DELETED.inc(len(uris))
            log.info("deleted files nothing holds", files=len(uris))
        return len(uris)
