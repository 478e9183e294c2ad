"""PixVerse platform API (app-api.pixverse.ai): text-to-video, image-to-video, transition,
extend and fusion. No images. Inputs go through PixVerse's own intake first (the image and
media upload endpoints: by URL where the input has one, else the file itself as multipart)
and are referenced by the id PixVerse gives them. Shapes: shared/PROVIDERS.md section 3."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from pixsim.types.v1 import types_pb2 as t
from pixsim_provider_gateway.domain import NOT_BILLED, Charge, ErrorKind, MediaOutput, charged
from pixsim_provider_gateway.providers.base import (
    MIB,
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
    check_request,
)
from pixsim_provider_gateway.providers.http import (
    classify_status,
    json_body,
    new_client,
    retry_after,
    send,
)

DEFAULT_BASE_URL = "https://app-api.pixverse.ai"

MODEL = ParameterSpec(
    "model", ParamType.STRING, allowed=("v3.5", "v4", "v4.5", "v5"), default="v4.5"
)
DURATION = ParameterSpec("duration", ParamType.INTEGER, allowed=(5, 8), default=5)
QUALITY = ParameterSpec(
    "quality", ParamType.STRING, allowed=("360p", "540p", "720p", "1080p"), default="540p"
)
ASPECT_RATIO = ParameterSpec(
    "aspect_ratio", ParamType.STRING, allowed=("16:9", "4:3", "1:1", "3:4", "9:16"), default="16:9"
)
SEED = ParameterSpec("seed", ParamType.INTEGER, minimum=0, maximum=2147483647)
NEGATIVE_PROMPT = ParameterSpec("negative_prompt", ParamType.STRING)
MOTION_MODE = ParameterSpec("motion_mode", ParamType.STRING, allowed=("normal", "fast"))
STYLE = ParameterSpec(
    "style", ParamType.STRING, allowed=("anime", "3d_animation", "clay", "comic", "cyberpunk")
)
PROMPT_LIMIT = 2048
# Upload Image: 20 MB, 4000 px (one later page says 10000); Upload Video&audio: 50 MB, 30 s.
IMAGE_INPUT = (t.MEDIA_TYPE_IMAGE, t.MEDIA_TYPE_VIDEO)  # a video gives one of its frames


def _image_limit(role: InputRole) -> InputLimit:
    return InputLimit(role, IMAGE_INPUT, max_size_bytes=20 * MIB, max_side=4000)


VIDEO_LIMIT = InputLimit(
    t.INPUT_ROLE_VIDEO, (t.MEDIA_TYPE_VIDEO,), max_size_bytes=50 * MIB, max_duration_seconds=30
)

CAPABILITIES = Capabilities(
    provider_id="pixverse",
    display_name="PixVerse",
    supports_cancel=False,
    operations=(
        OperationSpec(
            t.OPERATION_TYPE_TEXT_TO_VIDEO,
            (MODEL, DURATION, QUALITY, ASPECT_RATIO, SEED, NEGATIVE_PROMPT, MOTION_MODE, STYLE),
            max_prompt_length=PROMPT_LIMIT,
        ),
        OperationSpec(
            t.OPERATION_TYPE_IMAGE_TO_VIDEO,
            (MODEL, DURATION, QUALITY, SEED, NEGATIVE_PROMPT, MOTION_MODE, STYLE),
            required_inputs=(t.INPUT_ROLE_IMAGE,),
            max_prompt_length=PROMPT_LIMIT,
            input_limits=(_image_limit(t.INPUT_ROLE_IMAGE),),
        ),
        OperationSpec(
            t.OPERATION_TYPE_VIDEO_TRANSITION,
            (MODEL, DURATION, QUALITY, SEED, MOTION_MODE),
            required_inputs=(t.INPUT_ROLE_START_FRAME, t.INPUT_ROLE_END_FRAME),
            max_prompt_length=PROMPT_LIMIT,
            input_limits=(
                _image_limit(t.INPUT_ROLE_START_FRAME),
                _image_limit(t.INPUT_ROLE_END_FRAME),
            ),
        ),
        OperationSpec(
            t.OPERATION_TYPE_VIDEO_EXTEND,
            (MODEL, DURATION, QUALITY, SEED, NEGATIVE_PROMPT, MOTION_MODE, STYLE),
            required_inputs=(t.INPUT_ROLE_VIDEO,),
            max_prompt_length=PROMPT_LIMIT,
            input_limits=(VIDEO_LIMIT,),
        ),
        OperationSpec(
            t.OPERATION_TYPE_FUSION,
            (
                ParameterSpec("model", ParamType.STRING, allowed=("v4.5", "v5"), default="v4.5"),
                DURATION,
                QUALITY,
                ASPECT_RATIO,
                SEED,
            ),
            required_inputs=(t.INPUT_ROLE_REFERENCE,),
            optional_inputs=(t.INPUT_ROLE_REFERENCE, t.INPUT_ROLE_REFERENCE),
            max_inputs=3,
            max_prompt_length=PROMPT_LIMIT,
            input_limits=(_image_limit(t.INPUT_ROLE_REFERENCE),),
        ),
    ),
)

ENDPOINTS = {
    t.OPERATION_TYPE_TEXT_TO_VIDEO: "text",
    t.OPERATION_TYPE_IMAGE_TO_VIDEO: "img",
    t.OPERATION_TYPE_VIDEO_TRANSITION: "transition",
    t.OPERATION_TYPE_VIDEO_EXTEND: "extend",
    t.OPERATION_TYPE_FUSION: "fusion",
}

# ErrCode -> kind (PV-DOCS "Error codes"; 10001-10005 are auth errors in PixVerse's client).
CONTENT_REJECTED = {500052, 500054, 500063}
ACCOUNT_INVALID = {400012, 500020, 10001, 10002, 10003, 10004, 10005}
TRANSIENT = {500041, 500069, 500100, 99999}


def classify_err_code(code: int, message: str, response: httpx.Response) -> ProviderError:
    provider_code = str(code)
    if code == 500044:  # concurrent-generation limit of the account
        return ProviderError(
            ErrorKind.RATE_LIMITED,
            message,
            retry_after=retry_after(response),
            provider_code=provider_code,
        )
    if code == 500090:
        return ProviderError(ErrorKind.ACCOUNT_EXHAUSTED, message, provider_code=provider_code)
    if code in CONTENT_REJECTED:
        return ProviderError(ErrorKind.CONTENT_REJECTED, message, provider_code=provider_code)
    if code in ACCOUNT_INVALID:
        return ProviderError(ErrorKind.ACCOUNT_INVALID, message, provider_code=provider_code)
    if code in TRANSIENT or response.status_code >= 500:
        # A code we do not know on a server error is the server's trouble, not the request's.
        return ProviderError(ErrorKind.TRANSIENT, message, provider_code=provider_code)
    return ProviderError(ErrorKind.INVALID_PARAMETERS, message, provider_code=provider_code)


class PixverseProvider:
    provider_id = "pixverse"

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._client = new_client(base_url, timeout, transport)

    def capabilities(self) -> Capabilities:
        return CAPABILITIES

    def map_parameters(
        self, operation: OperationType, request: GenerationRequest
    ) -> dict[str, Any]:
        params = check_request(CAPABILITIES, request)
        if params["quality"] == "1080p" and params["duration"] == 8:
            raise ProviderError(
                ErrorKind.INVALID_PARAMETERS, "params.duration: 8 s is not available at 1080p"
            )
        if params.get("motion_mode") == "fast" and (
            params["duration"] != 5 or params["quality"] == "1080p" or params["model"] == "v5"
        ):
            raise ProviderError(
                ErrorKind.INVALID_PARAMETERS,
                "params.motion_mode: fast needs 5 s, below 1080p, before v5",
            )
        body: dict[str, Any] = {"prompt": request.prompt, **params}
        # Inputs are uploaded at execute time; each upload fills one body field.
        uploads: list[dict[str, Any]] = []
        if operation == t.OPERATION_TYPE_IMAGE_TO_VIDEO:
            uploads.append(
                {
                    "kind": "image",
                    "input": request.inputs_with(t.INPUT_ROLE_IMAGE)[0]["$input"],
                    "target": ["img_id"],
                }
            )
        elif operation == t.OPERATION_TYPE_VIDEO_TRANSITION:
            uploads += [
                {
                    "kind": "image",
                    "input": request.inputs_with(t.INPUT_ROLE_START_FRAME)[0]["$input"],
                    "target": ["first_frame_img"],
                },
                {
                    "kind": "image",
                    "input": request.inputs_with(t.INPUT_ROLE_END_FRAME)[0]["$input"],
                    "target": ["last_frame_img"],
                },
            ]
        elif operation == t.OPERATION_TYPE_VIDEO_EXTEND:
            uploads.append(
                {
                    "kind": "media",
                    "input": request.inputs_with(t.INPUT_ROLE_VIDEO)[0]["$input"],
                    "target": ["video_media_id"],
                }
            )
        elif operation == t.OPERATION_TYPE_FUSION:
            references = request.inputs_with(t.INPUT_ROLE_REFERENCE)
            body["image_references"] = [
                {"type": "subject", "img_id": 0, "ref_name": f"ref{index + 1}"}
                for index in range(len(references))
            ]
            uploads += [
                {
                    "kind": "image",
                    "input": ref["$input"],
                    "target": ["image_references", index, "img_id"],
                }
                for index, ref in enumerate(references)
            ]
        return {
            "path": f"/openapi/v2/video/{ENDPOINTS[operation]}/generate",
            "body": body,
            "uploads": uploads,
        }

    @staticmethod
    def _headers(credentials: Credentials) -> dict[str, str]:
        # A fresh trace id per request: reusing one leaves tasks "stuck in Generating".
        return {"API-KEY": credentials.api_key, "Ai-trace-id": str(uuid.uuid4())}

    async def _call(
        self, method: str, path: str, credentials: Credentials, **kwargs: Any
    ) -> dict[str, Any]:
        """One call; the `Resp` of a successful envelope, else the classified error."""
        response = await send(
            self._client, method, path, headers=self._headers(credentials), **kwargs
        )
        body = json_body(response)
        if isinstance(body, dict):
            # The upload spec shows lowercase keys on errors; the rest of the API CamelCase.
            code = body.get("ErrCode", body.get("err_code"))
            message = str(body.get("ErrMsg", body.get("err_msg", "")))
            if isinstance(code, int) and code != 0:
                raise classify_err_code(code, message, response)
            if code == 0 and response.status_code == 200:
                resp = body.get("Resp", body.get("resp"))
                return resp if isinstance(resp, dict) else {}
        raise classify_status(response, response.text[:500] or response.reason_phrase)

    def charge(self, status: ProviderStatusResult, reserved: int) -> Charge:
        # PixVerse reports no cost. Moderation (status 7) is refunded; of a failed generation
        # (8) its docs say nothing, so it counts as spent, and the balance check corrects
        # the account's ledger.
        if status.error is not None and status.error.kind is ErrorKind.CONTENT_REJECTED:
            return NOT_BILLED
        return charged(None, reserved)

    def estimate_cost(self, payload: Mapping[str, Any]) -> int:
        # PixVerse prices by duration and quality; an upper bound of 9 credits a second.
        return 9 * int(payload["body"].get("duration", 5))

    async def _upload(self, credentials: Credentials, kind: str, file: InputFile) -> Any:
        """Through PixVerse's intake: by URL where the input has one, else the file."""
        path, id_field, url_field, file_field = (
            ("/openapi/v2/image/upload", "img_id", "image_url", "image")
            if kind == "image"
            else ("/openapi/v2/media/upload", "media_id", "file_url", "file")
        )
        url = await file.url()
        files: dict[str, Any] = (
            {url_field: (None, url)}
            if url
            else {file_field: (file.file_name, await file.read(), file.mime_type)}
        )
        resp = await self._call("POST", path, credentials, files=files)
        return resp[id_field]

    async def execute(
        self,
        operation: OperationType,
        credentials: Credentials,
        payload: Mapping[str, Any],
        inputs: Sequence[InputFile] = (),
    ) -> GenerationResult:
        body = copy.deepcopy(dict(payload["body"]))
        for upload in payload.get("uploads", []):
            value = await self._upload(credentials, upload["kind"], inputs[upload["input"]])
            *parents, last = upload["target"]
            holder: Any = body
            for step in parents:
                holder = holder[step]
            holder[last] = value
        resp = await self._call("POST", payload["path"], credentials, json=body)
        return GenerationResult(provider_job_id=str(resp["video_id"]))

    async def check_account(self, credentials: Credentials) -> int | None:
        """`GET /openapi/v2/account/balance`: monthly and package credits together."""
        resp = await self._call("GET", "/openapi/v2/account/balance", credentials)
        credits = [resp.get(k) for k in ("credit_monthly", "credit_package")]
        numbers = [int(c) for c in credits if isinstance(c, int | float)]
        return sum(numbers) if numbers else None

    async def check_status(
        self, credentials: Credentials, provider_job_id: str
    ) -> ProviderStatusResult:
        resp = await self._call("GET", f"/openapi/v2/video/result/{provider_job_id}", credentials)
        status = resp.get("status")
        if status == 5:
            return ProviderStatusResult(TaskState.RUNNING, provider_state="GENERATING")
        if status == 1:
            output = MediaOutput(
                uri=str(resp["url"]),
                media_type=t.MEDIA_TYPE_VIDEO,
                width=resp.get("outputWidth") or None,
                height=resp.get("outputHeight") or None,
                seed=resp.get("seed"),
            )
            return ProviderStatusResult(TaskState.SUCCEEDED, 1.0, (output,))
        if status == 7:
            error = ProviderError(
                ErrorKind.CONTENT_REJECTED, "content moderation failed", provider_code="status:7"
            )
            return ProviderStatusResult(TaskState.FAILED, error=error)
        if status == 8:
            error = ProviderError(
                ErrorKind.TRANSIENT, "generation failed", provider_code="status:8"
            )
            return ProviderStatusResult(TaskState.FAILED, error=error)
        if status == 6:
            error = ProviderError(
                ErrorKind.TRANSIENT, "the video was deleted", provider_code="status:6"
            )
            return ProviderStatusResult(TaskState.FAILED, error=error)
        raise ProviderError(ErrorKind.TRANSIENT, f"unknown video status {status!r}")

    async def cancel(self, credentials: Credentials, provider_job_id: str) -> None:
        raise NotImplementedError("PixVerse offers no cancellation")

    async def aclose(self) -> None:
        await self._client.aclose()
