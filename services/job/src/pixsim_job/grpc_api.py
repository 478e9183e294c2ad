"""`pixsim.job.v1.JobService`: thin handlers; the guard has authenticated and validated."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

from google.protobuf import duration_pb2
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixsim.job.v1 import job_service_pb2 as pb
from pixsim.job.v1 import job_service_pb2_grpc as pb_grpc
from pixsim_common.auth import current_identity
from pixsim_common.errors import DomainError
from pixsim_common.pagination import PageTokens
from pixsim_common.timestamps import from_request, to_timestamp
from pixsim_job import repository as repo
from pixsim_job.capabilities import LiveStatus
from pixsim_job.resources import to_proto
from pixsim_job.service import LIVE_STATES, ChangeFeed, JobService, watch


def _state_names(states: Iterable[pb.Job.State.ValueType]) -> list[str]:
    return sorted({pb.Job.State.Name(state).removeprefix("STATE_") for state in states})


def _id(name: str) -> str:
    return name.removeprefix("jobs/")


class JobApi(pb_grpc.JobServiceServicer):
    def __init__(
        self,
        service: JobService,
        feed: ChangeFeed,
        sessions: async_sessionmaker[AsyncSession],
        tokens: PageTokens,
        live: LiveStatus,
    ) -> None:
        self._live = live
        self._service = service
        self._feed = feed
        self._sessions = sessions
        self._tokens = tokens

    async def CreateJob(self, request: pb.CreateJobRequest, context: Any) -> pb.Job:
        return to_proto(await self._service.create(current_identity(), request))

    async def BatchCreateJobs(
        self, request: pb.BatchCreateJobsRequest, context: Any
    ) -> pb.BatchCreateJobsResponse:
        answers = await self._service.create_many(
            current_identity(),
            request.requests,
            request.webhook if request.HasField("webhook") else None,
        )
        return pb.BatchCreateJobsResponse(
            results=[
                pb.BatchCreateJobsResult(error=answer.to_status())
                if isinstance(answer, DomainError)
                else pb.BatchCreateJobsResult(job=to_proto(answer))
                for answer in answers
            ]
        )

    async def CancelJobs(
        self, request: pb.CancelJobsRequest, context: Any
    ) -> pb.CancelJobsResponse:
        count = await self._service.cancel_matching(
            current_identity(),
            states=_state_names(request.states),
            provider=request.provider_id,
            labels=dict(request.labels),
        )
        return pb.CancelJobsResponse(cancelled_count=count)

    async def RotateWebhookSecret(
        self, request: pb.RotateWebhookSecretRequest, context: Any
    ) -> pb.WebhookSecret:
        secret, previous_until = await self._service.rotate_webhook_secret(current_identity())
        return pb.WebhookSecret(secret=secret, previous_expire_time=to_timestamp(previous_until))

    async def ListWebhookDeliveries(
        self, request: pb.ListWebhookDeliveriesRequest, context: Any
    ) -> pb.ListWebhookDeliveriesResponse:
        found = await self._service.deliveries(current_identity(), _id(request.job))
        return pb.ListWebhookDeliveriesResponse(
            deliveries=[
                pb.WebhookDelivery(
                    id=row.id,
                    event=pb.Webhook.Event.Value(row.event),
                    url=row.url,
                    state=pb.WebhookDelivery.State.Value(f"STATE_{row.state}"),
                    create_time=to_timestamp(row.create_time),
                    next_attempt_time=(
                        to_timestamp(row.next_attempt_at) if row.state == "PENDING" else None
                    ),
                    attempts=[
                        pb.WebhookAttempt(
                            attempt_time=to_timestamp(a.attempt_time),
                            status_code=a.status_code,
                            error=a.error,
                            duration=duration_pb2.Duration(
                                seconds=a.duration_ms // 1000, nanos=a.duration_ms % 1000 * 10**6
                            ),
                        )
                        for a in attempts
                    ],
                )
                for row, attempts in found
            ]
        )

    async def GetJob(self, request: pb.GetJobRequest, context: Any) -> pb.Job:
        identity = current_identity()
        job = await self._service.get(identity, _id(request.name))
        live = await self._live.of(job.id, identity.token) if job.state in LIVE_STATES else None
        return to_proto(job, live)

    async def CancelJob(self, request: pb.CancelJobRequest, context: Any) -> pb.Job:
        return to_proto(await self._service.cancel(current_identity(), _id(request.name)))

    async def RetryJob(self, request: pb.RetryJobRequest, context: Any) -> pb.Job:
        return to_proto(await self._service.retry(current_identity(), _id(request.name)))

    async def WatchJob(self, request: pb.WatchJobRequest, context: Any) -> AsyncIterator[pb.Job]:
        updates = watch(
            self._service, self._feed, current_identity(), _id(request.name), self._live
        )
        async for job, live in updates:
            yield to_proto(job, live)

    async def ListJobs(self, request: pb.ListJobsRequest, context: Any) -> pb.ListJobsResponse:
        identity = current_identity()
        start = (
            from_request(request.create_time_start, "create_time_start")
            if request.HasField("create_time_start")
            else None
        )
        end = (
            from_request(request.create_time_end, "create_time_end")
            if request.HasField("create_time_end")
            else None
        )
        filters = {
            "states": _state_names(request.states),
            "provider": request.provider_id,
            "operation": request.operation_type,
            "start": start.isoformat() if start else "",
            "end": end.isoformat() if end else "",
            "labels": dict(sorted(request.labels.items())),
        }
        async with self._sessions() as session:
            found, token = await repo.list_page(
                session,
                self._tokens,
                identity.user_id,
                filters,
                page_token=request.page_token,
                page_size=request.page_size,
            )
        return pb.ListJobsResponse(jobs=[to_proto(j) for j in found], next_page_token=token)
