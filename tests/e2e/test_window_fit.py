"""Window fit: a node takes a slot only when its cycle can end before the window closes. Real
agent processes on etcd and on the Lease, in a window that closes in three minutes: with a
ten-minute expected cycle nobody takes a slot and each says why; with a one-minute one they
all reboot in the same window."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from rebootcoord.sim.checker import read_jsonl
from rebootcoord.sim.etcd_server import EtcdServer
from rebootcoord.sim.fleet import Fleet
from tests.conftest import wait_for
from tests.support.kubecluster import KubeTestEnv

pytestmark = pytest.mark.e2e


def closing_window() -> dict[str, Any]:
    """A daily window that opened two minutes ago and closes in three."""
    start = datetime.now(UTC) - timedelta(minutes=2)
    return {"windows": [f"{start:%H:%M} 5m"], "time_zone": "UTC"}


def prove_nobody_starts_a_cycle_that_would_overrun(fleet: Fleet) -> None:
    def told() -> bool:
        reasons = {e["node"]: e["reason"] for e in read_jsonl(fleet.events_file) if e["phase"] == "pending"}
        return len(reasons) == len(fleet.nodes) and all("waits: next window" in r for r in reasons.values())

    wait_for(told, timeout=60, interval=0.3, what="every node waiting for the next window")
    time.sleep(5)  # several check intervals
    assert not [e for e in read_jsonl(fleet.events_file) if e["phase"] == "locked"], "a slot was taken"
    reason = next(e["reason"] for e in read_jsonl(fleet.events_file) if e["phase"] == "pending")
    assert "expected_cycle" in reason and "window closes at" in reason


def test_window_fit_on_etcd(tmp_path: Path, etcd: EtcdServer, prefix: str) -> None:
    def fleet(run: str, expected: str) -> Fleet:
        return Fleet(
            str(tmp_path / run), nodes=3, endpoint=etcd.endpoint, max_holders=2, reboot_seconds=0.5,
            agent_config={"etcd_key_prefix": prefix, **closing_window(), "expected_cycle": expected},
        )  # fmt: skip

    with fleet("long", "10m") as too_long:
        prove_nobody_starts_a_cycle_that_would_overrun(too_long)
    with fleet("short", "1m") as fits:
        wait_for(fits.done, timeout=120, interval=0.5, what="every node rebooted inside the window")
    assert not fits.violations, fits.violations


@pytest.mark.kube
def test_window_fit_on_the_lease(kube: KubeTestEnv, kube_fleet: Callable[..., Fleet]) -> None:
    names = [n.name for n in kube.create_nodes(2)]
    with kube_fleet(names, max_holders=1, agent_config={**closing_window(), "expected_cycle": "10m"}) as long:
        prove_nobody_starts_a_cycle_that_would_overrun(long)
    with kube_fleet(names, max_holders=1, agent_config={**closing_window(), "expected_cycle": "1m"}) as fits:
        wait_for(fits.done, timeout=240, interval=0.5, what="every node rebooted inside the window")
    assert not fits.violations, fits.violations
