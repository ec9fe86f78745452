"""Alerts and the dashboard speak the agent's metrics: every name they use is one it exports."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from rebootcoord.daemon.metrics import Metrics
from tests.packaging.conftest import Render, only
from tests.support.rbac import CHART

DASHBOARD = CHART / "dashboards" / "rebootcoord.json"
METRIC_RE = re.compile(r"\brebootcoord_[a-z_]+\b")


@pytest.fixture(scope="module")
def exported() -> set[str]:
    """The sample names the agent exports (counters' _total, histograms' _bucket/_sum/_count)."""
    registry = CollectorRegistry()
    Metrics(registry, node="node-1", group="default")
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    # Families, not samples: a labelled gauge has no sample until its first labels() call.
    return {f.name + s for f in registry.collect() for s in suffixes.get(f.type, ("",))}


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]


def test_the_contract_metrics_are_exported(exported: set[str]) -> None:
    contract = {
        "rebootcoord_reboot_required",
        "rebootcoord_phase",
        "rebootcoord_slot_held",
        "rebootcoord_slots_max",
        "rebootcoord_slots_held",
        "rebootcoord_waiters",
        "rebootcoord_group_paused",
        "rebootcoord_backend_up",
        "rebootcoord_reboots_total",
        "rebootcoord_reboot_requests_total",
        "rebootcoord_failures_total",
        "rebootcoord_health_gate_failing",
        "rebootcoord_phase_seconds_bucket",
        "rebootcoord_next_window_open_timestamp_seconds",
        "rebootcoord_info",
    }
    assert contract <= exported


def test_dashboard_uses_only_exported_metrics(exported: set[str]) -> None:
    exprs = _exprs(_dashboard())
    used = {m for e in exprs for m in METRIC_RE.findall(e)}
    assert used, "no query found"
    assert used <= exported, f"unknown metrics: {sorted(used - exported)}"
    # The template variable too.
    queries = [v.get("definition", "") for v in _dashboard()["templating"]["list"]]
    assert {m for q in queries for m in METRIC_RE.findall(q)} <= exported


def test_dashboard_is_well_formed() -> None:
    dash = _dashboard()
    assert dash["uid"] == "rebootcoord" and dash["title"] == "rebootcoord"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert variables == {"datasource", "group"}
    for panel in dash["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"]), panel["title"]
        for expr in (t["expr"] for t in panel["targets"]):
            assert expr.count("(") == expr.count(")"), expr
            assert expr.count("{") == expr.count("}"), expr


@pytest.mark.kube  # helm from testbin/
def test_dashboard_configmap_carries_the_json(render: Render) -> None:
    objects = render({"dashboard": {"enabled": True, "namespace": "monitoring"}})
    cm = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard"))
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["rebootcoord.json"]) == _dashboard()


def _rules(render: Render, values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rule = only(render({"prometheusRule": {"enabled": True, **values}}), "PrometheusRule")
    (group,) = rule["spec"]["groups"]
    return {r.get("alert") or r.get("record"): r for r in group["rules"]}


@pytest.mark.kube
def test_alerts_cover_the_issue_and_use_exported_metrics(render: Render, exported: set[str]) -> None:
    rules = _rules(render, {})
    assert set(rules) == {
        "RebootcoordDrainStuck",
        "RebootcoordHealthGateFailed",
        "RebootcoordSlotHeldTooLong",
        "RebootcoordRebootRequiredTooLong",
        "RebootcoordBackendDown",
    }
    for name, rule in rules.items():
        used = set(METRIC_RE.findall(rule["expr"]))
        assert used and used <= exported, f"{name}: {sorted(used - exported)}"
        assert rule["labels"]["severity"], name
        # Prometheus' own templating survives Helm's: the node's name is filled in when it fires.
        assert "{{ $labels.node }}" in rule["annotations"]["summary"], name
    assert 'rebootcoord_phase{phase="draining"}' in rules["RebootcoordDrainStuck"]["expr"]
    assert rules["RebootcoordDrainStuck"]["for"] == "15m"  # config.drain_timeout
    assert rules["RebootcoordSlotHeldTooLong"]["for"] == "2h"
    assert rules["RebootcoordRebootRequiredTooLong"]["for"] == "7d"
    assert rules["RebootcoordHealthGateFailed"]["for"] == "10m"


@pytest.mark.kube
@pytest.mark.parametrize(
    ("drain_timeout", "expected"),
    [("40m", "40m"), ("1h30m", "1h30m"), (900, "900s")],
    ids=["minutes", "hours-minutes", "seconds-as-number"],
)
def test_drain_alert_waits_the_drain_timeout(render: Render, drain_timeout: Any, expected: str) -> None:
    rules = _rules_with_config(render, {"drain_timeout": drain_timeout})
    assert rules["RebootcoordDrainStuck"]["for"] == expected


def _rules_with_config(render: Render, config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rule = only(render({"prometheusRule": {"enabled": True}, "config": config}), "PrometheusRule")
    return {r["alert"]: r for r in rule["spec"]["groups"][0]["rules"]}


@pytest.mark.kube
def test_alerts_can_be_tuned_disabled_and_extended(render: Render) -> None:
    extra = {"record": "rebootcoord:nodes_waiting", "expr": "sum(rebootcoord_waiters)"}
    rules = _rules(
        render,
        {
            "labels": {"release": "kube-prometheus"},
            "alerts": {
                "backendDown": {"enabled": False},
                "slotHeldTooLong": {"for": "45m", "severity": "critical"},
            },
            "extraRules": [extra],
        },
    )
    assert "RebootcoordBackendDown" not in rules
    assert rules["RebootcoordSlotHeldTooLong"]["for"] == "45m"
    assert rules["RebootcoordSlotHeldTooLong"]["labels"]["severity"] == "critical"
    assert rules["rebootcoord:nodes_waiting"] == extra


@pytest.mark.kube
def test_service_monitor_scrapes_the_metrics_service(render: Render) -> None:
    objects = render({"serviceMonitor": {"enabled": True, "labels": {"release": "kps"}, "interval": "15s"}})
    monitor, service = only(objects, "ServiceMonitor"), only(objects, "Service")
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0] | {} == {
        "port": "metrics",
        "path": "/metrics",
        "interval": "15s",
        "scrapeTimeout": "10s",
    }
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9727, "targetPort": "metrics", "protocol": "TCP"}
    ]


def test_rule_templates_escape_prometheus_templating() -> None:
    """Helm must not eat Prometheus' {{ $labels.x }}: the template writes them as raw strings."""
    text = (CHART / "templates" / "prometheusrule.yaml").read_text()
    assert "{{ $labels" not in text.replace("{{`{{ $labels", "")
    assert yaml.safe_load((CHART / "values.yaml").read_text())["prometheusRule"]["enabled"] is False
