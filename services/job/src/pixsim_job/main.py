"""Composition root of the job service."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from pixsim.job.v1 import job_service_pb2_grpc as pb_grpc
from pixsim.job.v1.job_service_pb2 import DESCRIPTOR
from pixsim_common import clients
from pixsim_common.app import Kit, ServiceApp, Worker, assemble, migrations_of, service_main
from pixsim_common.background import CloseOnStop
from pixsim_common.consumer import Subscription
from pixsim_common.settings import ServiceSettings
from pixsim_job.capabilities import LiveStatus, ProviderCatalog
from pixsim_job.events import subscriptions
from pixsim_job.grpc_api import JobApi
from pixsim_job.inputs import InputResolver
from pixsim_job.service import ChangeFeed, JobService
from pixsim_job.settings import Settings

SERVICE_NAMES = [DESCRIPTOR.services_by_name["JobService"].full_name]
MIGRATIONS = migrations_of(__file__)


async def build(settings: ServiceSettings) -> ServiceApp:
    assert isinstance(settings, Settings)
    gateway = clients.channel(settings.gateway_address)
    catalog = ProviderCatalog(gateway, settings.capabilities_ttl_seconds)
    assets = clients.channel(settings.asset_address)
    resolver = InputResolver(clients.AssetLookup(assets))
    feed = ChangeFeed(settings.database_url.get_secret_value())
    services: dict[str, JobService] = {}

    def service(kit: Kit) -> JobService:
        if "job" not in services:
            services["job"] = JobService(kit.sessions, catalog, resolver)
        return services["job"]

    def register(server: grpc.aio.Server, kit: Kit) -> None:
        pb_grpc.add_JobServiceServicer_to_server(
            JobApi(service(kit), feed, kit.sessions, kit.page_tokens, LiveStatus(gateway)),
            server,
        )

    def workers(_kit: Kit) -> Sequence[Worker]:
        return [
            CloseOnStop(lambda: gateway.close(None)),
            CloseOnStop(lambda: assets.close(None)),
            feed,
        ]

    def consumed(kit: Kit) -> Sequence[Subscription]:
        return subscriptions(service(kit))

    return await assemble(
        settings,
        service_names=SERVICE_NAMES,
        register=register,
        workers=workers,
        subscriptions=consumed,
        on_set_aside=lambda kit: service(kit).event_set_aside,
    )


def run() -> None:
    service_main(Settings, build, MIGRATIONS)
