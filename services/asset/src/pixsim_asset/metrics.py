"""The asset service's own Prometheus metrics (the kit's cover RPCs, lag and the outbox)."""

from __future__ import annotations

from prometheus_client import Counter

# Files the collector removed once no asset held them (decision 76).
FILES_DELETED = Counter(
    "pixsim_asset_files_deleted_total", "Stored files deleted once nothing held them"
)
