"""`make test`'s pytest: the chaos run beside the rest, in a second pytest process.

The chaos run starts infrastructure of its own (a PostgreSQL cluster, a broker, an S3 server
and the stack), crashes only that, and spends most of its two minutes waiting on recovery;
run beside the other tests it costs the suite almost nothing. Its output is printed after
the rest's, and either failing fails the suite. `pytest` alone still runs everything in one
process.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile

ISOLATED = ("tests/test_chaos.py",)


def main(argv: list[str]) -> int:
    pytest = [sys.executable, "-m", "pytest"]
    with tempfile.TemporaryFile() as isolated_log:
        isolated = subprocess.Popen(
            [*pytest, *ISOLATED, *argv], stdout=isolated_log, stderr=subprocess.STDOUT
        )
        try:
            rest = subprocess.call([*pytest, *(f"--ignore={path}" for path in ISOLATED), *argv])
            isolated_code = isolated.wait()
        finally:
            if isolated.poll() is None:
                isolated.kill()
        isolated_log.seek(0)
        print(f"\n===== {' '.join(ISOLATED)} (run beside the rest) =====", flush=True)
        sys.stdout.buffer.write(isolated_log.read())
        sys.stdout.flush()
    return rest or isolated_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
