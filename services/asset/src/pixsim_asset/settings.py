"""Settings of the asset service, from `PIXSIM_ASSET_*` environment variables."""

from __future__ import annotations

from pixsim_common.settings import ServiceSettings, settings_config


class Settings(ServiceSettings):
    model_config = settings_config("PIXSIM_ASSET_")

    service_name: str = "asset"
    grpc_port: int = 50052
    metrics_port: int = 9102
