"""benchmarks/fleetlock_peers.py itself: with tiny parameters it measures both servers, ours and the
real airlock, on one etcd and finds the group's bound held; without airlock it says where it looked.
The figures are the benchmark's (docs/benchmarks.md); nothing here asserts a timing."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rebootcoord.sim.etcd_server import EtcdServer
from tests.support.cluster import REPO_ROOT
from tests.support.peers import AIRLOCK, needs

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

SCRIPT = str(REPO_ROOT / "benchmarks" / "fleetlock_peers.py")
_groups = itertools.count()


def bench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=540,
        env={**os.environ, **(env or {})}, cwd=REPO_ROOT,
    )  # fmt: skip


@needs(AIRLOCK)
def test_both_servers_measured_under_one_load_and_the_bound_held(etcd: EtcdServer, tmp_path: Path) -> None:
    assert etcd.proc is not None
    group = f"bench-{os.getpid()}-{next(_groups)}"  # airlock's prefix is fixed: the shared etcd
    done = bench(
        "--seconds", "2", "--clients", "4", "--slots", "2", "--repeat", "1", "--client-procs", "1",
        "--etcd-endpoint", etcd.endpoint, "--etcd-pid", str(etcd.proc.pid), "--group", group,
        "--out", str(tmp_path), "--no-plot",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads((tmp_path / "fleetlock_peers.json").read_text())
    assert json.loads(done.stdout) == doc

    refusal = {"rebootcoord": "no_free_slot", "airlock": "failed_lock"}
    for name, (run,) in doc["runs"].items():
        storm, cycles = run["storm"], run["cycles"]
        assert storm["answers"] > 0 and storm["errors"] == 0, (name, storm)
        assert set(storm["answers_by_kind"]) == {refusal[name]}, (name, storm)  # the group was full
        assert cycles["answers_by_kind"].get("ok", 0) > 0 and cycles["errors"] == 0, (name, cycles)
        for figure in ("server_cpu_ms_per_answer", "etcd_cpu_ms_per_answer", "client_cpu_cores"):
            assert storm[figure] is not None, (name, figure)
        assert cycles["consistency"]["writes"] > 0, (name, cycles)  # grants and releases were read back
    assert set(doc["runs"]) == {"rebootcoord", "airlock"}
    assert doc["consistency"] == {
        "held": True,
        "semaphore_writes_checked": doc["consistency"]["semaphore_writes_checked"],
        "most_holders_seen": doc["consistency"]["most_holders_seen"],
        "violations": [],
    }
    assert 0 < doc["consistency"]["most_holders_seen"] <= 2
    assert {"storm.answers_per_second", "cycles.cycles_per_second"} <= set(doc["ratio_ours_to_airlock"])


def test_without_airlock_it_says_where_it_looked_and_exits_2(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-airlock")
    done = bench("--out", str(tmp_path), env={AIRLOCK[0]: missing})
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and missing in done.stderr, done.stderr
