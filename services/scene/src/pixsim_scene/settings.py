"""Settings of the scene service, from `PIXSIM_SCENE_*` environment variables."""

from __future__ import annotations

from pixsim_common.settings import ServiceSettings, settings_config


class Settings(ServiceSettings):
    model_config = settings_config("PIXSIM_SCENE_")

    service_name: str = "scene"
    grpc_port: int = 50054
    metrics_port: int = 9104

    # The asset service, asked (with the caller's token) whether placed assets are theirs.
    asset_address: str = "127.0.0.1:50052"
