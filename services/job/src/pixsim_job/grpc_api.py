"""`pixsim.job.v1.JobService`: thin handlers; the guard has authenticated and validated."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

from google.protobuf import json_format
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixsim.job.v1 import job_service_pb2 as pb
from pixsim.job.v1 import job_service_pb2_grpc as pb_grpc
from pixsim.provider.v1 import provider_gateway_service_pb2 as gw_pb
from pixsim_common.auth import current_identity
from pixsim_common.errors import DomainError
from pixsim_common.pagination import PageTokens
from pixsim_common.timestamps import from_request, to_timestamp
from pixsim_job import repository as repo
from pixsim_job.capabilities import LiveStatus
from pixsim_job.domain import Job, JobState
from pixsim_job.service import LIVE_STATES, ChangeFeed, JobService, watch


def to_proto(job: Job, live: gw_pb.QueueStatus | None = None) -> pb.Job:
    """The job as stored, with what the gateway says of it now where `live` is given."""
    message = stored_to_proto(job)
    if live is None:
        return message
    if job.state is JobState.QUEUED and live.state == gw_pb.Submission.STATE_WAITING:
        message.queue_position = live.queue_position
    if job.state is JobState.PROCESSING and live.state == gw_pb.Submission.STATE_RUNNING:
        message.provider_state = live.provider_state
        if live.progress > 0:
            message.progress = live.progress
        if live.provider_state == "IN_QUEUE":
            message.queue_position = live.provider_queue_position
    return message


def stored_to_proto(job: Job) -> pb.Job:
    message = pb.Job(
        name=f"jobs/{job.id}",
        owner=f"users/{job.user_id}",
        operation_type=job.operation_type,  # type: ignore[arg-type]
        provider_id=job.provider_id,
        state=pb.Job.State.Value(f"STATE_{job.state.value}"),
        error_code=job.error_code,
        error_message=job.error_message,
        retry_count=job.retry_count,
        asset=f"assets/{job.asset_id}" if job.asset_id else "",
        request_id=job.request_id,
        create_time=to_timestamp(job.create_time),
        start_time=to_timestamp(job.start_time),
        complete_time=to_timestamp(job.complete_time),
        start_deadline_time=to_timestamp(job.start_deadline_time),
        run_deadline_time=to_timestamp(job.run_deadline_time),
        labels=job.labels,
        priority=pb.Job.Priority.Value(f"PRIORITY_{job.priority}"),
        queue_time=to_timestamp(job.queue_time),
        dispatch_time=to_timestamp(job.dispatch_time),
        provider_start_time=to_timestamp(job.provider_start_time),
        provider_end_time=to_timestamp(job.provider_end_time),
    )
    if job.state is JobState.COMPLETED:
        for field, value in (
            ("provider_duration", job.provider_duration()),
            ("overhead_duration", job.overhead()),
        ):
            if value is not None:
                getattr(message, field).FromTimedelta(value)
    json_format.ParseDict(
        {k: v for k, v in job.request.items() if k in ("prompt", "inputs", "params")},
        message,
        ignore_unknown_fields=True,
    )
    return message


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
        answers = await self._service.create_many(current_identity(), request.requests)
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
