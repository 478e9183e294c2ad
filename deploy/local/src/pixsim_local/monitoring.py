"""What the operators' dashboard and alerts (deploy/k8s/base/) query, and what the services
serve at /metrics: the tests hold the first to the second, so a renamed metric cannot leave a
panel blank or an alert silent."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import yaml

BASE = Path(__file__).resolve().parents[4] / "deploy" / "k8s" / "base"
ALERTS = BASE / "alerts.yaml"
DASHBOARD = BASE / "dashboards" / "pixsim7.json"
METRIC = re.compile(r"\b(pixsim_[a-z0-9_]+)")
HISTOGRAM_PARTS = re.compile(r"_(bucket|sum|count)$")


def rule_groups() -> dict[str, Any]:
    """The PrometheusRule's groups, as a Prometheus rules file has them."""
    rule: dict[str, Any] = yaml.safe_load(ALERTS.read_text())
    return {"groups": rule["spec"]["groups"]}


def alerts() -> list[dict[str, Any]]:
    return [r for group in rule_groups()["groups"] for r in group["rules"] if "alert" in r]


def dashboard_queries() -> list[str]:
    """The dashboard's queries as Prometheus gets them: Grafana's `$__rate_interval` is a
    range, a variable (`$service`) matches anything."""
    board = json.loads(DASHBOARD.read_text())
    return [
        re.sub(r"\$\w+", ".*", re.sub(r"\$__\w+", "5m", target["expr"]))
        for panel in board["panels"]
        for target in panel.get("targets", [])
    ]


def named_metrics() -> set[str]:
    """Every metric the alerts and the dashboard query, by the name its service exports (a
    histogram's _bucket, _sum and _count are the histogram)."""
    queries = [rule["expr"] for rule in alerts()] + dashboard_queries()
    return {HISTOGRAM_PARTS.sub("", name) for query in queries for name in METRIC.findall(query)}


async def exported_metrics(urls: list[str]) -> set[str]:
    """The metrics these /metrics endpoints declare (a labelled metric is declared before
    it has a sample)."""
    names: set[str] = set()
    async with httpx.AsyncClient() as client:
        for url in urls:
            text = (await client.get(url, timeout=10)).raise_for_status().text
            names |= {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    return names
