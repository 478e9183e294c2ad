"""The scene service's consumer: a deleted asset is detached from every scene (thin)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from pixsim.events.v1 import events_pb2
from pixsim_common import topics
from pixsim_common.cloudevents import EventMeta
from pixsim_common.consumer import Subscription
from pixsim_scene.service import SceneService


def subscriptions(service: SceneService) -> list[Subscription]:
    async def deleted(
        session: AsyncSession, event: events_pb2.AssetDeleted, meta: EventMeta
    ) -> None:
        await service.asset_deleted(session, event.asset_id, event.user_id)

    return [Subscription(topics.ASSET_DELETED, deleted)]
