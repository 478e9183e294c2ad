"""Settings of the provider gateway service, from `PIXSIM_GATEWAY_*` environment variables."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import Field, SecretStr

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
    # Completion callbacks (docs/providers.md): the listener's address, and the public URL
    # providers reach it at (an ingress to it). Without a URL no provider is asked for
    # callbacks and every task is polled; with one, polls remain the fallback and the check.
    callback_host: str = "127.0.0.1"
    callback_port: int = Field(default=8303, ge=0, le=65535)
    callback_base_url: str = ""
    # With callbacks, a task's first status check waits this long (the fallback).
    callback_poll_first_seconds: float = Field(default=30.0, gt=0)
    # fal's webhook signing keys (a JWKS).
    pika_webhook_jwks_url: str = "https://rest.alpha.fal.ai/.well-known/jwks.json"

    # The asset service, read (with a workload token, for a job's owner) for asset inputs.
    asset_address: str = "127.0.0.1:50052"
    # The PEM private key the gateway signs its workload tokens with; the asset service
    # trusts the public half (its WORKLOAD_PUBLIC_KEY).
    workload_signing_key: SecretStr = SecretStr("")
    # `id:base64key[,id:base64key...]`: AES keys for account credentials; the first encrypts.
    credentials_keys: SecretStr
    # Attempts after the first for transient failures, each a new linked submission.
    max_retries: int = Field(default=3, ge=0, le=20)
    retry_base_seconds: float = Field(default=1.0, gt=0)
    retry_cap_seconds: float = Field(default=60.0, gt=0)
    # Status checks start this soon and back off to the cap, until the provider's recent
    # tasks say how long one takes (docs/performance.md): then one check comes just before
    # the expected end, and checks come 3 % of it apart, no closer than the minimum.
    poll_first_seconds: float = Field(default=1.0, gt=0)
    poll_cap_seconds: float = Field(default=10.0, gt=0)
    poll_min_seconds: float = Field(default=0.1, gt=0)
    # A task still unfinished this long after it was accepted fails with DEADLINE_EXCEEDED,
    # unless its provider cannot stop it: then it is followed on (reconciled) this much
    # longer, its late result still the job's, within the job's own run deadline.
    deadline_seconds: float = Field(default=900.0, gt=0)
    reconcile_seconds: float = Field(default=3600.0, ge=0)
    # Status checks in a row answered "no such task" that end an attempt, unbilled, and
    # retry it (docs/costs.md).
    unknown_task_polls: int = Field(default=3, ge=1, le=100)
    # How long a replica owns a poll (then another may take it over).
    poll_lease_seconds: float = Field(default=30.0, gt=0)
    # HIGH work arriving this long after a LOW job no longer passes it (NORMAL: half as
    # long): the bound aging puts on a low-priority job's wait behind its owner's own work.
    priority_aging_seconds: float = Field(default=300.0, gt=0, le=86400)
    dispatch_batch: int = Field(default=32, ge=1)
    poll_batch: int = Field(default=64, ge=1)
    # The circuit breaker (docs/providers.md): calls failed in a row that open a provider's
    # circuit (an account's), how long it stays open at first (doubling while it keeps
    # failing), and the longest.
    circuit_failures: int = Field(default=5, ge=1, le=1000)
    circuit_account_failures: int = Field(default=3, ge=1, le=1000)
    circuit_open_seconds: float = Field(default=30.0, gt=0)
    circuit_open_cap_seconds: float = Field(default=600.0, gt=0)
    # How often each account's key is checked with its provider (and its balance read).
    account_check_seconds: float = Field(default=60.0, gt=0)
    # The price table (docs/costs.md): US dollars per provider credit, by provider, e.g.
    # `{"runway": "0.01"}`. fal bills money: its adapter counts a request as a credit.
    credit_prices: dict[str, Annotated[Decimal, Field(ge=0, le=Decimal("67"))]] = Field(
        default_factory=lambda: {
            "pixverse": Decimal("0.004"),
            "runway": Decimal("0.01"),
            "pika": Decimal("0.20"),
        }
    )
    # A waiting job with a fallback goes on to it when its start deadline is this near and
    # its provider has no free slot.
    fallback_deadline_margin_seconds: float = Field(default=5.0, ge=0, le=3600)
