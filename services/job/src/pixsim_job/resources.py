"""The `Job` aggregate as its contract's resource (what RPCs answer and webhooks carry)."""

from __future__ import annotations

from google.protobuf import json_format

from pixsim.job.v1 import job_service_pb2 as pb
from pixsim.provider.v1 import provider_gateway_service_pb2 as gw_pb
from pixsim.types.v1 import types_pb2
from pixsim_common.money import money
from pixsim_common.timestamps import to_timestamp
from pixsim_job.domain import Job, JobState


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
        update_time=to_timestamp(job.update_time),
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
        asset_provider_id=job.asset_provider_id,
        cost=pb.JobCost(
            estimated=types_pb2.Cost(
                credits=job.estimated_credits, price=money(job.estimated_micros)
            ),
            settled=types_pb2.Cost(credits=job.settled_credits, price=money(job.settled_micros)),
            settled_attempts=job.settled_attempts,
            final=job.cost_final,
        ),
        fallbacks=[
            json_format.ParseDict(f, pb.Fallback(), ignore_unknown_fields=True)
            for f in job.request.get("fallbacks", [])
        ],
    )
    if job.webhook is not None:
        message.webhook.url = job.webhook["url"]
        message.webhook.events.extend(pb.Webhook.Event.Value(e) for e in job.webhook["events"])
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
