"""`make run`: the local stack in the foreground, stopped as a whole by Ctrl-C.

PostgreSQL (one database and role per service), Kafka with every topic, a local signing key,
then each service migrated and serving; ready when every service's health check says
SERVING. Logs of each process go to `.run/logs/<name>.log`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx

from pixsim_common.auth import generate_keypair
from pixsim_local.edge import Edge, GraphQLEdge, stack_upstreams
from pixsim_local.grpc_probe import wait_serving
from pixsim_local.infra import Infra
from pixsim_local.postgres import ServiceDatabase
from pixsim_local.processes import ManagedProcess, Supervisor, free_port, port_in_use
from pixsim_local.s3 import S3Server


def write_whole(path: Path, text: str) -> None:
    """Replace `path` with `text` in one step: a reader (a test, an operator's script) sees
    the old file or the new one, never one half written (CI read an empty pids.json)."""
    part = path.with_name(f".{path.name}.part")
    part.write_text(text)
    os.replace(part, path)


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
# The gateway's listener for providers' completion callbacks (docs/providers.md).
CALLBACK_PORT = 8303

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


SERVICE_NAMES = tuple(spec.name for spec in SERVICES)


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


def workload_keys(directory: Path) -> tuple[str, str]:
    """The gateway's workload key pair, made once: it signs with the private half, the asset
    service trusts the public one."""
    directory.mkdir(parents=True, exist_ok=True)
    private, public = directory / "workload-key.pem", directory / "workload-key.pub.pem"
    if not private.exists():
        private_pem, public_pem = generate_keypair()
        private.write_text(private_pem)
        private.chmod(0o600)
        public.write_text(public_pem)
    return private.read_text(), public.read_text()


def page_token_secret(directory: Path) -> str:
    """The services' HMAC key for page tokens, made once, so a token survives a restart."""
    path = directory / "page-token.key"
    if not path.exists():
        path.write_text(base64.urlsafe_b64encode(os.urandom(32)).decode())
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


async def wait_until_serving(address: str, grpc_service: str, process: ManagedProcess) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        await wait_serving(channel, grpc_service, check_alive=process.check_alive)


DEFAULT_PORTS = {spec.name: spec.port for spec in SERVICES} | {"provider-sim": SIMULATOR_PORT}
DEFAULT_METRICS_PORTS = {spec.name: spec.metrics_port for spec in SERVICES}


@dataclass
class LocalServices:
    """The simulator and the four services as processes over given infrastructure: each
    service migrated, then serving, with its dependencies' addresses. `make run` uses the
    default ports; the end-to-end tests use free ones and databases of their own."""

    infra: Infra
    run_dir: Path
    ports: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    metrics_ports: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_METRICS_PORTS))
    database_prefix: str = ""
    extra_env: Mapping[str, str] = field(default_factory=dict)
    # Arguments of the provider simulator (e.g. `--url-ttl 3`: outputs that expire soon).
    simulator_args: Sequence[str] = ()
    # Processes per service (default one). Replicas share the service's port (gRPC servers
    # listen with SO_REUSEPORT), as pods behind one Service do; the second is `<name>#2`.
    replicas: Mapping[str, int] = field(default_factory=dict)
    callback_port: int = CALLBACK_PORT
    processes: dict[str, ManagedProcess] = field(default_factory=dict)
    databases: dict[str, ServiceDatabase] = field(default_factory=dict)
    envs: dict[str, dict[str, str]] = field(default_factory=dict)

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name.split('#', 1)[0]]}"

    @property
    def simulator_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['provider-sim']}"

    @property
    def logs(self) -> Path:
        return self.run_dir / "logs"

    @property
    def keys(self) -> tuple[Path, Path]:
        """(private, public) signing key files."""
        return signing_keys(self.run_dir / "keys")

    def env_for(self, spec: ServiceSpec, database_url: str) -> dict[str, str]:
        prefix = spec.env_prefix
        signing, trusted = workload_keys(self.run_dir / "keys")
        # The private half only where it signs: the gateway's workload tokens.
        workload = (
            {f"{prefix}WORKLOAD_SIGNING_KEY": signing}
            if spec.name == "provider-gateway"
            else {f"{prefix}WORKLOAD_PUBLIC_KEY": trusted}
            if spec.name == "asset"
            else {}
        )
        return {
            **os.environ,
            f"{prefix}DATABASE_URL": database_url,
            f"{prefix}KAFKA_BOOTSTRAP": self.infra.kafka.bootstrap,
            f"{prefix}JWT_PUBLIC_KEY": self.keys[1].read_text(),
            f"{prefix}GRPC_PORT": str(self.ports[spec.name]),
            f"{prefix}METRICS_PORT": str(self.metrics_ports.get(spec.name, 0)),
            # Each setting below is read by the one service it concerns; the rest ignore it.
            **{f"{prefix}{p}_BASE_URL": self.simulator_url for p in ("PIXVERSE", "RUNWAY", "PIKA")},
            f"{prefix}CREDENTIALS_KEYS": credentials_key(self.run_dir / "keys"),
            f"{prefix}PAGE_TOKEN_SECRET": page_token_secret(self.run_dir / "keys"),
            f"{prefix}GATEWAY_ADDRESS": self.address("provider-gateway"),
            f"{prefix}ASSET_ADDRESS": self.address("asset"),
            # The simulator sends fal's webhooks, signed with the key it serves.
            f"{prefix}CALLBACK_PORT": str(self.callback_port),
            f"{prefix}CALLBACK_BASE_URL": f"http://127.0.0.1:{self.callback_port}",
            f"{prefix}PIKA_WEBHOOK_JWKS_URL": f"{self.simulator_url}/.well-known/jwks.json",
            # The simulator serves media on loopback, so the asset service may fetch there.
            f"{prefix}STORAGE_ROOT": str(self.run_dir / "storage"),
            f"{prefix}FETCH_ALLOW_LOOPBACK": "true",
            # Webhook receivers of a local stack listen on loopback too.
            f"{prefix}WEBHOOK_ALLOW_LOOPBACK": "true",
            **workload,
            **{f"{prefix}{k}": v for k, v in self.extra_env.items()},
        }

    async def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        simulator = ManagedProcess(
            "provider-sim",
            [
                sys.executable,
                "-m",
                "pixsim_provider_sim",
                "--port",
                str(self.ports["provider-sim"]),
                *self.simulator_args,
            ],
            self.logs / "provider-sim.log",
        )
        self.processes["provider-sim"] = simulator
        await wait_http(f"{self.simulator_url}/_sim/stats", simulator)
        migrating: dict[str, ManagedProcess] = {}
        for spec in SERVICES:
            database = await self.infra.postgres.create_service_database(
                self.database_prefix + spec.package
            )
            env = self.env_for(spec, database.url)
            self.databases[spec.name], self.envs[spec.name] = database, env
            migrating[spec.name] = ManagedProcess(
                f"{spec.name}-migrate",
                service_command(spec, "migrate"),
                self.logs / f"{spec.name}.log",
                env=env,
            )
        # All at once: each is a process that spends its first seconds importing.
        codes = await asyncio.gather(
            *(asyncio.to_thread(m.process.wait) for m in migrating.values())
        )
        for (name, migrate), code in zip(migrating.items(), codes, strict=True):
            migrate.stop()
            if code != 0:
                raise RuntimeError(f"{name} migration failed:\n{migrate.log_tail()}")
        for spec in SERVICES:
            for replica in self.replica_names(spec.name):
                self.processes[replica] = self._serve(replica)
        await asyncio.gather(
            *(
                wait_until_serving(
                    self.address(spec.name), spec.grpc_service, self.processes[spec.name]
                )
                for spec in SERVICES
            )
        )

    def replica_names(self, service: str) -> list[str]:
        count = self.replicas.get(service, 1)
        return [service, *(f"{service}#{n}" for n in range(2, count + 1))]

    @property
    def service_processes(self) -> list[str]:
        """Every service process's name (replicas too), the simulator aside."""
        return [r for spec in SERVICES for r in self.replica_names(spec.name)]

    def _serve(self, replica: str) -> ManagedProcess:
        service = replica.split("#", 1)[0]
        spec = next(s for s in SERVICES if s.name == service)
        log = self.logs / f"{replica.replace('#', '-')}.log"
        return ManagedProcess(replica, service_command(spec, "serve"), log, env=self.envs[service])

    async def restart(self, name: str, *, crash: bool = False) -> None:
        """Stop a service process as Kubernetes would (SIGTERM, then it drains), or as a
        crash would (SIGKILL), and start it again."""
        service = name.split("#", 1)[0]
        spec = next(s for s in SERVICES if s.name == service)
        stopped = self.processes[name]
        await asyncio.to_thread(stopped.kill if crash else stopped.stop)
        self.processes[name] = self._serve(name)
        await wait_until_serving(self.address(service), spec.grpc_service, self.processes[name])

    def check_alive(self) -> None:
        for process in self.processes.values():
            process.check_alive()

    def write_pids(self) -> None:
        """`<run dir>/pids.json`: each process's pid now, for whoever watches the stack."""
        pids = {name: process.pid for name, process in self.processes.items()}
        write_whole(self.run_dir / "pids.json", json.dumps(pids))

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            process.stop()
        self.processes.clear()


async def merge_logs(sources: Mapping[str, Path], target: Path, interval: float = 0.2) -> None:
    """Copy every new line of each source into `target`, prefixed with its name, until
    cancelled: one place to read the whole stack, in (roughly) the order things happened."""
    width = max(len(name) for name in sources)
    offsets = {name: path.stat().st_size if path.exists() else 0 for name, path in sources.items()}
    pending = dict.fromkeys(sources, b"")
    with target.open("ab") as out:
        while True:
            for name, path in sources.items():
                try:
                    with path.open("rb") as source:
                        source.seek(offsets[name])
                        data = pending[name] + source.read()
                        offsets[name] = source.tell()
                except FileNotFoundError:  # a log nothing has written to yet
                    continue
                *lines, pending[name] = data.split(b"\n")
                for line in lines:
                    out.write(f"{name:<{width}} | ".encode() + line + b"\n")
            out.flush()
            await asyncio.sleep(interval)


@dataclass(frozen=True)
class StackPorts:
    """Where `make run` listens: the defaults of DESIGN.md, or free ones (`--free-ports`,
    for a test that runs it beside another stack)."""

    grpc: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    metrics: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_METRICS_PORTS))
    postgres: int = 5433
    kafka: int = 9092
    kafka_controller: int = 9093
    s3: int = 7070  # the S3 server of `--storage s3`
    callbacks: int = CALLBACK_PORT
    edge: int = 8080  # the REST edge of `--edge`
    graphql: int = 4000  # the GraphQL edge of `--edge`

    @classmethod
    def free(cls) -> StackPorts:
        return cls(
            {name: free_port() for name in DEFAULT_PORTS},
            {name: free_port() for name in DEFAULT_METRICS_PORTS},
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
        )

    def as_json(self) -> str:
        return json.dumps(
            {
                "grpc": dict(self.grpc),
                "metrics": dict(self.metrics),
                "postgres": self.postgres,
                "kafka": self.kafka,
                "s3": self.s3,
                "callbacks": self.callbacks,
                "edge": self.edge,
                "graphql": self.graphql,
            }
        )


BUCKET = "pixsim-assets"


@dataclass
class Edges:
    """`--edge`: the REST edge (Envoy) and the GraphQL edge (Mesh and the Hive Gateway) in
    front of the stack. Not supervised: they hold no state, so start the stack again."""

    rest: Edge
    graphql: GraphQLEdge

    @classmethod
    async def start(cls, run_dir: Path, ports: StackPorts) -> Edges:
        rest = await Edge.start(
            run_dir, stack_upstreams(ports.grpc, ports.callbacks), port=ports.edge
        )
        try:
            graphql = await GraphQLEdge.start(run_dir, ports.grpc, port=ports.graphql)
        except BaseException:
            rest.stop()
            raise
        return cls(rest, graphql)

    def stop(self) -> None:
        self.graphql.stop()
        self.rest.stop()


async def run_stack(
    run_dir: Path, ports: StackPorts | None = None, storage: str = "local", edge: bool = False
) -> None:
    ports = ports or StackPorts()
    started = time.monotonic()
    busy = [(port, name) for name, port in ports.grpc.items() if port_in_use(port)]
    if busy:
        raise SystemExit(f"port {busy[0][0]} ({busy[0][1]}) is already in use")
    infra = await Infra.start(
        run_dir,
        postgres_port=ports.postgres,
        kafka_port=ports.kafka,
        kafka_controller_port=ports.kafka_controller,
        durable=True,
    )
    s3: S3Server | None = None
    if storage == "s3":
        try:
            s3 = await S3Server.start(run_dir, ports.s3)
            await s3.create_bucket(BUCKET, exist_ok=True)
        except BaseException:
            infra.stop()
            if s3 is not None:
                s3.stop()
            raise
    services = LocalServices(
        infra,
        run_dir,
        ports=ports.grpc,
        metrics_ports=ports.metrics,
        extra_env=s3.settings(BUCKET) if s3 is not None else {},
        callback_port=ports.callbacks,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    services.logs.mkdir(parents=True, exist_ok=True)
    write_whole(run_dir / "ports.json", ports.as_json())
    merged = asyncio.create_task(
        merge_logs(
            {name: services.logs / f"{name}.log" for name in [*DEFAULT_PORTS, "supervisor"]},
            services.logs / "all.log",
        )
    )
    edges: Edges | None = None
    try:
        await services.start()
        seeded = await seed_accounts(services.keys[0], services.address("provider-gateway"))
        if seeded:
            print(f"seeded simulator accounts for {', '.join(seeded)}", flush=True)
        if edge:
            edges = await Edges.start(services.logs, ports)
        supervisor = Supervisor(services.processes, services.logs / "supervisor.log")
        services.write_pids()
        print_ready(infra, services, time.monotonic() - started, s3, edges)
        while not stop.is_set():
            if supervisor.check():
                services.write_pids()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.5)
    finally:
        print("stopping ...", flush=True)
        if edges is not None:
            edges.stop()
        services.stop()
        if s3 is not None:
            s3.stop()
        infra.stop()
        merged.cancel()


SEED_ACCOUNTS = {"pixverse": 4, "runway": 4, "pika": 4}  # provider -> max_concurrency


async def seed_accounts(private_key: Path, gateway_address: str) -> list[str]:
    """One simulator-backed account per provider, unless the provider has one already."""
    from pixsim.provider.v1 import provider_gateway_service_pb2 as pb
    from pixsim.provider.v1 import provider_gateway_service_pb2_grpc as pb_grpc
    from pixsim_common.auth import issue_token

    token = issue_token(private_key.read_text(), user_id="local-admin", roles=["admin"])
    metadata = (("authorization", f"Bearer {token}"),)
    seeded = []
    async with grpc.aio.insecure_channel(gateway_address) as channel:
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


def print_ready(
    infra: Infra,
    services: LocalServices,
    seconds: float,
    s3: S3Server | None = None,
    edges: Edges | None = None,
) -> None:
    private_key, logs = services.keys[0], services.logs
    lines = [f"PixSim7 local stack is up in {seconds:.1f}s", ""]
    lines += [
        f"  {s.name:<17} {services.address(s.name)}   metrics :{services.metrics_ports[s.name]}"
        for s in SERVICES
    ]
    lines += [
        f"  {'postgres':<17} {infra.postgres.host}:{infra.postgres.port}",
        f"  {'kafka':<17} {infra.kafka.bootstrap}",
        f"  {'provider-sim':<17} {services.simulator_url}   (PixVerse, Runway, fal/Pika APIs)",
        f"  {'callbacks':<17} http://127.0.0.1:{services.callback_port}   (fal's webhooks)",
        *([f"  {'s3':<17} {s3.endpoint}/{BUCKET}   (assets)"] if s3 is not None else []),
        *(
            [
                f"  {'rest edge':<17} {edges.rest.url}/v1/jobs   (Envoy: REST/JSON, SSE watches)",
                f"  {'graphql edge':<17} {edges.graphql.url}   (Mesh + Hive Gateway)",
            ]
            if edges is not None
            else []
        ),
        "",
        f"logs:         {logs}/all.log (every process, each line prefixed by its name)",
        f"              {logs}/<service>.log",
        f"signing key:  {private_key}",
        "",
        "try:",
        "  uv run pixsim job create --provider pixverse --operation text-to-video \\",
        '      --prompt "a red fox" --wait',
        "  uv run pixsim asset list",
        "  uv run pixsim --help",
        "  export PIXSIM_TOKEN=$(uv run pixsim token --user $USER)",
        "  .cache/bin/grpcurl -plaintext 127.0.0.1:50051 list",
        "",
        "A service that dies is restarted (see logs/supervisor.log). Ctrl-C stops everything.",
    ]
    print("\n".join(lines), flush=True)


def main(
    run_dir: Path, ports: StackPorts | None = None, storage: str = "local", edge: bool = False
) -> None:
    pidfile = run_dir / "stack.pid"
    claim_pidfile(pidfile)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_stack(run_dir, ports, storage, edge))
    finally:
        pidfile.unlink(missing_ok=True)
