"""Settings of the provider gateway service, from `PIXSIM_GATEWAY_*` environment variables."""

from __future__ import annotations

from pixsim_common.settings import ServiceSettings, settings_config


class Settings(ServiceSettings):
    model_config = settings_config("PIXSIM_GATEWAY_")

    service_name: str = "provider-gateway"
    grpc_port: int = 50053
    metrics_port: int = 9103

    # The providers' APIs; the local stack and the tests point these at the simulator.
    pixverse_base_url: str = "https://app-api.pixverse.ai"
    runway_base_url: str = "https://api.dev.runwayml.com"
    runway_api_version: str = "2024-11-06"
    pika_base_url: str = "https://queue.fal.run"
    # Seconds for one provider HTTP call; a hung provider becomes a TRANSIENT error.
    provider_timeout: float = 30.0
