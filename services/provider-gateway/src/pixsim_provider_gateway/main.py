"""Composition root of the provider gateway service: wires the kit and the service's parts."""

from __future__ import annotations

from pathlib import Path

from pixsim.provider.v1.provider_gateway_service_pb2 import DESCRIPTOR
from pixsim_common.app import ServiceApp, assemble, service_main
from pixsim_common.settings import ServiceSettings
from pixsim_provider_gateway.settings import Settings

_SERVICE = DESCRIPTOR.services_by_name["ProviderGatewayService"]
SERVICE_NAMES = [_SERVICE.full_name]
# Account management spends money and holds secrets: admin only (DESIGN.md section 7).
ADMIN_METHODS = frozenset(
    f"/{_SERVICE.full_name}/{method.name}"
    for method in _SERVICE.methods
    if method.name.endswith(("Account", "Accounts"))
)
MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


async def build(settings: ServiceSettings) -> ServiceApp:
    return await assemble(
        settings,
        service_names=SERVICE_NAMES,
        register=lambda _server, _kit: None,
        admin_methods=ADMIN_METHODS,
    )


def run() -> None:
    service_main(Settings, build, MIGRATIONS)
