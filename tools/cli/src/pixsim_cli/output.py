"""What the client prints: tables for people, JSON (`--json`) for scripts."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table

from pixsim.asset.v1 import asset_service_pb2 as asset_pb
from pixsim.job.v1 import job_service_pb2 as job_pb
from pixsim.types.v1 import types_pb2

console = Console()
errors = Console(stderr=True)


@dataclass
class Output:
    json: bool

    def show(
        self, value: Message | Sequence[Message] | dict[str, object], human: Callable[[], None]
    ) -> None:
        if self.json:
            print(json.dumps(as_json(value), indent=2, sort_keys=True))
        else:
            human()


def as_json(value: object) -> object:
    if isinstance(value, Message):
        return json_format.MessageToDict(value)  # protobuf's JSON mapping, as grpcurl prints
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_json(v) for v in value]
    return value


def short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def state_of(job: job_pb.Job) -> str:
    return job_pb.Job.State.Name(job.state).removeprefix("STATE_")


def operation_of(value: types_pb2.OperationType.ValueType) -> str:
    return (
        types_pb2.OperationType.Name(value)
        .removeprefix("OPERATION_TYPE_")
        .lower()
        .replace("_", "-")
    )


def size(count: int) -> str:
    amount = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{count} B"


def local_path(asset: asset_pb.Asset) -> str:
    return asset.storage_uri.removeprefix("file://")


def jobs_table(jobs: Sequence[job_pb.Job]) -> Table:
    table = Table("job", "state", "provider", "operation", "asset", "error", box=None)
    for job in jobs:
        table.add_row(
            job.name,
            state_of(job),
            job.provider_id,
            operation_of(job.operation_type),
            job.asset,
            f"{job.error_code} {job.error_message}".strip(),
        )
    return table


def assets_table(assets: Sequence[asset_pb.Asset]) -> Table:
    table = Table("asset", "type", "size", "pixels", "seconds", "codec", "path", box=None)
    for asset in assets:
        table.add_row(
            asset.name,
            types_pb2.MediaType.Name(asset.media_type).removeprefix("MEDIA_TYPE_").lower(),
            size(asset.size_bytes),
            f"{asset.width}x{asset.height}" if asset.width else "",
            f"{asset.duration.ToTimedelta().total_seconds():g}"
            if asset.duration.seconds or asset.duration.nanos
            else "",
            asset.codec,
            local_path(asset),
        )
    return table
