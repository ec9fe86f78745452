"""Kubernetes mode, kill -9 in every phase (as tests/e2e/test_crashes.py does on etcd): an agent on
a kwok node with a pod to drain, its event log a FIFO the test reads as a gate, killed inside each
phase or once its work there is done, started again. The cycle resumes: one acquisition, one
reboot, the node uncordoned, and the checker finds every invariant held in the Lease's and the
Node's own history."""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections.abc import Callable

import pytest

from rebootcoord.core.semaphore import MANUAL, HolderRecord
from rebootcoord.core.types import Group, HolderId, NodeName, Phase
from rebootcoord.sim.fleet import Fleet
from tests.conftest import wait_for
from tests.e2e.test_kube_fleet import deploy
from tests.support.checks import kube_report
from tests.support.eventgate import EventGate, alive, blocked_on_fifo
from tests.support.kubecluster import KubeTestEnv

pytestmark = [pytest.mark.kube, pytest.mark.e2e]

PHASES = ["waiting", "locked", "draining", "rebooting", "verifying", "releasing"]


@pytest.mark.parametrize("moment", ["inside", "boundary"])
@pytest.mark.parametrize("phase", PHASES)
def test_kill_9_in_each_phase_resumes_safely(
    kube: KubeTestEnv, kube_fleet: Callable[..., Fleet], phase: str, moment: str
) -> None:
    (target,) = [n.name for n in kube.create_nodes(1)]
    deploy(kube, "app", 1, pdb=None, node=target)  # something to evict
    fleet = kube_fleet([target], agent_config={"events_file": "{node_dir}/events.fifo"}, reboot_seconds=0.5)
    node = fleet.nodes[target]
    os.makedirs(node.dir, exist_ok=True)
    gate = EventGate(os.path.join(node.dir, "events.fifo"))
    blocker = HolderId("maintenance")
    sem = fleet.semaphore
    if phase == "waiting":
        sem.ensure(1)
        now = time.time()
        sem.lock(blocker, HolderRecord(blocker, NodeName("m"), Group("default"), Phase.LOCKED, "", now, now,
                                       kind=MANUAL))  # fmt: skip
    gate.hold_after(phase)
    if phase == "rebooting":
        fleet.hold_reboots()  # the request reaches the host, which does not go down before the kill
    try:
        with fleet:
            wait_for(gate.holding.is_set, timeout=120, what=f"phase {phase}")
            pid = fleet.agent_pid(target)
            assert pid is not None, f"the agent runs in phase {phase}"
            if moment == "boundary":
                if phase == "rebooting":
                    wait_for(lambda: fleet.reboot_requests, timeout=30, what="the reboot request")
                elif phase == "waiting":
                    count = len(gate.events)
                    time.sleep(1.0)
                    assert alive(pid) and len(gate.events) == count, "resting in waiting"
                else:
                    wait_for(lambda: blocked_on_fifo(pid), timeout=30, what=f"the end of phase {phase}")
            fleet.kill_agent(target)
            killed = node.proc
            assert killed is not None and killed.returncode == -signal.SIGKILL, "the kill was delivered"
            fleet.hold_reboots(False)
            before_restart = sem.read()
            gate.resume()
            fleet.start_agent(target)
            if phase == "waiting":
                wait_for(lambda: gate.phases().count("waiting") >= 2, timeout=60, what="waiting again")
                assert node.reboots == 0
                sem.unlock(blocker)
            wait_for(fleet.done, timeout=180, interval=0.2, what="the cycle to finish")
    finally:
        gate.close()
    assert node.reboots == 1, "exactly one reboot for one update"
    assert not fleet.violations, fleet.violations
    if phase in ("locked", "draining", "rebooting", "verifying"):
        assert before_restart.holds(HolderId(target)), before_restart
    assert not kube.core.read_node(target).spec.unschedulable, "left as found: schedulable"
    report = kube_report(fleet, kube.cluster, kube.namespace)
    assert report.ok and report.reboots == {target: 1}, report.problems
    if phase != "waiting":
        assert sum(1 for a, b in itertools.pairwise(gate.phases()) if b == "locked" and a != "locked") == 1
