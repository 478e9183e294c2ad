"""`python -m pixsim_provider_sim [--port 8300] [--seed N]`: serve the simulator."""

from __future__ import annotations

import argparse

import uvicorn

from pixsim_provider_sim.app import create_app


def main() -> None:
    parser = argparse.ArgumentParser(prog="pixsim-provider-sim")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--url-ttl",
        type=float,
        default=86400.0,
        help="seconds an output URL works after its task finishes (Runway's: 24-48 h)",
    )
    args = parser.parse_args()
    # Hung requests (the "hang" fault) must not hold shutdown up.
    uvicorn.run(
        create_app(args.seed, args.url_ttl),
        host=args.host,
        port=args.port,
        log_level="warning",
        timeout_graceful_shutdown=1,
    )


if __name__ == "__main__":
    main()
