"""The observability pack (docker/observability/) against the live service: every metric and label
the Grafana dashboard and the Prometheus alert rules query exists in a /metrics scrape of the real
app, every query parses as PromQL, and the provisioning files point at each other."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from serving.settings import Settings
from tests.serving.conftest import AUTH, serve

ROOT = Path(__file__).resolve().parents[2]
PACK = ROOT / "docker" / "observability"
DASHBOARD = PACK / "grafana" / "dashboards" / "ranker.json"
ALERTS = PACK / "prometheus" / "alerts.yml"
PROMETHEUS = PACK / "prometheus" / "prometheus.yml"
# Labels Prometheus attaches at scrape time, and the series it writes itself.
TARGET_LABELS = {"job", "instance"}
SCRAPE_SERIES = {"up"}
# Grafana's variables, as a query Prometheus would receive them.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$variant": ".*"}


@cache
def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def panels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in doc["panels"]:
        found.append(panel)
        found += panel.get("panels", [])  # collapsed rows hold theirs
    return found


def dashboard_queries() -> list[str]:
    return [t["expr"] for p in panels(dashboard()) for t in p.get("targets", [])]


@cache
def alert_rules() -> list[dict[str, Any]]:
    return [
        rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
    ]


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names matched) of every series selector in a PromQL expression."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    found: list[tuple[str, set[str]]] = []

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            labels = {m.name for m in node.matchers.matchers}
            assert node.name, f"selector without a metric name in {expr!r}"
            found.append((node.name, labels - {"__name__"}))
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    assert found, f"no series selector in {expr!r}"
    return found


def test_dashboard_is_well_formed() -> None:
    doc = dashboard()
    assert doc["uid"] and doc["title"] and doc["schemaVersion"] >= 36
    ids = [p["id"] for p in panels(doc)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    datasource = yaml.safe_load(
        (PACK / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"][0]
    for panel in panels(doc):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
    titles = " ".join(p["title"].lower() for p in panels(doc))
    for topic in ("latency", "error", "onnx", "candidates", "config age", "impression", "memory"):
        assert topic in titles, f"no panel on {topic}"
    (variable,) = doc["templating"]["list"]
    assert re.fullmatch(r"label_values\((\w+), variant\)", variable["definition"])


def test_alert_rules_are_well_formed() -> None:
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names))
    for wanted in ("RankerNotReady", "RankerConfigStale", "RankerImpressionsDropped"):
        assert wanted in names
    assert "RankerP99OverBudget" in names
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("page", "warn"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        if "for" in rule:
            assert promql_parser.parse_duration(rule["for"]).total_seconds() > 0
        selectors(rule["expr"])  # parses


def test_prometheus_scrapes_the_compose_service_and_loads_the_rules() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    # source -> target of the bind mounts
    mounts = dict(v.split(":")[:2] for v in compose["prometheus"]["volumes"] if v.startswith("."))
    assert config["rule_files"] == [mounts_target(mounts, ALERTS)]
    assert mounts_target(mounts, PROMETHEUS) == "/etc/prometheus/prometheus.yml"
    (job,) = config["scrape_configs"]
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["ranker-serving"] and "ranker-serving" in compose
    assert sd["port"] == 8000 and job["job_name"] == "ranker"
    grafana = {v.split(":")[1] for v in compose["grafana"]["volumes"]}
    provider = yaml.safe_load(
        (PACK / "grafana" / "provisioning" / "dashboards" / "ranker.yml").read_text()
    )["providers"][0]
    assert provider["options"]["path"] in grafana


def mounts_target(mounts: dict[str, str], path: Path) -> str:
    return mounts[f"./{path.relative_to(ROOT)}"]


@pytest.mark.anyio
async def test_every_queried_metric_and_label_is_exported(
    settings: Settings, body: dict[str, Any]
) -> None:
    async with serve(settings) as served:
        assert (await served.client.post("/rank", json=body)).status_code == 200
        assert (await served.client.post("/rank", json={**body, "top_k": 0})).status_code == 422
        assert (await served.client.post("/models/reload", headers=AUTH)).status_code == 200
        text = (await served.client.get("/metrics")).text
    exported: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            exported.setdefault(sample.name, set()).update(sample.labels)
    queries = dashboard_queries() + [rule["expr"] for rule in alert_rules()]
    variable = dashboard()["templating"]["list"][0]["definition"]
    queries.append(re.sub(r"label_values\((\w+), (\w+)\)", r"\1{\2=~'.*'}", variable))
    checked = set()
    for expr in queries:
        for name, labels in selectors(expr):
            if name in SCRAPE_SERIES:
                continue
            assert name in exported, f"{name} (queried by {expr!r}) is not in /metrics"
            missing = labels - TARGET_LABELS - exported[name]
            assert not missing, f"{name} has no label {missing} (queried by {expr!r})"
            checked.add(name)
    assert {"ranker_request_duration_seconds_bucket", "process_resident_memory_bytes"} <= checked
