"""`pixsim asset ...`: read, list, trace and download assets; upload or register files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pixsim.asset.v1 import asset_service_pb2 as pb
from pixsim.types.v1 import types_pb2
from pixsim_cli.connection import CliError, Connection, Exit, rpc_errors
from pixsim_cli.output import assets_table, console, size
from pixsim_cli.state import session

app = typer.Typer(help="Stored media.", no_args_is_help=True)
UPLOAD_CHUNK = 1024 * 1024


def asset_name(value: str) -> str:
    return value if value.startswith("assets/") else f"assets/{value}"


@app.command()
def get(name: str) -> None:
    """Show one asset."""
    connection, out = session()
    asset = connection.call(connection.assets.GetAsset, pb.GetAssetRequest(name=asset_name(name)))
    out.show(asset, lambda: console.print(assets_table([asset])))


@app.command("list")
def list_(
    media_type: Annotated[str, typer.Option(help="video, image or audio.")] = "",
    provider: Annotated[str, typer.Option()] = "",
    job: Annotated[str, typer.Option(help="Only the asset of this job.")] = "",
    page_size: Annotated[int, typer.Option(min=0, max=1000)] = 20,
    page_token: Annotated[str, typer.Option()] = "",
) -> None:
    """List your assets, newest first."""
    connection, out = session()
    kind = f"MEDIA_TYPE_{media_type.upper()}" if media_type else "MEDIA_TYPE_UNSPECIFIED"
    if kind not in types_pb2.MediaType.DESCRIPTOR.values_by_name:
        raise CliError(f"unknown media type {media_type!r}", Exit.INVALID)
    answer = connection.call(
        connection.assets.ListAssets,
        pb.ListAssetsRequest(
            media_type=types_pb2.MediaType.Value(kind),
            provider_id=provider,
            source_job=job if not job or job.startswith("jobs/") else f"jobs/{job}",
            page_size=page_size,
            page_token=page_token,
        ),
    )

    def human() -> None:
        console.print(assets_table(answer.assets))
        if answer.next_page_token:
            console.print(f"more: --page-token {answer.next_page_token}")

    out.show(answer, human)


@app.command()
def lineage(name: str) -> None:
    """The assets this one was made from, and those made from it."""
    connection, out = session()
    answer = connection.call(
        connection.assets.GetAssetLineage, pb.GetAssetLineageRequest(name=asset_name(name))
    )

    def human() -> None:
        table = Table("direction", "asset", "role", "operation", box=None)
        for direction, edges in (("made from", answer.parents), ("used by", answer.children)):
            for edge in edges:
                table.add_row(
                    direction,
                    edge.asset,
                    types_pb2.InputRole.Name(edge.role).removeprefix("INPUT_ROLE_").lower(),
                    types_pb2.OperationType.Name(edge.operation_type)
                    .removeprefix("OPERATION_TYPE_")
                    .lower(),
                )
        console.print(table)

    out.show(answer, human)


def save_content(connection: Connection, name: str, target: Path, variant: str = "") -> int:
    """Write an asset's bytes (or a variant's), read with ReadAssetContent, to `target`; how
    many were written."""
    written = 0
    with rpc_errors(), target.open("wb") as handle:
        for part in connection.call(
            connection.assets.ReadAssetContent,
            pb.ReadAssetContentRequest(name=name, variant=variant),
            stream=True,
        ):
            handle.write(part.chunk)
            written += len(part.chunk)
    return written


@app.command()
def download(
    name: str,
    out_path: Annotated[
        Path | None, typer.Option("--out", help="Where to write it; default <id>.<ext>.")
    ] = None,
    variant: Annotated[str, typer.Option(help="e.g. thumbnail; the file itself if empty.")] = "",
) -> None:
    """Download an asset's bytes (or a variant's) through ReadAssetContent."""
    connection, out = session()
    asset = connection.call(connection.assets.GetAsset, pb.GetAssetRequest(name=asset_name(name)))
    extension = "png" if variant == "thumbnail" else asset.storage_uri.rsplit(".", 1)[-1]
    target = out_path or Path(f"{asset.name.removeprefix('assets/')}.{extension}")
    written = save_content(connection, asset.name, target, variant)
    out.show(
        {"path": str(target), "bytes": written},
        lambda: console.print(f"wrote {size(written)} to {target}"),
    )


@app.command()
def upload(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    display_name: Annotated[str, typer.Option()] = "",
) -> None:
    """Upload a local file as an asset (deduplicated by its bytes)."""
    connection, out = session()
    total = path.stat().st_size

    def parts() -> Iterator[pb.UploadAssetRequest]:
        yield pb.UploadAssetRequest(
            metadata=pb.UploadAssetRequest.Metadata(
                display_name=display_name or path.name, size_bytes=total
            )
        )
        with path.open("rb") as handle:
            while chunk := handle.read(UPLOAD_CHUNK):
                yield pb.UploadAssetRequest(chunk=chunk)

    asset = connection.call(connection.assets.UploadAsset, parts(), stream=True)
    out.show(asset, lambda: console.print(assets_table([asset])))


@app.command()
def create(uri: str, display_name: Annotated[str, typer.Option()] = "") -> None:
    """Register a file by URL: it is fetched, probed and kept as an asset."""
    connection, out = session()
    asset = connection.call(
        connection.assets.CreateAsset, pb.CreateAssetRequest(uri=uri, display_name=display_name)
    )
    out.show(asset, lambda: console.print(assets_table([asset])))
