"""Prometheus metrics shared by every service, and the endpoint that serves them."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RPC_REQUESTS = Counter(
    "pixsim_rpc_requests_total", "gRPC requests handled", ["service", "method", "code"]
)
RPC_LATENCY = Histogram(
    "pixsim_rpc_duration_seconds",
    "gRPC handling time",
    ["service", "method", "code"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CONSUMER_LAG = Gauge(
    "pixsim_consumer_lag_messages",
    "Messages behind the end of the partition, per consumer group",
    ["group", "topic", "partition"],
)
MESSAGES_CONSUMED = Counter(
    "pixsim_messages_consumed_total",
    "Kafka messages handled, by outcome (processed, duplicate, dead_lettered)",
    ["group", "topic", "outcome"],
)
DLQ_DEPTH = Gauge(
    "pixsim_dlq_depth_messages",
    "Messages in a dead-letter topic (its partitions' end less start offsets)",
    ["topic"],
)
OUTBOX_BACKLOG = Gauge(
    "pixsim_outbox_backlog_events", "Outbox events not yet published", ["service"]
)
OUTBOX_OLDEST = Gauge(
    "pixsim_outbox_oldest_unsent_seconds",
    "Age of the oldest outbox event not yet published (0 when there is none)",
    ["service"],
)
OUTBOX_SET_ASIDE = Counter(
    "pixsim_outbox_set_aside_total",
    "Outbox events that can never be published, set aside with their error",
    ["service", "topic", "reason"],
)
OUTBOX_PUBLISHED = Counter(
    "pixsim_outbox_published_total", "Outbox events published to Kafka", ["service", "topic"]
)


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Expose /metrics on `port`; 0 means off."""
    if port:
        start_http_server(port, addr=host)
