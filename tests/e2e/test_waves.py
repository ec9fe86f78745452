"""Rollouts in waves: no node of a wave takes a slot before every node of the wave before came
back healthy, gave its slot back and soaked; ``max_holders`` still caps each wave; a sick canary
stops the line. Real agent processes on etcd and on the Kubernetes Lease (kwok nodes). What
happened is read from the backend -- every revision of the group replayed from etcd and the
group's own history -- never from the agents' word."""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest

from rebootcoord.core.rollout import REBOOTED, Cycle
from rebootcoord.sim.checker import Version
from rebootcoord.sim.etcd_server import EtcdServer
from rebootcoord.sim.fleet import Fleet
from rebootcoord.sim.history import etcd_group_history, kube_group_history
from tests.conftest import wait_for
from tests.support.kubecluster import KubeTestEnv

pytestmark = pytest.mark.e2e

SOAK = 3.0


def waves_of(cycles: tuple[Cycle, ...]) -> dict[int, list[Cycle]]:
    """The healthy cycles of the (one) rollout, by wave number from 1."""
    rollouts = {c.wave.split("/")[0] for c in cycles if c.wave}
    assert len(rollouts) == 1, f"one rollout expected, got {rollouts}"
    out: dict[int, list[Cycle]] = defaultdict(list)
    for c in cycles:
        assert c.outcome == REBOOTED, c
        out[int(c.wave.split("/")[1])].append(c)
    return dict(out)


def prove_the_waves(
    history: list[Version], cycles: tuple[Cycle, ...], sizes: list[int], max_holders: int
) -> None:
    """From the group's history: the waves' sizes, each wave after the last one's soak, and --
    from every stored revision -- never a holder of one wave beside a holder of an earlier one,
    never more than max_holders."""
    waves = waves_of(cycles)
    assert [len(waves[k]) for k in sorted(waves)] == sizes
    for k in sorted(waves)[1:]:
        opened = min(c.started_at for c in waves[k])
        last_back = max(c.ended_at for c in waves[k - 1])
        assert opened >= last_back + SOAK, f"wave {k} started {opened - last_back:.1f}s after wave {k - 1}"
    wave_of = {c.id: int(c.wave.split("/")[1]) for c in cycles}
    most = 0
    for version in history:
        held = [wave_of[h] for h in version.holders if h in wave_of]
        assert len(set(held)) <= 1, f"revision {version.rev}: holders of waves {sorted(held)} at once"
        assert len(version.holders) <= max_holders
        most = max(most, len(version.holders))
    assert most == max_holders, "the last wave went in parallel"


def test_waves_on_etcd(tmp_path: Path, etcd: EtcdServer, prefix: str) -> None:
    # 8 nodes, waves 1, 50 %, 100 %: 1 canary, then 3 more (4 in all), then the last 4, 3 at a time.
    fleet = Fleet(
        str(tmp_path / "fleet"), nodes=8, endpoint=etcd.endpoint, max_holders=3, reboot_seconds=0.5,
        agent_config={"etcd_key_prefix": prefix, "waves": [1, "50%", "100%"], "wave_soak": f"{SOAK}s"},
    )  # fmt: skip
    with fleet:
        wait_for(fleet.done, timeout=300, interval=0.5, what="every node rebooted and released")
        cycles = fleet.semaphore.read(queue=False).ledger.history
    assert not fleet.violations, fleet.violations
    history = etcd_group_history(etcd.endpoint, prefix=prefix, group="default", since=fleet.start_revision)
    prove_the_waves(history, cycles, [1, 3, 4], max_holders=3)


@pytest.mark.kube
def test_waves_on_the_lease(kube: KubeTestEnv, kube_fleet: Callable[..., Fleet]) -> None:
    names = [n.name for n in kube.create_nodes(5)]
    fleet = kube_fleet(
        names, max_holders=2, agent_config={"waves": [1, "40%", "100%"], "wave_soak": f"{SOAK}s"}
    )  # 1 canary, then 1 more (40 % of 5: 2 in all), then the last 3, 2 at a time
    with fleet:
        wait_for(fleet.done, timeout=400, interval=0.5, what="every node rebooted and released")
        cycles = fleet.semaphore.read(queue=False).ledger.history
    assert not fleet.violations, fleet.violations
    history, _nodes = kube_group_history(
        kube.cluster.endpoints.etcd, namespace=kube.namespace, group="default", since=fleet.start_revision
    )
    prove_the_waves(history, cycles, [1, 1, 3], max_holders=2)


def test_a_sick_canary_stops_the_rollout_on_etcd(tmp_path: Path, etcd: EtcdServer, prefix: str) -> None:
    """The canary comes back sick: the group pauses, and -- paused or resumed -- no other node
    reboots while it is sick, for its wave never completes. Healthy, it releases; after the soak
    the next wave opens from where the rollout stood."""
    names = ["node-1", "node-2", "node-3", "node-4"]
    fleet = Fleet(
        str(tmp_path / "fleet"), nodes=4, endpoint=etcd.endpoint, max_holders=2, reboot_seconds=0.5,
        node_names=names, arm=False,
        agent_config={"etcd_key_prefix": prefix, "pause_group_after": "2s", "waves": [1, "100%"],
                      "wave_soak": f"{SOAK}s"},
        node_config={"node-1": {"health_checks": [
            {"type": "command", "name": "app", "argv": ["test", "-e", "{node_dir}/healthy"]}]}},
    )  # fmt: skip
    with fleet:
        fleet.arm_sentinel("node-1", "update-1")  # first in line: the canary
        wait_for(lambda: fleet.semaphore.read(queue=False).holds("node-1"), timeout=60, what="node-1 holds")
        for name in names[1:]:
            fleet.arm_sentinel(name, "update-1")
        wait_for(lambda: fleet.semaphore.read(queue=False).paused is not None, timeout=120, interval=0.2,
                 what="the group paused by the sick canary")  # fmt: skip
        view = fleet.semaphore.read(queue=False)
        assert view.paused is not None and "node-1" in view.paused.reason
        fleet.semaphore.resume()
        time.sleep(2 * SOAK)  # resumed, but the canary's wave is not through
        assert all(fleet.nodes[n].reboots == 0 for n in names[1:]), "a node rebooted past a sick canary"
        rollout = fleet.semaphore.read(queue=False).ledger.rollout
        assert rollout is not None and rollout.current == 0 and rollout.through == 0
        healthy_at = time.time()
        open(os.path.join(fleet.nodes["node-1"].dir, "healthy"), "w").close()
        wait_for(fleet.done, timeout=180, interval=0.5, what="the canary healthy, then the rest")
        cycles = fleet.semaphore.read(queue=False).ledger.history
    assert not fleet.violations, fleet.violations
    waves = waves_of(cycles)
    assert [c.node for c in waves[1]] == ["node-1"]
    assert min(c.started_at for c in waves[2]) >= max(healthy_at, waves[1][0].ended_at + SOAK)
    assert fleet.semaphore.read(queue=False).paused is None  # not paused again once resumed
