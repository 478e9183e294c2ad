"""`pixsim.asset.v1.AssetService`: thin handlers; the guard has authenticated and validated."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from google.api import httpbody_pb2
from google.protobuf import duration_pb2, empty_pb2

from pixsim.asset.v1 import asset_service_pb2 as pb
from pixsim.asset.v1 import asset_service_pb2_grpc as pb_grpc
from pixsim_asset import repository as repo
from pixsim_asset.domain import Asset, Relative
from pixsim_asset.service import AssetService
from pixsim_common.auth import current_identity
from pixsim_common.pagination import PageTokens
from pixsim_common.timestamps import from_request, to_timestamp


def to_proto(asset: Asset) -> pb.Asset:
    return pb.Asset(
        name=f"assets/{asset.id}",
        owner=f"users/{asset.owner_id}",
        media_type=asset.media_type,  # type: ignore[arg-type]
        provider_id=asset.provider_id,
        provider_asset_id=asset.provider_asset_id,
        source_job=f"jobs/{asset.source_job_id}" if asset.source_job_id else "",
        remote_uri=asset.remote_uri,
        storage_uri=asset.storage_uri,
        sync_status=pb.Asset.SyncStatus.Value(f"SYNC_STATUS_{asset.sync_status}"),
        sync_error=asset.sync_error,
        sha256=asset.sha256,
        size_bytes=asset.size_bytes,
        mime_type=asset.mime_type,
        width=asset.width,
        height=asset.height,
        duration=duration_pb2.Duration(
            seconds=int(asset.duration_seconds),
            nanos=round((asset.duration_seconds % 1) * 1e9) % 1_000_000_000,
        ),
        codec=asset.codec,
        variants=[
            pb.AssetVariant(
                kind=v.kind,
                storage_uri=v.storage_uri,
                mime_type=v.mime_type,
                width=v.width,
                height=v.height,
                size_bytes=v.size_bytes,
            )
            for v in asset.variants
        ],
        display_name=asset.display_name,
        create_time=to_timestamp(asset.create_time),
        update_time=to_timestamp(asset.update_time),
    )


def _edges(relatives: list[Relative]) -> list[pb.AssetLineage.Edge]:
    return [
        pb.AssetLineage.Edge(
            asset=f"assets/{r.asset_id}",
            role=r.role,  # type: ignore[arg-type]
            operation_type=r.operation_type,  # type: ignore[arg-type]
        )
        for r in relatives
    ]


DEFAULT_URL_SECONDS = 15 * 60


def _id(name: str) -> str:
    return name.removeprefix("assets/")


class AssetApi(pb_grpc.AssetServiceServicer):
    def __init__(self, service: AssetService, reads: Any, tokens: PageTokens) -> None:
        self._service = service
        self._reads = reads
        self._tokens = tokens

    async def GetAsset(self, request: pb.GetAssetRequest, context: Any) -> pb.Asset:
        return to_proto(await self._service.get(current_identity(), _id(request.name)))

    async def BatchGetAssets(
        self, request: pb.BatchGetAssetsRequest, context: Any
    ) -> pb.BatchGetAssetsResponse:
        found = await self._service.batch_get(current_identity(), [_id(n) for n in request.names])
        return pb.BatchGetAssetsResponse(assets=[to_proto(a) for a in found])

    async def ListAssets(
        self, request: pb.ListAssetsRequest, context: Any
    ) -> pb.ListAssetsResponse:
        filters: dict[str, Any] = {
            "media_type": request.media_type,
            "provider_id": request.provider_id,
            "sync_status": pb.Asset.SyncStatus.Name(request.sync_status).removeprefix(
                "SYNC_STATUS_"
            )
            if request.sync_status
            else "",
            "source_job_id": request.source_job.removeprefix("jobs/"),
            "create_time_start": from_request(request.create_time_start, "create_time_start")
            if request.HasField("create_time_start")
            else None,
            "create_time_end": from_request(request.create_time_end, "create_time_end")
            if request.HasField("create_time_end")
            else None,
        }
        async with self._reads() as session:
            found, token = await repo.list_page(
                session,
                self._tokens,
                current_identity().user_id,
                filters,
                page_token=request.page_token,
                page_size=request.page_size,
            )
        return pb.ListAssetsResponse(assets=[to_proto(a) for a in found], next_page_token=token)

    async def CreateAsset(self, request: pb.CreateAssetRequest, context: Any) -> pb.Asset:
        return to_proto(
            await self._service.register(current_identity(), request.uri, request.display_name)
        )

    async def UploadAsset(
        self, request_iterator: AsyncIterator[pb.UploadAssetRequest], context: Any
    ) -> pb.Asset:
        return to_proto(await self._service.upload(current_identity(), request_iterator))

    async def ReadAssetContent(
        self, request: pb.ReadAssetContentRequest, context: Any
    ) -> AsyncIterator[pb.ReadAssetContentResponse]:
        async for chunk in self._service.read(
            current_identity(), _id(request.name), request.variant
        ):
            yield pb.ReadAssetContentResponse(chunk=chunk)

    async def DownloadAssetContent(
        self, request: pb.DownloadAssetContentRequest, context: Any
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        content, chunks = await self._service.open_range(
            current_identity(), _id(request.name), request.variant, request.offset, request.length
        )
        first = True
        async for chunk in chunks:
            # The content type rides on the first message, as transcoders read it.
            yield httpbody_pb2.HttpBody(content_type=content.mime_type if first else "", data=chunk)
            first = False
        if first:  # an empty file, or an empty range: one message still says its type
            yield httpbody_pb2.HttpBody(content_type=content.mime_type)

    async def GenerateAssetDownloadUrl(
        self, request: pb.GenerateAssetDownloadUrlRequest, context: Any
    ) -> pb.AssetDownloadUrl:
        identity = current_identity()
        seconds = request.ttl.seconds if request.HasField("ttl") else DEFAULT_URL_SECONDS
        asset = await self._service.get(identity, _id(request.name))
        made = await self._service.download_url(identity, asset.id, request.variant, seconds)
        variant = asset.variant(request.variant) if request.variant else None
        return pb.AssetDownloadUrl(
            url=made.url,
            expire_time=to_timestamp(made.expire_time),
            sha256=asset.sha256 if variant is None else "",
            mime_type=variant.mime_type if variant is not None else asset.mime_type,
            size_bytes=variant.size_bytes if variant is not None else asset.size_bytes,
        )

    async def GetAssetLineage(
        self, request: pb.GetAssetLineageRequest, context: Any
    ) -> pb.AssetLineage:
        parents, children = await self._service.lineage(current_identity(), _id(request.name))
        return pb.AssetLineage(
            asset=request.name, parents=_edges(parents), children=_edges(children)
        )

    async def DeleteAsset(self, request: pb.DeleteAssetRequest, context: Any) -> empty_pb2.Empty:
        await self._service.delete(current_identity(), _id(request.name))
        return empty_pb2.Empty()
