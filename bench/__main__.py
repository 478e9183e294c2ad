"""`make bench`: every benchmark, each printing its table and a one-line summary last;
figures go to bench/results/*.json. `python -m bench NAME...` runs some of them."""

from __future__ import annotations

import asyncio
import sys
import time

from bench import backlog, createjob, guard_overhead, notice, pipeline, saturation, single_job

BENCHMARKS = {
    "guard": guard_overhead.main,
    "createjob": createjob.main,
    "pipeline": pipeline.main,
    "saturation": saturation.main,
    "notice": notice.main,
    "single": single_job.main,
    "backlog": backlog.main,
}


def main() -> None:
    chosen = sys.argv[1:] or list(BENCHMARKS)
    unknown = [name for name in chosen if name not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown benchmark {unknown[0]}; choose from {', '.join(BENCHMARKS)}")
    guard_overhead.configure()
    started = time.monotonic()
    for name in chosen:
        asyncio.run(BENCHMARKS[name]())
    print(f"\nbenchmarks done in {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()
