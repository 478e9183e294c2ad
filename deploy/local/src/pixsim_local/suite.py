"""`make test`'s pytest: three pytest processes side by side, each with infrastructure of its
own, their outputs printed one after another; any failing fails the suite.

- the chaos run (`tests/test_chaos.py`): it starts and crashes a PostgreSQL cluster, a
  broker, an S3 server and a stack of its own, and spends most of its two minutes waiting
  on recovery;
- the whole-stack tests (the rest of `tests/`), which share one stack;
- everything else (the kit's, the services' and the tools' tests), streamed as it runs.

Most of every test's time is spent waiting on a broker, a database or a provider's
simulated task, not on the two cores, so the three overlap at little cost. `pytest` alone
still runs everything in one process.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[4]
CHAOS = "tests/test_chaos.py"
# Run beside the streamed process, their output printed after it.
BESIDE = ((CHAOS,), ("tests", f"--ignore={CHAOS}"))


def streamed() -> list[str]:
    """Every test path of pyproject.toml but the whole-stack tests' (`--ignore` does not
    apply to a path pytest is given)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return [
        path for path in config["tool"]["pytest"]["ini_options"]["testpaths"] if path != "tests"
    ]


def main(argv: list[str]) -> int:
    pytest = [sys.executable, "-m", "pytest"]
    with contextlib.ExitStack() as files:
        logs: list[IO[bytes]] = [files.enter_context(tempfile.TemporaryFile()) for _ in BESIDE]
        beside: list[subprocess.Popen[bytes]] = []
        try:
            for args, log in zip(BESIDE, logs, strict=True):
                beside.append(
                    subprocess.Popen([*pytest, *args, *argv], stdout=log, stderr=subprocess.STDOUT)
                )
            codes = [subprocess.call([*pytest, *streamed(), *argv])]
            codes += [process.wait() for process in beside]
        finally:
            for process in beside:
                if process.poll() is None:
                    process.kill()
        for args, log in zip(BESIDE, logs, strict=True):
            log.seek(0)
            print(f"\n===== pytest {' '.join(args)} (run beside the rest) =====", flush=True)
            sys.stdout.buffer.write(log.read())
            sys.stdout.flush()
    return next((code for code in codes if code), 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
