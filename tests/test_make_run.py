"""`make run` as a newcomer runs it (`pixsim-local run`, here on free ports beside the other
tests' stacks, with `--storage s3 --edge`): each service SIGKILLed in turn while clients
create and watch jobs. The supervisor restarts it, the merged log says so, every
acknowledged job completes with its asset in the bucket, the clients meet nothing but
UNAVAILABLE (or a deadline, for a call in flight when a service died) in the gaps, the edges
answer, every metric the dashboard and alerts name is served, and Ctrl-C still stops
everything, the S3 server and the edges too."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from pixsim.asset.v1 import asset_service_pb2 as asset_pb
from pixsim.asset.v1 import asset_service_pb2_grpc as asset_grpc
from pixsim.job.v1 import job_service_pb2 as pb
from pixsim.job.v1 import job_service_pb2_grpc as job_grpc
from pixsim.types.v1 import types_pb2 as t
from pixsim_common.auth import issue_token
from pixsim_local.grpc_probe import wait_serving
from pixsim_local.monitoring import exported_metrics, named_metrics
from pixsim_local.processes import port_in_use
from pixsim_local.stack import SERVICES

pytestmark = pytest.mark.e2e

TERMINAL = {pb.Job.STATE_COMPLETED, pb.Job.STATE_FAILED, pb.Job.STATE_CANCELLED}
# What a client retries with the same request_id: the service was down, or died under the
# call (the chaos run's client retries the same).
RETRIED = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.asynccontextmanager
async def make_run(run_dir: Path, *args: str) -> AsyncIterator[subprocess.Popen[str]]:
    stack = subprocess.Popen(
        [
            *(sys.executable, "-m", "pixsim_local", "run", "--run-dir", str(run_dir)),
            *("--free-ports", *args),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        assert stack.stdout is not None
        while True:
            line = await asyncio.to_thread(stack.stdout.readline)
            if "local stack is up" in line:
                break
            assert line or stack.poll() is None, "make run exited before it was up"
            assert time.monotonic() < deadline, "make run was not up in time"
        yield stack
    finally:
        if stack.poll() is None:  # a failed test: Ctrl-C it too, so nothing is left running
            stack.send_signal(signal.SIGINT)
            try:
                await asyncio.to_thread(stack.wait, 90)
            except subprocess.TimeoutExpired:
                stack.kill()
        stack.wait()


class Clients:
    """Callers that keep creating jobs (retrying UNAVAILABLE, and a deadline passed while a
    service died under the call, with their request_id) and watch each to its end (watching
    again after either), counting every code met."""

    def __init__(self, jobs: job_grpc.JobServiceAsyncStub, metadata: tuple[tuple[str, str]]):
        self.jobs, self.metadata = jobs, metadata
        self.codes: Counter[str] = Counter()
        self.acknowledged: list[str] = []
        self.finished: dict[str, int] = {}
        self.creating = True

    async def _retrying(self, call: object) -> object:
        while True:
            try:
                return await call()  # type: ignore[operator]
            except grpc.aio.AioRpcError as error:
                self.codes[error.code().name] += 1
                if error.code() not in RETRIED:
                    raise
                await asyncio.sleep(0.2)

    async def create(self) -> None:
        while self.creating:
            request = pb.CreateJobRequest(
                job=pb.Job(
                    provider_id="pixverse",
                    operation_type=t.OPERATION_TYPE_TEXT_TO_VIDEO,
                    prompt="a fox that survives",
                ),
                request_id=f"survive-{uuid.uuid4().hex}",
            )
            job = await self._retrying(
                lambda request=request: self.jobs.CreateJob(
                    request, metadata=self.metadata, timeout=10
                )
            )
            assert isinstance(job, pb.Job)
            self.acknowledged.append(job.name)
            asyncio.get_running_loop().create_task(self.watch(job.name))
            await asyncio.sleep(0.3)

    async def watch(self, name: str) -> None:
        while name not in self.finished:
            try:
                async for update in self.jobs.WatchJob(
                    pb.WatchJobRequest(name=name), metadata=self.metadata, timeout=60
                ):
                    if update.state in TERMINAL:
                        self.finished[name] = update.state
                        return
            except grpc.aio.AioRpcError as error:
                self.codes[error.code().name] += 1
                await asyncio.sleep(0.2)


async def bucket_holds_the_asset_of(
    run_dir: Path, ports: dict[str, Any], job_name: str, metadata: tuple[tuple[str, str]]
) -> None:
    """The job's asset is in the S3 bucket, its download URL serves its bytes, and nothing
    is kept as a local file."""
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{ports['grpc']['job']}") as job_channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{ports['grpc']['asset']}") as asset_channel,
    ):
        job = await job_grpc.JobServiceStub(job_channel).GetJob(
            pb.GetJobRequest(name=job_name), metadata=metadata
        )
        assets = asset_grpc.AssetServiceStub(asset_channel)
        asset = await assets.GetAsset(asset_pb.GetAssetRequest(name=job.asset), metadata=metadata)
        assert asset.storage_uri.startswith("s3://pixsim-assets/"), asset.storage_uri
        link = await assets.GenerateAssetDownloadUrl(
            asset_pb.GenerateAssetDownloadUrlRequest(name=asset.name), metadata=metadata
        )
    assert link.url.startswith(f"http://127.0.0.1:{ports['s3']}/pixsim-assets/")
    async with httpx.AsyncClient() as client:
        body = (await client.get(link.url)).raise_for_status().content
    assert hashlib.sha256(body).hexdigest() == asset.sha256
    assert not list((run_dir / "storage").rglob("*.mp4"))


async def the_edges_answer(ports: dict[str, Any], token: str) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        jobs = await client.get(
            f"http://127.0.0.1:{ports['edge']}/v1/jobs",
            headers={"authorization": f"Bearer {token}"},
        )
        assert jobs.status_code == 200
        assert jobs.json()["jobs"]
        listed = await client.post(
            f"http://127.0.0.1:{ports['graphql']}/graphql",
            json={"query": "{ listJobs(input: {page_size: 1}) { jobs { name state } } }"},
            headers={"authorization": f"Bearer {token}"},
        )
        assert listed.json()["data"]["listJobs"]["jobs"]


async def every_monitored_metric_is_served(ports: dict[str, Any]) -> None:
    served = await exported_metrics(
        [f"http://127.0.0.1:{port}/metrics" for port in ports["metrics"].values()]
    )
    assert named_metrics() - served == set()


async def test_make_run_restarts_a_crashed_service_and_keeps_serving() -> None:
    """With `--storage s3` (the results in a bucket of the run's own S3 server) and
    `--edge`."""
    run_dir = Path(tempfile.mkdtemp(prefix="pixsim-make-run-"))
    async with make_run(run_dir, "--storage", "s3", "--edge") as stack:
        ports = json.loads((run_dir / "ports.json").read_text())
        async with httpx.AsyncClient() as client:
            for provider in ("pixverse", "runway", "pika"):
                await client.put(
                    f"http://127.0.0.1:{ports['grpc']['provider-sim']}"
                    f"/_sim/keys/local-{provider}-key",
                    json={"finish_ms": 300},
                )
        key = (run_dir / "keys" / "signing-key.pem").read_text()
        metadata = (("authorization", f"Bearer {issue_token(key, user_id='survivor')}"),)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['grpc']['job']}") as channel:
            clients = Clients(job_grpc.JobServiceStub(channel), metadata)
            creating = asyncio.create_task(clients.create())
            await asyncio.sleep(2)
            for spec in SERVICES:
                old = json.loads((run_dir / "pids.json").read_text())[spec.name]
                os.kill(old, signal.SIGKILL)
                deadline = time.monotonic() + 60
                while json.loads((run_dir / "pids.json").read_text())[spec.name] == old:
                    assert time.monotonic() < deadline, f"{spec.name} was not restarted"
                    await asyncio.sleep(0.2)
                address = f"127.0.0.1:{ports['grpc'][spec.name]}"
                async with grpc.aio.insecure_channel(address) as probe:
                    await wait_serving(probe, spec.grpc_service, timeout=60)
                await asyncio.sleep(1.5)  # clients work against the restarted service
            clients.creating = False
            await creating
            deadline = time.monotonic() + 90
            while set(clients.finished) != set(clients.acknowledged):
                assert time.monotonic() < deadline, "some acknowledged jobs never finished"
                await asyncio.sleep(0.5)
        assert len(clients.acknowledged) >= 10
        assert set(clients.finished.values()) == {pb.Job.STATE_COMPLETED}
        assert set(clients.codes) <= {code.name for code in RETRIED}, clients.codes

        merged = (run_dir / "logs" / "all.log").read_text()
        for spec in SERVICES:
            assert (
                f'"exited; restarting", "logger": "supervisor", "service": "{spec.name}"' in merged
            )
        await bucket_holds_the_asset_of(run_dir, ports, clients.acknowledged[0], metadata)
        await the_edges_answer(ports, issue_token(key, user_id="survivor"))
        await every_monitored_metric_is_served(ports)
        last_pids = json.loads((run_dir / "pids.json").read_text())

        stack.send_signal(signal.SIGINT)  # Ctrl-C
        await asyncio.to_thread(stack.wait, 90)
    assert stack.returncode == 0
    assert not [name for name, pid in last_pids.items() if _alive(pid)]
    assert not port_in_use(ports["s3"])
    assert not port_in_use(ports["edge"])
    assert not port_in_use(ports["graphql"])
