"""`rebootcoord simulate` with --waves, --zones and --fail-node, as a user runs it, on a real etcd.

What the command says (its exit code and summary JSON) is checked against what the backend and
the agents recorded: the group's history replayed from etcd (who held a slot at each revision,
with the wave and zone of its record) and the agents' event log (when each took and gave back
its slot).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from rebootcoord.core.types import Group, HolderId
from rebootcoord.daemon.group import etcd_group
from rebootcoord.sim.checker import Version, read_jsonl
from rebootcoord.sim.cli import EXIT_OK, EXIT_PAUSED
from rebootcoord.sim.etcd_server import EtcdServer
from rebootcoord.sim.history import etcd_group_history, pause_marker_history

pytestmark = [pytest.mark.etcd, pytest.mark.e2e]

PREFIX = "com.coreos.airlock"  # simulate's agents use the default key prefix


def simulate(etcd: EtcdServer, tmp_path: Path, group: str, *args: str) -> tuple[int, str, dict[str, Any]]:
    """Run the command on the shared etcd in a group of its own; (exit code, stdout, summary)."""
    summary = tmp_path / "summary.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REBOOTCOORD_")}
    done = subprocess.run(
        [
            sys.executable, "-m", "rebootcoord", "simulate", "--etcd", etcd.endpoint, "--group", group,
            "--reboot-seconds", "1", "--run-dir", str(tmp_path / "run"), "--summary-json", str(summary),
            "--timeout", "50", *args,
        ],
        capture_output=True, text=True, timeout=90, env=env,
    )  # fmt: skip
    assert summary.exists(), done.stdout + done.stderr[-3000:]
    return done.returncode, done.stdout + done.stderr[-3000:], json.loads(summary.read_text())


def history(etcd: EtcdServer, group: str) -> list[Version]:
    return etcd_group_history(etcd.endpoint, prefix=PREFIX, group=group, since=0)


def holdings(tmp_path: Path) -> dict[str, list[tuple[float, float | None]]]:
    """Each node's holdings from the agents' event log: (slot taken, slot given back or None)."""
    out: dict[str, list[tuple[float, float | None]]] = defaultdict(list)
    for event in sorted(read_jsonl(str(tmp_path / "run" / "events.jsonl")), key=lambda e: e["ts"]):
        node = event["node"]
        if event["phase"] == "locked":
            out[node].append((event["ts"], None))
        elif event["phase"] == "idle" and event.get("reason") == "slot released" and out[node]:
            taken, released = out[node][-1]
            if released is None:
                out[node][-1] = (taken, event["ts"])
    return dict(out)


def test_no_node_of_a_wave_takes_a_slot_before_the_last_wave_is_back_and_soaked(
    etcd: EtcdServer, tmp_path: Path
) -> None:
    soak = 3.0
    code, out, summary = simulate(
        etcd, tmp_path, "waves", "--nodes", "5", "--max", "2", "--waves", "1,50%,100%", "--wave-soak", "3s"
    )
    assert code == EXIT_OK, out
    assert "invariants: OK" in out
    assert "wave 2 of 3 (50%) opens at" in out and "wave 3 of 3 (100%) opens at" in out
    waves = summary["waves"]
    assert [w["wave"] for w in waves] == [1, 2, 3]
    assert len({w["rollout"] for w in waves}) == 1
    # 1 node; then 50% of the 5 (3, so 2 more); then the rest.
    assert [w["quota"] for w in waves] == [1, 3, None]
    assert [len(w["nodes"]) for w in waves] == [1, 2, 2]
    assert summary["soaks"] == 2 and summary["wave_soak_seconds"] == soak
    assert summary["rollout_seconds"] > 2 * soak

    # The waves as the backend recorded them: each holder's record names its wave.
    versions = history(etcd, "waves")
    wave_of: dict[str, int] = {}
    for v in versions:
        in_waves = {v.records[h]["wave"] for h in v.holders if h in v.records}
        assert len(in_waves) <= 1, f"holders of waves {in_waves} at once at revision {v.rev}"
        for h in v.holders:
            if h in v.records:
                wave_of[h] = v.records[h]["wave"]
    assert sorted(wave_of) == [f"node-0{i}" for i in range(1, 6)]
    assert [sorted(n for n, w in wave_of.items() if w == i) for i in range(3)] == [w["nodes"] for w in waves]

    # From the agents' log: each wave's first slot taken after the last wave's last release + soak.
    held = holdings(tmp_path)
    assert all(len(h) == 1 and h[0][1] is not None for h in held.values()), held
    for k in (1, 2):
        back = max(held[n][0][1] or 0.0 for n, w in wave_of.items() if w == k - 1)
        first = min(held[n][0][0] for n, w in wave_of.items() if w == k)
        assert first >= back + soak - 0.3, f"wave {k + 1} started {first - back:.2f}s after wave {k} was back"


def test_a_failing_node_pauses_the_group_and_the_simulation_ends(etcd: EtcdServer, tmp_path: Path) -> None:
    code, out, summary = simulate(
        etcd, tmp_path, "failing", "--nodes", "6", "--max", "2", "--fail-node", "node-01"
    )
    assert code == EXIT_PAUSED, out
    assert "invariants: OK" in out
    assert "paused by rebootcoord agent on node-01" in out
    assert summary["outcome"] == "paused" and summary["fail_node"] == "node-01"
    assert "node-01" in summary["paused"]["by"] and "app" in summary["paused"]["reason"]

    sem = etcd_group((etcd.endpoint,), prefix=PREFIX, group=Group("failing"), timeout=5.0)
    try:
        view = sem.read(queue=False)
    finally:
        sem.close()
    assert view.paused is not None and "post-reboot checks of node-01" in view.paused.reason
    assert view.holds(HolderId("node-01"))  # the failing node keeps its slot (stop the line)

    # From the backend: the revision the pause marker was written at; no holder joined after it,
    # so no node rebooted after the pause but those that held a slot before it.
    marker = pause_marker_history(etcd.endpoint, prefix=PREFIX, group="failing")
    paused_rev = min(rev for rev, value in marker if value is not None)
    versions = history(etcd, "failing")
    assert "node-01" in versions[-1].holders
    taken: dict[str, int] = {}
    before: frozenset[str] = frozenset()
    for v in versions:
        for node in v.holders - before:
            assert v.rev < paused_rev, (
                f"{node} took a slot at revision {v.rev}, after the pause ({paused_rev})"
            )
            taken[node] = v.rev
        before = v.holders
    host = read_jsonl(str(tmp_path / "run" / "host-events.jsonl"))
    asked = {e["node"] for e in host if e["event"] == "reboot_requested"}
    assert "node-01" in asked and asked <= set(taken)
    assert summary["reboots"]["node-01"] == 1
    # The agents' log agrees: no slot taken after the pause was written.
    locked_after = [e for e in read_jsonl(str(tmp_path / "run" / "events.jsonl"))
                    if e["phase"] == "locked" and e["rev"] > paused_rev]  # fmt: skip
    assert locked_after == []


def test_no_zone_has_more_holders_than_max_per_zone(etcd: EtcdServer, tmp_path: Path) -> None:
    code, out, summary = simulate(etcd, tmp_path, "zones", "--nodes", "6", "--max", "3", "--zones", "2")
    assert code == EXIT_OK, out
    assert "invariants: OK" in out
    assert summary["zones"] == {"zone-a": 3, "zone-b": 3}
    assert summary["max_per_zone"] == 1
    assert summary["max_zone_holders_seen"] == {"zone-a": 1, "zone-b": 1}

    expected = {f"node-0{i}": "zone-a" if i % 2 else "zone-b" for i in range(1, 7)}  # round-robin
    most = 0
    for v in history(etcd, "zones"):
        per_zone: dict[str, int] = defaultdict(int)
        for h in v.holders:
            zone = v.records[h]["zone"] if h in v.records else "?"
            assert zone in ("?", expected[h]), (h, zone)
            per_zone[zone] += 1
        assert all(n <= 1 for z, n in per_zone.items() if z != "?"), (v.rev, dict(per_zone))
        most = max(most, len(v.holders))
    # Three slots, but one per zone: two at most, and two zones at once did go together.
    assert most == 2
    assert summary["max_holders_seen"] == 2
