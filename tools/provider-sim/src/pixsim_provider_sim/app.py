"""The provider simulator: Runway's `/v1/...`, fal's `/fal-ai/...` (Pika) and PixVerse's
`/openapi/v2/...` on one server, plus `/_sim/...` for media and for tests' control.

Shapes follow shared/PROVIDERS.md. Faults are scripted per key (`PUT /_sim/keys/{key}`) or
per request with a prompt knob such as `[sim:moderation]` (see `state.Fault`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from pixsim_provider_sim.inputs import Received, Refused, take
from pixsim_provider_sim.inputs import fetch as fetch_input
from pixsim_provider_sim.media import render_mp4, render_png
from pixsim_provider_sim.state import Fault, KeyConfig, Outcome, SimState, Task
from pixsim_provider_sim.webhooks import FalWebhooks


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _dimensions(short_side: int, aspect: str) -> tuple[int, int]:
    """Width and height for a short side and an aspect ratio like `16:9` (both even)."""
    a, b = (int(x) for x in aspect.split(":"))
    if a >= b:
        width, height = round(short_side * a / b), short_side
    else:
        width, height = short_side, round(short_side * b / a)
    return width - width % 2, height - height % 2


RENDERS_KEPT = 128


def _render(kind: str, seed: int, width: int, height: int, seconds: float) -> bytes:
    if kind == "video":
        return render_mp4(seed, width, height, seconds)
    return render_png(seed, width, height)


class Simulator:
    def __init__(self, state: SimState) -> None:
        self.state = state
        self._secret = secrets.token_bytes(16)
        self._client: httpx.AsyncClient | None = None
        self.webhooks = FalWebhooks(lambda: self.client)
        # Outputs being made, by what they are made of: each rendered once, from the moment
        # its task is accepted, as a provider has its file ready when the task ends.
        self._renders: dict[tuple[str, int, int, int, float], asyncio.Task[bytes]] = {}

    @property
    def client(self) -> httpx.AsyncClient:
        """Fetches inputs given by URL, as a provider's servers would."""
        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=True)
        return self._client

    async def take_all(self, values: list[object]) -> list[Received]:
        return [await take(value, self.state.uploads, self.client) for value in values]

    # ---- shared ------------------------------------------------------------------------

    async def _enter(self, key: str) -> KeyConfig:
        """Count the call and apply the key's latency."""
        config = self.state.config(key)
        self.state.stats_of(key).calls += 1
        if config.latency_ms:
            await asyncio.sleep(config.latency_ms / 1000)
        return config

    def _signature(self, name: str, expires: int) -> str:
        return hmac.new(self._secret, f"{name}:{expires}".encode(), hashlib.sha256).hexdigest()

    def media_url(self, request: Request, task: Task) -> str:
        """The output's URL, signed and expiring as real providers' are: Runway's "expire
        within 24-48 hours" (the `--url-ttl` here, or the key's `url_ttl_s`)."""
        return self._media_url_at(str(request.base_url), task)

    def _media_url_at(self, base_url: str, task: Task) -> str:
        wall = time.time() + (task.url_expires_at - self.state.clock())
        expires = int(min(wall, 2**40))
        query = f"expires={expires}&signature={self._signature(task.media_name, expires)}"
        return base_url.rstrip("/") + f"/_sim/media/{task.media_name}?{query}"

    async def media(self, request: Request) -> Response:
        name = request.path_params["name"]
        task = self.state.tasks.get(name.rsplit(".", 1)[0])
        if task is None or task.media_name != name:
            return JSONResponse({"error": "not found"}, status_code=404)
        try:
            expires = int(request.query_params.get("expires", ""))
        except ValueError:
            return JSONResponse({"error": "AccessDenied: no signature"}, status_code=403)
        given = request.query_params.get("signature", "")
        if not hmac.compare_digest(given, self._signature(name, expires)):
            return JSONResponse({"error": "AccessDenied: bad signature"}, status_code=403)
        if time.time() > expires:
            return JSONResponse({"error": "AccessDenied: the URL has expired"}, status_code=403)
        body = await self.output_of(task)
        return Response(body, media_type="video/mp4" if task.kind == "video" else "image/png")

    def output_of(self, task: Task) -> asyncio.Task[bytes]:
        """The task's output file, rendered once (concurrent fetches wait for the same one)."""
        key = (task.kind, task.seed, task.width, task.height, task.seconds)
        made = self._renders.get(key)
        # A render that failed or was cancelled is made again (exception() of a cancelled
        # future would raise).
        if made is None or (made.done() and (made.cancelled() or made.exception() is not None)):
            made = asyncio.ensure_future(asyncio.to_thread(_render, *key))
            self._renders[key] = made
            while len(self._renders) > RENDERS_KEPT:
                self._renders.pop(next(iter(self._renders)))
        return made

    def accepted(self, task: Task) -> None:
        """A new task: one that will succeed starts making its output now."""
        if task.outcome is Outcome.SUCCEED:
            self.output_of(task)

    # ---- control API -------------------------------------------------------------------

    async def stats(self, request: Request) -> Response:
        return JSONResponse(self.state.snapshot() | {"webhooks": vars(self.webhooks.stats)})

    async def jwks(self, request: Request) -> Response:
        """fal's webhook signing keys (at rest.alpha.fal.ai/.well-known/jwks.json)."""
        return JSONResponse(self.webhooks.jwks())

    async def submits(self, request: Request) -> Response:
        """Submit requests received per prompt (see `SimState.prompt_submits`)."""
        return JSONResponse(dict(self.state.prompt_submits))

    async def tasks(self, request: Request) -> Response:
        """Tasks received (filtered by `prompt`): what each was given of its inputs, and where
        it is now (`phase`)."""
        prompt = request.query_params.get("prompt")
        now = self.state.clock()
        return JSONResponse(
            [
                {
                    "id": task.id,
                    "provider": task.provider,
                    "phase": task.phase(now),
                    "polls": task.polls,
                    # When it was accepted and when it ended, on the wall clock (ended_at
                    # None while it runs).
                    "created_at": time.time() - (now - task.created_at),
                    "ended_at": time.time() - (now - task.ended_at())
                    if task.ended_at() <= now
                    else None,
                    "prompt": task.request.get("prompt") or task.request.get("promptText", ""),
                    "inputs": [vars_of(received) for received in task.inputs],
                }
                for task in self.state.tasks.values()
                if prompt is None
                or prompt in (task.request.get("prompt"), task.request.get("promptText"))
            ]
        )

    async def reset(self, request: Request) -> Response:
        body = await request.json() if await request.body() else {}
        self.state.reset(body.get("seed"))
        self.webhooks.stats = type(self.webhooks.stats)()
        return JSONResponse(self.state.snapshot())

    async def configure_key(self, request: Request) -> Response:
        key = request.path_params["key"]
        body = await request.json()
        config = self.state.config(key)
        for name, value in body.items():
            if not hasattr(config, name):
                return JSONResponse({"error": f"unknown knob {name}"}, status_code=400)
            setattr(config, name, Fault(value) if name == "fault" and value else value)
        return JSONResponse(vars(config) | {"fault": config.fault and config.fault.value})

    async def _scripted(
        self,
        key: str,
        prompt: str,
        respond: Callable[[Fault | None, KeyConfig], Response | None],
    ) -> tuple[Response | None, Fault | None]:
        """The answer a submit's scripted fault calls for (a hang never answers), or None;
        and the fault, decided once here (a counted fault is spent by this submit)."""
        fault = self.state.fault_for(key, prompt)
        if fault is Fault.HANG:
            return await self.hang(), fault
        return respond(fault, self.state.config(key)), fault

    async def hang(self) -> Response:
        await asyncio.sleep(3600)  # until the client gives up and disconnects
        return Response(status_code=504)

    # ---- Runway ------------------------------------------------------------------------

    def _runway_key(self, request: Request) -> str | None:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        return key if scheme.lower() == "bearer" and key else None

    async def runway_create(self, request: Request) -> Response:
        key = self._runway_key(request)
        if key is None:
            return JSONResponse({"error": "Unauthorized"}, status_code=401)
        config = await self._enter(key)
        body = await request.json()
        prompt = str(body.get("promptText", ""))
        answer, fault = await self._scripted(key, prompt, self._runway_fault)
        if answer is not None:
            return answer
        for required in ("model",):
            if not body.get(required):
                return JSONResponse({"error": f"{required} is required"}, status_code=400)
        endpoint = request.url.path.rsplit("/", 1)[-1]
        if endpoint == "image_to_video" and not body.get("promptImage"):
            return JSONResponse({"error": "promptImage is required"}, status_code=400)
        if endpoint == "text_to_video" and not prompt:
            return JSONResponse({"error": "promptText is required"}, status_code=400)
        if len(prompt) > 1000:
            return JSONResponse({"error": "promptText is too long"}, status_code=400)
        try:
            inputs = await self.take_all(_runway_inputs(body))
        except Refused as error:
            field = "promptVideo" if endpoint == "video_to_video" else "promptImage"
            return JSONResponse({"error": f"{field}: {error}"}, status_code=400)
        ratio = str(body.get("ratio", "1280:720"))
        try:
            width, height = (int(x) for x in ratio.split(":"))
        except ValueError:
            return JSONResponse({"error": f"ratio {ratio!r} is invalid"}, status_code=400)
        seconds = float(body.get("duration", 5))
        cost = int(seconds * 5)
        if config.credits < cost:
            return self._runway_fault(Fault.NO_CREDIT, config)  # type: ignore[return-value]
        task = self.state.create_task(
            fault=fault,
            provider="runway",
            key=key,
            kind="video",
            width=width,
            height=height,
            seconds=seconds,
            cost=cost,
            prompt=prompt,
            request=body,
            inputs=inputs,
        )
        self.accepted(task)
        return JSONResponse({"id": task.id, "estimatedCost": {"credits": cost}})

    async def runway_upload_slot(self, request: Request) -> Response:
        """`POST /v1/uploads`: a slot to send one file to, as Runway's SDK uses it."""
        key = self._runway_key(request)
        if key is None:
            return JSONResponse({"error": "Unauthorized"}, status_code=401)
        await self._enter(key)
        body = await request.json()
        if not body.get("filename") or body.get("type") != "ephemeral":
            return JSONResponse({"error": "filename and type ephemeral are required"}, 400)
        slot = self.state.new_id()
        self.state.uploads.pending.add(slot)
        base = str(request.base_url).rstrip("/")
        return JSONResponse(
            {
                "uploadUrl": f"{base}/_sim/runway-uploads/{slot}",
                "fields": {"key": f"uploads/{slot}/{body['filename']}", "x-sim-slot": slot},
                "runwayUri": f"runway://{slot}",
            }
        )

    async def runway_upload(self, request: Request) -> Response:
        """The slot's URL: the file as a multipart form, with the slot's fields, no auth."""
        slot = request.path_params["slot"]
        form = await request.form()
        file = form.get("file")
        if slot not in self.state.uploads.pending or form.get("x-sim-slot") != slot:
            return Response("<Error><Code>AccessDenied</Code></Error>", status_code=403)
        if file is None or isinstance(file, str):
            return Response("<Error><Code>MissingFile</Code></Error>", status_code=400)
        self.state.uploads.keep(slot, await file.read())
        return Response(status_code=204)

    def _runway_fault(self, fault: Fault | None, config: KeyConfig) -> Response | None:
        match fault:
            case Fault.RATE_LIMIT:
                return JSONResponse(
                    {"error": "You have exceeded the rate limit."},
                    status_code=429,
                    headers={"retry-after": str(config.retry_after_s)},
                )
            case Fault.SERVER_ERROR:
                return JSONResponse({"error": "Service unavailable"}, status_code=503)
            case Fault.INVALID:
                return JSONResponse({"error": "ratio: Invalid enum value"}, status_code=400)
            case Fault.NO_CREDIT:
                return JSONResponse(
                    {"error": "You do not have enough credits to run this task."},
                    status_code=400,
                )
            case Fault.BAD_KEY:
                return JSONResponse({"error": "Invalid API key"}, status_code=401)
        return None

    async def runway_task(self, request: Request) -> Response:
        key = self._runway_key(request)
        if key is None:
            return JSONResponse({"error": "Unauthorized"}, status_code=401)
        await self._enter(key)
        task = self.state.tasks.get(request.path_params["task_id"])
        if task is None or task.provider != "runway" or task.key != key:
            return JSONResponse({"error": "Task not found"}, status_code=404)
        if request.method == "DELETE":
            self.state.cancel(task)
            return Response(status_code=204)
        task.polls += 1
        phase = task.phase(self.state.clock())
        body: dict[str, Any] = {"id": task.id, "createdAt": _now_iso()}
        cost = {"credits": task.cost}
        if phase == "queued":
            body |= {"status": "PENDING", "estimatedCost": cost}
        elif phase == "running":
            body |= {
                "status": "RUNNING",
                "progress": round(task.progress(self.state.clock()), 3),
                "estimatedCost": cost,
            }
        elif phase == "succeeded":
            body |= {"status": "SUCCEEDED", "output": [self.media_url(request, task)], "cost": cost}
        elif phase == "moderated":
            body |= {
                "status": "FAILED",
                "failure": "The prompt did not pass moderation.",
                "failureCode": "SAFETY.INPUT.TEXT",
                "cost": cost,
            }
        elif phase == "failed":
            body |= {
                "status": "FAILED",
                "failure": "An internal error occurred.",
                "failureCode": "INTERNAL",
                "cost": {"credits": 0},
            }
        else:
            body |= {"status": "CANCELLED", "cost": {"credits": 0}}
        return JSONResponse(body)

    async def runway_organization(self, request: Request) -> Response:
        key = self._runway_key(request)
        if key is None:
            return JSONResponse({"error": "Unauthorized"}, status_code=401)
        config = await self._enter(key)
        return JSONResponse(
            {
                "creditBalance": config.credits,
                "tier": {"maxMonthlyCreditSpend": 1_000_000, "models": {}},
                "usage": {"models": {}},
            }
        )

    # ---- fal (Pika) --------------------------------------------------------------------

    def _fal_key(self, request: Request) -> str | None:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        return key if scheme.lower() == "key" and key else None

    def _fal_urls(self, request: Request, request_id: str) -> dict[str, str]:
        base = str(request.base_url).rstrip("/") + f"/fal-ai/pika/requests/{request_id}"
        return {
            "response_url": base,
            "status_url": f"{base}/status",
            "cancel_url": f"{base}/cancel",
        }

    async def fal_submit(self, request: Request) -> Response:
        key = self._fal_key(request)
        if key is None:
            return JSONResponse({"detail": "Missing authorization"}, status_code=401)
        config = await self._enter(key)
        body = await request.json()
        prompt = str(body.get("prompt", ""))
        answer, fault = await self._scripted(key, prompt, self._fal_fault)
        if answer is not None:
            return answer
        operation = request.path_params["operation"]
        problem = _fal_missing(operation, body)
        if problem is not None:
            return JSONResponse(
                {
                    "detail": [
                        {"loc": ["body", problem], "msg": "field required", "type": "missing"}
                    ]
                },
                status_code=422,
            )
        images = body.get("image_urls") or ([body["image_url"]] if body.get("image_url") else [])
        try:
            inputs = await self.take_all(list(images))
        except Refused as error:
            field = "image_urls" if "image_urls" in body else "image_url"
            return JSONResponse(
                {
                    "detail": [
                        {"loc": ["body", field], "msg": str(error), "type": "file_download_error"}
                    ]
                },
                status_code=422,
            )
        resolution = int(str(body.get("resolution", "720p")).rstrip("p") or 720)
        width, height = _dimensions(resolution, str(body.get("aspect_ratio", "16:9")))
        seconds = float(body.get("duration", 5))
        if operation == "pikaframes":
            seconds = float(
                sum(t.get("duration", 5) for t in body.get("transitions", []))
                or 5 * (len(body["image_urls"]) - 1)
            )
        if config.credits < 1:
            return self._fal_fault(Fault.NO_CREDIT, config)  # type: ignore[return-value]
        task = self.state.create_task(
            fault=fault,
            provider="pika",
            key=key,
            kind="video",
            width=width,
            height=height,
            seconds=seconds,
            cost=1,
            prompt=prompt,
            request=body,
            inputs=inputs,
        )
        self.accepted(task)
        if webhook := request.query_params.get("fal_webhook"):
            self.webhooks.schedule(self._fal_webhook(webhook, task, str(request.base_url)))
        return JSONResponse({"request_id": task.id, **self._fal_urls(request, task.id)})

    async def _fal_webhook(self, url: str, task: Task, base_url: str) -> None:
        """The request's webhook, once it has ended (none for a cancelled one)."""
        config = self.state.config(task.key)
        await asyncio.sleep(max(task.finish_at - self.state.clock(), 0.0))
        await asyncio.sleep(config.webhook_delay_ms / 1000)
        if task.phase(self.state.clock()) == "cancelled":
            return
        status, answer = self._fal_ended(task, base_url)
        ok = status == 200
        body = {
            "request_id": task.id,
            "gateway_request_id": task.id,
            "status": "OK" if ok else "ERROR",
            "payload": answer,
            **({} if ok else {"error": f"Invalid status code: {status}"}),
        }
        await self.webhooks.deliver(url, task.id, task.key, body, config.webhook_copies)

    def _fal_fault(self, fault: Fault | None, config: KeyConfig) -> Response | None:
        match fault:
            case Fault.RATE_LIMIT:
                return JSONResponse(
                    {"detail": "Too many requests"},
                    status_code=429,
                    headers={"retry-after": str(config.retry_after_s)},
                )
            case Fault.SERVER_ERROR:
                return _fal_runner_failure()
            case Fault.INVALID:
                return JSONResponse(
                    {
                        "detail": [
                            {
                                "loc": ["body", "aspect_ratio"],
                                "msg": "unexpected value",
                                "type": "value_error",
                            }
                        ]
                    },
                    status_code=422,
                )
            case Fault.NO_CREDIT:
                return JSONResponse(
                    {
                        "detail": "User is locked. Reason: Exhausted balance. Top up your balance "
                        "at fal.ai/dashboard/billing."
                    },
                    status_code=403,
                )
            case Fault.BAD_KEY:
                return JSONResponse(
                    {"detail": "No user found for Key ID and Secret"}, status_code=401
                )
        return None

    def _fal_task(self, request: Request) -> tuple[str | None, Task | None]:
        key = self._fal_key(request)
        task = self.state.tasks.get(request.path_params["request_id"])
        if task is not None and (task.provider != "pika" or task.key != key):
            task = None
        return key, task

    async def fal_status(self, request: Request) -> Response:
        key, task = self._fal_task(request)
        if key is None:
            return JSONResponse({"detail": "Missing authorization"}, status_code=401)
        await self._enter(key)
        if task is None:
            return JSONResponse({"detail": "Request not found"}, status_code=404)
        task.polls += 1
        phase = task.phase(self.state.clock())
        response_url = self._fal_urls(request, task.id)["response_url"]
        if phase == "queued":
            return JSONResponse(
                {"status": "IN_QUEUE", "queue_position": 0, "response_url": response_url}
            )
        if phase == "running":
            return JSONResponse({"status": "IN_PROGRESS", "logs": [], "response_url": response_url})
        return JSONResponse(
            {
                "status": "COMPLETED",
                "logs": None,
                "metrics": {"inference_time": round(task.finish_at - task.start_at, 3)},
                "response_url": response_url,
            }
        )

    async def fal_result(self, request: Request) -> Response:
        key, task = self._fal_task(request)
        if key is None:
            return JSONResponse({"detail": "Missing authorization"}, status_code=401)
        await self._enter(key)
        if task is None:
            return JSONResponse({"detail": "Request not found"}, status_code=404)
        task.polls += 1
        status, answer = self._fal_ended(task, str(request.base_url))
        return JSONResponse(answer, status_code=status)

    def _fal_ended(self, task: Task, base_url: str) -> tuple[int, dict[str, Any]]:
        """What the request's result URL answers: the model output, or its error."""
        phase = task.phase(self.state.clock())
        if phase in ("queued", "running"):
            return 400, {"detail": "Request is still in progress"}
        if phase == "moderated":
            return 422, {
                "detail": [
                    {
                        "loc": ["body", "prompt"],
                        "msg": "The content was flagged.",
                        "type": "content_policy_violation",
                    }
                ]
            }
        if phase == "failed":
            return 500, {"detail": "Internal error", "error_type": "internal_error"}
        if phase == "cancelled":
            return 400, {"detail": "Request was cancelled"}
        return 200, {
            "video": {
                "url": self._media_url_at(base_url, task),
                "content_type": "video/mp4",
                "file_name": task.media_name,
                "file_size": None,
            }
        }

    async def fal_cancel(self, request: Request) -> Response:
        key, task = self._fal_task(request)
        if key is None:
            return JSONResponse({"detail": "Missing authorization"}, status_code=401)
        await self._enter(key)
        if task is None:
            return JSONResponse({"status": "NOT_FOUND"}, status_code=404)
        if self.state.cancel(task):
            return JSONResponse({"status": "CANCELLATION_REQUESTED"}, status_code=202)
        return JSONResponse({"status": "ALREADY_COMPLETED"}, status_code=400)

    # ---- PixVerse ----------------------------------------------------------------------

    @staticmethod
    def _pixverse(
        resp: Any,
        code: int = 0,
        message: str = "success",
        status: int = 200,
        headers: dict[str, str] | None = None,
    ) -> Response:
        return JSONResponse(
            {"ErrCode": code, "ErrMsg": message, "Resp": resp}, status_code=status, headers=headers
        )

    async def _pixverse_enter(self, request: Request) -> tuple[str | None, Response | None]:
        key = request.headers.get("api-key")
        if not key:
            return None, self._pixverse(None, 10001, "API key is required", status=401)
        await self._enter(key)
        return key, None

    def _pixverse_fault(self, fault: Fault | None, config: KeyConfig) -> Response | None:
        match fault:
            case Fault.RATE_LIMIT:
                return self._pixverse(
                    None,
                    500044,
                    "Reached the limit for concurrent generations.",
                    status=429,
                    headers={"retry-after": str(config.retry_after_s)},
                )
            case Fault.SERVER_ERROR:
                return self._pixverse(None, 500069, "The system is under high load.", status=500)
            case Fault.INVALID:
                return self._pixverse(None, 400017, "Invalid parameter: quality", status=400)
            case Fault.NO_CREDIT:
                return self._pixverse(None, 500090, "Insufficient balance", status=400)
            case Fault.BAD_KEY:
                return self._pixverse(None, 400012, "Invalid account", status=401)
        return None

    async def pixverse_generate(self, request: Request) -> Response:
        key, refused = await self._pixverse_enter(request)
        if refused is not None or key is None:
            return refused  # type: ignore[return-value]
        config = self.state.config(key)
        body = await request.json()
        prompt = str(body.get("prompt", ""))
        answer, fault = await self._scripted(key, prompt, self._pixverse_fault)
        if answer is not None:
            return answer
        kind = request.path_params["kind"]
        required = {
            "text": ["prompt", "model", "duration", "quality"],
            "img": ["prompt", "model", "duration", "quality", "img_id"],
            "transition": [
                "prompt",
                "model",
                "duration",
                "quality",
                "first_frame_img",
                "last_frame_img",
            ],
            "extend": ["prompt", "model", "duration", "quality"],
            "fusion": ["prompt", "model", "duration", "quality", "image_references"],
        }
        for name in required.get(kind, []):
            if body.get(name) in (None, "", []):
                return self._pixverse(None, 400011, f"Parameter {name} is empty", status=400)
        if kind == "extend" and not (body.get("source_video_id") or body.get("video_media_id")):
            return self._pixverse(None, 400011, "Parameter video_media_id is empty", status=400)
        if len(prompt) > 2048:
            return self._pixverse(None, 400018, "Prompt exceeds 2048 characters", status=400)
        inputs = []
        for upload_id in _pixverse_inputs(body):
            received = self.state.uploads.files.get(str(upload_id))
            if received is None:
                return self._pixverse(None, 400032, f"Invalid image ID {upload_id}", status=400)
            inputs.append(received)
        quality = str(body.get("quality"))
        short_sides = {"360p": 360, "540p": 576, "720p": 720, "1080p": 1080}
        if quality not in short_sides or body.get("duration") not in (5, 8):
            return self._pixverse(None, 400017, "Invalid parameter", status=400)
        width, height = _dimensions(short_sides[quality], str(body.get("aspect_ratio", "16:9")))
        seconds = float(body["duration"])
        cost = int(seconds * 9)
        if config.credits < cost:
            return self._pixverse_fault(Fault.NO_CREDIT, config)  # type: ignore[return-value]
        task = self.state.create_task(
            fault=fault,
            provider="pixverse",
            key=key,
            kind="video",
            width=width,
            height=height,
            seconds=seconds,
            cost=cost,
            prompt=prompt,
            request=body,
            task_id=str(self.state.new_int_id()),
            inputs=inputs,
        )
        self.accepted(task)
        return self._pixverse({"video_id": int(task.id)})

    async def pixverse_upload(self, request: Request) -> Response:
        key, refused = await self._pixverse_enter(request)
        if refused is not None or key is None:
            return refused  # type: ignore[return-value]
        answer = self._pixverse_fault(
            Fault.BAD_KEY if self.state.config(key).fault is Fault.BAD_KEY else None,
            self.state.config(key),
        )
        if answer is not None:
            return answer
        form = await request.form()
        media = request.url.path.endswith("/media/upload")
        url_field, file_field = ("file_url", "file") if media else ("image_url", "image")
        given_url, given_file = form.get(url_field), form.get(file_field)
        if not given_url and (given_file is None or isinstance(given_file, str)):
            return self._pixverse(None, 400011, f"Parameter {file_field} is empty", status=400)
        try:
            if given_url:
                body = await fetch_input(str(given_url), self.client)
            else:
                body = await given_file.read()  # type: ignore[union-attr]
        except Refused as error:
            return self._pixverse(None, 500042, f"Invalid image path: {error}", status=400)
        upload_id = self.state.new_int_id()
        self.state.uploads.keep(str(upload_id), body)
        url = str(given_url or f"https://media.sim.local/{upload_id}")
        if media:
            return self._pixverse({"media_id": upload_id, "media_type": "video", "url": url})
        return self._pixverse({"img_id": upload_id, "img_url": url})

    async def pixverse_result(self, request: Request) -> Response:
        key, refused = await self._pixverse_enter(request)
        if refused is not None or key is None:
            return refused  # type: ignore[return-value]
        task = self.state.tasks.get(str(request.path_params["video_id"]))
        if task is None or task.provider != "pixverse" or task.key != key:
            return self._pixverse(None, 500008, "Not found", status=400)
        task.polls += 1
        phase = task.phase(self.state.clock())
        status = {
            "queued": 5,
            "running": 5,
            "succeeded": 1,
            "moderated": 7,
            "failed": 8,
            "cancelled": 6,
        }[phase]
        return self._pixverse(
            {
                "id": int(task.id),
                "status": status,
                "url": self.media_url(request, task) if status == 1 else "",
                "outputWidth": task.width,
                "outputHeight": task.height,
                "seed": int(task.request.get("seed", 0)),
                "size": 0,
                "resolution_ratio": {576: 540}.get(
                    min(task.width, task.height), min(task.width, task.height)
                ),
                "prompt": task.request.get("prompt", ""),
                "negative_prompt": task.request.get("negative_prompt", ""),
                "style": task.request.get("style", ""),
                "create_time": _now_iso(),
                "modify_time": _now_iso(),
            }
        )

    async def pixverse_balance(self, request: Request) -> Response:
        key, refused = await self._pixverse_enter(request)
        if refused is not None or key is None:
            return refused  # type: ignore[return-value]
        credits = self.state.config(key).credits
        return self._pixverse({"account_id": 1, "credit_monthly": 0, "credit_package": credits})


def vars_of(received: Received) -> dict[str, Any]:
    return {"sha256": received.sha256, "size": received.size, "via": received.via}


def _runway_inputs(body: dict[str, Any]) -> list[object]:
    """The input fields of a Runway request, in order: `promptImage` (a value or a list of
    `{uri, position}`), then `promptVideo` or `videoUri`."""
    image = body.get("promptImage")
    found: list[object] = []
    if isinstance(image, list):
        found += [item.get("uri") if isinstance(item, dict) else item for item in image]
    elif image is not None:
        found.append(image)
    for name in ("promptVideo", "videoUri"):
        if body.get(name) is not None:
            found.append(body[name])
    return found


def _pixverse_inputs(body: dict[str, Any]) -> list[object]:
    """The ids of uploads a PixVerse generation names, in order."""
    found = [body[name] for name in ("img_id", "first_frame_img", "last_frame_img") if name in body]
    found += [r.get("img_id") for r in body.get("image_references") or [] if isinstance(r, dict)]
    if body.get("video_media_id"):
        found.append(body["video_media_id"])
    return found


def _fal_missing(operation: str, body: dict[str, Any]) -> str | None:
    """The first required field of a Pika endpoint that the body lacks."""
    required = {
        "text-to-video": ["prompt"],
        "image-to-video": ["image_url", "prompt"],
        "pikaframes": ["image_urls"],
        "pikascenes": ["image_urls", "prompt"],
    }
    for name in required.get(operation, ["prompt"]):
        if not body.get(name):
            return name
    if operation == "pikaframes" and not 2 <= len(body["image_urls"]) <= 5:
        return "image_urls"
    return None


def create_app(seed: int = 0, url_ttl_s: float = 86400.0) -> Starlette:
    simulator = Simulator(SimState(seed=seed, url_ttl_s=url_ttl_s))
    sim = simulator

    routes = [
        Route("/v1/uploads", sim.runway_upload_slot, methods=["POST"]),
        Route(
            "/v1/{endpoint:str}",
            sim.runway_create,
            methods=["POST"],
        ),
        Route("/_sim/runway-uploads/{slot:str}", sim.runway_upload, methods=["POST"]),
        Route("/_sim/tasks", sim.tasks, methods=["GET"]),
        Route("/v1/tasks/{task_id:str}", sim.runway_task, methods=["GET", "DELETE"]),
        Route("/v1/organization", sim.runway_organization, methods=["GET"]),
        Route("/fal-ai/pika/requests/{request_id:str}/status", sim.fal_status, methods=["GET"]),
        Route("/fal-ai/pika/requests/{request_id:str}/cancel", sim.fal_cancel, methods=["PUT"]),
        Route("/fal-ai/pika/requests/{request_id:str}", sim.fal_result, methods=["GET"]),
        Route(
            "/fal-ai/pika/v2.2/{operation:str}",
            sim.fal_submit,
            methods=["POST"],
        ),
        Route(
            "/openapi/v2/video/{kind:str}/generate",
            sim.pixverse_generate,
            methods=["POST"],
        ),
        Route("/openapi/v2/video/result/{video_id:int}", sim.pixverse_result, methods=["GET"]),
        Route("/openapi/v2/image/upload", sim.pixverse_upload, methods=["POST"]),
        Route("/openapi/v2/media/upload", sim.pixverse_upload, methods=["POST"]),
        Route("/openapi/v2/account/balance", sim.pixverse_balance, methods=["GET"]),
        Route("/.well-known/jwks.json", sim.jwks, methods=["GET"]),
        Route("/_sim/media/{name:str}", sim.media, methods=["GET"]),
        Route("/_sim/stats", sim.stats, methods=["GET"]),
        Route("/_sim/submits", sim.submits, methods=["GET"]),
        Route("/_sim/reset", sim.reset, methods=["POST"]),
        Route("/_sim/keys/{key:str}", sim.configure_key, methods=["PUT"]),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(KeyRefusals, state=simulator.state)])
    app.state.simulator = simulator
    return app


class KeyRefusals:
    """Calls a provider refuses whatever they ask, by the key's knobs, on every endpoint
    (balance and status checks too, not only submits): a key it revoked (`revoked`) is
    refused as each provider refuses one, and while it is down (`outage`) each answers its
    own server error. Neither reaches an endpoint, so neither counts as a submit received."""

    def __init__(self, app: ASGIApp, state: SimState) -> None:
        self._app, self._state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            path: str = scope["path"]
            key = _key_of(path, headers)
            config = self._state.keys.get(key) if key is not None else None
            if key is not None and config is not None and (config.revoked or config.outage):
                stats = self._state.stats_of(key)
                stats.calls += 1
                stats.refused_submits += scope["method"] == "POST"
                answer = _refusal_of(path) if config.revoked else _outage_of(path)
                await answer(scope, receive, send)
                return
        await self._app(scope, receive, send)


def _key_of(path: str, headers: Headers) -> str | None:
    if path.startswith("/openapi/"):
        return headers.get("api-key")
    _scheme, _, key = headers.get("authorization", "").partition(" ")
    if path.startswith(("/v1/", "/fal-ai/")) and key:
        return key
    return None


def _refusal_of(path: str) -> Response:
    if path.startswith("/openapi/"):  # PixVerse answers in its envelope
        return JSONResponse({"ErrCode": 10002, "ErrMsg": "invalid API key", "Resp": None}, 401)
    if path.startswith("/fal-ai/"):
        return JSONResponse({"detail": "No user found for Key ID and Secret"}, status_code=401)
    return JSONResponse({"error": "Unauthorized"}, status_code=401)


def _outage_of(path: str) -> Response:
    if path.startswith("/openapi/"):  # what stands in front of PixVerse's app answers
        return Response("<html><body>502 Bad Gateway</body></html>", 502, media_type="text/html")
    if path.startswith("/fal-ai/"):
        return _fal_runner_failure()
    return JSONResponse({"error": "Service Unavailable"}, status_code=503)


def _fal_runner_failure() -> Response:
    """fal's answer when it has no runner for the request (its 5xx)."""
    return JSONResponse(
        {"detail": "Runner scheduling failed", "error_type": "runner_scheduling_failure"},
        status_code=503,
        headers={"x-fal-error-type": "runner_scheduling_failure"},
    )
