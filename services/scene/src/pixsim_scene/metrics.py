"""The scene service's own Prometheus metrics (the kit's cover RPCs, lag and the outbox)."""

from __future__ import annotations

from prometheus_client import Histogram

# What a write read of its scene's graph: bounded by what the write names, never by the
# scene's size (so writing a scene in batches costs time linear in its size).
WRITE_ELEMENTS_LOADED = Histogram(
    "pixsim_scene_write_elements_loaded",
    "Scene assets and connections loaded by one write",
    buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000, 20000),
)
