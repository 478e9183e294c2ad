"""Asking a running service, over a real channel, whether it serves and what it offers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


async def wait_serving(
    channel: grpc.aio.Channel,
    service: str,
    *,
    timeout: float = 60.0,
    check_alive: Callable[[], None] | None = None,
) -> None:
    """Return once `service`'s health check says SERVING; `check_alive` may raise to give up."""
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    while True:
        if check_alive is not None:
            check_alive()
        with contextlib.suppress(grpc.aio.AioRpcError):
            answer = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
            if answer.status == health_pb2.HealthCheckResponse.SERVING:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{service} not SERVING after {timeout}s")
        await asyncio.sleep(0.1)


async def reflected_services(channel: grpc.aio.Channel) -> set[str]:
    """The services the server lists through reflection."""
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    return {
        entry.name
        async for response in responses
        for entry in response.list_services_response.service
    }
