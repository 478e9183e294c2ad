"""The job service's consumers: each turns one event into a fact for the job (thin)."""

from __future__ import annotations

from datetime import UTC

from sqlalchemy.ext.asyncio import AsyncSession

from pixsim.events.v1 import events_pb2
from pixsim.types.v1 import types_pb2
from pixsim_common import topics
from pixsim_common.cloudevents import EventMeta
from pixsim_common.consumer import Subscription
from pixsim_common.timestamps import time_of
from pixsim_job.domain import (
    AssetCreated,
    GenerationFailed,
    GenerationFinished,
    GenerationQueued,
    GenerationStarted,
)
from pixsim_job.service import JobService


def subscriptions(service: JobService) -> list[Subscription]:
    async def queued(
        session: AsyncSession, event: events_pb2.GenerationQueued, meta: EventMeta
    ) -> None:
        fact = GenerationQueued(event.job_retry_count, event.queue_time.ToDatetime(tzinfo=UTC))
        await service.learn(session, event.job_id, event.user_id, fact)

    async def started(
        session: AsyncSession, event: events_pb2.GenerationStarted, meta: EventMeta
    ) -> None:
        fact = GenerationStarted(
            event.job_retry_count,
            dispatch_time=time_of(event, "dispatch_time"),
            provider_start_time=time_of(event, "start_time"),
        )
        await service.learn(session, event.job_id, event.user_id, fact)

    async def finished(
        session: AsyncSession, event: events_pb2.GenerationCompleted, meta: EventMeta
    ) -> None:
        end = time_of(event, "complete_time")
        if end is not None:
            fact = GenerationFinished(event.job_retry_count, end, event.provider_id)
            await service.learn(session, event.job_id, event.user_id, fact)

    async def failed(
        session: AsyncSession, event: events_pb2.GenerationFailed, meta: EventMeta
    ) -> None:
        code = types_pb2.GenerationErrorCode.Name(event.error_code).removeprefix(
            "GENERATION_ERROR_CODE_"
        )
        await service.learn(
            session,
            event.job_id,
            event.user_id,
            GenerationFailed(event.job_retry_count, code, event.error_message),
        )

    async def created(
        session: AsyncSession, event: events_pb2.AssetCreated, meta: EventMeta
    ) -> None:
        if event.job_id:  # uploads make assets too; only a generation's answers a job
            await service.learn(session, event.job_id, event.user_id, AssetCreated(event.asset_id))

    async def settled(
        session: AsyncSession, event: events_pb2.GenerationSettled, meta: EventMeta
    ) -> None:
        await service.settled(session, event)

    return [
        Subscription(topics.GENERATION_SETTLED, settled),
        Subscription(topics.GENERATION_QUEUED, queued),
        Subscription(topics.GENERATION_STARTED, started),
        Subscription(topics.GENERATION_COMPLETED, finished),
        Subscription(topics.GENERATION_FAILED, failed),
        Subscription(topics.ASSET_CREATED, created),
    ]
