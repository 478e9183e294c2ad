"""Settings from the environment, one prefix per service (PIXSIM_JOB_, PIXSIM_ASSET_, ...).

A service subclasses `ServiceSettings` and sets its prefix:

    class JobSettings(ServiceSettings):
        model_config = settings_config("PIXSIM_JOB_")

A required value that is missing fails at start-up, not at first use.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def settings_config(env_prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=env_prefix, extra="ignore", frozen=True)


class ServiceSettings(BaseSettings):
    """What every service needs; each field is `<PREFIX><FIELD>` in the environment."""

    model_config = settings_config("PIXSIM_")

    service_name: str = "pixsim"
    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(default=0, ge=0, le=65535)
    # 0 disables the Prometheus endpoint (tests run many servers in one process).
    metrics_port: int = Field(default=0, ge=0, le=65535)
    # Where /metrics listens; in a pod, 0.0.0.0 so Prometheus can scrape it.
    metrics_host: str = "127.0.0.1"
    # A libpq URL (postgresql://role:password@host:port/db) of the service's own database.
    database_url: SecretStr
    # Sized for the connections a busy process holds at once: one over the pool is closed
    # when returned, and opening it again costs both sides a few ms (decision 117).
    database_pool_size: int = Field(default=20, ge=1)
    # Connections beyond the pool when it is busy; unset means as many as the pool holds.
    database_max_overflow: int | None = Field(default=None, ge=0)
    kafka_bootstrap: str = "127.0.0.1:9092"
    # A PEM public key (RS256/ES256/EdDSA) or a JWKS URL that verifies callers' tokens.
    jwt_public_key: str = ""
    jwt_jwks_url: str = ""
    jwt_issuer: str = "pixsim-local"
    jwt_audience: str = "pixsim"
    # Workload tokens this service accepts (a PEM public key of the service that issues
    # them, and its issuer); only methods that declare a workload scope take them.
    workload_public_key: str = ""
    workload_issuer: str = "pixsim-provider-gateway"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"
    otel_exporter: Literal["none", "console", "otlp"] = "none"
    otel_endpoint: str = "http://127.0.0.1:4317"
    # The HMAC key of page tokens, shared by a service's replicas (a Secret in Kubernetes).
    # Empty: a random key of this process, so tokens do not pass between replicas.
    page_token_secret: SecretStr = SecretStr("")
    # Tokens living longer than this (`exp - iat`) are refused, whoever signed them.
    jwt_max_lifetime_seconds: int = Field(default=24 * 3600, ge=60)
    # How long SIGTERM waits for in-flight RPCs and messages before cancelling them.
    drain_seconds: float = Field(default=20.0, ge=0)
