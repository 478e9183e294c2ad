"""Settings of the job service, from `PIXSIM_JOB_*` environment variables."""

from __future__ import annotations

from pixsim_common.settings import ServiceSettings, settings_config


class Settings(ServiceSettings):
    model_config = settings_config("PIXSIM_JOB_")

    service_name: str = "job"
    grpc_port: int = 50051
    metrics_port: int = 9101

    # The provider gateway, asked for providers' capabilities at CreateJob.
    gateway_address: str = "127.0.0.1:50053"
    capabilities_ttl_seconds: float = 60.0
    # The asset service, asked (with the caller's token) for the URLs of asset inputs.
    asset_address: str = "127.0.0.1:50052"
