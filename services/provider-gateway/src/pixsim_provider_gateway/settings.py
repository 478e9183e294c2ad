"""Settings of the provider gateway service, from `PIXSIM_GATEWAY_*` environment variables."""

from __future__ import annotations

from pixsim_common.settings import ServiceSettings, settings_config


class Settings(ServiceSettings):
    model_config = settings_config("PIXSIM_GATEWAY_")

    service_name: str = "provider-gateway"
    grpc_port: int = 50053
    metrics_port: int = 9103
