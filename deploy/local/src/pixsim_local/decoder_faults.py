"""A decoder worker that fails on request, for the asset service's decode-pool tests
(`python -m pixsim_local.decoder_faults <address-space-bytes>`): a file named `crash*`
kills it as a segfault would, one named `hang*` keeps it busy for good (as a decoder caught in
a loop would); any other file is decoded as the real worker does."""

from __future__ import annotations

import os
import time
from pathlib import Path

from pixsim_asset.decode_worker import serve
from pixsim_asset.probe import DecodeLimits, Inspection, inspect

CRASHING_PREFIX = "crash"
HANGING_PREFIX = "hang"


def inspect_or_crash(
    path: Path, limits: DecodeLimits, thumbnail_side: int, frames: bool
) -> Inspection:
    if path.name.startswith(CRASHING_PREFIX):
        os.abort()
    if path.name.startswith(HANGING_PREFIX):
        while True:
            time.sleep(60)
    return inspect(path, limits, thumbnail_side, frames)


if __name__ == "__main__":
    serve(inspect_or_crash)
