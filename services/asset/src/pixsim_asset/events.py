"""The asset service's consumer: a finished generation becomes an asset (thin)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from pixsim.events.v1 import events_pb2
from pixsim_asset.service import AssetService
from pixsim_common import topics
from pixsim_common.cloudevents import EventMeta
from pixsim_common.consumer import Subscription


def subscriptions(service: AssetService) -> list[Subscription]:
    async def completed(
        session: AsyncSession, event: events_pb2.GenerationCompleted, meta: EventMeta
    ) -> None:
        await service.from_generation(session, event)

    return [Subscription(topics.GENERATION_COMPLETED, completed)]
