"""Composition root of the job service."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import grpc

from pixsim.job.v1 import job_service_pb2_grpc as pb_grpc
from pixsim.job.v1.job_service_pb2 import DESCRIPTOR
from pixsim_common import clients
from pixsim_common.app import Kit, ServiceApp, Worker, assemble, migrations_of, service_main
from pixsim_common.background import CloseOnStop, Loop
from pixsim_common.consumer import Subscription
from pixsim_common.db import autocommit
from pixsim_common.outbound import AddressPolicy
from pixsim_common.settings import ServiceSettings
from pixsim_job.capabilities import CostEstimates, LiveStatus, ProviderCatalog
from pixsim_job.events import subscriptions
from pixsim_job.grpc_api import JobApi
from pixsim_job.inputs import InputResolver
from pixsim_job.service import ChangeFeed, JobService
from pixsim_job.settings import Settings
from pixsim_job.webhooks import WebhookSender

_SERVICE = DESCRIPTOR.services_by_name["JobService"]
SERVICE_NAMES = [_SERVICE.full_name]
# Setting what a user may spend is an admin's (reading it is the user's own, or an admin's).
ADMIN_METHODS = frozenset(f"/{_SERVICE.full_name}/{name}" for name in ("SetBudget", "DeleteBudget"))
MIGRATIONS = migrations_of(__file__)


async def build(settings: ServiceSettings) -> ServiceApp:
    assert isinstance(settings, Settings)
    gateway = clients.channel(settings.gateway_address)
    catalog = ProviderCatalog(gateway, settings.capabilities_ttl_seconds)
    assets = clients.channel(settings.asset_address)
    resolver = InputResolver(clients.AssetLookup(assets))
    feed = ChangeFeed(settings.database_url.get_secret_value())
    services: dict[str, JobService] = {}

    webhook_policy = AddressPolicy(
        allow_loopback=settings.webhook_allow_loopback,
        allow_private=settings.webhook_allow_private,
    )

    def service(kit: Kit) -> JobService:
        if "job" not in services:
            services["job"] = JobService(
                kit.sessions,
                catalog,
                resolver,
                CostEstimates(gateway, settings.capabilities_ttl_seconds),
                reads=kit.reads,
                statements=autocommit(kit.engine),
                webhook_policy=webhook_policy,
                secret_overlap=timedelta(seconds=settings.webhook_secret_overlap_seconds),
            )
        return services["job"]

    def register(server: grpc.aio.Server, kit: Kit) -> None:
        pb_grpc.add_JobServiceServicer_to_server(
            JobApi(service(kit), feed, kit.reads, kit.page_tokens, LiveStatus(gateway)),
            server,
        )

    def workers(kit: Kit) -> Sequence[Worker]:
        sender = WebhookSender(
            kit.sessions,
            webhook_policy,
            timeout=settings.webhook_timeout_seconds,
            retry_base=settings.webhook_retry_base_seconds,
            retry_for=settings.webhook_retry_for_seconds,
        )
        return [
            CloseOnStop(lambda: gateway.close(None)),
            CloseOnStop(lambda: assets.close(None)),
            CloseOnStop(sender.aclose),
            feed,
            Loop("webhooks", sender.deliver_once),
        ]

    def consumed(kit: Kit) -> Sequence[Subscription]:
        return subscriptions(service(kit))

    return await assemble(
        settings,
        service_names=SERVICE_NAMES,
        register=register,
        workers=workers,
        subscriptions=consumed,
        admin_methods=ADMIN_METHODS,
        on_set_aside=lambda kit: service(kit).event_set_aside,
    )


def run() -> None:
    service_main(Settings, build, MIGRATIONS)
