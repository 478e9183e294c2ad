"""Kafka in and out: the handlers of `job.submitted` and `job.cancelled` (thin: each is a few
statements in the consumer's transaction), and the generation events the gateway publishes,
made from what its submissions raise (`outgoing`)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from google.protobuf import duration_pb2, json_format
from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncSession

from pixsim.events.v1 import events_pb2
from pixsim.job.v1 import job_service_pb2 as job_pb
from pixsim.types.v1 import types_pb2
from pixsim_common import topics
from pixsim_common.cloudevents import EventMeta
from pixsim_common.money import money
from pixsim_common.outbox import Outgoing
from pixsim_common.timestamps import now_timestamp, time_of, to_timestamp
from pixsim_common.tracing import inject_context
from pixsim_provider_gateway import metrics
from pixsim_provider_gateway import repository as repo
from pixsim_provider_gateway.domain import (
    NOT_BILLED,
    Completed,
    FromNow,
    MediaOutput,
    Priority,
    Queued,
    Settled,
    Started,
    Submission,
    SubmissionEvent,
    assumed,
    turn_delay,
)
from pixsim_provider_gateway.providers.base import GenerationInput, GenerationRequest
from pixsim_provider_gateway.settlement import settle

SOURCE = "/provider-gateway"
# PRIORITY_AGING_SECONDS: the longest a LOW job can be passed by HIGH work arriving after it.
DEFAULT_AGING = timedelta(minutes=5)


async def on_job_submitted(
    session: AsyncSession,
    event: events_pb2.JobSubmitted,
    meta: EventMeta,
    *,
    aging: timedelta = DEFAULT_AGING,
) -> None:
    """A new attempt chain for the job, waiting for an account (unless it was cancelled),
    its turn set by its priority (`domain.turn_delay`)."""
    await repo.lock_job(session, event.job_id, event.user_id)
    if await repo.is_cancelled(session, event.job_id, event.user_id):
        return
    attempts = repo.Submissions(session, outgoing)
    priority = priority_of(event)
    first = Submission.first(
        {
            "id": repo.new_id(),
            "job_id": event.job_id,
            "user_id": event.user_id,
            "provider_id": event.provider_id,
            "operation_type": event.operation_type,
            "request": {
                "prompt": event.prompt,
                "inputs": [json_format.MessageToDict(i) for i in event.inputs],
                "params": json_format.MessageToDict(event.params),
            },
            "job_retry_count": event.retry_count,
            "retry_attempt": 0,
            "previous_submission_id": await attempts.latest_of_job(event.job_id, event.user_id),
            "trace_headers": inject_context(),
            "priority": priority.value,
            "turn_at": FromNow(turn_delay(priority, aging)),
            "start_deadline_at": time_of(event, "start_deadline_time"),
            "run_deadline_at": time_of(event, "run_deadline_time"),
            "fallbacks": [
                {"provider_id": f.provider_id, "params": json_format.MessageToDict(f.params)}
                for f in event.fallbacks
            ],
        }
    )
    if await attempts.add(first):  # else a redelivery of a chain we have
        await repo.wake_dispatch(session)


def priority_of(event: events_pb2.JobSubmitted) -> Priority:
    named = job_pb.Job.Priority.Name(event.priority).removeprefix("PRIORITY_")
    return Priority.NORMAL if named == "UNSPECIFIED" else Priority(named)


async def on_job_cancelled(
    session: AsyncSession, event: events_pb2.JobCancelled, meta: EventMeta
) -> None:
    """Stop the job's attempts: their slots come back now, the provider is told where it can
    be, and nothing more is published for the job."""
    await repo.lock_job(session, event.job_id, event.user_id)
    await repo.remember_cancelled(session, event.job_id, event.user_id)
    attempts, ledger = repo.Submissions(session, outgoing), repo.Accounts(session)
    for attempt in await attempts.unfinished_of_job(event.job_id, event.user_id):
        if attempt.state.holds_slot:
            # Sent or running: what it cost there is not known (it may go on being billed).
            await settle(attempts, ledger, attempt, assumed(attempt.reserved_credits))
        else:
            attempt.settle(NOT_BILLED)
        attempt.cancel()
        await attempts.save(attempt)


def outgoing(event: SubmissionEvent) -> Outgoing:
    """A submission's event as it leaves, on its topic, keyed by its job."""
    attempt = event.attempt
    message: Message
    if isinstance(event, Queued):
        topic, message = topics.GENERATION_QUEUED, generation_queued(attempt)
    elif isinstance(event, Started):
        topic = topics.GENERATION_STARTED
        message = generation_started(attempt, event.provider_job_id)
    elif isinstance(event, Completed):
        topic = topics.GENERATION_COMPLETED
        message = generation_completed(attempt, event.output)
    elif isinstance(event, Settled):
        topic, message = topics.GENERATION_SETTLED, generation_settled(attempt, event.final)
    else:
        metrics.JOBS_FAILED.labels(attempt.provider_id, event.code).inc()
        topic = topics.GENERATION_FAILED
        message = generation_failed(attempt, event.code, event.message)
    return Outgoing(topic, attempt.job_id, message, SOURCE)


def generation_queued(attempt: Submission) -> events_pb2.GenerationQueued:
    return events_pb2.GenerationQueued(
        job_id=attempt.job_id,
        user_id=attempt.user_id,
        provider_id=attempt.provider_id,
        queue_time=to_timestamp(attempt.create_time),
        job_retry_count=attempt.job_retry_count,
    )


def request_of(row: Submission) -> GenerationRequest:
    """The stored request as the adapters take it: every input in order, a URL the caller
    gave or one of their assets (read at dispatch, `inputs.InputFiles`)."""
    return generation_request(row.operation_type, row.request)


def generation_request(operation_type: int, request: dict[str, Any]) -> GenerationRequest:
    """A request as stored (prompt, inputs and params in protobuf's JSON mapping) as the
    adapters take it."""
    inputs = tuple(
        GenerationInput(
            types_pb2.InputRole.Value(i.get("role", "INPUT_ROLE_UNSPECIFIED")),
            uri=i.get("uri", ""),
            asset=i.get("asset", ""),
            variant=i.get("variant", ""),
        )
        for i in request.get("inputs", [])
    )
    operation = types_pb2.OperationType.ValueType(operation_type)
    return GenerationRequest(
        operation, request.get("prompt", ""), inputs, request.get("params", {})
    )


def generation_started(row: Submission, provider_job_id: str) -> events_pb2.GenerationStarted:
    return events_pb2.GenerationStarted(
        job_id=row.job_id,
        user_id=row.user_id,
        submission_id=row.id,
        provider_id=row.provider_id,
        provider_job_id=provider_job_id,
        retry_attempt=row.retry_attempt,
        start_time=now_timestamp(),
        job_retry_count=row.job_retry_count,
        dispatch_time=to_timestamp(row.submit_time),
    )


def generation_completed(row: Submission, output: MediaOutput) -> events_pb2.GenerationCompleted:
    media = events_pb2.GeneratedMedia(
        uri=output.uri,
        media_type=output.media_type,
        width=output.width or 0,
        height=output.height or 0,
        seed=output.seed or 0,
    )
    if output.duration_seconds is not None:
        media.duration.CopyFrom(duration_pb2.Duration(seconds=int(output.duration_seconds)))
    input_assets = [
        events_pb2.InputAsset(
            asset_id=i["asset"].removeprefix("assets/"),
            role=types_pb2.InputRole.Value(i.get("role", "INPUT_ROLE_UNSPECIFIED")),
        )
        for i in row.request.get("inputs", [])
        if "asset" in i
    ]
    return events_pb2.GenerationCompleted(
        job_id=row.job_id,
        user_id=row.user_id,
        submission_id=row.id,
        provider_id=row.provider_id,
        operation_type=row.operation_type,
        provider_asset_id=row.provider_job_id,
        media=media,
        input_assets=input_assets,
        complete_time=now_timestamp(),
        job_retry_count=row.job_retry_count,
    )


def generation_settled(row: Submission, final: bool) -> events_pb2.GenerationSettled:
    return events_pb2.GenerationSettled(
        job_id=row.job_id,
        user_id=row.user_id,
        submission_id=row.id,
        provider_id=row.provider_id,
        operation_type=row.operation_type,
        job_retry_count=row.job_retry_count,
        reserved_credits=row.reserved_credits,
        cost=types_pb2.Cost(credits=row.settled_credits, price=money(row.settled_micros)),
        billing=types_pb2.Billing.Value(f"BILLING_{row.billing}"),
        final=final,
        settle_time=to_timestamp(row.settle_time),
    )


def generation_failed(row: Submission, code: str, message: str) -> events_pb2.GenerationFailed:
    return events_pb2.GenerationFailed(
        job_id=row.job_id,
        user_id=row.user_id,
        submission_id=row.id,
        provider_id=row.provider_id,
        error_code=types_pb2.GenerationErrorCode.Value(f"GENERATION_ERROR_CODE_{code}"),
        error_message=message[:2000],
        retry_attempt=row.retry_attempt,
        fail_time=now_timestamp(),
        job_retry_count=row.job_retry_count,
    )
