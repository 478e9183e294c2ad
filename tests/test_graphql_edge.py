"""The GraphQL edge (deploy/edge/graphql/): GraphQL Mesh's compose CLI builds a supergraph
from the services' gRPC reflection with no hand-written resolver, the Hive Gateway serves
it, and a client makes a job by mutation, reads it by query and follows it by subscription
(GraphQL over Server-Sent Events) until it is COMPLETED."""

from __future__ import annotations

import json
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from pixsim_local.edge import GraphQLEdge
from pixsim_local.whole_stack import WholeStack

pytestmark = pytest.mark.e2e


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def graphql(whole_stack: WholeStack) -> AsyncIterator[GraphQLEdge]:
    with tempfile.TemporaryDirectory(prefix="pixsim-graphql-") as run_dir:
        edge = await GraphQLEdge.start(Path(run_dir), whole_stack.services.ports)
        try:
            yield edge
        finally:
            edge.stop()


async def run(
    client: httpx.AsyncClient, url: str, query: str, token: dict[str, str]
) -> dict[str, Any]:
    answer = await client.post(url, json={"query": query}, headers=token)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def bearer(stack: WholeStack, user: str) -> dict[str, str]:
    ((_, value),) = stack.auth(user)
    return {"authorization": value}


async def test_root_fields_read_as_the_methods_they_call(graphql: GraphQLEdge) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        schema = await run(
            client,
            graphql.url,
            "{ __schema { queryType { fields { name } } mutationType { fields { name } }"
            " subscriptionType { fields { name } } } }",
            {},
        )
    roots = {
        kind: {field["name"] for field in schema["data"]["__schema"][kind]["fields"]}
        for kind in ("queryType", "mutationType", "subscriptionType")
    }
    assert {
        "getJob",
        "listJobs",
        "getAsset",
        "batchGetAssets",
        "validateScene",
        "exportScene",
        "getPlaythrough",
        "listPlaythroughs",
        "getUsage",
        "getBudget",
        "estimateCost",
    } <= roots["queryType"]
    assert {
        "createJob",
        "cancelJob",
        "uploadAsset",
        "createScene",
        "importScene",
        "startPlaythrough",
        "choose",
        "setBudget",
        "deleteBudget",
    } <= roots["mutationType"]
    assert "watchJob" in roots["subscriptionType"]
    # Reads never change anything, and nothing that changes something is a query.
    assert not {name for name in roots["queryType"] if name.startswith(("create", "delete"))}
    assert not {name for name in roots["mutationType"] if name.startswith(("get", "list"))}


async def test_a_job_made_by_mutation_is_read_by_query_and_followed_to_completion(
    graphql: GraphQLEdge, whole_stack: WholeStack
) -> None:
    alice = bearer(whole_stack, "alice")
    async with httpx.AsyncClient(timeout=60) as client:
        created = await run(
            client,
            graphql.url,
            'mutation { createJob(input: {job: {provider_id: "runway",'
            " operation_type: OPERATION_TYPE_TEXT_TO_VIDEO,"
            ' prompt: "a heron taking off, through GraphQL"}}) { name state } }',
            alice,
        )
        job = created["data"]["createJob"]
        assert job["state"] == "STATE_PENDING"

        states: list[str] = []
        async with client.stream(
            "POST",
            graphql.url,
            json={
                "query": "subscription Follow($name: String) {"
                " watchJob(input: {name: $name}) { name state asset } }",
                "variables": {"name": job["name"]},
            },
            headers={**alice, "accept": "text/event-stream"},
        ) as events:
            assert events.headers["content-type"].startswith("text/event-stream")
            async for line in events.aiter_lines():
                if line.startswith("data: {"):
                    update = json.loads(line.removeprefix("data: "))["data"]["watchJob"]
                    assert update["name"] == job["name"]
                    states.append(update["state"])
        assert states[-1] == "STATE_COMPLETED", states

        read = await run(
            client,
            graphql.url,
            f'{{ getJob(input: {{name: "{job["name"]}"}}) {{ state asset provider_id }} }}',
            alice,
        )
        assert read["data"]["getJob"]["state"] == "STATE_COMPLETED"
        assert read["data"]["getJob"]["asset"].startswith("assets/")
        assert read["data"]["getJob"]["provider_id"] == "runway"

        # Another user cannot see it, and no token is no answer: the services decide.
        foreign = await run(
            client,
            graphql.url,
            f'{{ getJob(input: {{name: "{job["name"]}"}}) {{ state }} }}',
            bearer(whole_stack, "mallory"),
        )
        assert foreign["data"]["getJob"] is None
        assert foreign["errors"][0]["extensions"]["grpc"]["status"] == "NOT_FOUND"
        anonymous = await run(client, graphql.url, "{ listJobs(input: {}) { jobs { name } } }", {})
        assert anonymous["errors"][0]["extensions"]["grpc"]["status"] == "UNAUTHENTICATED"
