"""Settings of the job service, from `PIXSIM_JOB_*` environment variables."""

from __future__ import annotations

from pydantic import Field

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

    # Webhooks: the URLs callers name must reach a public address unless these allow
    # loopback (a local stack) or private ranges (a receiver inside the cluster).
    webhook_allow_loopback: bool = False
    webhook_allow_private: bool = False
    # One delivery attempt's timeout; the first retry's delay (doubling, capped at an hour,
    # jittered); how long an undelivered event is retried.
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    webhook_retry_base_seconds: float = Field(default=5.0, gt=0)
    webhook_retry_for_seconds: float = Field(default=86400.0, gt=0)
    webhook_secret_overlap_seconds: float = Field(default=86400.0, ge=0)
