"""Stop the line: a node that comes back from its reboot and stays sick pauses its group, so no
other node starts a cycle until an operator resumes. Real agent processes on etcd and on the
Kubernetes Lease; what was taken when is read from the agents' event log and the backend."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from rebootcoord.sim.checker import read_jsonl
from rebootcoord.sim.etcd_server import EtcdServer
from rebootcoord.sim.fleet import Fleet
from tests.conftest import wait_for
from tests.support.kubecluster import KubeTestEnv

SICK = "{node_dir}/healthy"  # the sick node's check passes once this file exists


def sick_check() -> dict[str, object]:
    return {"health_checks": [{"type": "command", "name": "app", "argv": ["test", "-e", SICK]}]}


def prove_the_line_stops(fleet: Fleet, sick: str) -> None:
    """The sick node pauses the group after its reboot; while paused no node takes a slot; after
    the resume the others go on with the slot left; healthy, the sick node releases."""
    wait_for(lambda: fleet.semaphore.read(queue=False).paused is not None, timeout=120, interval=0.2,
             what="the group paused by the sick node")  # fmt: skip
    paused = fleet.semaphore.read(queue=False).paused
    assert paused is not None and sick in paused.by and "post-reboot checks" in paused.reason
    assert "app" in paused.reason  # which check
    paused_at = time.time()
    time.sleep(6)  # several check and verify intervals of every agent
    taken_while_paused = [
        e for e in read_jsonl(fleet.events_file) if e["phase"] == "locked" and e["ts"] > paused_at
    ]
    assert taken_while_paused == [], "a node took a slot while the group was paused"
    view = fleet.semaphore.read(queue=False)
    assert view.holds(sick)  # the sick node keeps its slot, cordoned, as before
    fleet.semaphore.resume()  # the operator: go on without it
    others = [n for n in fleet.nodes if n != sick]
    wait_for(lambda: all(fleet.nodes[n].reboots == 1 for n in others), timeout=240, interval=0.5,
             what="the other nodes rebooted after the resume")  # fmt: skip
    assert fleet.semaphore.read(queue=False).paused is None  # not paused again by the same node
    open(os.path.join(fleet.nodes[sick].dir, "healthy"), "w").close()
    wait_for(fleet.done, timeout=120, interval=0.5, what="the sick node healthy and released")
    assert not fleet.violations, fleet.violations


@pytest.mark.e2e
def test_a_sick_node_stops_the_line_on_etcd(tmp_path: Path, etcd: EtcdServer, prefix: str) -> None:
    names = ["node-1", "node-2", "node-3", "node-4"]
    fleet = Fleet(
        str(tmp_path / "fleet"), nodes=4, endpoint=etcd.endpoint, max_holders=2, reboot_seconds=0.5,
        node_names=names, arm=False,
        agent_config={"etcd_key_prefix": prefix, "pause_group_after": "3s"},
        node_config={"node-1": sick_check()},
    )  # fmt: skip
    with fleet:
        fleet.arm_sentinel("node-1", "update-1")  # first in line: it reboots first
        wait_for(lambda: fleet.semaphore.read(queue=False).holds("node-1"), timeout=60, what="node-1 holds")
        for name in names[1:]:
            fleet.arm_sentinel(name, "update-1")
        prove_the_line_stops(fleet, "node-1")


@pytest.mark.kube
@pytest.mark.e2e
def test_a_sick_node_stops_the_line_on_the_lease(kube: KubeTestEnv, kube_fleet: Callable[..., Fleet]) -> None:
    names = [n.name for n in kube.create_nodes(3)]
    fleet = kube_fleet(names, max_holders=2, agent_config={"pause_group_after": "3s"})
    fleet.node_config = {names[0]: sick_check()}
    fleet.arm = False
    with fleet:
        fleet.arm_sentinel(names[0], "update-1")
        wait_for(
            lambda: fleet.semaphore.read(queue=False).holds(names[0]), timeout=60, what="the first holds"
        )
        for name in names[1:]:
            fleet.arm_sentinel(name, "update-1")
        prove_the_line_stops(fleet, names[0])
