"""The pre-reboot alert gate (``rebootcoord.adapters.prometheus.FiringAlerts``) against a real
Prometheus (``testbin/prometheus``): alerts are made to fire and stop by rewriting the server's rule
files and reloading it, and the gate must follow.

Each test has a Prometheus of its own (the ``prometheus`` fixture, ~0.5 s to start). Every wait
polls a condition with a deadline: an alert fires at the first evaluation after the reload
(evaluation every second) and ends at the next evaluation after its rule is dropped (stale markers).
"""

from __future__ import annotations

import os
import signal

from rebootcoord.adapters.prometheus import QUERY, FiringAlerts
from rebootcoord.ports import CheckResult
from tests.conftest import wait_for
from tests.support.cluster import free_port
from tests.support.prometheus import FIRING_QUERY, PrometheusServer, alert_rule


def wait_gate(gate: FiringAlerts, *, ok: bool, timeout: float = 30.0) -> CheckResult:
    """Poll the gate until it answers ``ok``; return that answer."""
    answers: list[CheckResult] = []

    def settled() -> CheckResult | None:
        answers.append(gate.check())
        return answers[-1] if answers[-1].ok is ok else None

    result = wait_for(settled, timeout=timeout, interval=0.1, what=f"gate ok={ok} (answers: {answers[-3:]})")
    assert isinstance(result, CheckResult)
    return result


def test_harness_is_a_real_prometheus_of_the_pinned_version(prometheus: PrometheusServer) -> None:
    assert QUERY == FIRING_QUERY  # the harness waits on what the product asks
    assert prometheus.query("vector(41) + 1")[0]["value"][1] == "42"
    status, body = prometheus._request("GET", "/api/v1/status/buildinfo")
    assert status == 200
    assert '"version":"3.16.0"' in body  # stamped by hack/testbin/build.sh from the go.mod pin


def test_open_when_no_alert_fires(prometheus: PrometheusServer) -> None:
    gate = FiringAlerts(prometheus.url)
    assert gate.check() == CheckResult(True, "prometheus-alerts")


def test_pending_and_inactive_alerts_do_not_block(prometheus: PrometheusServer) -> None:
    prometheus.set_rules(
        [
            alert_rule("SlowToFire", for_="1h"),  # pending for an hour
            alert_rule("NeverFires", "vector(0) > 1"),
        ]
    )
    prometheus.wait_alerts("SlowToFire", state="pending")
    assert prometheus.alerts("firing") == set()
    assert FiringAlerts(prometheus.url).check().ok is True


def test_blocks_while_an_alert_fires_and_opens_when_it_stops(prometheus: PrometheusServer) -> None:
    gate = FiringAlerts(prometheus.url)
    assert gate.check().ok is True

    prometheus.set_alerts("NodeOnFire", labels={"severity": "critical"})
    closed = wait_gate(gate, ok=False)
    assert closed.name == "prometheus-alerts"
    assert closed.detail == "firing alerts: NodeOnFire"

    prometheus.clear_rules()
    assert wait_gate(gate, ok=True).detail == ""


def test_names_every_firing_alert_once(prometheus: PrometheusServer) -> None:
    # Two series of one alert (two label sets) and a second alert: each name once, sorted.
    prometheus.set_rules(
        [
            alert_rule("ZoneDown", 'label_replace(vector(1), "zone", "a", "", "")'),
            alert_rule("ZoneDown", 'label_replace(vector(1), "zone", "b", "", "")'),
            alert_rule("DiskFull"),
        ]
    )
    wait_for(lambda: len(prometheus.query(FIRING_QUERY)) == 3, timeout=30, interval=0.1, what="3 series")
    assert FiringAlerts(prometheus.url).check().detail == "firing alerts: DiskFull, ZoneDown"


def test_alert_filter_ignores_matching_alerts(prometheus: PrometheusServer) -> None:
    gate = FiringAlerts(prometheus.url, alert_filter="^(Watchdog|RebootRequired)$")

    prometheus.set_alerts("Watchdog", "RebootRequired", "DiskFull")
    prometheus.wait_alerts("Watchdog", "RebootRequired", "DiskFull")
    assert gate.check() == CheckResult(False, "prometheus-alerts", "firing alerts: DiskFull")

    prometheus.set_alerts("Watchdog", "RebootRequired")  # DiskFull stops
    prometheus.wait_alerts("Watchdog", "RebootRequired")
    assert gate.check().ok is True
    # Without the filter the same alerts block: the filter, not an empty answer, opened the gate.
    assert FiringAlerts(prometheus.url).check().detail == "firing alerts: RebootRequired, Watchdog"


def test_alert_filter_is_a_regex_search(prometheus: PrometheusServer) -> None:
    prometheus.set_alerts("NodeKernelOutdated", "NodeDiskFull")
    prometheus.wait_alerts("NodeKernelOutdated", "NodeDiskFull")
    # Not anchored: "Kernel" matches inside the name.
    assert FiringAlerts(prometheus.url, alert_filter="Kernel").check().detail == "firing alerts: NodeDiskFull"
    assert FiringAlerts(prometheus.url, alert_filter="^Node").check().ok is True


def test_match_only_blocks_only_on_matching_alerts(prometheus: PrometheusServer) -> None:
    gate = FiringAlerts(prometheus.url, alert_filter="^Critical", match_only=True)

    prometheus.set_alerts("CriticalEtcdQuorum", "WarningHighLoad")
    prometheus.wait_alerts("CriticalEtcdQuorum", "WarningHighLoad")
    assert gate.check() == CheckResult(False, "prometheus-alerts", "firing alerts: CriticalEtcdQuorum")

    prometheus.set_alerts("WarningHighLoad")  # the critical one stops, the warning goes on
    prometheus.wait_alerts("WarningHighLoad")
    assert gate.check().ok is True

    prometheus.set_alerts("WarningHighLoad", "CriticalDiskFull")  # a new critical one
    assert wait_gate(gate, ok=False).detail == "firing alerts: CriticalDiskFull"


def test_rule_file_with_labels_of_the_tests_choosing(prometheus: PrometheusServer) -> None:
    # Raw rule-file text, as an operator would write it.
    prometheus.set_rules(
        """
groups:
  - name: node
    rules:
      - alert: HostRebootRequired
        expr: vector(1)
        for: 0s
        labels: {severity: info, team: platform}
""",
        name="node",
    )
    prometheus.wait_alerts("HostRebootRequired")
    (series,) = prometheus.query(FIRING_QUERY)
    assert series["metric"]["team"] == "platform"
    assert FiringAlerts(prometheus.url, alert_filter="RebootRequired").check().ok is True
    assert FiringAlerts(prometheus.url).check().ok is False


def test_closed_when_nothing_listens() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = FiringAlerts(url, timeout=2).check()
    assert result.ok is False
    assert result.detail.startswith(f"cannot query {url}: ")
    assert "refused" in result.detail.lower()


def test_closed_when_the_url_is_not_the_api_root(prometheus: PrometheusServer) -> None:
    result = FiringAlerts(prometheus.url + "/no-such-prefix", timeout=5).check()
    assert result.ok is False
    assert "cannot query" in result.detail and "404" in result.detail


def test_closed_when_prometheus_hangs_or_dies(prometheus: PrometheusServer) -> None:
    gate = FiringAlerts(prometheus.url, timeout=1)
    assert gate.check().ok is True

    os.kill(prometheus.pid, signal.SIGSTOP)  # the kernel still accepts connections; nobody answers
    try:
        hung = gate.check()
    finally:
        os.kill(prometheus.pid, signal.SIGCONT)
    assert hung.ok is False
    assert hung.detail.startswith(f"cannot query {prometheus.url}: ")
    assert "timed out" in hung.detail

    wait_gate(gate, ok=True)  # thawed, it answers again
    prometheus.stop()
    assert not prometheus.alive()
    dead = gate.check()
    assert dead.ok is False
    assert "refused" in dead.detail.lower()
