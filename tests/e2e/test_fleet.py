"""Simulated fleets: agents as real processes on a real etcd, reboots through the simulated host."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from rebootcoord.sim.etcd_server import EtcdServer
from rebootcoord.sim.fleet import Fleet
from tests.conftest import wait_for
from tests.support.checks import etcd_report

pytestmark = pytest.mark.e2e


def test_simulate_8_nodes_max_2_proves_invariants_from_the_event_log(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    summary = tmp_path / "summary.json"
    done = subprocess.run(
        [
            sys.executable, "-m", "rebootcoord", "simulate", "--nodes", "8", "--max", "2",
            "--reboot-seconds", "1", "--events", str(events), "--summary-json", str(summary),
        ],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "invariants: OK" in done.stdout

    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert {"ts", "node", "pid", "phase", "boot_id", "group"} <= set(lines[0])
    # Independent of the product's checker: holding intervals from locked (acquire revision) to
    # idle after release (release revision), ordered by etcd revision.
    boundaries = []
    boots: dict[str, list[str]] = defaultdict(list)
    for event in lines:
        if not boots[event["node"]] or boots[event["node"]][-1] != event["boot_id"]:
            boots[event["node"]].append(event["boot_id"])
        if event["phase"] == "locked":
            boundaries.append((event["rev"], +1))
        if event["phase"] == "idle" and event.get("reason") == "slot released":
            boundaries.append((event["rev"], -1))
    holding = peak = 0
    for _, delta in sorted(boundaries):
        holding += delta
        peak = max(peak, holding)
    assert peak == 2  # never more than max, and the budget was used
    assert holding == 0  # every slot was given back
    assert len(boots) == 8
    assert all(len(set(ids)) == 2 for ids in boots.values()), boots  # exactly one reboot each
    assert sorted(e["node"] for e in lines if e["phase"] == "locked") == sorted(boots)  # one slot each
    report = json.loads(summary.read_text())
    assert report["max_holders_seen"] == 2 and report["violations"] == []
    assert set(report["reboots"].values()) == {1}


def test_fleet_with_repeated_updates_keeps_the_budget(etcd: EtcdServer, prefix: str, tmp_path: Path) -> None:
    """Every node gets a new update after each reboot (3 rounds): 18 reboots through 3 slots."""
    fleet = Fleet(
        str(tmp_path / "run"), nodes=6, endpoint=etcd.endpoint, max_holders=3, reboot_seconds=0.5, cycles=3,
        agent_config={"etcd_key_prefix": prefix},
    )  # fmt: skip
    with fleet:
        wait_for(fleet.done, timeout=300, interval=0.2, what="three reboots per node")
    assert not fleet.violations
    assert {n.reboots for n in fleet.nodes.values()} == {3}
    report = etcd_report(fleet, etcd.endpoint, prefix)
    assert report.ok and report.by_revision, report.problems
    assert all(r == 3 for r in report.reboots.values()), report.reboots
    assert report.max_holders == 3  # the budget was used, never exceeded (every revision)


def test_failed_health_gate_keeps_the_slot_and_stops_the_rollout(
    etcd: EtcdServer, prefix: str, tmp_path: Path
) -> None:
    fleet = Fleet(
        str(tmp_path / "run"), nodes=3, endpoint=etcd.endpoint, max_holders=1, reboot_seconds=0.3,
        agent_config={
            "etcd_key_prefix": prefix,
            "health_checks": [
                {"type": "command", "name": "app-ok", "argv": ["test", "-f", "{node_dir}/healthy"]}
            ],
        },
    )  # fmt: skip
    with fleet:
        first = wait_for(
            lambda: next((n for n in fleet.nodes.values() if n.reboots == 1), None),
            timeout=120,
            what="the first reboot",
        )
        wait_for(
            lambda: (r := fleet.semaphore.read().record(first.name)) is not None and "app-ok" in r.note,
            timeout=60,
            what="the health gate failure to be recorded",
        )
        status = fleet.semaphore.read()
        assert status.slots is not None and status.slots.holders == (first.name,)
        record = status.record(first.name)
        assert record is not None and record.phase.value == "verifying"
        # The rollout stopped: nobody else took the slot or rebooted.
        assert sum(n.reboots for n in fleet.nodes.values()) == 1
        # The operator fixes the node: the gate passes, the slot moves on, the rollout finishes.
        for node in fleet.nodes.values():
            Path(node.dir, "healthy").touch()
        wait_for(fleet.done, timeout=180, interval=0.2, what="the rest of the rollout")
    assert not fleet.violations
    report = etcd_report(fleet, etcd.endpoint, prefix)
    assert report.ok, report.problems
