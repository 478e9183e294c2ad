"""`pixsim job ...`: create (and follow), read, list, watch, cancel and retry jobs."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Annotated

import typer
from google.protobuf import duration_pb2, struct_pb2
from rich.console import RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from pixsim.asset.v1 import asset_service_pb2 as asset_pb
from pixsim.job.v1 import job_service_pb2 as pb
from pixsim.types.v1 import types_pb2
from pixsim_cli.connection import CliError, Connection, Exit, rpc_errors
from pixsim_cli.output import Output, console, jobs_table, local_path, size, state_of
from pixsim_cli.state import session

app = typer.Typer(help="Generation jobs.", no_args_is_help=True)

TERMINAL = {
    pb.Job.STATE_COMPLETED,
    pb.Job.STATE_FAILED,
    pb.Job.STATE_CANCELLED,
    pb.Job.STATE_EXPIRED,
}


def job_name(value: str) -> str:
    return value if value.startswith("jobs/") else f"jobs/{value}"


def operation_value(name: str) -> types_pb2.OperationType.ValueType:
    key = "OPERATION_TYPE_" + name.upper().replace("-", "_")
    if key not in types_pb2.OperationType.DESCRIPTOR.values_by_name:
        known = [
            k.removeprefix("OPERATION_TYPE_").lower().replace("_", "-")
            for k in types_pb2.OperationType.keys()[1:]
        ]
        raise CliError(f"{name!r} is not one of {', '.join(known)}", Exit.INVALID)
    return types_pb2.OperationType.Value(key)


def parse_input(text: str) -> types_pb2.GenerationInput:
    """`role=assets/<id>` or `role=https://...`; role is image, video, start-frame, ..."""
    role, _, source = text.partition("=")
    key = "INPUT_ROLE_" + role.upper().replace("-", "_")
    if not source or key not in types_pb2.InputRole.DESCRIPTOR.values_by_name:
        raise CliError(f"{text!r}: want ROLE=assets/<id> or ROLE=<url>", Exit.INVALID)
    item = types_pb2.GenerationInput(role=types_pb2.InputRole.Value(key))
    if source.startswith(("http://", "https://")):
        item.uri = source
    else:
        item.asset = source if source.startswith("assets/") else f"assets/{source}"
    return item


def parse_params(pairs: list[str]) -> struct_pb2.Struct:
    params = struct_pb2.Struct()
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise CliError(f"{pair!r}: want KEY=VALUE", Exit.INVALID)
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


def parse_fallback(text: str) -> pb.Fallback:
    """`runway` or `runway:duration=10,ratio=1280:720`."""
    provider, _, params = text.partition(":")
    pairs = [pair for pair in params.split(",") if pair] if params else []
    return pb.Fallback(provider_id=provider, params=parse_params(pairs))


@app.command()
def create(
    provider: Annotated[str, typer.Option(help="pixverse, runway or pika.")],
    operation: Annotated[str, typer.Option(help="e.g. text-to-video, image-to-video.")],
    prompt: Annotated[str, typer.Option(help="What to make.")] = "",
    image: Annotated[
        list[str] | None, typer.Option(help="An image input: assets/<id> or a URL; repeatable.")
    ] = None,
    video: Annotated[
        str | None, typer.Option(help="The video input: assets/<id> or a URL.")
    ] = None,
    input_: Annotated[
        list[str] | None,
        typer.Option(
            "--input",
            help="ROLE=REF for other roles (start-frame, end-frame, reference); repeatable.",
        ),
    ] = None,
    param: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE provider parameter; repeatable.")
    ] = None,
    request_id: Annotated[
        str, typer.Option(help="Idempotency key: a repeat is the same job.")
    ] = "",
    label: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE label to find it by; repeatable.")
    ] = None,
    priority: Annotated[
        str, typer.Option(help="high, normal or low: its turn among your waiting jobs.")
    ] = "normal",
    webhook: Annotated[
        str | None, typer.Option(help="URL to push its changes to (Standard Webhooks).")
    ] = None,
    webhook_event: Annotated[
        list[str] | None,
        typer.Option(help="started, progress, completed, failed, cancelled, expired; repeatable."),
    ] = None,
    start_within: Annotated[
        str | None,
        typer.Option(help="Start deadline, e.g. 30s, 5m, 1h: unsent by then, it EXPIRES."),
    ] = None,
    run_within: Annotated[
        str | None, typer.Option(help="Run deadline, e.g. 10m: not done by then, it FAILS.")
    ] = None,
    fallback: Annotated[
        list[str] | None,
        typer.Option(
            help="PROVIDER[:KEY=VALUE,...]: go on with it when the provider cannot; repeatable,"
            " in order."
        ),
    ] = None,
    wait: Annotated[bool, typer.Option(help="Follow the job until it ends.")] = False,
) -> None:
    """Create a job; with --wait, show its progress and the stored asset at the end."""
    connection, out = session()
    job = connection.call(
        connection.jobs.CreateJob,
        pb.CreateJobRequest(
            job=pb.Job(
                labels=parse_labels(label or []),
                priority=parse_priority(priority),
                webhook=parse_webhook(webhook, webhook_event or []),
                start_timeout=parse_duration(start_within, "--start-within"),
                run_timeout=parse_duration(run_within, "--run-within"),
                provider_id=provider,
                operation_type=operation_value(operation),
                prompt=prompt,
                inputs=[
                    parse_input(i)
                    for i in [
                        *(f"image={ref}" for ref in image or []),
                        *([f"video={video}"] if video else []),
                        *(input_ or []),
                    ]
                ],
                params=parse_params(param or []),
                fallbacks=[parse_fallback(f) for f in fallback or []],
            ),
            request_id=request_id,
        ),
    )
    if wait:
        follow(connection, out, job)
        return
    out.show(job, lambda: console.print(jobs_table([job])))


def parse_states(names: list[str]) -> list[pb.Job.State.ValueType]:
    try:
        return [pb.Job.State.Value(f"STATE_{name.upper()}") for name in names]
    except ValueError as error:
        raise CliError(f"unknown state: {error}", Exit.INVALID) from None


def parse_webhook(url: str | None, events: list[str]) -> pb.Webhook | None:
    if url is None:
        if events:
            raise CliError("--webhook-event needs --webhook URL", Exit.INVALID)
        return None
    try:
        named = [pb.Webhook.Event.Value(f"EVENT_{event.upper()}") for event in events]
    except ValueError as error:
        raise CliError(f"unknown webhook event: {error}", Exit.INVALID) from None
    return pb.Webhook(url=url, events=named)


def parse_priority(name: str) -> pb.Job.Priority.ValueType:
    try:
        return pb.Job.Priority.Value(f"PRIORITY_{name.upper()}")
    except ValueError:
        raise CliError(f"{name!r}: want high, normal or low", Exit.INVALID) from None


def parse_labels(pairs: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"{pair!r}: want KEY=VALUE", Exit.INVALID)
        labels[key] = value
    return labels


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | None, option: str) -> duration_pb2.Duration | None:
    """`90s`, `5m`, `1.5h`, `2d` (a bare number is seconds) as a Duration; None for none."""
    if text is None:
        return None
    number, unit = (text[:-1], text[-1]) if text[-1:] in DURATION_UNITS else (text, "s")
    try:
        seconds = float(number) * DURATION_UNITS[unit]
    except ValueError:
        raise CliError(
            f"{option}: {text!r} is not a duration such as 30s, 5m or 1h", Exit.INVALID
        ) from None
    duration = duration_pb2.Duration()
    duration.FromTimedelta(timedelta(seconds=seconds))
    return duration


def progress_line(job: pb.Job, states: list[str], elapsed: float) -> RenderableType:
    """One live line: the states so far and the time; while the job waits its place in
    line, while it runs a bar of the provider's progress (or the provider's own word)."""
    line = Table.grid(padding=(0, 2))
    cells: list[RenderableType] = [Text(f"{job.name}  {' → '.join(states)}  {elapsed:.1f}s")]
    if job.state == pb.Job.STATE_QUEUED and job.HasField("queue_position"):
        ahead = job.queue_position
        cells.append(Text("next in line" if ahead == 0 else f"{ahead} ahead in line"))
    elif job.state == pb.Job.STATE_PROCESSING:
        if job.HasField("progress"):
            cells.append(ProgressBar(total=1.0, completed=job.progress, width=30))
            cells.append(Text(f"{job.progress:.0%}"))
        if job.provider_state:
            cells.append(Text(job.provider_state.lower().replace("_", " ")))
    for _ in cells:
        line.add_column()
    line.add_row(*cells)
    return line


def follow(connection: Connection, out: Output, job: pb.Job) -> None:
    """Watch `job` to its end, then show it (and its asset); exit 1 unless COMPLETED."""
    started = time.monotonic()
    states: list[str] = []
    last = job
    with rpc_errors(), Live(console=console, transient=True, refresh_per_second=8) as live:
        stream = connection.call(
            connection.jobs.WatchJob, pb.WatchJobRequest(name=job.name), stream=True
        )
        for update in stream:
            last = update
            if not states or states[-1] != state_of(update):
                states.append(state_of(update))
            elapsed = time.monotonic() - started
            if not out.json:
                live.update(progress_line(update, states, elapsed))
            if update.state in TERMINAL:
                break
    elapsed = time.monotonic() - started
    asset = None
    if last.state == pb.Job.STATE_COMPLETED:
        asset = connection.call(
            connection.assets.GetAsset, asset_pb.GetAssetRequest(name=last.asset)
        )

    def human() -> None:
        console.print(f"{job.name}  {' → '.join(states)}", soft_wrap=True)
        if asset is not None:
            console.print(f"[green]COMPLETED[/] in {elapsed:.1f}s: {asset.name}")
            console.print(
                f"  {size(asset.size_bytes)}, {asset.width}x{asset.height}, "
                f"{asset.duration.ToTimedelta().total_seconds():g}s {asset.codec}, "
                f"sha256 {asset.sha256[:12]}"
            )
            console.print(f"  {local_path(asset)}", soft_wrap=True)
        else:
            console.print(
                f"[red]{state_of(last)}[/] after {elapsed:.1f}s: "
                f"{last.error_code} {last.error_message}".rstrip()
            )

    result: dict[str, object] = {"job": last, "seconds": round(elapsed, 3)}
    if asset is not None:
        result["asset"] = asset
    out.show(result, human)
    if asset is None:
        raise typer.Exit(Exit.FAILED)


@app.command()
def get(name: str) -> None:
    """Show one job."""
    connection, out = session()
    job = connection.call(connection.jobs.GetJob, pb.GetJobRequest(name=job_name(name)))
    out.show(job, lambda: console.print(jobs_table([job])))


@app.command("list")
def list_(
    state: Annotated[list[str] | None, typer.Option(help="e.g. COMPLETED; repeatable.")] = None,
    provider: Annotated[str, typer.Option()] = "",
    label: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE: only jobs with it; repeatable.")
    ] = None,
    page_size: Annotated[int, typer.Option(min=0, max=1000)] = 20,
    page_token: Annotated[str, typer.Option()] = "",
) -> None:
    """List your jobs, newest first."""
    connection, out = session()
    answer = connection.call(
        connection.jobs.ListJobs,
        pb.ListJobsRequest(
            states=parse_states(state or []),
            provider_id=provider,
            labels=parse_labels(label or []),
            page_size=page_size,
            page_token=page_token,
        ),
    )

    def human() -> None:
        console.print(jobs_table(answer.jobs))
        if answer.next_page_token:
            console.print(f"more: --page-token {answer.next_page_token}")

    out.show(answer, human)


@app.command()
def watch(name: str) -> None:
    """Follow a job until it ends (exit 1 unless it COMPLETED)."""
    connection, out = session()
    job = connection.call(connection.jobs.GetJob, pb.GetJobRequest(name=job_name(name)))
    follow(connection, out, job)


@app.command()
def cancel(name: str) -> None:
    """Cancel a job that has not ended."""
    connection, out = session()
    job = connection.call(connection.jobs.CancelJob, pb.CancelJobRequest(name=job_name(name)))
    out.show(job, lambda: console.print(jobs_table([job])))


@app.command("cancel-all")
def cancel_all(
    label: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE: only jobs with it; repeatable.")
    ] = None,
    state: Annotated[list[str] | None, typer.Option(help="e.g. QUEUED; repeatable.")] = None,
    provider: Annotated[str, typer.Option()] = "",
) -> None:
    """Cancel every job of yours that matches and has not ended; prints how many."""
    connection, out = session()
    answer = connection.call(
        connection.jobs.CancelJobs,
        pb.CancelJobsRequest(
            states=parse_states(state or []), provider_id=provider, labels=parse_labels(label or [])
        ),
    )
    out.show(answer, lambda: console.print(f"cancelled {answer.cancelled_count} jobs"))


@app.command("rotate-webhook-secret")
def rotate_webhook_secret() -> None:
    """Make a new webhook signing secret (shown once); the old one signs beside it a day."""
    connection, out = session()
    answer = connection.call(connection.jobs.RotateWebhookSecret, pb.RotateWebhookSecretRequest())
    out.show(answer, lambda: console.print(answer.secret))


@app.command()
def deliveries(name: str) -> None:
    """A job's webhook deliveries and their attempts."""
    connection, out = session()
    answer = connection.call(
        connection.jobs.ListWebhookDeliveries,
        pb.ListWebhookDeliveriesRequest(job=job_name(name)),
    )

    def human() -> None:
        for delivery in answer.deliveries:
            event = pb.Webhook.Event.Name(delivery.event).removeprefix("EVENT_").lower()
            state = pb.WebhookDelivery.State.Name(delivery.state).removeprefix("STATE_")
            codes = " ".join(str(a.status_code or a.error[:20]) for a in delivery.attempts)
            console.print(f"{delivery.id}  {event:<9} {state:<9} {codes}")

    out.show(answer, human)


@app.command()
def batch(
    provider: Annotated[str, typer.Option(help="pixverse, runway or pika.")],
    operation: Annotated[str, typer.Option(help="e.g. text-to-video.")],
    prompt: Annotated[list[str], typer.Option(help="One job per prompt; repeatable.")],
    label: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE label on every job; repeatable.")
    ] = None,
    param: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE provider parameter; repeatable.")
    ] = None,
    request_id: Annotated[
        str, typer.Option(help="Idempotency key prefix: item i is PREFIX-i.")
    ] = "",
    priority: Annotated[str, typer.Option(help="high, normal or low.")] = "normal",
) -> None:
    """Create one job per --prompt in one BatchCreateJobs; each is answered on its own."""
    connection, out = session()
    job_of = {
        "provider_id": provider,
        "operation_type": operation_value(operation),
        "labels": parse_labels(label or []),
        "params": parse_params(param or []),
        "priority": parse_priority(priority),
    }
    answer = connection.call(
        connection.jobs.BatchCreateJobs,
        pb.BatchCreateJobsRequest(
            requests=[
                pb.CreateJobRequest(
                    job=pb.Job(prompt=text, **job_of),  # type: ignore[arg-type]
                    request_id=f"{request_id}-{index}" if request_id else "",
                )
                for index, text in enumerate(prompt)
            ]
        ),
    )
    refused = [r for r in answer.results if r.HasField("error")]

    def human() -> None:
        console.print(jobs_table([r.job for r in answer.results if r.HasField("job")]))
        for index, result in enumerate(answer.results):
            if result.HasField("error"):
                console.print(f"[red]item {index} refused[/]: {result.error.message}")

    out.show(answer, human)
    if refused:
        raise typer.Exit(Exit.INVALID)


@app.command()
def retry(
    name: str,
    wait: Annotated[bool, typer.Option(help="Follow the retried job until it ends.")] = False,
) -> None:
    """Run a FAILED job again."""
    connection, out = session()
    job = connection.call(connection.jobs.RetryJob, pb.RetryJobRequest(name=job_name(name)))
    if wait:
        follow(connection, out, job)
        return
    out.show(job, lambda: console.print(jobs_table([job])))
