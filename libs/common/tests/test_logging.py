"""The services' log lines: one JSON object each, the service named, and no line per HTTP
request from the client libraries (their URLs may carry presigned signatures)."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from pixsim_common.logging import configure_logging


@pytest.fixture(autouse=True)
def _restore_logging() -> object:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield None
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def test_a_line_is_one_json_object_naming_the_service(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("job")
    structlog.get_logger("pixsim.grpc").info("rpc", method="/x/Y", code="OK")
    (line,) = capsys.readouterr().err.splitlines()
    event = json.loads(line)
    assert event["service"] == "job"
    assert (event["event"], event["method"], event["level"]) == ("rpc", "/x/Y", "info")


def test_http_clients_log_their_trouble_but_not_each_request(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("asset")
    signed = "GET http://127.0.0.1/media/1.mp4?signature=secret"
    logging.getLogger("httpx").info("HTTP Request: %s", signed)
    logging.getLogger("httpcore.connection").info("connect_tcp.started")
    logging.getLogger("httpx").warning("retrying")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["event"] for line in lines] == ["retrying"]
    assert "secret" not in json.dumps(lines)
