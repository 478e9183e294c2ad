"""Every RPC of every service has a `google.api.http` rule, so a transcoding edge
(grpc-gateway, Envoy's transcoder) can serve all of it, no two rules collide, and the OpenAPI
document made from them is valid and complete."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from google.api import annotations_pb2
from openapi_spec_validator import validate
from openapi_spec_validator.readers import read_from_filename

from pixsim.asset.v1 import asset_service_pb2
from pixsim.job.v1 import job_service_pb2
from pixsim.provider.v1 import provider_gateway_service_pb2
from pixsim.scene.v1 import scene_service_pb2

pytestmark = pytest.mark.unit

SERVICES = [
    service
    for module in (
        job_service_pb2,
        asset_service_pb2,
        scene_service_pb2,
        provider_gateway_service_pb2,
    )
    for service in module.DESCRIPTOR.services_by_name.values()
]


def test_every_rpc_has_an_http_rule_and_none_collide() -> None:
    missing: list[str] = []
    routes: dict[tuple[str, str], str] = {}
    for service in SERVICES:
        for method in service.methods:
            options = method.GetOptions()
            if not options.HasExtension(annotations_pb2.http):
                missing.append(f"{service.name}.{method.name}")
                continue
            rule = options.Extensions[annotations_pb2.http]
            verb = rule.WhichOneof("pattern")
            route = (verb, getattr(rule, verb))
            assert route not in routes, f"{method.name} and {routes[route]} share {route}"
            routes[route] = method.name
    assert missing == []
    assert len(routes) == sum(len(service.methods) for service in SERVICES)


OPENAPI = Path(__file__).resolve().parent.parent / "libs/common/gen/openapi/pixsim.swagger.json"


def test_the_openapi_document_is_valid_and_has_every_rpc() -> None:
    # `make protos` writes it (grpc-gateway's protoc-gen-openapiv2); check-protos holds it
    # to the protos, this holds it to the standard and to every rule.
    document, _ = read_from_filename(str(OPENAPI))
    validate(document)
    operations = {
        operation["operationId"]
        for path in document["paths"].values()
        for operation in path.values()
    }
    assert operations == {
        f"{service.name}_{method.name}" for service in SERVICES for method in service.methods
    }
    assert document["info"]["title"] == "PixSim7"


ROOT = Path(__file__).resolve().parent.parent
SPECTRAL = ROOT / "deploy" / "edge" / "node_modules" / ".bin" / "spectral"


def spectral_errors(document: Path) -> list[dict[str, Any]]:
    """What Spectral's OpenAPI ruleset (.spectral.yaml) calls an error in `document`."""
    linted = subprocess.run(
        [
            *(str(SPECTRAL), "lint", "--ruleset", str(ROOT / ".spectral.yaml")),
            *("--format", "json", "--fail-severity", "error", str(document)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    problems: list[dict[str, Any]] = json.loads(linted.stdout or "[]")
    errors = [problem for problem in problems if problem["severity"] == 0]
    assert (linted.returncode != 0) == bool(errors), linted.stderr
    return errors


@pytest.mark.integration
def test_spectral_finds_no_error_in_the_openapi_document(tmp_path: Path) -> None:
    assert spectral_errors(OPENAPI) == []
    # It would: two operations sharing an id are an error of its ruleset.
    broken = json.loads(OPENAPI.read_text())
    first, second = [op for path in broken["paths"].values() for op in path.values()][:2]
    second["operationId"] = first["operationId"]
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    assert {error["code"] for error in spectral_errors(tmp_path / "broken.json")} == {
        "operation-operationId-unique"
    }
