"""`make bench`: run every benchmark."""

from __future__ import annotations

import asyncio

from bench import guard_overhead


def main() -> None:
    guard_overhead.configure()
    asyncio.run(guard_overhead.main())


if __name__ == "__main__":
    main()
