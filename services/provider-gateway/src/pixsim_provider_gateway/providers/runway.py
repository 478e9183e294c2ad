"""Runway (api.dev.runwayml.com): text-to-video, image-to-video, first/last-frame transition
and video extend. No fusion and no images. Inputs go as Runway takes them: an HTTPS URL
where the input has one (a presigned one), else a data URI up to Runway's 5 MB, else the
uploads flow (`POST /v1/uploads`, then the file to the URL it answers with, then the
`runway://` URI). Shapes: shared/PROVIDERS.md section 1."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from pixsim.types.v1 import types_pb2 as t
from pixsim_provider_gateway.domain import Charge, ErrorKind, MediaOutput, charged
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
from pixsim_provider_gateway.providers.http import (
    classify_status,
    json_body,
    new_client,
    send,
)

DEFAULT_BASE_URL = "https://api.dev.runwayml.com"
API_VERSION = "2024-11-06"

SEED = ParameterSpec("seed", ParamType.INTEGER, minimum=0, maximum=4294967295)
VEO_RATIOS = ("1280:720", "720:1280", "1080:1920", "1920:1080")
I2V_RATIOS = (
    "1280:720",
    "720:1280",
    "1104:832",
    "832:1104",
    "960:960",
    "1584:672",
    "1080:1920",
    "1920:1080",
)
VEO_MODELS = ("veo3.1", "veo3.1_fast")
VEO_DURATIONS = (4, 6, 8)
# A data URI may be 5 MB (RW-SDK); base64 makes 4 bytes of 3, and the type prefix takes some.
DATA_URI_BYTES = 5 * 1000 * 1000 * 3 // 4 - 64
# Runway documents no upload limits here (unconfirmed): these are ours.
IMAGE_INPUT = (t.MEDIA_TYPE_IMAGE, t.MEDIA_TYPE_VIDEO)  # a video gives one of its frames


def _image_limit(role: InputRole) -> InputLimit:
    return InputLimit(role, IMAGE_INPUT, max_size_bytes=16 * 1024 * 1024, max_side=8192)


VIDEO_LIMIT = InputLimit(
    t.INPUT_ROLE_VIDEO,
    (t.MEDIA_TYPE_VIDEO,),
    max_size_bytes=64 * 1024 * 1024,
    max_duration_seconds=60,
)

CAPABILITIES = Capabilities(
    provider_id="runway",
    display_name="Runway",
    supports_cancel=True,
    reports_progress=True,
    operations=(
        OperationSpec(
            t.OPERATION_TYPE_TEXT_TO_VIDEO,
            (
                ParameterSpec(
                    "model", ParamType.STRING, allowed=("gen4.5", *VEO_MODELS), default="gen4.5"
                ),
                ParameterSpec(
                    "duration",
                    ParamType.INTEGER,
                    minimum=2,
                    maximum=10,
                    default=5,
                    description="seconds; veo models take 4, 6 or 8",
                ),
                ParameterSpec("ratio", ParamType.STRING, allowed=VEO_RATIOS, default="1280:720"),
                SEED,
            ),
            max_prompt_length=1000,
        ),
        OperationSpec(
            t.OPERATION_TYPE_IMAGE_TO_VIDEO,
            (
                ParameterSpec(
                    "model",
                    ParamType.STRING,
                    allowed=("gen4_turbo", "gen4.5", *VEO_MODELS),
                    default="gen4_turbo",
                ),
                ParameterSpec("duration", ParamType.INTEGER, minimum=2, maximum=10, default=5),
                ParameterSpec("ratio", ParamType.STRING, allowed=I2V_RATIOS, default="1280:720"),
                SEED,
            ),
            required_inputs=(t.INPUT_ROLE_IMAGE,),
            prompt_required=False,
            max_prompt_length=1000,
            input_limits=(_image_limit(t.INPUT_ROLE_IMAGE),),
        ),
        OperationSpec(
            t.OPERATION_TYPE_VIDEO_TRANSITION,
            (
                ParameterSpec(
                    "model",
                    ParamType.STRING,
                    allowed=VEO_MODELS,
                    default="veo3.1_fast",
                    description="only these models accept a last frame",
                ),
                ParameterSpec("duration", ParamType.INTEGER, allowed=VEO_DURATIONS, default=8),
                ParameterSpec("ratio", ParamType.STRING, allowed=VEO_RATIOS, default="1280:720"),
                SEED,
            ),
            required_inputs=(t.INPUT_ROLE_START_FRAME, t.INPUT_ROLE_END_FRAME),
            prompt_required=False,
            max_prompt_length=1000,
            input_limits=(
                _image_limit(t.INPUT_ROLE_START_FRAME),
                _image_limit(t.INPUT_ROLE_END_FRAME),
            ),
        ),
        OperationSpec(
            t.OPERATION_TYPE_VIDEO_EXTEND,
            (
                ParameterSpec(
                    "model",
                    ParamType.STRING,
                    allowed=("seedance2_5", "gemini_omni_flash_1.1"),
                    default="seedance2_5",
                ),
                SEED,
            ),
            required_inputs=(t.INPUT_ROLE_VIDEO,),
            max_prompt_length=1000,
            input_limits=(VIDEO_LIMIT,),
        ),
    ),
)


def _failure_kind(code: str) -> ErrorKind:
    """Runway's `failureCode` (RW-DOCS "Task Failures")."""
    if code.startswith("SAFETY.") or code == "INPUT_PREPROCESSING.SAFETY.TEXT":
        return ErrorKind.CONTENT_REJECTED
    if code == "ASSET.INVALID":
        return ErrorKind.INVALID_PARAMETERS
    return ErrorKind.TRANSIENT  # INTERNAL, INTERNAL.BAD_OUTPUT.*, INPUT_PREPROCESSING.INTERNAL


class RunwayProvider:
    provider_id = "runway"

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        timeout: float = 30.0,
        api_version: str = API_VERSION,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._client = new_client(base_url, timeout, transport)
        self._api_version = api_version

    def capabilities(self) -> Capabilities:
        return CAPABILITIES

    def map_parameters(
        self, operation: OperationType, request: GenerationRequest
    ) -> dict[str, Any]:
        params = check_request(CAPABILITIES, request)
        body: dict[str, Any] = {"model": params["model"]}
        if request.prompt:
            body["promptText"] = request.prompt
        if "seed" in params:
            body["seed"] = params["seed"]
        if operation == t.OPERATION_TYPE_VIDEO_EXTEND:
            video = request.inputs_with(t.INPUT_ROLE_VIDEO)[0]
            field = "promptVideo" if params["model"] == "seedance2_5" else "videoUri"
            return {"path": "/v1/video_to_video", "body": body | {"mode": "extend", field: video}}
        body |= {"ratio": params["ratio"], "duration": params["duration"]}
        if params["model"] in VEO_MODELS and params["duration"] not in VEO_DURATIONS:
            raise ProviderError(
                ErrorKind.INVALID_PARAMETERS, f"params.duration: {params['model']} takes 4, 6 or 8"
            )
        if operation == t.OPERATION_TYPE_TEXT_TO_VIDEO:
            return {"path": "/v1/text_to_video", "body": body}
        if operation == t.OPERATION_TYPE_IMAGE_TO_VIDEO:
            image = request.inputs_with(t.INPUT_ROLE_IMAGE)[0]
            return {"path": "/v1/image_to_video", "body": body | {"promptImage": image}}
        first = request.inputs_with(t.INPUT_ROLE_START_FRAME)[0]
        last = request.inputs_with(t.INPUT_ROLE_END_FRAME)[0]
        return {
            "path": "/v1/image_to_video",
            "body": body
            | {
                "promptImage": [
                    {"uri": first, "position": "first"},
                    {"uri": last, "position": "last"},
                ]
            },
        }

    def _headers(self, credentials: Credentials) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {credentials.api_key}",
            "X-Runway-Version": self._api_version,
        }

    def _error(self, response: httpx.Response) -> ProviderError:
        body = json_body(response)
        message = (
            str(body.get("error"))
            if isinstance(body, dict) and "error" in body
            else (response.text[:500] or response.reason_phrase)
        )
        if "enough credits" in message.lower():
            return ProviderError(
                ErrorKind.ACCOUNT_EXHAUSTED, message, provider_code=str(response.status_code)
            )
        return classify_status(response, message)

    def charge(self, status: ProviderStatusResult, reserved: int) -> Charge:
        # Every ended task carries its `cost`; moderated ones are charged like successes,
        # input moderation at 0. Without one, the estimate is taken.
        return charged(status.cost, reserved)

    def estimate_cost(self, payload: Mapping[str, Any]) -> int:
        # Runway bills per second of output (gen4_turbo: 5 credits a second).
        return 5 * int(payload["body"].get("duration", 5))

    async def _intake(self, credentials: Credentials, file: InputFile) -> str:
        url = await file.url()
        if url:
            return url
        if file.size_bytes <= DATA_URI_BYTES:
            return await data_uri(file)
        return await self._uploaded(credentials, file)

    async def _uploaded(self, credentials: Credentials, file: InputFile) -> str:
        """Runway's uploads flow, as its SDK does it: a slot, then the file to the slot's URL
        (without our authorization), then the slot's `runway://` URI."""
        slot = await send(
            self._client,
            "POST",
            "/v1/uploads",
            json={"filename": file.file_name, "type": "ephemeral"},
            headers=self._headers(credentials),
        )
        if slot.status_code != 200:
            raise self._error(slot)
        answer = slot.json()
        sent = await send(
            self._client,
            "POST",
            answer["uploadUrl"],
            data=answer.get("fields") or {},
            files={"file": (file.file_name, await file.read(), file.mime_type)},
        )
        if sent.status_code not in (200, 201, 204):
            raise self._error(sent)
        return str(answer["runwayUri"])

    async def execute(
        self,
        operation: OperationType,
        credentials: Credentials,
        payload: Mapping[str, Any],
        inputs: Sequence[InputFile] = (),
    ) -> GenerationResult:
        async def intake(file: InputFile) -> str:
            return await self._intake(credentials, file)

        body = await fill_inputs(payload["body"], inputs, intake)
        response = await send(
            self._client, "POST", payload["path"], json=body, headers=self._headers(credentials)
        )
        if response.status_code != 200:
            raise self._error(response)
        body = response.json()
        cost = (body.get("estimatedCost") or {}).get("credits")
        return GenerationResult(provider_job_id=str(body["id"]), estimated_cost=cost)

    async def check_account(self, credentials: Credentials) -> int | None:
        """`GET /v1/organization`: the organization's `creditBalance`."""
        response = await send(
            self._client, "GET", "/v1/organization", headers=self._headers(credentials)
        )
        if response.status_code != 200:
            raise self._error(response)
        balance = (json_body(response) or {}).get("creditBalance")
        return int(balance) if isinstance(balance, int | float) else None

    async def check_status(
        self, credentials: Credentials, provider_job_id: str
    ) -> ProviderStatusResult:
        response = await send(
            self._client, "GET", f"/v1/tasks/{provider_job_id}", headers=self._headers(credentials)
        )
        if response.status_code == 404:
            raise TaskUnknown(f"Runway has no task {provider_job_id}")
        if response.status_code != 200:
            raise self._error(response)
        body = response.json()
        status = body["status"]
        cost = (body.get("cost") or body.get("estimatedCost") or {}).get("credits")
        if status in ("PENDING", "THROTTLED"):
            return ProviderStatusResult(TaskState.PENDING, cost=cost, provider_state=status)
        if status == "RUNNING":
            progress = body.get("progress")
            return ProviderStatusResult(
                TaskState.RUNNING,
                progress=float(progress) if isinstance(progress, int | float) else None,
                cost=cost,
                provider_state=status,
            )
        if status == "SUCCEEDED":
            outputs = tuple(MediaOutput(uri, t.MEDIA_TYPE_VIDEO) for uri in body["output"])
            return ProviderStatusResult(TaskState.SUCCEEDED, 1.0, outputs, cost=cost)
        if status == "FAILED":
            code = body.get("failureCode") or ""
            error = ProviderError(
                _failure_kind(code), body.get("failure") or "task failed", provider_code=code
            )
            return ProviderStatusResult(TaskState.FAILED, error=error, cost=cost)
        if status == "CANCELLED":
            return ProviderStatusResult(TaskState.CANCELLED, cost=cost)
        raise ProviderError(ErrorKind.TRANSIENT, f"unknown task status {status!r}")

    async def cancel(self, credentials: Credentials, provider_job_id: str) -> None:
        response = await send(
            self._client,
            "DELETE",
            f"/v1/tasks/{provider_job_id}",
            headers=self._headers(credentials),
        )
        if response.status_code not in (200, 204, 404):
            raise self._error(response)

    async def aclose(self) -> None:
        await self._client.aclose()
