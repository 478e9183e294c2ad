"""Composition root of the provider gateway: registry, cipher, service, workers, consumers."""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Sequence
from datetime import timedelta

from pixsim.provider.v1 import provider_gateway_service_pb2_grpc as pb_grpc
from pixsim.provider.v1.provider_gateway_service_pb2 import DESCRIPTOR
from pixsim_common import clients, topics
from pixsim_common.app import Kit, ServiceApp, Worker, assemble, migrations_of, service_main
from pixsim_common.auth import WorkloadSigner
from pixsim_common.background import CloseOnStop
from pixsim_common.consumer import Subscription
from pixsim_common.settings import ServiceSettings
from pixsim_provider_gateway.crypto import CredentialCipher
from pixsim_provider_gateway.domain import CircuitPolicy, RetryPolicy
from pixsim_provider_gateway.events import on_job_cancelled, on_job_submitted
from pixsim_provider_gateway.grpc_api import ProviderGatewayApi
from pixsim_provider_gateway.http_api import CallbackListener, callback_app
from pixsim_provider_gateway.inputs import InputFiles
from pixsim_provider_gateway.providers.registry import ProviderRegistry
from pixsim_provider_gateway.service import ProviderService
from pixsim_provider_gateway.service.health import AccountHealth
from pixsim_provider_gateway.settings import Settings
from pixsim_provider_gateway.workers import gateway_workers

_SERVICE = DESCRIPTOR.services_by_name["ProviderGatewayService"]
SERVICE_NAMES = [_SERVICE.full_name]
# Account management spends money and holds secrets, and pausing a provider stops everyone's
# work: admin only (DESIGN.md section 7).
ADMIN_METHODS = frozenset(
    f"/{_SERVICE.full_name}/{method.name}"
    for method in _SERVICE.methods
    if method.name.endswith(("Account", "Accounts"))
    or (method.name.endswith("Provider") and method.name != "GetProvider")
)
MIGRATIONS = migrations_of(__file__)


async def build(settings: ServiceSettings) -> ServiceApp:
    assert isinstance(settings, Settings)
    registry = ProviderRegistry.from_settings(settings)
    cipher = CredentialCipher(settings.credentials_keys.get_secret_value())
    policy = RetryPolicy(
        max_retries=settings.max_retries,
        retry_base_seconds=settings.retry_base_seconds,
        retry_cap_seconds=settings.retry_cap_seconds,
        poll_first_seconds=settings.poll_first_seconds,
        callback_poll_first_seconds=settings.callback_poll_first_seconds,
        poll_cap_seconds=settings.poll_cap_seconds,
        poll_min_seconds=settings.poll_min_seconds,
        deadline_seconds=settings.deadline_seconds,
        reconcile_seconds=settings.reconcile_seconds,
        unknown_task_polls=settings.unknown_task_polls,
    )

    assets = clients.channel(settings.asset_address)
    signing_key = settings.workload_signing_key.get_secret_value()
    signer = (
        WorkloadSigner(signing_key, issuer=settings.workload_issuer, actor="provider-gateway")
        if signing_key
        else None
    )
    inputs = InputFiles(assets, signer)
    services: dict[str, ProviderService] = {}

    def service(kit: Kit) -> ProviderService:
        if "gateway" not in services:
            services["gateway"] = ProviderService(
                kit.sessions,
                registry,
                cipher,
                policy,
                replica_id=f"{socket.gethostname()}:{os.getpid()}",
                # A submit call may take the whole provider timeout; the lease outlives it.
                submit_lease=timedelta(seconds=2 * settings.provider_timeout + 5),
                poll_lease=timedelta(seconds=settings.poll_lease_seconds),
                inputs=inputs,
                fallback_margin=timedelta(seconds=settings.fallback_deadline_margin_seconds),
                reads=kit.reads,
                circuits=CircuitPolicy(
                    failures_to_open=settings.circuit_failures,
                    account_failures_to_open=settings.circuit_account_failures,
                    open_seconds=settings.circuit_open_seconds,
                    open_cap_seconds=settings.circuit_open_cap_seconds,
                ),
            )
        return services["gateway"]

    def parts(kit: Kit) -> Sequence[Worker]:
        listening: list[Worker] = (
            [
                CallbackListener(
                    callback_app(registry, service(kit).callbacks),
                    settings.callback_host,
                    settings.callback_port,
                )
            ]
            if settings.callback_base_url and settings.callback_port
            else []
        )
        return [
            CloseOnStop(registry.aclose),
            CloseOnStop(lambda: assets.close(None)),
            *listening,
            *gateway_workers(
                service(kit),
                AccountHealth(
                    kit.sessions,
                    registry,
                    cipher,
                    every=timedelta(seconds=settings.account_check_seconds),
                ),
                kit.sessions,
                settings.database_url.get_secret_value(),
                dispatch_batch=settings.dispatch_batch,
                poll_batch=settings.poll_batch,
            ),
        ]

    return await assemble(
        settings,
        service_names=SERVICE_NAMES,
        register=lambda server, kit: pb_grpc.add_ProviderGatewayServiceServicer_to_server(
            ProviderGatewayApi(kit.sessions, kit.reads, registry, cipher, kit.page_tokens), server
        ),
        admin_methods=ADMIN_METHODS,
        workers=parts,
        on_set_aside=lambda kit: service(kit).event_set_aside,
        subscriptions=lambda _kit: [
            Subscription(
                topics.JOB_SUBMITTED,
                functools.partial(
                    on_job_submitted, aging=timedelta(seconds=settings.priority_aging_seconds)
                ),
                # A job's turn is its arrival, the transaction's clock: arrivals committed
                # out of that order moved queued jobs back a place (decision 130).
                one_partition_at_a_time=True,
            ),
            Subscription(topics.JOB_CANCELLED, on_job_cancelled),
        ],
    )


def run() -> None:
    service_main(Settings, build, MIGRATIONS)
