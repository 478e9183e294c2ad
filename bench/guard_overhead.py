"""What the kit's guard costs per RPC.

The same trivial GetJob is served twice in one process: by a plain grpc.aio server (the
baseline) and by the kit's server (tracing, JWT verification, protovalidate, metrics, JSON
access log). Both are driven by the same client load; the ratio is guarded/plain throughput.
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import time
from typing import Any

import grpc

from pixsim.job.v1 import job_service_pb2, job_service_pb2_grpc
from pixsim_common.auth import TokenVerifier, generate_keypair, issue_token
from pixsim_common.grpc_server import AccessPolicy, build_server
from pixsim_common.logging import configure_logging
from pixsim_common.tracing import configure_tracing

NAME = "jobs/0b1c2d3e-0000-4000-8000-000000000001"
CALLS = 4000
CONCURRENCY = 32


class Jobs(job_service_pb2_grpc.JobServiceServicer):
    async def GetJob(self, request: Any, context: Any) -> job_service_pb2.Job:
        return job_service_pb2.Job(name=request.name, state=job_service_pb2.Job.STATE_QUEUED)


async def start(server: grpc.aio.Server) -> int:
    job_service_pb2_grpc.add_JobServiceServicer_to_server(Jobs(), server)  # type: ignore[abstract]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return port


async def drive(port: int, token: str) -> tuple[float, list[float]]:
    """Calls per second and per-call latencies (ms) at CONCURRENCY callers."""
    metadata = (("authorization", f"Bearer {token}"),)
    request = job_service_pb2.GetJobRequest(name=NAME)
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = job_service_pb2_grpc.JobServiceStub(channel)
        for _ in range(200):  # warm-up
            await stub.GetJob(request, metadata=metadata)

        async def caller(count: int) -> None:
            for _ in range(count):
                began = time.perf_counter()
                await stub.GetJob(request, metadata=metadata)
                latencies.append((time.perf_counter() - began) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(caller(CALLS // CONCURRENCY) for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - started
    return len(latencies) / elapsed, latencies


def p(latencies: list[float], q: int) -> float:
    return statistics.quantiles(latencies, n=100)[q - 1]


def configure() -> None:
    configure_tracing("bench", "none")
    configure_logging("bench", "INFO", "json")
    # The access log is rendered as in production, but written to /dev/null, not a terminal.
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the process


async def main() -> None:
    private_key, public_key = generate_keypair()
    token = issue_token(private_key, user_id="bench")
    verifier = TokenVerifier(public_key=public_key, issuer="pixsim-local", audience="pixsim")

    plain = grpc.aio.server()
    guarded = build_server("bench", AccessPolicy(verifier))
    plain_port, guarded_port = await start(plain), await start(guarded)
    results = {}
    for label, port in (("plain", plain_port), ("guarded", guarded_port)) * 2:
        results[label] = await drive(port, token)  # second round kept: both warmed alike
    await plain.stop(0)
    await guarded.stop(0)

    print(
        f"\nguard overhead: {CALLS} GetJob calls, {CONCURRENCY} concurrent callers, "
        "one process (client and server share the core)"
    )
    print(f"{'server':<10}{'calls/s':>10}{'p50 ms':>9}{'p99 ms':>9}")
    for label, (rate, latencies) in results.items():
        print(f"{label:<10}{rate:>10.0f}{p(latencies, 50):>9.2f}{p(latencies, 99):>9.2f}")
    ratio = results["guarded"][0] / results["plain"][0]
    print(f"ratio guarded/plain throughput: {ratio:.2f}")
