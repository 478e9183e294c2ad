"""How the client reads its arguments and reports failures, without a server."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from pixsim.job.v1 import job_service_pb2 as job_pb
from pixsim.scene.v1 import scene_service_pb2 as scene_pb
from pixsim.types.v1 import types_pb2 as t
from pixsim_cli.connection import CliError, Exit, explain
from pixsim_cli.jobs import (
    operation_value,
    parse_duration,
    parse_fallback,
    parse_input,
    parse_params,
    parse_priority,
    parse_webhook,
    progress_line,
)
from pixsim_cli.output import as_json
from pixsim_cli.scenes import describe_effect, parse_effect, parse_variable

pytestmark = pytest.mark.unit


def test_inputs_name_an_asset_or_a_url_by_role() -> None:
    by_asset = parse_input("start-frame=1b0e17fb-341f-4204-b293-5c7b658cb158")
    assert (by_asset.role, by_asset.asset) == (
        t.INPUT_ROLE_START_FRAME,
        "assets/1b0e17fb-341f-4204-b293-5c7b658cb158",
    )
    by_url = parse_input("image=https://example.com/cat.png")
    assert (by_url.role, by_url.uri) == (t.INPUT_ROLE_IMAGE, "https://example.com/cat.png")
    for bad in ("image", "elbow=assets/x"):
        with pytest.raises(CliError) as refused:
            parse_input(bad)
        assert refused.value.exit_code == Exit.INVALID


def test_params_are_json_when_they_parse_and_text_otherwise() -> None:
    params = parse_params(["duration=5", "quality=540p", "loop=true", 'style={"a": 1}'])
    assert dict(params) == {"duration": 5.0, "quality": "540p", "loop": True, "style": {"a": 1.0}}


def test_operations_are_named_in_kebab_case() -> None:
    assert operation_value("image-to-video") == t.OPERATION_TYPE_IMAGE_TO_VIDEO
    with pytest.raises(CliError, match="text-to-video"):
        operation_value("text-to-vid")


class FakeRpcError(grpc.RpcError):
    """A failed call as grpc's client raises it: a code, details and trailing metadata."""

    def __init__(self, code: grpc.StatusCode, status: status_pb2.Status) -> None:
        self._code, self._status = code, status

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return str(self._status.message)

    def trailing_metadata(self) -> tuple[Any, ...]:
        return (("grpc-status-details-bin", self._status.SerializeToString()),)


def test_a_refusal_lists_its_field_violations_and_exits_2() -> None:
    bad = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(
                field="job.params.duration", description="must be one of 5, 8"
            )
        ]
    )
    detail = any_pb2.Any()
    detail.Pack(bad)
    status = status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT, message="the request does not fit", details=[detail]
    )
    error = explain(FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, status))
    assert error.exit_code == Exit.INVALID
    assert error.details == ["job.params.duration: must be one of 5, 8"]
    unavailable = explain(
        FakeRpcError(grpc.StatusCode.UNAVAILABLE, status_pb2.Status(code=14, message="down"))
    )
    assert unavailable.exit_code == Exit.UNAVAILABLE
    assert "make run" in str(unavailable)


def test_deadlines_are_durations_with_a_unit() -> None:
    seconds = {
        text: parse_duration(text, "--start-within").ToTimedelta().total_seconds()  # type: ignore[union-attr]
        for text in ("45", "30s", "5m", "1.5h", "2d")
    }
    assert seconds == {"45": 45, "30s": 30, "5m": 300, "1.5h": 5400, "2d": 172800}
    assert parse_duration(None, "--start-within") is None
    with pytest.raises(CliError) as refused:
        parse_duration("soon", "--start-within")
    assert refused.value.exit_code == Exit.INVALID


def test_priorities_are_named_in_any_case() -> None:
    assert parse_priority("LOW") == parse_priority("low") == job_pb.Job.PRIORITY_LOW
    with pytest.raises(CliError):
        parse_priority("urgent")


def test_the_live_line_shows_the_place_in_line_then_the_progress() -> None:
    from rich.console import Console

    def shown(job: job_pb.Job) -> str:
        console = Console(width=120, record=True, color_system=None)
        console.print(progress_line(job, ["PENDING", "QUEUED"], 1.5))
        return console.export_text()

    waiting = job_pb.Job(name="jobs/x", state=job_pb.Job.STATE_QUEUED, queue_position=3)
    assert "3 ahead in line" in shown(waiting)
    waiting.queue_position = 0
    assert "next in line" in shown(waiting)
    running = job_pb.Job(
        name="jobs/x", state=job_pb.Job.STATE_PROCESSING, progress=0.4, provider_state="RUNNING"
    )
    assert "40%" in shown(running)
    assert "running" in shown(running)


def test_a_webhook_names_its_events() -> None:
    hook = parse_webhook("https://example.com/hook", ["completed", "FAILED"])
    assert hook is not None
    assert list(hook.events) == [job_pb.Webhook.EVENT_COMPLETED, job_pb.Webhook.EVENT_FAILED]
    assert parse_webhook(None, []) is None
    for url, events in ((None, ["completed"]), ("https://example.com", ["soon"])):
        with pytest.raises(CliError):
            parse_webhook(url, events)


def test_a_fallback_names_its_provider_and_its_own_params() -> None:
    plain = parse_fallback("runway")
    assert (plain.provider_id, dict(plain.params)) == ("runway", {})
    tuned = parse_fallback("runway:duration=10,ratio=1280:720")
    assert tuned.provider_id == "runway"
    assert dict(tuned.params) == {"duration": 10, "ratio": "1280:720"}


def test_scene_variables_and_effects_are_read_with_their_types() -> None:
    key = parse_variable("has_key=bool:false")
    assert (key.name, key.type, key.initial.bool_value) == (
        "has_key",
        scene_pb.SceneVariable.TYPE_BOOL,
        False,
    )
    assert parse_variable("tries=number:2.5").initial.number_value == 2.5
    # A string variable's initial value is its text, even one that reads as a number.
    assert parse_variable("code=string:007").initial.string_value == "007"
    for bad in ("has_key", "has_key=bool", "x=list:1"):
        with pytest.raises(CliError) as refused:
            parse_variable(bad)
        assert refused.value.exit_code == Exit.INVALID
    assert parse_effect("has_key=true", increment=False).set.bool_value is True
    assert parse_effect('mood="3"', increment=False).set.string_value == "3"
    assert parse_effect("mood=angry", increment=False).set.string_value == "angry"
    assert parse_effect("tries=-1", increment=True).increment == -1.0
    assert describe_effect(parse_effect("tries=2", increment=True)) == "tries += 2"
    assert describe_effect(parse_effect("mood=calm", increment=False)) == 'mood = "calm"'
    with pytest.raises(CliError):
        parse_effect("tries=many", increment=True)


def test_json_output_keeps_plain_values_inside_lists_and_dicts() -> None:
    assert as_json({"folder": "out", "files": ["a.html", "b.mp4"], "n": 2}) == {
        "folder": "out",
        "files": ["a.html", "b.mp4"],
        "n": 2,
    }


def test_a_usage_error_is_typers_message_and_exit_2_never_a_traceback() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from pixsim_cli.main import app; app()", "scene", "get", "a", "b"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "Usage:" in result.stderr
    assert "Traceback" not in result.stderr
