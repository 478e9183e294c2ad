"""`pixsim-local run|infra|fetch-jars`: the local stack, its servers alone, or the jars."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path

from pixsim_local import stack
from pixsim_local.infra import Infra
from pixsim_local.kafka import ensure_jars


async def _infra(run_dir: Path, postgres_port: int, kafka_port: int) -> None:
    infra = await Infra.start(
        run_dir,
        postgres_port=postgres_port,
        kafka_port=kafka_port,
        kafka_controller_port=kafka_port + 1000,
        durable=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"postgres  {infra.postgres.admin_url}")
    print(f"kafka     {infra.kafka.bootstrap}")
    print("started in " + ", ".join(f"{k}={v:.2f}" for k, v in infra.timings.items()))
    try:
        await stop.wait()
    finally:
        infra.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="pixsim-local")
    commands = parser.add_subparsers(dest="command", required=True)
    infra = commands.add_parser("infra", help="run PostgreSQL and Kafka until Ctrl-C")
    infra.add_argument("--run-dir", type=Path, default=Path(".run"))
    infra.add_argument("--postgres-port", type=int, default=5433)
    infra.add_argument("--kafka-port", type=int, default=9092)
    run = commands.add_parser("run", help="run the whole local stack until Ctrl-C")
    run.add_argument("--run-dir", type=Path, default=Path(".run"))
    run.add_argument(
        "--free-ports",
        action="store_true",
        help="listen on free ports (written to <run dir>/ports.json), not the defaults",
    )
    run.add_argument(
        "--storage",
        choices=["local", "s3"],
        default="local",
        help="where assets are stored: files under <run dir>/storage, or an S3 server",
    )
    run.add_argument(
        "--edge",
        action="store_true",
        help="also start the REST edge (Envoy, :8080) and the GraphQL edge (:4000)",
    )
    commands.add_parser("fetch-jars", help="fetch the Kafka broker's jars into the cache")
    args = parser.parse_args()
    if args.command == "fetch-jars":
        print(ensure_jars())
    elif args.command == "run":
        ports = stack.StackPorts.free() if args.free_ports else None
        stack.main(args.run_dir.resolve(), ports, args.storage, args.edge)
    else:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_infra(args.run_dir.resolve(), args.postgres_port, args.kafka_port))


if __name__ == "__main__":
    main()
