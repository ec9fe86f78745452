"""The chart's alerts and dashboard, evaluated by a real Prometheus over the agent's real metrics endpoint.

test_monitoring.py checks the rules' text (names, durations, metrics the agent exports); here
Prometheus itself loads the PrometheusRule's group (a rule it cannot parse fails the reload),
scrapes three agents' /metrics as served by rebootcoord.daemon.metrics, and fires exactly the
alerts of the two nodes in trouble, labelled with the node's name — the joins on ``instance``
included. Every ``for`` is set to 0s through the chart's values, so alerts fire at the first
evaluation after a scrape.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from rebootcoord import __version__
from rebootcoord.core.semaphore import GroupView, SemaphoreState, Waiter
from rebootcoord.core.types import Group, HolderId, NodeName, Phase
from rebootcoord.daemon.metrics import Metrics, serve
from tests.packaging.conftest import Render, only
from tests.support.cluster import wait_for
from tests.support.prometheus import PrometheusError, PrometheusServer
from tests.support.rbac import CHART

DASHBOARD = CHART / "dashboards" / "rebootcoord.json"
ALERTS = ("drainStuck", "healthGateFailed", "slotHeldTooLong", "rebootRequiredTooLong", "backendDown")


class Agent:
    """One agent's metrics, set the way the agent sets them (cli.wiring, daemon.agent)."""

    def __init__(self, node: str, group: str = "default") -> None:
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry, node=node, group=group)
        self.metrics.info.labels(__version__, node, group, "kubernetes").set(1)
        self.metrics.backend_up.set(1)
        self.metrics.set_phase(Phase.IDLE)
        # Every agent of the group sees it: node-draining and node-unhealthy hold its two slots.
        holders = (HolderId("node-draining"), HolderId("node-unhealthy"))
        waiter = Waiter(HolderId("node-calm"), NodeName("node-calm"), since=0.0, order=1)
        view = GroupView(Group(group), SemaphoreState(max=2, holders=holders), waiters=(waiter,))
        self.metrics.observe_group(view)
        self.node = node
        self._stop: Callable[[], None] | None = None
        self.port = 0

    def serve(self) -> str:
        self._stop, self.port = serve("127.0.0.1:0", self.registry, lambda: (True, "ok"))
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._stop:
            self._stop()


@pytest.fixture
def agents() -> Iterator[dict[str, Agent]]:
    fleet = {name: Agent(name) for name in ("node-draining", "node-unhealthy", "node-calm")}
    try:
        yield fleet
    finally:
        for agent in fleet.values():
            agent.stop()


def _rule_file(render: Render) -> str:
    values: dict[str, Any] = {
        "prometheusRule": {"enabled": True, "alerts": {name: {"for": "0s"} for name in ALERTS}}
    }
    rule = only(render(values), "PrometheusRule")
    return yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False)


def _firing(prometheus: PrometheusServer) -> set[tuple[str, str]]:
    return {
        (r["metric"]["alertname"], r["metric"].get("node", ""))
        for r in prometheus.query('ALERTS{alertstate="firing"}')
    }


@pytest.mark.kube  # helm from testbin/
def test_the_chart_alerts_fire_for_the_nodes_in_trouble_and_only_them(
    render: Render, prometheus: PrometheusServer, agents: dict[str, Agent]
) -> None:
    draining = agents["node-draining"].metrics
    draining.reboot_required.labels("node-draining").set(1)
    draining.set_phase(Phase.DRAINING)
    draining.backend_up.set(0)

    unhealthy = agents["node-unhealthy"].metrics
    unhealthy.set_phase(Phase.VERIFYING)
    unhealthy.health_failing.set(1)

    prometheus.set_rules(_rule_file(render), name="rebootcoord")
    (group,) = prometheus.rule_groups()
    assert {r["name"] for r in group["rules"]} == {
        "RebootcoordDrainStuck",
        "RebootcoordHealthGateFailed",
        "RebootcoordSlotHeldTooLong",
        "RebootcoordRebootRequiredTooLong",
        "RebootcoordBackendDown",
    }
    prometheus.scrape(*(agent.serve() for agent in agents.values()))

    expected = {
        ("RebootcoordDrainStuck", "node-draining"),
        ("RebootcoordSlotHeldTooLong", "node-draining"),
        ("RebootcoordRebootRequiredTooLong", "node-draining"),
        ("RebootcoordBackendDown", "node-draining"),
        ("RebootcoordSlotHeldTooLong", "node-unhealthy"),
        ("RebootcoordHealthGateFailed", "node-unhealthy"),
    }
    wait_for(lambda: _firing(prometheus) == expected, timeout=30, what=f"alerts {sorted(expected)}")
    for rule in prometheus.rule_groups()[0]["rules"]:
        assert rule["health"] == "ok", rule  # every expression evaluates, none errs

    # The node recovers: its alerts end at the next evaluations, the other node's stay.
    unhealthy.health_failing.set(0)
    unhealthy.set_phase(Phase.IDLE)
    rest = {a for a in expected if a[1] == "node-draining"}
    wait_for(lambda: _firing(prometheus) == rest, timeout=30, what=f"alerts {sorted(rest)}")


def _dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every dashboard target, with Grafana's variables as Grafana fills
    them in: every group, and a rate interval of four scrapes."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], t["expr"].replace("$group", ".*").replace("$__rate_interval", "4s"))
        for panel in dashboard["panels"]
        for t in panel.get("targets", ())
    ]


def test_every_dashboard_query_runs_and_finds_the_agents_series(
    prometheus: PrometheusServer, agents: dict[str, Agent]
) -> None:
    agents["node-draining"].metrics.set_phase(Phase.DRAINING)
    agents["node-draining"].metrics.reboots.inc()
    prometheus.scrape(*(agent.serve() for agent in agents.values()))
    # Two scrapes of every target at least, so that rate() and increase() have their two samples.
    wait_for(
        lambda: len(prometheus.query("count_over_time(rebootcoord_backend_up[1m]) >= 3")) == len(agents),
        timeout=30,
        what="three scrapes of every agent",
    )
    empty = []
    for title, expr in _dashboard_queries():
        try:
            result = prometheus.query(expr)
        except PrometheusError as exc:
            pytest.fail(f"panel {title!r}: Prometheus refuses {expr}: {exc}")
        if not result:
            empty.append(f"{title}: {expr}")
    assert not empty, "queries that find no series:\n" + "\n".join(empty)
