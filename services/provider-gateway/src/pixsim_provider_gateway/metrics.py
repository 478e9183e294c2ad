"""The gateway's own Prometheus metrics (the kit's cover RPCs, lag and the outbox)."""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram

ACCOUNT_IN_FLIGHT = Gauge(
    "pixsim_gateway_account_in_flight", "Tasks running on an account", ["provider", "account"]
)
ACCOUNT_SLOT_UTILISATION = Gauge(
    "pixsim_gateway_account_slot_utilisation",
    "in_flight / max_concurrency",
    ["provider", "account"],
)
ACCOUNT_SLOTS = Gauge(
    "pixsim_gateway_account_slots", "Tasks an account may run at once", ["provider", "account"]
)
QUEUE_DEPTH = Gauge(
    "pixsim_gateway_waiting_submissions", "Submissions waiting for an account", ["provider"]
)
QUEUE_WAIT = Gauge(
    "pixsim_gateway_oldest_waiting_seconds",
    "How long the submission that has waited longest (since it could be sent) has waited",
    ["provider"],
)
PROVIDER_LATENCY = Histogram(
    "pixsim_gateway_provider_call_seconds",
    "Provider HTTP calls",
    ["provider", "call"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PROVIDER_ERRORS = Counter(
    "pixsim_gateway_provider_errors_total",
    "Provider call failures by kind",
    ["provider", "call", "kind"],
)
JOBS_FAILED = Counter(
    "pixsim_gateway_generations_failed_total",
    "generation.failed published, by error code",
    ["provider", "code"],
)


def observe_call(provider: str, call: str, started: float, outcome: str) -> None:
    PROVIDER_LATENCY.labels(provider, call).observe(time.perf_counter() - started)
    if outcome != "OK":
        PROVIDER_ERRORS.labels(provider, call, outcome).inc()


# 0 closed, 1 half-open, 2 open: a provider's circuit as this replica last saw it.
CIRCUIT_LEVELS = {"CLOSED": 0, "HALF_OPEN": 1, "OPEN": 2}
CIRCUIT_STATE = Gauge(
    "pixsim_gateway_circuit_state",
    "A provider's circuit: 0 closed, 1 half-open, 2 open",
    ["provider"],
)
CIRCUIT_CHANGES = Counter(
    "pixsim_gateway_circuit_changes_total",
    "A provider's circuit changing state",
    ["provider", "to"],
)
PROVIDER_PAUSED = Gauge(
    "pixsim_gateway_provider_paused", "1 while an operator has paused the provider", ["provider"]
)


def circuit_moved(provider: str, to: str) -> None:
    CIRCUIT_CHANGES.labels(provider, to).inc()
    CIRCUIT_STATE.labels(provider).set(CIRCUIT_LEVELS[to])


ACCOUNT_CHECKS = Counter(
    "pixsim_gateway_account_checks_total",
    "Periodic checks of an account's key with its provider, by outcome",
    ["provider", "outcome"],
)
ACCOUNT_CREDIT_DRIFT = Gauge(
    "pixsim_gateway_account_credit_drift",
    "The gateway's ledger minus the provider's own balance, at the last check",
    ["provider", "account"],
)
CALLBACKS = Counter(
    "pixsim_gateway_callbacks_total",
    "Completion callbacks received, by what became of them",
    ["provider", "outcome"],
)
RECONCILING = Counter(
    "pixsim_gateway_reconciling_total",
    "Tasks past the gateway's bound followed on (their provider cannot stop them)",
    ["provider"],
)
# What attempts are counted as having cost, as they settle (docs/costs.md): credits by how
# they were settled, and money at the price table's prices. Per user: the job service's.
SPEND_CREDITS = Counter(
    "pixsim_gateway_spend_credits_total",
    "Provider credits attempts were settled at",
    ["provider", "billing"],
)
SPEND_MONEY = Counter(
    "pixsim_gateway_spend_usd_total",
    "Money attempts were settled at (the price table's USD)",
    ["provider"],
)
