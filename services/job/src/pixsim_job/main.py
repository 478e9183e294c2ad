"""Composition root of the job service: wires the kit and the service's parts."""

from __future__ import annotations

from pathlib import Path

from pixsim.job.v1.job_service_pb2 import DESCRIPTOR
from pixsim_common.app import ServiceApp, assemble, service_main
from pixsim_common.settings import ServiceSettings
from pixsim_job.settings import Settings

SERVICE_NAMES = [DESCRIPTOR.services_by_name["JobService"].full_name]
MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


async def build(settings: ServiceSettings) -> ServiceApp:
    return await assemble(
        settings, service_names=SERVICE_NAMES, register=lambda _server, _kit: None
    )


def run() -> None:
    service_main(Settings, build, MIGRATIONS)
