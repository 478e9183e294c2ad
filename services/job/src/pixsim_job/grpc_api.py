"""`pixsim.job.v1.JobService`: thin handlers; the guard has authenticated and validated."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from datetime import UTC, date, datetime
from typing import Any

from google.protobuf import duration_pb2, empty_pb2
from google.type import date_pb2
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixsim.job.v1 import job_service_pb2 as pb
from pixsim.job.v1 import job_service_pb2_grpc as pb_grpc
from pixsim.types.v1 import types_pb2
from pixsim_common.auth import current_identity
from pixsim_common.errors import DomainError, FieldViolation, InvalidArgument
from pixsim_common.money import CURRENCY, micros_of, money
from pixsim_common.pagination import PageTokens
from pixsim_common.timestamps import from_request, to_timestamp
from pixsim_job import repository as repo
from pixsim_job.capabilities import LiveStatus
from pixsim_job.domain import LIVE_STATES, Period, Standing
from pixsim_job.resources import to_proto
from pixsim_job.service import ChangeFeed, JobService, watch


def _state_names(states: Iterable[pb.Job.State.ValueType]) -> list[str]:
    return sorted({pb.Job.State.Name(state).removeprefix("STATE_") for state in states})


def _id(name: str) -> str:
    return name.removeprefix("jobs/")


def _date_of(request: pb.GetUsageRequest, field: str) -> date | None:
    """A request's `google.type.Date` as a day; None when unset; INVALID_ARGUMENT when it
    names no day of the calendar (GetUsage takes whole days only)."""
    if not request.HasField(field):  # type: ignore[arg-type]
        return None
    given: date_pb2.Date = getattr(request, field)
    try:
        return date(given.year, given.month, given.day)
    except ValueError:
        why = "must be a whole day of the calendar (year, month and day)"
        raise InvalidArgument(f"{field} {why}", [FieldViolation(field, why, "BAD_DATE")]) from None


def budget_to_proto(row: Any, standing: Standing) -> pb.Budget:
    period = Period(row.period)
    return pb.Budget(
        name=f"users/{row.user_id}/budget",
        period=pb.Budget.Period.Value(f"PERIOD_{period.value}"),
        limit=money(row.limit_micros),
        period_start_time=to_timestamp(period.start(datetime.now(UTC))),
        spent=money(standing.spent),
        held=money(standing.held),
        remaining=money(standing.remaining),
        update_time=to_timestamp(row.update_time),
    )


def _as_date(day: date) -> date_pb2.Date:
    return date_pb2.Date(year=day.year, month=day.month, day=day.day)


class JobApi(pb_grpc.JobServiceServicer):
    def __init__(
        self,
        service: JobService,
        feed: ChangeFeed,
        reads: async_sessionmaker[AsyncSession],
        tokens: PageTokens,
        live: LiveStatus,
    ) -> None:
        self._live = live
        self._service = service
        self._feed = feed
        self._reads = reads
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

    async def GetUsage(self, request: pb.GetUsageRequest, context: Any) -> pb.Usage:
        user_id, first, last, rows = await self._service.usage(
            current_identity(),
            request.user,
            _date_of(request, "start_date"),
            _date_of(request, "end_date"),
        )
        return pb.Usage(
            user=f"users/{user_id}",
            start_date=_as_date(first),
            end_date=_as_date(last),
            rows=[
                pb.UsageRow(
                    date=_as_date(row.day),
                    provider_id=row.provider_id,
                    operation_type=row.operation_type,
                    jobs=row.jobs,
                    cost=types_pb2.Cost(credits=row.credits, price=money(row.micros)),
                )
                for row in rows
            ],
            total_price=money(sum(row.micros for row in rows)),
            total_jobs=sum(row.jobs for row in rows),
        )

    async def GetBudget(self, request: pb.GetBudgetRequest, context: Any) -> pb.Budget:
        return budget_to_proto(*await self._service.budget(current_identity(), request.name))

    async def SetBudget(self, request: pb.SetBudgetRequest, context: Any) -> pb.Budget:
        budget = request.budget
        period = Period(pb.Budget.Period.Name(budget.period).removeprefix("PERIOD_"))
        limit = budget.limit
        if limit.currency_code != CURRENCY:
            why = f"must be in {CURRENCY}, the currency of the price table"
            raise InvalidArgument(
                f"budget.limit {why}", [FieldViolation("budget.limit", why, "BAD_CURRENCY")]
            )
        return budget_to_proto(
            *await self._service.set_budget(budget.name, period, micros_of(budget.limit))
        )

    async def DeleteBudget(self, request: pb.DeleteBudgetRequest, context: Any) -> empty_pb2.Empty:
        await self._service.delete_budget(request.name)
        return empty_pb2.Empty()

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
        async with self._reads() as session:
            found, token = await repo.list_page(
                session,
                self._tokens,
                identity.user_id,
                filters,
                page_token=request.page_token,
                page_size=request.page_size,
            )
        return pb.ListJobsResponse(jobs=[to_proto(j) for j in found], next_page_token=token)
