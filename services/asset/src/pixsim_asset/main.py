"""Composition root of the asset service."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import httpx
import structlog

from pixsim.asset.v1 import asset_service_pb2_grpc as pb_grpc
from pixsim.asset.v1.asset_service_pb2 import DESCRIPTOR
from pixsim_asset.collector import BlobCollector
from pixsim_asset.decoders import DecodePool
from pixsim_asset.events import subscriptions
from pixsim_asset.fetch import AddressPolicy, Downloader
from pixsim_asset.grpc_api import AssetApi
from pixsim_asset.probe import DecodeLimits
from pixsim_asset.service import AssetService
from pixsim_asset.settings import Settings
from pixsim_asset.storage import Storage
from pixsim_asset.storage.local import LocalStorage
from pixsim_common.app import Kit, ServiceApp, Worker, assemble, migrations_of, service_main
from pixsim_common.background import CloseOnStop, Loop
from pixsim_common.consumer import Subscription
from pixsim_common.settings import ServiceSettings

_SERVICE = DESCRIPTOR.services_by_name["AssetService"]
SERVICE_NAMES = [_SERVICE.full_name]
# What the provider gateway's workload token may do, on behalf of a job's owner: read the
# inputs it hands to a provider. Nothing else takes a workload token.
READ_SCOPE = "assets:read"
WORKLOAD_METHODS = {
    f"/{_SERVICE.full_name}/{name}": READ_SCOPE
    for name in ("GetAsset", "BatchGetAssets", "ReadAssetContent", "GenerateAssetDownloadUrl")
}
log = structlog.get_logger("pixsim.asset")
MIGRATIONS = migrations_of(__file__)


async def build(settings: ServiceSettings) -> ServiceApp:
    assert isinstance(settings, Settings)
    storage = await open_storage(settings)
    swept = storage.sweep()
    if swept:
        log.info("removed staging files that stopped processes left", entries=swept)
    client = httpx.AsyncClient(
        timeout=httpx.Timeout(settings.fetch_timeout_seconds),
        limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
    )
    downloader = Downloader(
        client,
        AddressPolicy(
            allow_loopback=settings.fetch_allow_loopback,
            allow_private=settings.fetch_allow_private,
        ),
        max_bytes=settings.max_download_bytes,
        directory=storage.scratch(),
        attempts=settings.download_attempts,
        backoff_seconds=settings.download_backoff_seconds,
        deadline_seconds=settings.download_deadline_seconds,
    )
    decoders = DecodePool(
        settings.decode_workers,
        address_space_bytes=settings.decode_memory_bytes,
        seconds_per_file=settings.decode_seconds_per_file,
    )
    services: dict[str, AssetService] = {}

    def service(kit: Kit) -> AssetService:
        if "asset" not in services:
            services["asset"] = AssetService(
                kit.sessions,
                storage,
                downloader,
                max_upload_bytes=settings.max_upload_bytes,
                limits=DecodeLimits(
                    max_pixels=settings.max_image_pixels,
                    max_side=settings.max_media_side,
                    max_duration_seconds=settings.max_media_duration_seconds,
                ),
                decoders=decoders,
                lone_statements=kit.reads,
            )
        return services["asset"]

    def register(server: grpc.aio.Server, kit: Kit) -> None:
        pb_grpc.add_AssetServiceServicer_to_server(
            AssetApi(service(kit), kit.reads, kit.page_tokens), server
        )

    def workers(kit: Kit) -> Sequence[Worker]:
        collector = BlobCollector(kit.sessions, storage, grace_seconds=settings.blob_grace_seconds)
        return [
            CloseOnStop(client.aclose),
            CloseOnStop(storage.close),
            CloseOnStop(decoders.close),
            Loop("blob-collector", collector.collect_once, idle=settings.blob_collect_seconds),
        ]

    def consumed(kit: Kit) -> Sequence[Subscription]:
        return subscriptions(service(kit))

    return await assemble(
        settings,
        service_names=SERVICE_NAMES,
        register=register,
        workers=workers,
        subscriptions=consumed,
        workload_methods=WORKLOAD_METHODS,
    )


async def open_storage(settings: Settings) -> Storage:
    """The backend the settings name, ready to use."""
    if settings.storage_backend == "local":
        return LocalStorage(settings.storage_root)
    if not settings.s3_endpoint_url:
        raise SystemExit("STORAGE_BACKEND=s3 needs S3_ENDPOINT_URL")
    # botocore costs about 40 MiB of memory: paid only by a service that stores in S3.
    from pixsim_asset.storage.s3 import S3Storage

    storage = S3Storage(
        endpoint_url=settings.s3_endpoint_url,
        public_endpoint_url=settings.s3_public_endpoint_url,
        addressing_style=settings.s3_addressing_style,
        bucket=settings.s3_bucket,
        region=settings.s3_region,
        access_key_id=settings.s3_access_key_id.get_secret_value(),
        secret_access_key=settings.s3_secret_access_key.get_secret_value(),
        scratch_root=settings.storage_root / ".scratch",
    )
    await storage.start()
    return storage


def run() -> None:
    service_main(Settings, build, MIGRATIONS)
