"""benchmarks/fleetlock_profile.py itself: with a few hundred polls it profiles refused polls and
finds that they asked etcd nothing (etcd's own request counters), the mirror's own check aside.
Nothing here asserts a timing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cluster import REPO_ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def test_refused_polls_are_profiled_and_ask_etcd_nothing(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "fleetlock_profile.py"), "--polls", "300",
         "--waiters", "10", "--slots", "2", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=240, cwd=REPO_ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads((tmp_path / "fleetlock_profile.json").read_text())
    # none but, perhaps, the mirror's check of the semaphore key (one read per 5 s)
    assert set(doc["etcd_requests_by_method"]) <= {"Range"}, doc["etcd_requests_by_method"]
    assert doc["etcd_requests_per_refused_poll"] < 0.01, doc["etcd_requests_by_method"]
    assert doc["cpu_ms_per_refused_poll"] > 0
    assert any("handle_at_once" in line for line in doc["profile_top_cumulative"])
