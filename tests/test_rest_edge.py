"""The reference REST edge (deploy/edge/envoy.yaml, Envoy's gRPC-JSON transcoder) in front of
the whole stack, used as a browser or a partner would: plain HTTP and JSON, Server-Sent
Events for a watch, raw bytes for a download, a JSON array for an upload, and
google.rpc.Status JSON for every error."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from google.protobuf import descriptor_pb2

from pixsim_local.edge import DESCRIPTOR_SET, Edge, stack_upstreams
from pixsim_local.whole_stack import WholeStack
from pixsim_provider_sim.media import render_mp4

pytestmark = pytest.mark.e2e

OPENAPI = Path(__file__).resolve().parent.parent / "libs/common/gen/openapi/pixsim.swagger.json"


def _services_in(descriptor_set: Path) -> dict[str, str]:
    """The edge's services, by name: `JobService` -> `pixsim.job.v1.JobService`."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes()).file
    return {
        service.name: f"{proto.package}.{service.name}"
        for proto in files
        if proto.package.startswith("pixsim.")
        for service in proto.service
    }


SERVICES = _services_in(DESCRIPTOR_SET)
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def edge(whole_stack: WholeStack) -> AsyncIterator[Edge]:
    services = whole_stack.services
    with tempfile.TemporaryDirectory(prefix="pixsim-edge-") as run_dir:
        started = await Edge.start(
            Path(run_dir), stack_upstreams(services.ports, services.callback_port)
        )
        try:
            yield started
        finally:
            started.stop()


def bearer(stack: WholeStack, user: str, *, admin: bool = False) -> dict[str, str]:
    ((_, value),) = stack.auth(user, admin=admin)
    return {"authorization": value}


async def access_log(edge: Edge, request_id: str) -> dict[str, Any]:
    """The edge's access-log line of one request (its x-request-id), once written."""
    for _ in range(50):
        for line in reversed(edge.process.log_path.read_text().splitlines()):
            if request_id in line and line.startswith("{"):
                entry: dict[str, Any] = json.loads(line)
                return entry
        await asyncio.sleep(0.1)
    raise AssertionError(f"no access-log line for {request_id}")


async def test_every_rpc_is_served_at_its_route(edge: Edge, whole_stack: WholeStack) -> None:
    """Each operation of the OpenAPI document, called at its path with names that exist
    nowhere: the edge resolves it to its own RPC, and the service answers it (not found,
    invalid, forbidden or fine; never unimplemented, never the edge's own 404)."""
    document = json.loads(OPENAPI.read_text())
    headers = bearer(whole_stack, f"edge-walker-{uuid.uuid4().hex[:8]}")
    reached: dict[str, int] = {}
    async with httpx.AsyncClient(base_url=edge.url, timeout=30) as client:
        for path, operations in document["paths"].items():
            for verb, operation in operations.items():
                service, method = operation["operationId"].split("_", 1)
                concrete = re.sub(
                    r"\{(\w+)\}",
                    lambda m: "nosuch" if m[1] == "provider" else str(uuid.uuid4()),
                    path,
                )
                request_id = str(uuid.uuid4())
                body: Any = [] if method == "UploadAsset" else {}
                answer = await client.request(
                    verb.upper(),
                    concrete,
                    headers={**headers, "x-request-id": request_id},
                    json=body if verb in ("post", "patch") else None,
                )
                assert "Could not resolve" not in answer.text, (verb, concrete)
                logged = await access_log(edge, request_id)
                assert logged["rpc"] == f"/{SERVICES[service]}/{method}", (verb, concrete)
                if answer.status_code >= 400:
                    # The service's own google.rpc.Status, never the edge's or UNIMPLEMENTED.
                    status = answer.json()
                    assert status["code"] != 12, status
                    assert status["details"], status
                reached[operation["operationId"]] = answer.status_code
    assert len(reached) == sum(len(ops) for ops in document["paths"].values())


async def test_a_job_made_over_rest_is_followed_as_server_sent_events_until_completed(
    edge: Edge, whole_stack: WholeStack
) -> None:
    headers = bearer(whole_stack, "alice")
    async with httpx.AsyncClient(base_url=edge.url, headers=headers, timeout=60) as client:
        created = await client.post(
            "/v1/jobs",
            json={
                "providerId": "pixverse",
                "operationType": "OPERATION_TYPE_TEXT_TO_VIDEO",
                "prompt": "a fox crossing a bridge, seen from the edge",
            },
        )
        assert created.status_code == 200, created.text
        job = created.json()
        assert job["state"] == "STATE_PENDING"
        assert job["updateTime"]

        states: list[str] = []
        async with client.stream("GET", f"/v1/{job['name']}:watch") as events:
            assert events.headers["content-type"].startswith("text/event-stream")
            async for line in events.aiter_lines():
                if line.startswith("data: "):
                    update = json.loads(line.removeprefix("data: "))
                    assert update["name"] == job["name"]
                    states.append(update["state"])
        assert states[-1] == "STATE_COMPLETED", states
        assert "STATE_PROCESSING" in states

        done = (await client.get(f"/v1/{job['name']}")).json()
        assert done["state"] == "STATE_COMPLETED"
        assert done["asset"]
        assert done["updateTime"] >= job["updateTime"]

        # The clip comes out as its own bytes, with its type: the same bytes gRPC reads.
        download = await client.get(f"/v1/{done['asset']}:download")
        assert download.status_code == 200
        assert download.headers["content-type"] == "video/mp4"
        assert download.content == await whole_stack.content(done["asset"])
        part = await client.get(
            f"/v1/{done['asset']}:download", params={"offset": 100, "length": 50}
        )
        assert part.content == download.content[100:150]
        past = await client.get(
            f"/v1/{done['asset']}:download", params={"offset": len(download.content)}
        )
        assert past.status_code == 400
        assert past.json()["details"][0]["reason"] == "RANGE_NOT_SATISFIABLE"


async def test_a_file_uploaded_over_rest_is_stored_as_sent(
    edge: Edge, whole_stack: WholeStack
) -> None:
    clip = render_mp4(6, 160, 96, 0.5)
    # A client stream through the transcoder is a JSON array of its messages.
    messages: list[dict[str, Any]] = [
        {"metadata": {"displayName": "over-rest.mp4", "sizeBytes": str(len(clip))}}
    ]
    messages += [
        {"chunk": base64.b64encode(clip[start : start + 4096]).decode()}
        for start in range(0, len(clip), 4096)
    ]
    async with httpx.AsyncClient(
        base_url=edge.url, headers=bearer(whole_stack, "alice"), timeout=60
    ) as client:
        answer = await client.post("/v1/assets:upload", json=messages)
        assert answer.status_code == 200, answer.text
        asset = answer.json()
        assert asset["sha256"] == hashlib.sha256(clip).hexdigest()
        assert asset["mimeType"] == "video/mp4"
        assert asset["displayName"] == "over-rest.mp4"
        assert (await client.get(f"/v1/{asset['name']}:download")).content == clip


async def test_a_bad_request_names_its_fields_and_no_token_is_401(
    edge: Edge, whole_stack: WholeStack
) -> None:
    async with httpx.AsyncClient(base_url=edge.url, timeout=30) as client:
        bad = await client.post(
            "/v1/jobs",
            headers=bearer(whole_stack, "alice"),
            json={"providerId": "Not A Provider!", "prompt": "x" * 5000},
        )
        assert bad.status_code == 400
        status = bad.json()
        assert status["code"] == 3
        violations = next(d for d in status["details"] if d["@type"] == BAD_REQUEST)
        fields = {v["field"] for v in violations["fieldViolations"]}
        assert {"job.provider_id", "job.operation_type", "job.prompt"} <= fields

        anonymous = await client.get("/v1/jobs")
        assert anonymous.status_code == 401
        assert anonymous.json()["details"][0]["reason"] == "MISSING_TOKEN"
        forged = await client.get("/v1/jobs", headers={"authorization": "Bearer e30.e30.c2ln"})
        assert forged.status_code == 401

        # An admin's call goes through; the same call of a user is forbidden.
        accounts = await client.get("/v1/accounts", headers=bearer(whole_stack, "ops", admin=True))
        assert accounts.status_code == 200
        assert accounts.json()["accounts"]
        refused = await client.get("/v1/accounts", headers=bearer(whole_stack, "alice"))
        assert refused.status_code == 403
