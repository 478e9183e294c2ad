"""The gateway's HTTP listener: the providers' completion callbacks, `POST /callbacks/{id}`.

Nothing a caller sends is believed before the provider's own verification of it passes: a
callback not provably the provider's is 401, one too big 413, and a verified one that
cannot be read 400. A verified callback for a task no attempt has yet (its submit is still
being recorded) is 404, so the provider delivers it again; polling covers it meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pixsim_provider_gateway import metrics
from pixsim_provider_gateway.providers.callbacks import (
    CallbackMalformed,
    CallbackRefused,
    KeysUnavailable,
)
from pixsim_provider_gateway.providers.registry import ProviderRegistry
from pixsim_provider_gateway.service.callbacks import Callbacks, Heard

# A webhook carries a result's URL, not its bytes: far below this.
MAX_CALLBACK_BYTES = 1024 * 1024
log = structlog.get_logger("pixsim.gateway.callbacks")


def callback_app(registry: ProviderRegistry, callbacks: Callbacks) -> Starlette:
    async def receive(request: Request) -> Response:
        provider_id = request.path_params["provider_id"]
        receiver = registry.callbacks(provider_id)
        if receiver is None:
            return _answer(404, "this provider sends no callbacks")
        body = await _bounded_body(request)
        if body is None:
            return _counted(provider_id, "TOO_LARGE", 413, "the callback is too large")
        try:
            await receiver.verify(request.headers, body)
            notice = receiver.notice(request.headers, body)
        except KeysUnavailable as error:
            return _counted(provider_id, "KEYS_UNAVAILABLE", 503, str(error))
        except CallbackRefused as error:
            log.warning("callback refused", provider=provider_id, why=str(error))
            return _counted(provider_id, "REFUSED", 401, str(error))
        except CallbackMalformed as error:
            return _counted(provider_id, "MALFORMED", 400, str(error))
        heard = await callbacks.heard(provider_id, notice)
        status = 404 if heard is Heard.UNKNOWN else 200
        return _counted(provider_id, heard.value, status, heard.value.lower())

    return Starlette(routes=[Route("/callbacks/{provider_id:str}", receive, methods=["POST"])])


def _answer(status: int, message: str) -> Response:
    return JSONResponse({"status": status, "message": message}, status_code=status)


def _counted(provider_id: str, outcome: str, status: int, message: str) -> Response:
    metrics.CALLBACKS.labels(provider_id, outcome).inc()
    return _answer(status, message)


async def _bounded_body(request: Request) -> bytes | None:
    """The body, or None past `MAX_CALLBACK_BYTES` (read no further than that)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_CALLBACK_BYTES:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_CALLBACK_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class _EmbeddedServer(uvicorn.Server):
    """uvicorn inside the service's own loop: the service handles its signals (drain)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class CallbackListener:
    """Serves `app` on `host:port`. The socket is shared (SO_REUSEPORT) as the gRPC port is,
    so replicas on one host listen together, as pods behind one Service do."""

    name = "callbacks"

    def __init__(self, app: Starlette, host: str, port: int) -> None:
        self._app, self._host, self._port = app, host, port
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        listening = socket.socket(family, socket.SOCK_STREAM)
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listening.bind((self._host, self._port))
        config = uvicorn.Config(self._app, lifespan="off", access_log=False, log_level="warning")
        self._server = _EmbeddedServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[listening]), name=self.name)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
