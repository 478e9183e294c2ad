"""The operators' alerts (deploy/k8s/base/alerts.yaml, a PrometheusRule) are valid Prometheus
rules, each is held to its `promtool test rules` cases, and each has a runbook section in
docs/operations.md. The dashboard is valid JSON whose queries parse as PromQL, and
tests/test_make_run.py checks that every metric both name is served by some service."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pixsim_local.monitoring import (
    DASHBOARD,
    alerts,
    dashboard_queries,
    named_metrics,
    rule_groups,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
ALERT_TESTS = ROOT / "deploy" / "k8s" / "alerts-tests.yaml"
PROMTOOL = ROOT / ".cache" / "bin" / "promtool"
OPERATIONS = ROOT / "docs" / "operations.md"


def promtool(*args: str, cwd: Path) -> str:
    result = subprocess.run(
        [str(PROMTOOL), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_every_alert_passes_its_promtool_cases(tmp_path: Path) -> None:
    (tmp_path / "pixsim.rules.yaml").write_text(yaml.safe_dump(rule_groups()))
    shutil.copy(ALERT_TESTS, tmp_path / "alerts-tests.yaml")
    promtool("check", "rules", "pixsim.rules.yaml", cwd=tmp_path)
    promtool("test", "rules", "alerts-tests.yaml", cwd=tmp_path)

    # Every alert has cases of its own, and a runbook an operator can find.
    cases = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    tested = {case["alertname"] for test in cases for case in test["alert_rule_test"]}
    runbooks = OPERATIONS.read_text()
    for alert in alerts():
        assert alert["alert"] in tested
        anchor = alert["annotations"]["runbook"].split("#", 1)[1]
        assert f"### {alert['alert']}" in runbooks, f"no runbook for {alert['alert']}"
        assert anchor == alert["alert"].lower()


def test_a_broken_alert_fails_its_cases(tmp_path: Path) -> None:
    # The cases can fail: the circuit alert summing what every replica reports alike (two
    # replicas would make an open circuit 4, and it would never fire) is caught.
    groups = rule_groups()
    for group in groups["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == "PixsimProviderCircuitOpen":
                rule["expr"] = rule["expr"].replace("max by", "sum by")
    (tmp_path / "pixsim.rules.yaml").write_text(yaml.safe_dump(groups))
    shutil.copy(ALERT_TESTS, tmp_path / "alerts-tests.yaml")
    result = subprocess.run(
        [str(PROMTOOL), "test", "rules", "alerts-tests.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "PixsimProviderCircuitOpen" in result.stdout + result.stderr


def test_the_dashboard_is_grafana_json_with_queries_that_parse(tmp_path: Path) -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"]
    assert board["title"]
    assert board["schemaVersion"] >= 36
    titles = [panel["title"] for panel in board["panels"]]
    assert len(titles) == len(set(titles))
    # Each query parses as PromQL (promtool checks it as a recording rule's expression).
    records = [
        {"record": f"dashboard:query_{index}", "expr": query}
        for index, query in enumerate(dashboard_queries())
    ]
    (tmp_path / "dashboard.rules.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]})
    )
    promtool("check", "rules", "dashboard.rules.yaml", cwd=tmp_path)
    assert len(named_metrics()) >= 10
