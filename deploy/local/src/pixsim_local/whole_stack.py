"""The whole stack as processes, as `make run` starts it (the simulator and the four services
over real PostgreSQL and a Kafka broker of its own), with clients for a test to drive it: the
`whole_stack` fixture the end-to-end, security and reliability tests share."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
from google.protobuf import field_mask_pb2

from pixsim.asset.v1 import asset_service_pb2 as asset_pb
from pixsim.asset.v1 import asset_service_pb2_grpc as asset_grpc
from pixsim.job.v1 import job_service_pb2 as pb
from pixsim.job.v1 import job_service_pb2_grpc as job_grpc
from pixsim.provider.v1 import provider_gateway_service_pb2 as gw_pb
from pixsim.provider.v1 import provider_gateway_service_pb2_grpc as gw_grpc
from pixsim.scene.v1 import scene_service_pb2_grpc as scene_grpc
from pixsim.types.v1 import types_pb2 as t
from pixsim_common import topics
from pixsim_common.auth import ADMIN_ROLE, issue_token
from pixsim_local.infra import Infra, infra_of_its_own
from pixsim_local.kafka import EventTap, KafkaBroker
from pixsim_local.processes import free_port
from pixsim_local.stack import DEFAULT_PORTS, LocalServices, seed_accounts

Metadata = tuple[tuple[str, str], ...]
TERMINAL = {
    pb.Job.STATE_COMPLETED,
    pb.Job.STATE_FAILED,
    pb.Job.STATE_CANCELLED,
    pb.Job.STATE_EXPIRED,
}


class MediaFiles:
    """Input files over loopback HTTP, for registering assets by URL."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str]] = {}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readuntil(b"\r\n\r\n")
            body, kind = self.files.get(request.split(b" ", 2)[1].decode(), (b"", ""))
            status = "200 OK" if kind else "404 Not Found"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {kind or 'text/plain'}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        finally:
            writer.close()


@dataclass
class WholeStack:
    services: LocalServices
    jobs: job_grpc.JobServiceAsyncStub
    assets: asset_grpc.AssetServiceAsyncStub
    scenes: scene_grpc.SceneServiceAsyncStub
    gateway: gw_grpc.ProviderGatewayServiceAsyncStub
    tap: EventTap
    files: MediaFiles
    media_url: str

    def auth(self, user: str, *, admin: bool = False) -> Metadata:
        token = issue_token(
            self.services.keys[0].read_text(), user_id=user, roles=[ADMIN_ROLE] if admin else []
        )
        return (("authorization", f"Bearer {token}"),)

    @property
    def alice(self) -> Metadata:
        return self.auth("alice")

    async def registered(self, body: bytes, kind: str, who: Metadata | None = None) -> str:
        """An asset registered from a loopback URL (so a provider could fetch it)."""
        path = f"/{uuid.uuid4().hex}"
        self.files.files[path] = (body, kind)
        asset = await self.assets.CreateAsset(
            asset_pb.CreateAssetRequest(uri=self.media_url + path), metadata=who or self.alice
        )
        return asset.name

    async def uploaded(self, body: bytes, who: Metadata | None = None) -> asset_pb.Asset:
        """An asset uploaded as a file (it has no URL anywhere)."""

        async def parts() -> AsyncIterator[asset_pb.UploadAssetRequest]:
            yield asset_pb.UploadAssetRequest(metadata=asset_pb.UploadAssetRequest.Metadata())
            for start in range(0, len(body), 1024 * 1024):
                yield asset_pb.UploadAssetRequest(chunk=body[start : start + 1024 * 1024])

        return await self.assets.UploadAsset(parts(), metadata=who or self.alice)

    async def content(self, name: str, variant: str = "", who: Metadata | None = None) -> bytes:
        return b"".join(
            [
                part.chunk
                async for part in self.assets.ReadAssetContent(
                    asset_pb.ReadAssetContentRequest(name=name, variant=variant),
                    metadata=who or self.alice,
                )
            ]
        )

    async def sim_tasks(self, prompt: str) -> list[dict[str, Any]]:
        """The simulator's record of the tasks with this prompt, with the inputs it got."""
        async with httpx.AsyncClient() as client:
            answer = await client.get(
                f"{self.services.simulator_url}/_sim/tasks", params={"prompt": prompt}
            )
        tasks: list[dict[str, Any]] = answer.raise_for_status().json()
        return tasks

    async def sim_key(self, provider: str, **knobs: Any) -> None:
        async with httpx.AsyncClient() as client:
            answer = await client.put(
                f"{self.services.simulator_url}/_sim/keys/local-{provider}-key", json=knobs
            )
            answer.raise_for_status()

    async def account_of(self, provider: str) -> gw_pb.Account:
        """The provider's (first) account, as an admin sees it."""
        accounts = await self.gateway.ListAccounts(
            gw_pb.ListAccountsRequest(), metadata=self.auth("root", admin=True)
        )
        return next(a for a in accounts.accounts if a.provider_id == provider)

    @asynccontextmanager
    async def account_changed(self, provider: str, **fields: int) -> AsyncIterator[gw_pb.Account]:
        """The provider's account with `fields` (credits, max_concurrency, ...) changed
        meanwhile; yields it as it was, and puts the fields back."""
        before = await self.account_of(provider)

        async def update(values: dict[str, int]) -> None:
            await self.gateway.UpdateAccount(
                gw_pb.UpdateAccountRequest(
                    account=gw_pb.Account(name=before.name, **values),  # type: ignore[arg-type]
                    update_mask=field_mask_pb2.FieldMask(paths=sorted(values)),
                ),
                metadata=self.auth("root", admin=True),
            )

        await update(fields)
        try:
            yield before
        finally:
            await update({name: getattr(before, name) for name in fields})

    @asynccontextmanager
    async def starved(self, provider: str) -> AsyncIterator[gw_pb.Provider]:
        """The provider paused meanwhile, so nothing of it is dispatched, on any of its
        accounts (its jobs wait); resumed after."""
        admin = self.auth("root", admin=True)
        name = f"providers/{provider}"
        paused = await self.gateway.PauseProvider(
            gw_pb.PauseProviderRequest(name=name, reason="a test holds its jobs"), metadata=admin
        )
        try:
            yield paused
        finally:
            await self.gateway.ResumeProvider(
                gw_pb.ResumeProviderRequest(name=name), metadata=admin
            )

    async def create(
        self,
        provider: str,
        operation: int = t.OPERATION_TYPE_TEXT_TO_VIDEO,
        prompt: str = "a red fox",
        inputs: list[t.GenerationInput] | None = None,
        metadata: Metadata | None = None,
        request_id: str = "",
        timeout: float | None = None,
    ) -> pb.Job:
        return await self.jobs.CreateJob(
            pb.CreateJobRequest(
                job=pb.Job(
                    provider_id=provider,
                    operation_type=operation,  # type: ignore[arg-type]
                    prompt=prompt,
                    inputs=inputs or [],
                ),
                request_id=request_id,
            ),
            metadata=metadata or self.alice,
            timeout=timeout,
        )

    async def until_done(
        self, job: pb.Job, timeout: float = 60, metadata: Metadata | None = None
    ) -> pb.Job:
        async def watch() -> pb.Job:
            last = job
            async for update in self.jobs.WatchJob(
                pb.WatchJobRequest(name=job.name), metadata=metadata or self.alice
            ):
                last = update
                if update.state in TERMINAL:
                    break
            return last

        return await asyncio.wait_for(watch(), timeout)

    async def asset_of(self, job: pb.Job) -> asset_pb.Asset:
        assert job.state == pb.Job.STATE_COMPLETED, job
        return await self.assets.GetAsset(
            asset_pb.GetAssetRequest(name=job.asset), metadata=self.alice
        )


@asynccontextmanager
async def whole_stack(
    postgres_infra: Infra,
    kafka: KafkaBroker,
    settings: Mapping[str, str] | None = None,
    simulator_args: Sequence[str] = (),
    replicas: Mapping[str, int] | None = None,
) -> AsyncIterator[WholeStack]:
    """Start everything (about 15 s), yield the clients, stop everything. `settings` (names
    without a service prefix) are given to every service, over the defaults below;
    `replicas` runs more than one process of a service."""
    run_dir = Path(tempfile.mkdtemp(prefix="pixsim-e2e-"))
    services = LocalServices(
        Infra(postgres_infra.postgres, kafka),
        run_dir,
        ports={name: free_port() for name in DEFAULT_PORTS},
        metrics_ports={},
        database_prefix=f"e2e_{secrets.token_hex(3)}_",
        extra_env={
            "POLL_FIRST_SECONDS": "0.1",
            "POLL_CAP_SECONDS": "0.3",
            "POLL_MIN_SECONDS": "0.05",
            # fal's tasks end by their webhooks; the first poll after them is the fallback.
            "CALLBACK_POLL_FIRST_SECONDS": "5",
            "RETRY_BASE_SECONDS": "0.1",
            "RETRY_CAP_SECONDS": "0.5",
            # A replica restarted mid-poll hands its polls over this soon.
            "POLL_LEASE_SECONDS": "3",
            "DOWNLOAD_BACKOFF_SECONDS": "0.05",
            "WEBHOOK_RETRY_BASE_SECONDS": "0.2",
            "LOG_LEVEL": "INFO",
            # Spans go to the logs too, so the secrets scan reads traces as well.
            "OTEL_EXPORTER": "console",
            **(settings or {}),
        },
        simulator_args=simulator_args,
        replicas=dict(replicas or {}),
        callback_port=free_port(),
    )
    files = MediaFiles()
    server = await asyncio.start_server(files.handle, "127.0.0.1", 0)
    media_url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    tap = EventTap(
        kafka.bootstrap,
        [name for topic in topics.ALL_TOPICS for name in (topic.name, topic.dlq)],
    )
    try:
        await services.start()
        await seed_accounts(services.keys[0], services.address("provider-gateway"))
        await tap.start()
        async with httpx.AsyncClient() as client:
            for provider in ("pixverse", "runway", "pika"):
                await client.put(
                    f"{services.simulator_url}/_sim/keys/local-{provider}-key",
                    json={"finish_ms": 300},
                )
        channels = {
            name: grpc.aio.insecure_channel(services.address(name))
            for name in ("job", "asset", "scene", "provider-gateway")
        }
        stack = WholeStack(
            services,
            job_grpc.JobServiceStub(channels["job"]),
            asset_grpc.AssetServiceStub(channels["asset"]),
            scene_grpc.SceneServiceStub(channels["scene"]),
            gw_grpc.ProviderGatewayServiceStub(channels["provider-gateway"]),
            tap,
            files,
            media_url,
        )
        yield stack
        for channel in channels.values():
            await channel.close(None)
    finally:
        try:
            await tap.stop()
        finally:  # the services are stopped whatever the tap's stop raised
            server.close()
            services.stop()
            shutil.rmtree(run_dir, ignore_errors=True)


@asynccontextmanager
async def whole_stack_of_its_own(
    settings: Mapping[str, str] | None = None,
    simulator_args: Sequence[str] = (),
    replicas: Mapping[str, int] | None = None,
) -> AsyncIterator[WholeStack]:
    """The whole stack over a PostgreSQL cluster (fsync off) and a broker started for it
    alone, all removed afterwards: for runs that crash them (the chaos run) or measure them
    (the benchmarks). Their handles are `stack.services.infra`."""
    async with (
        infra_of_its_own("pixsim-own-") as infra,
        whole_stack(infra, infra.kafka, settings, simulator_args, replicas) as stack,
    ):
        yield stack
