"""`make run`: the local stack in the foreground, stopped as a whole by Ctrl-C.

PostgreSQL (one database and role per service), Kafka with every topic, a local signing key,
then each service migrated and serving; ready when every service's health check says
SERVING. Logs of each process go to `.run/logs/<name>.log`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx

from pixsim_common.auth import generate_keypair
from pixsim_local.grpc_probe import wait_serving
from pixsim_local.infra import Infra
from pixsim_local.processes import ManagedProcess, port_in_use


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    package: str
    env_prefix: str
    grpc_service: str
    port: int
    metrics_port: int


SIMULATOR_PORT = 8300
SIMULATOR_URL = f"http://127.0.0.1:{SIMULATOR_PORT}"

SERVICES = (
    ServiceSpec("job", "pixsim_job", "PIXSIM_JOB_", "pixsim.job.v1.JobService", 50051, 9101),
    ServiceSpec(
        "asset", "pixsim_asset", "PIXSIM_ASSET_", "pixsim.asset.v1.AssetService", 50052, 9102
    ),
    ServiceSpec(
        "provider-gateway",
        "pixsim_provider_gateway",
        "PIXSIM_GATEWAY_",
        "pixsim.provider.v1.ProviderGatewayService",
        50053,
        9103,
    ),
    ServiceSpec(
        "scene", "pixsim_scene", "PIXSIM_SCENE_", "pixsim.scene.v1.SceneService", 50054, 9104
    ),
)


def signing_keys(directory: Path) -> tuple[Path, Path]:
    """The local Ed25519 key pair, made once: `pixsim token` signs with the private half."""
    directory.mkdir(parents=True, exist_ok=True)
    private, public = directory / "signing-key.pem", directory / "signing-key.pub.pem"
    if not private.exists():
        private_pem, public_pem = generate_keypair()
        private.write_text(private_pem)
        private.chmod(0o600)
        public.write_text(public_pem)
    return private, public


def credentials_key(directory: Path) -> str:
    """The gateway's `id:key` for encrypting account credentials, made once."""
    path = directory / "credentials.key"
    if not path.exists():
        path.write_text(f"local1:{base64.b64encode(os.urandom(32)).decode()}")
        path.chmod(0o600)
    return path.read_text().strip()


def claim_pidfile(path: Path) -> None:
    if path.exists():
        with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
            pid = int(path.read_text())
            os.kill(pid, 0)
            raise SystemExit(
                f"the local stack is already running (pid {pid}); stop it with Ctrl-C there"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(str(os.getpid()))


def service_command(spec: ServiceSpec, verb: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        f"import sys; from {spec.package}.main import run; sys.argv[1:] = ['{verb}']; run()",
    ]


async def wait_http(url: str, process: ManagedProcess, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while True:
            process.check_alive()
            with contextlib.suppress(httpx.HTTPError):
                (await client.get(url, timeout=1)).raise_for_status()
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{process.name} did not answer {url} in {timeout}s")
            await asyncio.sleep(0.1)


async def wait_until_serving(spec: ServiceSpec, process: ManagedProcess) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{spec.port}") as channel:
        await wait_serving(channel, spec.grpc_service, check_alive=process.check_alive)


async def run_stack(run_dir: Path) -> None:
    started = time.monotonic()
    ports = {spec.port: spec.name for spec in SERVICES} | {SIMULATOR_PORT: "provider-sim"}
    busy = [(port, name) for port, name in ports.items() if port_in_use(port)]
    if busy:
        raise SystemExit(f"port {busy[0][0]} ({busy[0][1]}) is already in use")
    infra = await Infra.start(
        run_dir, postgres_port=5433, kafka_port=9092, kafka_controller_port=9093, durable=True
    )
    processes: list[ManagedProcess] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        private_key, public_key = signing_keys(run_dir / "keys")
        logs = run_dir / "logs"
        logs.mkdir(exist_ok=True)
        simulator = ManagedProcess(
            "provider-sim",
            [sys.executable, "-m", "pixsim_provider_sim", "--port", str(SIMULATOR_PORT)],
            logs / "provider-sim.log",
        )
        processes.append(simulator)
        await wait_http(f"{SIMULATOR_URL}/_sim/stats", simulator)
        for spec in SERVICES:
            database = await infra.postgres.create_service_database(spec.package)
            env = {
                **os.environ,
                f"{spec.env_prefix}DATABASE_URL": database.url,
                f"{spec.env_prefix}KAFKA_BOOTSTRAP": infra.kafka.bootstrap,
                f"{spec.env_prefix}JWT_PUBLIC_KEY": public_key.read_text(),
                f"{spec.env_prefix}GRPC_PORT": str(spec.port),
                f"{spec.env_prefix}METRICS_PORT": str(spec.metrics_port),
                # Only the gateway reads these: every provider is the local simulator.
                **{
                    f"{spec.env_prefix}{p}_BASE_URL": SIMULATOR_URL
                    for p in ("PIXVERSE", "RUNWAY", "PIKA")
                },
                f"{spec.env_prefix}CREDENTIALS_KEYS": credentials_key(run_dir / "keys"),
                # Only the asset service reads these: the simulator serves media on loopback.
                f"{spec.env_prefix}STORAGE_ROOT": str(run_dir / "storage"),
                f"{spec.env_prefix}FETCH_ALLOW_LOOPBACK": "true",
            }
            migrate = ManagedProcess(
                f"{spec.name}-migrate",
                service_command(spec, "migrate"),
                logs / f"{spec.name}.log",
                env=env,
            )
            if await asyncio.to_thread(migrate.process.wait) != 0:
                raise RuntimeError(f"{spec.name} migration failed:\n{migrate.log_tail()}")
            migrate.stop()
            processes.append(
                ManagedProcess(
                    spec.name, service_command(spec, "serve"), logs / f"{spec.name}.log", env=env
                )
            )
        await asyncio.gather(
            *(wait_until_serving(s, p) for s, p in zip(SERVICES, processes[1:], strict=True))
        )
        seeded = await seed_accounts(private_key)
        if seeded:
            print(f"seeded simulator accounts for {', '.join(seeded)}", flush=True)
        print_ready(infra, private_key, logs, time.monotonic() - started)
        while not stop.is_set():
            for process in processes:
                process.check_alive()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1)
    finally:
        print("stopping ...", flush=True)
        for process in reversed(processes):
            process.stop()
        infra.stop()


SEED_ACCOUNTS = {"pixverse": 4, "runway": 4, "pika": 4}  # provider -> max_concurrency


async def seed_accounts(private_key: Path) -> list[str]:
    """One simulator-backed account per provider, unless the provider has one already."""
    from pixsim.provider.v1 import provider_gateway_service_pb2 as pb
    from pixsim.provider.v1 import provider_gateway_service_pb2_grpc as pb_grpc
    from pixsim_common.auth import issue_token

    token = issue_token(private_key.read_text(), user_id="local-admin", roles=["admin"])
    metadata = (("authorization", f"Bearer {token}"),)
    seeded = []
    gateway = next(spec for spec in SERVICES if spec.name == "provider-gateway")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = pb_grpc.ProviderGatewayServiceStub(channel)
        for provider, concurrency in SEED_ACCOUNTS.items():
            existing = await stub.ListAccounts(
                pb.ListAccountsRequest(provider_id=provider), metadata=metadata
            )
            if existing.accounts:
                continue
            await stub.CreateAccount(
                pb.CreateAccountRequest(
                    account=pb.Account(
                        provider_id=provider,
                        label=f"local {provider} (simulator)",
                        credentials={"api_key": f"local-{provider}-key"},
                        credits=1_000_000,
                        max_concurrency=concurrency,
                    )
                ),
                metadata=metadata,
            )
            seeded.append(provider)
    return seeded


def print_ready(infra: Infra, private_key: Path, logs: Path, seconds: float) -> None:
    lines = [f"PixSim7 local stack is up in {seconds:.1f}s", ""]
    lines += [f"  {s.name:<17} 127.0.0.1:{s.port}   metrics :{s.metrics_port}" for s in SERVICES]
    lines += [
        f"  {'postgres':<17} {infra.postgres.host}:{infra.postgres.port}",
        f"  {'kafka':<17} {infra.kafka.bootstrap}",
        f"  {'provider-sim':<17} {SIMULATOR_URL}   (PixVerse, Runway, fal/Pika APIs)",
        "",
        f"logs:         {logs}/<service>.log",
        f"signing key:  {private_key}",
        "",
        "try:",
        "  export PIXSIM_TOKEN=$(uv run pixsim token --user alice)",
        "  grpcurl -plaintext 127.0.0.1:50051 list",
        '  grpcurl -plaintext -H "authorization: Bearer $PIXSIM_TOKEN" \\',
        "      127.0.0.1:50053 grpc.health.v1.Health/Check",
        "",
        "Ctrl-C stops everything.",
    ]
    print("\n".join(lines), flush=True)


def main(run_dir: Path) -> None:
    pidfile = run_dir / "stack.pid"
    claim_pidfile(pidfile)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_stack(run_dir))
    finally:
        pidfile.unlink(missing_ok=True)
