"""The job service's own Prometheus metrics (the kit's cover RPCs, lag and the outbox)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

# Ours, per completed job: created to completed, less the provider's own time (queueing,
# dispatch, noticing the end, storing the result). Observed once, when both ends are known.
JOB_OVERHEAD = Histogram(
    "pixsim_job_overhead_seconds",
    "Time a completed job spent in our hands rather than the provider's",
    ["provider"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800),
)

# What each user spent, by provider, as attempts' costs settle (the gateway counts credits;
# this is per user). One series per user who spends: the users of an internal system.
SPEND = Counter(
    "pixsim_job_spend_usd_total",
    "Money attempts were settled at, by user and provider",
    ["user", "provider"],
)
