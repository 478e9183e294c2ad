"""Each adapter's parameter mapping and error classification, over httpx's MockTransport."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from pixsim.types.v1 import types_pb2 as t
from pixsim_provider_gateway.domain import ErrorKind
from pixsim_provider_gateway.inputs import UrlInput
from pixsim_provider_gateway.providers.base import (
    Credentials,
    GenerationInput,
    GenerationRequest,
    ProviderError,
    TaskState,
    TaskUnknown,
    UnsupportedOperation,
)
from pixsim_provider_gateway.providers.pika import PikaProvider
from pixsim_provider_gateway.providers.pixverse import PixverseProvider
from pixsim_provider_gateway.providers.registry import capabilities_to_proto
from pixsim_provider_gateway.providers.runway import RunwayProvider

pytestmark = pytest.mark.unit

KEY = Credentials("secret-key")
IMAGE = GenerationInput(t.INPUT_ROLE_IMAGE, "https://img.example/a.png")
START = GenerationInput(t.INPUT_ROLE_START_FRAME, "https://img.example/first.png")
END = GenerationInput(t.INPUT_ROLE_END_FRAME, "https://img.example/last.png")
VIDEO = GenerationInput(t.INPUT_ROLE_VIDEO, "https://vid.example/v.mp4")


def reference(n: int) -> GenerationInput:
    return GenerationInput(t.INPUT_ROLE_REFERENCE, f"https://img.example/ref{n}.png")


Reply = Callable[[httpx.Request], httpx.Response]


def transport(reply: Reply, seen: list[httpx.Request] | None = None) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return reply(request)

    return httpx.MockTransport(handler)


def answer(status: int, body: Any, headers: dict[str, str] | None = None) -> Reply:
    return lambda _request: httpx.Response(status, json=body, headers=headers)


class TestRunway:
    def provider(self, reply: Reply, seen: list[httpx.Request] | None = None) -> RunwayProvider:
        return RunwayProvider("https://runway.test", transport=transport(reply, seen))

    def test_mapping_of_every_supported_operation(self) -> None:
        runway = self.provider(answer(200, {}))
        t2v = runway.map_parameters(
            t.OPERATION_TYPE_TEXT_TO_VIDEO,
            GenerationRequest(
                t.OPERATION_TYPE_TEXT_TO_VIDEO, "a cat", params={"duration": 8.0, "seed": 3}
            ),
        )
        assert t2v == {
            "path": "/v1/text_to_video",
            "body": {
                "model": "gen4.5",
                "promptText": "a cat",
                "seed": 3,
                "ratio": "1280:720",
                "duration": 8,
            },
        }
        i2v = runway.map_parameters(
            t.OPERATION_TYPE_IMAGE_TO_VIDEO,
            GenerationRequest(t.OPERATION_TYPE_IMAGE_TO_VIDEO, "", (IMAGE,)),
        )
        # Inputs are placeholders, filled at execute time with what the intake takes.
        assert i2v["body"]["promptImage"] == {"$input": 0}
        assert i2v["body"]["model"] == "gen4_turbo"
        transition = runway.map_parameters(
            t.OPERATION_TYPE_VIDEO_TRANSITION,
            GenerationRequest(t.OPERATION_TYPE_VIDEO_TRANSITION, "", (START, END)),
        )
        assert transition["body"]["promptImage"] == [
            {"uri": {"$input": 0}, "position": "first"},
            {"uri": {"$input": 1}, "position": "last"},
        ]
        extend = runway.map_parameters(
            t.OPERATION_TYPE_VIDEO_EXTEND,
            GenerationRequest(t.OPERATION_TYPE_VIDEO_EXTEND, "go on", (VIDEO,)),
        )
        assert extend == {
            "path": "/v1/video_to_video",
            "body": {
                "model": "seedance2_5",
                "promptText": "go on",
                "mode": "extend",
                "promptVideo": {"$input": 0},
            },
        }

    def test_unsupported_and_invalid_requests_are_refused_before_any_call(self) -> None:
        runway = self.provider(answer(500, {}))
        with pytest.raises(UnsupportedOperation) as unsupported:
            runway.map_parameters(
                t.OPERATION_TYPE_FUSION,
                GenerationRequest(t.OPERATION_TYPE_FUSION, "x", (reference(1),)),
            )
        assert t.OPERATION_TYPE_FUSION not in unsupported.value.supported
        with pytest.raises(ProviderError) as invalid:
            runway.map_parameters(
                t.OPERATION_TYPE_TEXT_TO_VIDEO,
                GenerationRequest(
                    t.OPERATION_TYPE_TEXT_TO_VIDEO, "", params={"ratio": "1:1", "speed": 2}
                ),
            )
        assert invalid.value.kind is ErrorKind.INVALID_PARAMETERS
        assert "prompt: required" in invalid.value.message
        assert "params.ratio" in invalid.value.message
        assert "params.speed: unknown parameter" in invalid.value.message
        with pytest.raises(ProviderError, match="4, 6 or 8"):
            runway.map_parameters(
                t.OPERATION_TYPE_TEXT_TO_VIDEO,
                GenerationRequest(
                    t.OPERATION_TYPE_TEXT_TO_VIDEO, "x", params={"model": "veo3.1", "duration": 5}
                ),
            )

    async def test_execute_sends_the_real_headers(self) -> None:
        seen: list[httpx.Request] = []
        runway = self.provider(
            answer(200, {"id": "task-1", "estimatedCost": {"credits": 25}}), seen
        )
        result = await runway.execute(
            t.OPERATION_TYPE_TEXT_TO_VIDEO,
            KEY,
            {"path": "/v1/text_to_video", "body": {"model": "gen4.5", "promptText": "x"}},
        )
        assert (result.provider_job_id, result.estimated_cost) == ("task-1", 25)
        assert seen[0].headers["authorization"] == "Bearer secret-key"
        assert seen[0].headers["x-runway-version"] == "2024-11-06"
        assert json.loads(seen[0].content) == {"model": "gen4.5", "promptText": "x"}

    @pytest.mark.parametrize(
        ("status", "body", "headers", "kind", "retry_after"),
        [
            (429, {"error": "slow down"}, {"retry-after": "7"}, ErrorKind.RATE_LIMITED, 7.0),
            (429, {"error": "x"}, {"retry-after-ms": "1500"}, ErrorKind.RATE_LIMITED, 1.5),
            (503, {"error": "busy"}, {}, ErrorKind.TRANSIENT, None),
            (400, {"error": "ratio: Invalid"}, {}, ErrorKind.INVALID_PARAMETERS, None),
            (
                400,
                {"error": "You do not have enough credits to run this task."},
                {},
                ErrorKind.ACCOUNT_EXHAUSTED,
                None,
            ),
            (401, {"error": "bad key"}, {}, ErrorKind.ACCOUNT_INVALID, None),
        ],
    )
    async def test_http_errors_are_classified(
        self,
        status: int,
        body: Any,
        headers: dict[str, str],
        kind: ErrorKind,
        retry_after: float | None,
    ) -> None:
        runway = self.provider(answer(status, body, headers))
        with pytest.raises(ProviderError) as raised:
            await runway.execute(
                t.OPERATION_TYPE_TEXT_TO_VIDEO, KEY, {"path": "/v1/text_to_video", "body": {}}
            )
        assert (raised.value.kind, raised.value.retry_after) == (kind, retry_after)

    async def test_transport_failures_are_transient(self) -> None:
        def refuse(request: httpx.Request) -> httpx.Response:
            raise httpx.ConnectError("refused", request=request)

        with pytest.raises(ProviderError) as raised:
            await self.provider(refuse).check_status(KEY, "t")
        assert raised.value.kind is ErrorKind.TRANSIENT

    async def test_a_task_runway_does_not_know_is_unknown(self) -> None:
        with pytest.raises(TaskUnknown):
            await self.provider(answer(404, {"error": "Task not found"})).check_status(KEY, "t")

    @pytest.mark.parametrize(
        ("body", "state", "kind"),
        [
            ({"status": "THROTTLED"}, TaskState.PENDING, None),
            ({"status": "RUNNING", "progress": 0.4}, TaskState.RUNNING, None),
            ({"status": "SUCCEEDED", "output": ["https://o/1.mp4"]}, TaskState.SUCCEEDED, None),
            (
                {"status": "FAILED", "failureCode": "SAFETY.INPUT.TEXT", "failure": "no"},
                TaskState.FAILED,
                ErrorKind.CONTENT_REJECTED,
            ),
            (
                {"status": "FAILED", "failureCode": "INPUT_PREPROCESSING.SAFETY.TEXT"},
                TaskState.FAILED,
                ErrorKind.CONTENT_REJECTED,
            ),
            (
                {"status": "FAILED", "failureCode": "ASSET.INVALID"},
                TaskState.FAILED,
                ErrorKind.INVALID_PARAMETERS,
            ),
            (
                {"status": "FAILED", "failureCode": "INTERNAL.BAD_OUTPUT.CODE01"},
                TaskState.FAILED,
                ErrorKind.TRANSIENT,
            ),
            ({"status": "CANCELLED"}, TaskState.CANCELLED, None),
        ],
    )
    async def test_task_statuses(
        self, body: dict[str, Any], state: TaskState, kind: ErrorKind | None
    ) -> None:
        runway = self.provider(answer(200, {"id": "t", "createdAt": "x", **body}))
        result = await runway.check_status(KEY, "t")
        assert result.state is state
        assert (result.error.kind if result.error else None) is kind
        if state is TaskState.SUCCEEDED:
            assert result.outputs[0].uri == "https://o/1.mp4"
            assert result.outputs[0].width is None  # Runway reports no dimensions


class TestPika:
    def provider(self, reply: Reply, seen: list[httpx.Request] | None = None) -> PikaProvider:
        return PikaProvider("https://fal.test", transport=transport(reply, seen))

    def test_mapping_of_every_supported_operation(self) -> None:
        pika = self.provider(answer(200, {}))
        t2v = pika.map_parameters(
            t.OPERATION_TYPE_TEXT_TO_VIDEO,
            GenerationRequest(t.OPERATION_TYPE_TEXT_TO_VIDEO, "a cat", params={"duration": 10}),
        )
        assert t2v == {
            "path": "/fal-ai/pika/v2.2/text-to-video",
            "body": {
                "aspect_ratio": "16:9",
                "duration": 10,
                "resolution": "720p",
                "prompt": "a cat",
            },
        }
        i2v = pika.map_parameters(
            t.OPERATION_TYPE_IMAGE_TO_VIDEO,
            GenerationRequest(t.OPERATION_TYPE_IMAGE_TO_VIDEO, "move", (IMAGE,)),
        )
        assert i2v["body"]["image_url"] == {"$input": 0}
        frames = pika.map_parameters(
            t.OPERATION_TYPE_VIDEO_TRANSITION,
            GenerationRequest(t.OPERATION_TYPE_VIDEO_TRANSITION, "morph", (START, END)),
        )
        assert frames["path"].endswith("/pikaframes")
        assert frames["body"]["image_urls"] == [{"$input": 0}, {"$input": 1}]
        assert frames["body"]["transitions"] == [{"duration": 5, "prompt": "morph"}]
        scenes = pika.map_parameters(
            t.OPERATION_TYPE_FUSION,
            GenerationRequest(t.OPERATION_TYPE_FUSION, "together", (reference(1), reference(2))),
        )
        assert scenes["path"].endswith("/pikascenes")
        assert scenes["body"]["image_urls"] == [{"$input": 0}, {"$input": 1}]
        with pytest.raises(UnsupportedOperation):
            pika.map_parameters(
                t.OPERATION_TYPE_VIDEO_EXTEND,
                GenerationRequest(t.OPERATION_TYPE_VIDEO_EXTEND, "x", (VIDEO,)),
            )

    @pytest.mark.parametrize(
        ("status", "body", "headers", "kind"),
        [
            (
                422,
                {
                    "detail": [
                        {
                            "loc": ["body", "prompt"],
                            "msg": "flagged",
                            "type": "content_policy_violation",
                        }
                    ]
                },
                {},
                ErrorKind.CONTENT_REJECTED,
            ),
            (
                422,
                {"detail": [{"loc": ["body", "duration"], "msg": "bad", "type": "value_error"}]},
                {},
                ErrorKind.INVALID_PARAMETERS,
            ),
            (401, {"detail": "No user found for Key ID and Secret"}, {}, ErrorKind.ACCOUNT_INVALID),
            (
                403,
                {"detail": "User is locked. Reason: Exhausted balance. Top up."},
                {},
                ErrorKind.ACCOUNT_EXHAUSTED,
            ),
            (429, {"detail": "slow"}, {"retry-after": "2"}, ErrorKind.RATE_LIMITED),
            (
                503,
                {"detail": "x", "error_type": "runner_scheduling_failure"},
                {"x-fal-error-type": "runner_scheduling_failure"},
                ErrorKind.TRANSIENT,
            ),
            (504, {"detail": "x", "error_type": "request_timeout"}, {}, ErrorKind.TRANSIENT),
        ],
    )
    async def test_submit_errors_are_classified(
        self, status: int, body: Any, headers: dict[str, str], kind: ErrorKind
    ) -> None:
        with pytest.raises(ProviderError) as raised:
            await self.provider(answer(status, body, headers)).execute(
                t.OPERATION_TYPE_TEXT_TO_VIDEO,
                KEY,
                {"path": "/fal-ai/pika/v2.2/text-to-video", "body": {}},
            )
        assert raised.value.kind is kind

    async def test_a_completed_request_with_a_failing_result_is_failed(self) -> None:
        seen: list[httpx.Request] = []

        def reply(request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/status"):
                return httpx.Response(200, json={"status": "COMPLETED", "logs": None})
            return httpx.Response(
                422,
                json={
                    "detail": [
                        {"loc": ["body", "prompt"], "msg": "no", "type": "content_policy_violation"}
                    ]
                },
            )

        result = await self.provider(reply, seen).check_status(KEY, "r1")
        assert result.state is TaskState.FAILED
        assert result.error is not None
        assert result.error.kind is ErrorKind.CONTENT_REJECTED
        assert seen[0].headers["authorization"] == "Key secret-key"
        assert [r.url.path for r in seen] == [
            "/fal-ai/pika/requests/r1/status",
            "/fal-ai/pika/requests/r1",
        ]


async def test_a_request_fal_does_not_know_is_unknown() -> None:
    fal = PikaProvider("https://fal.test", transport=transport(answer(404, {"detail": "x"})))
    with pytest.raises(TaskUnknown):
        await fal.check_status(KEY, "r1")


class TestPixverse:
    def provider(self, reply: Reply, seen: list[httpx.Request] | None = None) -> PixverseProvider:
        return PixverseProvider("https://pixverse.test", transport=transport(reply, seen))

    def test_mapping_of_every_supported_operation(self) -> None:
        pixverse = self.provider(answer(200, {}))
        t2v = pixverse.map_parameters(
            t.OPERATION_TYPE_TEXT_TO_VIDEO,
            GenerationRequest(t.OPERATION_TYPE_TEXT_TO_VIDEO, "a cat", params={"quality": "720p"}),
        )
        assert t2v == {
            "path": "/openapi/v2/video/text/generate",
            "uploads": [],
            "body": {
                "prompt": "a cat",
                "model": "v4.5",
                "duration": 5,
                "quality": "720p",
                "aspect_ratio": "16:9",
            },
        }
        for operation, inputs, targets in [
            (t.OPERATION_TYPE_IMAGE_TO_VIDEO, (IMAGE,), [["img_id"]]),
            (
                t.OPERATION_TYPE_VIDEO_TRANSITION,
                (START, END),
                [["first_frame_img"], ["last_frame_img"]],
            ),
            (t.OPERATION_TYPE_VIDEO_EXTEND, (VIDEO,), [["video_media_id"]]),
            (
                t.OPERATION_TYPE_FUSION,
                (reference(1), reference(2)),
                [["image_references", 0, "img_id"], ["image_references", 1, "img_id"]],
            ),
        ]:
            payload = pixverse.map_parameters(operation, GenerationRequest(operation, "x", inputs))
            assert [u["target"] for u in payload["uploads"]] == targets

    def test_cross_parameter_rules(self) -> None:
        pixverse = self.provider(answer(200, {}))
        with pytest.raises(ProviderError, match="1080p"):
            pixverse.map_parameters(
                t.OPERATION_TYPE_TEXT_TO_VIDEO,
                GenerationRequest(
                    t.OPERATION_TYPE_TEXT_TO_VIDEO, "x", params={"quality": "1080p", "duration": 8}
                ),
            )
        with pytest.raises(ProviderError, match="prompt"):
            pixverse.map_parameters(
                t.OPERATION_TYPE_TEXT_TO_VIDEO,
                GenerationRequest(t.OPERATION_TYPE_TEXT_TO_VIDEO, "x" * 2049),
            )

    async def test_execute_uploads_inputs_then_generates_with_their_ids(self) -> None:
        seen: list[httpx.Request] = []

        def reply(request: httpx.Request) -> httpx.Response:
            if request.url.path == "/openapi/v2/image/upload":
                return httpx.Response(
                    200, json={"ErrCode": 0, "ErrMsg": "ok", "Resp": {"img_id": 41, "img_url": "u"}}
                )
            return httpx.Response(
                200, json={"ErrCode": 0, "ErrMsg": "ok", "Resp": {"video_id": 99}}
            )

        pixverse = self.provider(reply, seen)
        payload = pixverse.map_parameters(
            t.OPERATION_TYPE_IMAGE_TO_VIDEO,
            GenerationRequest(t.OPERATION_TYPE_IMAGE_TO_VIDEO, "move", (IMAGE,)),
        )
        result = await pixverse.execute(
            t.OPERATION_TYPE_IMAGE_TO_VIDEO, KEY, payload, [UrlInput(IMAGE.uri)]
        )
        assert result.provider_job_id == "99"
        upload, generate = seen
        assert b'name="image_url"' in upload.content
        assert IMAGE.uri.encode() in upload.content
        assert json.loads(generate.content)["img_id"] == 41
        assert generate.headers["api-key"] == "secret-key"
        assert upload.headers["ai-trace-id"] != generate.headers["ai-trace-id"]

    @pytest.mark.parametrize(
        ("status", "code", "kind"),
        [
            (400, 500044, ErrorKind.RATE_LIMITED),
            (429, 500044, ErrorKind.RATE_LIMITED),
            (400, 500090, ErrorKind.ACCOUNT_EXHAUSTED),
            (400, 500063, ErrorKind.CONTENT_REJECTED),
            (500, 500054, ErrorKind.CONTENT_REJECTED),
            (400, 400017, ErrorKind.INVALID_PARAMETERS),
            (400, 400032, ErrorKind.INVALID_PARAMETERS),
            (401, 10002, ErrorKind.ACCOUNT_INVALID),
            (400, 400012, ErrorKind.ACCOUNT_INVALID),
            (500, 500069, ErrorKind.TRANSIENT),
            (500, 99999, ErrorKind.TRANSIENT),
            # A code not in PixVerse's table: on a server error, the server's trouble.
            (503, 512345, ErrorKind.TRANSIENT),
            (400, 412345, ErrorKind.INVALID_PARAMETERS),
        ],
    )
    async def test_err_codes_are_classified(self, status: int, code: int, kind: ErrorKind) -> None:
        reply = answer(status, {"ErrCode": code, "ErrMsg": "m", "Resp": None})
        with pytest.raises(ProviderError) as raised:
            await self.provider(reply).check_status(KEY, "1")
        assert (raised.value.kind, raised.value.provider_code) == (kind, str(code))

    async def test_lowercase_upload_errors_and_bare_http_errors(self) -> None:
        lower = answer(500, {"err_code": 500052, "err_msg": "moderated", "resp": ""})
        with pytest.raises(ProviderError) as raised:
            await self.provider(lower).check_status(KEY, "1")
        assert raised.value.kind is ErrorKind.CONTENT_REJECTED
        bare = lambda _r: httpx.Response(502, text="<html>bad gateway</html>")  # noqa: E731
        with pytest.raises(ProviderError) as raised:
            await self.provider(bare).check_status(KEY, "1")
        assert raised.value.kind is ErrorKind.TRANSIENT

    @pytest.mark.parametrize(
        ("status", "state", "kind"),
        [
            (5, TaskState.RUNNING, None),
            (1, TaskState.SUCCEEDED, None),
            (7, TaskState.FAILED, ErrorKind.CONTENT_REJECTED),
            (8, TaskState.FAILED, ErrorKind.TRANSIENT),
        ],
    )
    async def test_video_statuses(
        self, status: int, state: TaskState, kind: ErrorKind | None
    ) -> None:
        reply = answer(
            200,
            {
                "ErrCode": 0,
                "ErrMsg": "success",
                "Resp": {
                    "id": 1,
                    "status": status,
                    "url": "https://o/1.mp4" if status == 1 else "",
                    "outputWidth": 1024,
                    "outputHeight": 576,
                    "seed": 5,
                },
            },
        )
        result = await self.provider(reply).check_status(KEY, "1")
        assert result.state is state
        assert (result.error.kind if result.error else None) is kind
        if state is TaskState.SUCCEEDED:
            output = result.outputs[0]
            assert (output.width, output.height, output.seed) == (1024, 576, 5)

    async def test_pixverse_cannot_cancel(self) -> None:
        assert not self.provider(answer(200, {})).capabilities().supports_cancel
        with pytest.raises(NotImplementedError):
            await self.provider(answer(200, {})).cancel(KEY, "1")


def test_capabilities_become_the_contracts_provider_resource() -> None:
    provider = capabilities_to_proto(RunwayProvider().capabilities())
    assert provider.name == "providers/runway"
    operations = {op.operation_type: op for op in provider.operations}
    assert set(operations) == {
        t.OPERATION_TYPE_TEXT_TO_VIDEO,
        t.OPERATION_TYPE_IMAGE_TO_VIDEO,
        t.OPERATION_TYPE_VIDEO_TRANSITION,
        t.OPERATION_TYPE_VIDEO_EXTEND,
    }
    ratio = next(
        p for p in operations[t.OPERATION_TYPE_TEXT_TO_VIDEO].parameters if p.name == "ratio"
    )
    assert "1280:720" in ratio.allowed_values
    assert ratio.default_value.string_value == "1280:720"
    assert list(operations[t.OPERATION_TYPE_IMAGE_TO_VIDEO].required_inputs) == [t.INPUT_ROLE_IMAGE]


def test_credentials_never_show_in_a_repr() -> None:
    assert "secret" not in repr(KEY)
