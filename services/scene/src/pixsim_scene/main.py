"""Composition root of the scene service."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from pixsim.scene.v1 import scene_service_pb2_grpc as pb_grpc
from pixsim.scene.v1.scene_service_pb2 import DESCRIPTOR
from pixsim_common import clients
from pixsim_common.app import Kit, ServiceApp, Worker, assemble, migrations_of, service_main
from pixsim_common.background import CloseOnStop
from pixsim_common.consumer import Subscription
from pixsim_common.settings import ServiceSettings
from pixsim_scene.events import subscriptions
from pixsim_scene.grpc_api import SceneApi
from pixsim_scene.service import PlaythroughService, SceneService
from pixsim_scene.settings import Settings

SERVICE_NAMES = [DESCRIPTOR.services_by_name["SceneService"].full_name]
MIGRATIONS = migrations_of(__file__)


async def build(settings: ServiceSettings) -> ServiceApp:
    assert isinstance(settings, Settings)
    channel = clients.channel(settings.asset_address)
    directory = clients.AssetLookup(channel)
    services: dict[str, SceneService] = {}

    def service(kit: Kit) -> SceneService:
        if "scene" not in services:
            services["scene"] = SceneService(kit.sessions, directory, kit.page_tokens)
        return services["scene"]

    def register(server: grpc.aio.Server, kit: Kit) -> None:
        playthroughs = PlaythroughService(kit.sessions, directory, kit.page_tokens)
        pb_grpc.add_SceneServiceServicer_to_server(
            SceneApi(service(kit), playthroughs, kit.reads, kit.page_tokens), server
        )

    def workers(_kit: Kit) -> Sequence[Worker]:
        return [CloseOnStop(lambda: channel.close(None))]

    def consumed(kit: Kit) -> Sequence[Subscription]:
        return subscriptions(service(kit))

    return await assemble(
        settings,
        service_names=SERVICE_NAMES,
        register=register,
        workers=workers,
        subscriptions=consumed,
    )


def run() -> None:
    service_main(Settings, build, MIGRATIONS)
