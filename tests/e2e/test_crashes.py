"""kill -9 the agent in every phase, start it again, and prove the cycle resumes and the invariants
of DESIGN.md hold: one reboot per update, never more holders than max, the slot given back.

Each agent writes its events into a FIFO that this test reads (the agent just appends to its
configured events_file). Reading is the gate: the test sees "phase X" and kills the agent either
at once (somewhere inside X's work) or once the agent blocks before announcing the next phase
(X's work done, nothing of the next begun). No test-only code path exists in the agent.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from pathlib import Path

import pytest

from rebootcoord.core.semaphore import MANUAL, HolderRecord
from rebootcoord.core.types import Group, HolderId, NodeName, Phase
from rebootcoord.sim.etcd_server import EtcdServer
from rebootcoord.sim.fleet import Fleet
from tests.conftest import wait_for
from tests.support.checks import etcd_report
from tests.support.etcdraw import slot_history
from tests.support.eventgate import EventGate, alive, blocked_on_fifo

pytestmark = pytest.mark.e2e


PHASES = ["waiting", "locked", "draining", "rebooting", "verifying", "releasing"]


@pytest.mark.parametrize("moment", ["inside", "boundary"])
@pytest.mark.parametrize("phase", PHASES)
def test_kill_9_in_each_phase_resumes_safely(
    etcd: EtcdServer, prefix: str, tmp_path: Path, phase: str, moment: str
) -> None:
    fleet = Fleet(
        str(tmp_path / "run"), nodes=1, endpoint=etcd.endpoint, max_holders=1, reboot_seconds=0.5,
        agent_config={"etcd_key_prefix": prefix, "events_file": "{node_dir}/events.fifo"},
    )  # fmt: skip
    node = next(iter(fleet.nodes.values()))
    os.makedirs(node.dir, exist_ok=True)
    gate = EventGate(os.path.join(node.dir, "events.fifo"))
    blocker = HolderId("maintenance")
    if phase == "waiting":
        # Someone else holds the only slot, so the agent stays in "waiting".
        fleet.semaphore.ensure(1)
        now = time.time()
        fleet.semaphore.lock(
            blocker,
            HolderRecord(blocker, NodeName("m"), Group("default"), Phase.LOCKED, "", now, now, kind=MANUAL),
        )
    gate.hold_after(phase)
    if phase == "rebooting":
        fleet.hold_reboots()  # a request reaches the host, which does not go down before the kill
    try:
        with fleet:
            wait_for(gate.holding.is_set, timeout=120, what=f"phase {phase}")
            pid = fleet.agent_pid(node.name)
            assert pid is not None, f"the agent runs in phase {phase}"
            if moment == "boundary":
                if phase == "rebooting":
                    # Its work in this phase is the request: killed while the host has it.
                    wait_for(lambda: fleet.reboot_requests, timeout=30, what="the reboot request")
                elif phase == "waiting":
                    # It rests in this phase: nothing new for a second, and it is still there.
                    count = len(gate.events)
                    time.sleep(1.0)
                    assert alive(pid) and len(gate.events) == count, "resting in waiting"
                else:
                    # Its work in this phase is done: it blocks announcing the next one.
                    wait_for(lambda: blocked_on_fifo(pid), timeout=30, what=f"the end of phase {phase}")
            fleet.kill_agent(node.name)  # SIGKILL, then reap: the process is gone for good
            killed = fleet.nodes[node.name].proc
            assert killed is not None and killed.returncode == -signal.SIGKILL, "the kill was delivered"
            fleet.hold_reboots(False)
            before_restart = fleet.semaphore.read()
            gate.resume()
            fleet.start_agent(node.name)
            if phase == "waiting":
                wait_for(lambda: gate.phases().count("waiting") >= 2, timeout=60, what="waiting again")
                assert node.reboots == 0
                fleet.semaphore.unlock(blocker)
            wait_for(fleet.done, timeout=120, interval=0.1, what="the cycle to finish")
            wait_for(lambda: gate.phases()[-1] == "idle", what="the agent to report idle")
    finally:
        gate.close()
    assert node.reboots == 1, "exactly one reboot for one update"
    assert not fleet.violations, fleet.violations
    history = slot_history(etcd, f"{prefix}/groups/default/v1/semaphore")
    assert max(len(doc["holders"]) for doc in history) <= 1
    final = fleet.semaphore.read()
    assert final.slots is not None and final.slots.holders == () and not final.records
    if phase in ("locked", "draining", "rebooting", "verifying"):
        # The kill happened while the slot was ours (releasing may have written its release).
        assert before_restart.holds(HolderId(node.name)), before_restart
    if phase != "waiting":
        # The restarted agent continued the same cycle: one acquisition in the whole history.
        acquisitions = sum(
            1
            for prev, doc in itertools.pairwise(history)
            if node.name in doc["holders"] and node.name not in prev["holders"]
        )
        assert acquisitions == 1
    report = etcd_report(fleet, etcd.endpoint, prefix)
    assert report.ok and report.reboots == {node.name: 1}, report.problems


def test_random_kills_never_break_the_budget(etcd: EtcdServer, prefix: str, tmp_path: Path) -> None:
    """Chaos: 5 nodes, 2 slots, an agent killed with SIGKILL every 150-450 ms at random."""
    import random

    rng = random.Random(7)
    fleet = Fleet(
        str(tmp_path / "run"), nodes=5, endpoint=etcd.endpoint, max_holders=2, reboot_seconds=0.5,
        agent_config={"etcd_key_prefix": prefix},
    )  # fmt: skip
    kills = 0
    with fleet:
        deadline = time.monotonic() + 240
        while not fleet.done() and time.monotonic() < deadline:
            name = rng.choice(sorted(fleet.nodes))
            pid = fleet.agent_pid(name)
            if pid is not None and kills < 25:
                fleet.kill_agent(name)
                kills += 1
                fleet.start_agent(name)
            time.sleep(rng.uniform(0.15, 0.45))
        assert fleet.done(), "the rollout did not finish after the kills stopped"
    assert kills >= 10
    assert not fleet.violations, fleet.violations
    assert {n.reboots for n in fleet.nodes.values()} == {1}
    report = etcd_report(fleet, etcd.endpoint, prefix)
    assert report.ok and report.max_holders <= 2, report.problems
