"""Pika through fal's queue API (queue.fal.run): text-to-video, image-to-video, transition
(pikaframes) and fusion (pikascenes). No extend and no images. Inputs go as fal's file
handling takes them: a URL where the input has one (a presigned one), else a data URI, as
`fal_client.encode_file` makes. Shapes: shared/PROVIDERS.md section 2."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from pixsim.types.v1 import types_pb2 as t
from pixsim_provider_gateway.domain import NOT_BILLED, Charge, ErrorKind, MediaOutput, charged
from pixsim_provider_gateway.providers.base import (
    Capabilities,
    Credentials,
    GenerationRequest,
    GenerationResult,
    InputFile,
    InputLimit,
    InputRole,
    OperationSpec,
    OperationType,
    ParameterSpec,
    ParamType,
    ProviderError,
    ProviderStatusResult,
    TaskState,
    TaskUnknown,
    check_request,
    data_uri,
    fill_inputs,
)
from pixsim_provider_gateway.providers.callbacks import CallbackMalformed, Notice
from pixsim_provider_gateway.providers.http import (
    classify_status,
    json_body,
    new_client,
    send,
)

DEFAULT_BASE_URL = "https://queue.fal.run"
# A request id no submit ever makes: its status checks a key without touching any task.
NO_REQUEST = "00000000-0000-4000-8000-000000000000"
APP = "/fal-ai/pika"
VERSION = "v2.2"
# A failed request's webhook says which status its result URL answered, in `error`.
_WEBHOOK_STATUS = re.compile(r"\b([45]\d\d)\b")

ASPECT_RATIO = ParameterSpec(
    "aspect_ratio",
    ParamType.STRING,
    allowed=("16:9", "9:16", "1:1", "4:5", "5:4", "3:2", "2:3"),
    default="16:9",
)
DURATION = ParameterSpec("duration", ParamType.INTEGER, allowed=(5, 10), default=5)
RESOLUTION = ParameterSpec(
    "resolution", ParamType.STRING, allowed=("720p", "1080p"), default="720p"
)
NEGATIVE_PROMPT = ParameterSpec("negative_prompt", ParamType.STRING)
SEED = ParameterSpec("seed", ParamType.INTEGER, minimum=0, maximum=2147483647)
# fal documents no input limits (unconfirmed); ours keep a data URI of a request sane.
IMAGE_INPUT = (t.MEDIA_TYPE_IMAGE, t.MEDIA_TYPE_VIDEO)  # a video gives one of its frames


def _image_limit(role: InputRole) -> InputLimit:
    return InputLimit(role, IMAGE_INPUT, max_size_bytes=20 * 1024 * 1024, max_side=8192)


CAPABILITIES = Capabilities(
    provider_id="pika",
    display_name="Pika (through fal)",
    supports_cancel=True,
    operations=(
        OperationSpec(
            t.OPERATION_TYPE_TEXT_TO_VIDEO,
            (ASPECT_RATIO, DURATION, RESOLUTION, NEGATIVE_PROMPT, SEED),
        ),
        OperationSpec(
            t.OPERATION_TYPE_IMAGE_TO_VIDEO,
            (DURATION, RESOLUTION, NEGATIVE_PROMPT, SEED),
            required_inputs=(t.INPUT_ROLE_IMAGE,),
            input_limits=(_image_limit(t.INPUT_ROLE_IMAGE),),
        ),
        OperationSpec(
            t.OPERATION_TYPE_VIDEO_TRANSITION,
            (
                ParameterSpec(
                    "duration",
                    ParamType.INTEGER,
                    minimum=1,
                    maximum=25,
                    default=5,
                    description="seconds of the transition",
                ),
                RESOLUTION,
                NEGATIVE_PROMPT,
                SEED,
            ),
            required_inputs=(t.INPUT_ROLE_START_FRAME, t.INPUT_ROLE_END_FRAME),
            prompt_required=False,
            input_limits=(
                _image_limit(t.INPUT_ROLE_START_FRAME),
                _image_limit(t.INPUT_ROLE_END_FRAME),
            ),
        ),
        OperationSpec(
            t.OPERATION_TYPE_FUSION,
            (
                ASPECT_RATIO,
                DURATION,
                ParameterSpec(
                    "resolution", ParamType.STRING, allowed=("720p", "1080p"), default="1080p"
                ),
                ParameterSpec(
                    "ingredients_mode",
                    ParamType.STRING,
                    allowed=("precise", "creative"),
                    default="precise",
                ),
                NEGATIVE_PROMPT,
                SEED,
            ),
            required_inputs=(t.INPUT_ROLE_REFERENCE,),
            optional_inputs=(t.INPUT_ROLE_REFERENCE,),
            max_inputs=6,
            input_limits=(_image_limit(t.INPUT_ROLE_REFERENCE),),
        ),
    ),
)


class PikaProvider:
    provider_id = "pika"

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        webhook_url: str = "",
    ) -> None:
        self._client = new_client(base_url, timeout, transport)
        # Where fal is asked to POST each request's end (`fal_webhook`); none: polled only.
        self._webhook_params = {"fal_webhook": webhook_url} if webhook_url else {}

    def capabilities(self) -> Capabilities:
        return CAPABILITIES

    def map_parameters(
        self, operation: OperationType, request: GenerationRequest
    ) -> dict[str, Any]:
        body: dict[str, Any] = dict(check_request(CAPABILITIES, request))
        if request.prompt:
            body["prompt"] = request.prompt
        if operation == t.OPERATION_TYPE_TEXT_TO_VIDEO:
            endpoint = "text-to-video"
        elif operation == t.OPERATION_TYPE_IMAGE_TO_VIDEO:
            endpoint = "image-to-video"
            body["image_url"] = request.inputs_with(t.INPUT_ROLE_IMAGE)[0]
        elif operation == t.OPERATION_TYPE_VIDEO_TRANSITION:
            endpoint = "pikaframes"
            body["image_urls"] = [
                *request.inputs_with(t.INPUT_ROLE_START_FRAME),
                *request.inputs_with(t.INPUT_ROLE_END_FRAME),
            ]
            body["transitions"] = [{"duration": body.pop("duration"), "prompt": request.prompt}]
        else:
            endpoint = "pikascenes"
            body["image_urls"] = request.inputs_with(t.INPUT_ROLE_REFERENCE)
        return {"path": f"{APP}/{VERSION}/{endpoint}", "body": body}

    @staticmethod
    def _headers(credentials: Credentials) -> dict[str, str]:
        return {"Authorization": f"Key {credentials.api_key}"}

    @staticmethod
    def _error(response: httpx.Response) -> ProviderError:
        body = json_body(response)
        detail = body.get("detail") if isinstance(body, dict) else None
        if isinstance(detail, list):  # validation and model errors, 422
            kinds = {str(item.get("type")) for item in detail if isinstance(item, dict)}
            message = "; ".join(
                f"{'.'.join(str(p) for p in item.get('loc', [])[1:])}: {item.get('msg')}"
                for item in detail
                if isinstance(item, dict)
            )
            kind = (
                ErrorKind.CONTENT_REJECTED
                if "content_policy_violation" in kinds
                else ErrorKind.INVALID_PARAMETERS
            )
            return ProviderError(kind, message or "rejected", provider_code=",".join(kinds))
        message = str(detail) if detail else response.text[:500] or response.reason_phrase
        if response.status_code == 403 and "exhausted balance" in message.lower():
            return ProviderError(ErrorKind.ACCOUNT_EXHAUSTED, message, provider_code="403")
        error = classify_status(response, message)
        error_type = response.headers.get("x-fal-error-type") or (
            body.get("error_type") if isinstance(body, dict) else None
        )
        if error_type:
            error.provider_code = str(error_type)
        return error

    def charge(self, status: ProviderStatusResult, reserved: int) -> Charge:
        # fal bills Pika by the video made, reports no cost, and bills no server failure: a
        # request that ends without a video is not billed.
        if status.state is TaskState.SUCCEEDED:
            return charged(None, reserved)
        return NOT_BILLED

    def estimate_cost(self, payload: Mapping[str, Any]) -> int:
        # fal bills money, not credits; one credit a request keeps a budget countable.
        return 1

    @staticmethod
    async def _intake(file: InputFile) -> str:
        return await file.url() or await data_uri(file)

    async def execute(
        self,
        operation: OperationType,
        credentials: Credentials,
        payload: Mapping[str, Any],
        inputs: Sequence[InputFile] = (),
    ) -> GenerationResult:
        body = await fill_inputs(payload["body"], inputs, self._intake)
        response = await send(
            self._client,
            "POST",
            payload["path"],
            json=body,
            params=self._webhook_params,
            headers=self._headers(credentials),
        )
        if response.status_code != 200:
            raise self._error(response)
        return GenerationResult(provider_job_id=str(response.json()["request_id"]))

    async def check_account(self, credentials: Credentials) -> int | None:
        """fal has no balance on its queue host: the status of a request that cannot exist
        proves the key (404 for a key it knows, 401 or 403 for one it refuses)."""
        response = await send(
            self._client,
            "GET",
            f"{APP}/requests/{NO_REQUEST}/status",
            headers=self._headers(credentials),
        )
        if response.status_code in (200, 202, 404):
            return None
        raise self._error(response)

    async def check_status(
        self, credentials: Credentials, provider_job_id: str
    ) -> ProviderStatusResult:
        base = f"{APP}/requests/{provider_job_id}"
        response = await send(
            self._client,
            "GET",
            f"{base}/status",
            params={"logs": "false"},
            headers=self._headers(credentials),
        )
        if response.status_code == 404:
            raise TaskUnknown(f"fal has no request {provider_job_id}")
        if response.status_code not in (200, 202):
            raise self._error(response)
        answer = response.json()
        status = answer["status"]
        if status == "IN_QUEUE":
            position = answer.get("queue_position")
            return ProviderStatusResult(
                TaskState.PENDING,
                provider_state=status,
                queue_position=position if isinstance(position, int) else None,
            )
        if status == "IN_PROGRESS":
            return ProviderStatusResult(TaskState.RUNNING, provider_state=status)
        if status != "COMPLETED":
            raise ProviderError(ErrorKind.TRANSIENT, f"unknown queue status {status!r}")
        # A failed request also ends COMPLETED; its error is the result's answer.
        result = await send(self._client, "GET", base, headers=self._headers(credentials))
        return self._ended(result)

    def _ended(self, result: httpx.Response) -> ProviderStatusResult:
        """What an ended request's result says (its result URL's answer, or a webhook's)."""
        if result.status_code == 200:
            video = result.json()["video"]
            return ProviderStatusResult(
                TaskState.SUCCEEDED, 1.0, (MediaOutput(video["url"], t.MEDIA_TYPE_VIDEO),)
            )
        error = self._error(result)
        if result.status_code == 400 and "cancel" in error.message.lower():
            return ProviderStatusResult(TaskState.CANCELLED)
        return ProviderStatusResult(TaskState.FAILED, error=error)

    def webhook_notice(self, body: bytes) -> Notice:
        """A verified webhook read as the status check would read the request's end:
        `{request_id, status: OK|ERROR, payload, error}`, where `payload` is the result
        URL's body, and `error` says the status it answered ("Invalid status code: 422")."""
        try:
            answer = json.loads(body)
        except ValueError:
            raise CallbackMalformed("the webhook is not JSON") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("request_id"), str):
            raise CallbackMalformed("the webhook names no request_id")
        payload = answer.get("payload")
        if answer.get("status") == "OK":
            video = payload.get("video") if isinstance(payload, dict) else None
            if not isinstance(video, dict) or not isinstance(video.get("url"), str):
                raise CallbackMalformed("the webhook's payload has no video URL")
            result = httpx.Response(200, json={"video": video})
        elif answer.get("status") == "ERROR":
            found = _WEBHOOK_STATUS.search(str(answer.get("error", "")))
            detail = payload if payload is not None else {"detail": str(answer.get("error"))}
            result = httpx.Response(int(found.group(1)) if found else 500, json=detail)
        else:
            raise CallbackMalformed("the webhook's status is neither OK nor ERROR")
        return Notice(answer["request_id"], self._ended(result))

    async def cancel(self, credentials: Credentials, provider_job_id: str) -> None:
        response = await send(
            self._client,
            "PUT",
            f"{APP}/requests/{provider_job_id}/cancel",
            headers=self._headers(credentials),
        )
        # ALREADY_COMPLETED and NOT_FOUND leave nothing to cancel.
        if response.status_code not in (200, 202, 400, 404):
            raise self._error(response)

    async def aclose(self) -> None:
        await self._client.aclose()
