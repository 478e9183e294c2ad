"""Composition root of the scene service: wires the kit and the service's parts."""

from __future__ import annotations

from pathlib import Path

from pixsim.scene.v1.scene_service_pb2 import DESCRIPTOR
from pixsim_common.app import ServiceApp, assemble, service_main
from pixsim_common.settings import ServiceSettings
from pixsim_scene.settings import Settings

SERVICE_NAMES = [DESCRIPTOR.services_by_name["SceneService"].full_name]
MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


async def build(settings: ServiceSettings) -> ServiceApp:
    return await assemble(
        settings, service_names=SERVICE_NAMES, register=lambda _server, _kit: None
    )


def run() -> None:
    service_main(Settings, build, MIGRATIONS)
