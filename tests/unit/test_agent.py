"""The agent in-process, one turn at a time, with small fakes of its ports (tests/unit/fakes.py):
detector, host (boot ID), semaphore, node operations, rebooter, checks, clock.

Each test tries to break one of DESIGN.md's invariants through the agent's own effects -- what
decide() asks for is proven in test_cycle.py; here, that the agent carries it out: a failed health
check keeps the slot, a node someone else cordoned stays cordoned, no release before the boot ID
changed, one reboot per update (also across restarts), never a reboot without the slot.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from rebootcoord.adapters.host import Host
from rebootcoord.core.config import load_settings
from rebootcoord.core.cycle import Rest, Step
from rebootcoord.core.semaphore import MANUAL, HolderRecord, Waiter
from rebootcoord.core.types import Group, HolderId, NodeName, PendingReboot, Phase
from rebootcoord.daemon.agent import Agent, AgentParts, AgentSettings
from rebootcoord.daemon.events import EventLog
from rebootcoord.daemon.group import GroupClient
from rebootcoord.daemon.metrics import Metrics
from rebootcoord.ports import Notifier
from tests.unit.fakes import (
    FakeCheck,
    FakeClock,
    FakeDetector,
    FakeHost,
    FakeNodeOps,
    FakeRebooter,
    MemoryGroupStore,
    MemoryWaitQueue,
)

ME = HolderId("n1")
UPDATE = PendingReboot("sentinel", "/run/reboot-required exists", "update-1")


@dataclass
class Rig:
    """One node: its ports, shared by every agent process started on it (restarts)."""

    settings: dict[str, Any] = field(default_factory=dict)
    clock: FakeClock = field(default_factory=FakeClock)
    detector: FakeDetector = field(default_factory=lambda: FakeDetector(answer=UPDATE))
    host: FakeHost = field(default_factory=FakeHost)
    store: MemoryGroupStore = field(default_factory=MemoryGroupStore)
    queue: MemoryWaitQueue = field(default_factory=MemoryWaitQueue)
    node: FakeNodeOps = field(default_factory=FakeNodeOps)
    check: FakeCheck = field(default_factory=FakeCheck)
    blocker: FakeCheck = field(default_factory=lambda: FakeCheck(name="blocker"))
    rebooter: FakeRebooter = field(default_factory=FakeRebooter)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    notifier: Notifier | None = None
    agent: Agent | None = None
    steps: list[Step] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.semaphore = GroupClient(self.store, self.queue)
        self.rebooter.host = self.host
        self.rebooter.holds = self.holds
        self.start()

    def start(self) -> Agent:
        """A new agent process on this node (as after a crash or a reboot): no memory but the
        semaphore's and the node's."""
        settings = load_settings(
            file_data={
                "group": "g",
                "max_holders": 1,
                "check_interval": "1s",
                "verify_interval": "1s",
                "reboot_timeout": "10m",
                "drain_timeout": "30s",
                **self.settings,
            },
            fallbacks={"node_name": "n1"},
        )
        self.registry = CollectorRegistry()
        parts = AgentParts(
            settings=AgentSettings.of(settings),
            semaphore=self.semaphore,
            detectors=[self.detector],
            rebooter=self.rebooter,
            host=Host(),
            metrics=Metrics(self.registry, node="n1", group="g"),
            events=EventLog(None),
            checks=[self.check],
            blockers=[self.blocker],
            node_ops=self.node,
            boot_id=self.host.boot_id,
            clock=self.clock,
            notifier=self.notifier,
        )
        self.agent = Agent(parts, threading.Event())
        self.agent.connect()
        return self.agent

    def turn(self, seconds: float = 1.0) -> Step:
        self.clock.advance(seconds)
        assert self.agent is not None
        step = self.agent.turn()
        self.steps.append(step)
        return step

    def until(self, condition: Callable[[], object], *, turns: int = 40, what: str = "") -> None:
        for _ in range(turns):
            if condition():
                return
            self.turn()
        assert condition(), f"not after {turns} turns: {what}; steps: {self.steps[-5:]}"

    def record(self) -> HolderRecord | None:
        return self.store.state.records.get(ME)

    def phase(self) -> Phase | None:
        record = self.record()
        return None if record is None else record.phase

    def holds(self) -> bool:
        return self.store.state.holds(ME)

    def restart(self) -> Agent:
        """The agent process dies and another starts: the place in line is no longer renewed."""
        self.queue.mine.discard(ME)
        return self.start()

    def boot(self, *, applied: bool = True) -> None:
        """The host rebooted: a new boot ID; the update applied (the detector quiet) or not."""
        self.host.boot = f"boot-{len(self.rebooter.requests) + 1}"
        if applied:
            self.detector.answer = None
        self.restart()

    def failures(self, reason: str) -> float:
        value = self.registry.get_sample_value("rebootcoord_failures_total", {"reason": reason})
        return value or 0.0


def to_reboot(rig: Rig) -> None:
    rig.until(lambda: rig.rebooter.requests, what="the reboot request")
    assert rig.phase() is Phase.REBOOTING


def test_a_full_cycle_in_order() -> None:
    rig = Rig()
    to_reboot(rig)
    assert rig.node.calls[:2] == ["cordon", "drain"]
    record = rig.record()
    assert record is not None and record.cordoned is True and record.boot_id == "boot-1"
    rig.boot()
    rig.until(lambda: not rig.holds() and rig.record() is None, what="the slot given back")
    assert rig.node.calls[-1] == "uncordon" and not rig.node.unschedulable
    assert rig.rebooter.requests == ["boot-1"]
    assert max(len(holders) for _, holders in rig.store.history) == 1


def test_a_failed_health_check_keeps_the_slot() -> None:
    rig = Rig()
    to_reboot(rig)
    rig.check.ok = False
    rig.boot()
    rig.until(lambda: rig.phase() is Phase.VERIFYING and rig.check.calls, what="the checks run")
    for _ in range(30):
        rig.turn()
    assert rig.holds() and rig.phase() is Phase.VERIFYING
    record = rig.record()
    assert record is not None and "post-reboot checks failed: check: failing" in record.note
    assert rig.node.unschedulable, "a node that came back sick stays cordoned"
    assert "warn:HealthCheckFailed" in rig.node.calls
    assert rig.failures("health_gate") >= 1
    rig.check.ok = True
    rig.until(lambda: not rig.holds(), what="the release once the checks pass")
    assert rig.rebooter.requests == ["boot-1"]


def test_a_node_sick_for_pause_group_after_stops_the_line_once() -> None:
    """Stop the line: checks failing 60 s after the reboot pause the group, with the node and the
    checks as the reason, once; an operator who resumes is not overruled; healthy, it releases."""
    rig = Rig(settings={"pause_group_after": "60s"})
    to_reboot(rig)
    rig.check.ok = False
    rig.boot()
    rig.until(lambda: rig.phase() is Phase.VERIFYING and rig.check.calls, what="the checks run")
    for _ in range(40):
        if rig.store.state.paused is not None:
            break
        assert rig.clock.now - rig.record().phase_since < 62, "not paused after pause_group_after"  # type: ignore[union-attr]
        rig.turn(2.0)
    paused = rig.store.state.paused
    assert paused is not None and "n1" in paused.by
    assert "post-reboot checks of n1 failing" in paused.reason and "check: failing" in paused.reason
    assert paused.reason.count("post-reboot checks") == 1, paused.reason  # said once
    record = rig.record()
    assert record is not None and record.paused_group_at is not None and rig.holds()
    assert "warn:GroupPaused" in rig.node.calls and rig.failures("group_paused") == 1
    rig.semaphore.resume()  # the operator: go on without this node
    for _ in range(20):
        rig.turn(5.0)
    assert rig.store.state.paused is None and rig.failures("group_paused") == 1
    rig.check.ok = True
    rig.until(lambda: not rig.holds(), what="the release once the checks pass")


def test_pause_group_after_zero_never_pauses() -> None:
    rig = Rig(settings={"pause_group_after": "0s"})
    to_reboot(rig)
    rig.check.ok = False
    rig.boot()
    for _ in range(60):
        rig.turn(10.0)
    assert rig.store.state.paused is None and rig.holds()


def test_the_update_still_pending_after_the_reboot_keeps_the_slot_and_reboots_no_more() -> None:
    rig = Rig()
    to_reboot(rig)
    rig.boot(applied=False)  # the same update key is still pending
    for _ in range(30):
        rig.turn()
    assert rig.holds() and rig.phase() is Phase.VERIFYING
    record = rig.record()
    assert record is not None and "the update that caused the reboot is still pending" in record.note
    assert rig.rebooter.requests == ["boot-1"], "no second reboot for the same update"
    # A new update (another key) is not the one that caused the reboot: healthy, released.
    rig.detector.answer = PendingReboot("sentinel", "a newer update", "update-2")
    rig.until(lambda: not rig.holds(), what="the release")


def test_a_node_cordoned_by_someone_else_stays_cordoned() -> None:
    rig = Rig(node=FakeNodeOps(unschedulable=True))
    to_reboot(rig)
    record = rig.record()
    assert record is not None and record.cordoned is None, "not ours to uncordon"
    assert "cordon" not in rig.node.calls
    rig.boot()
    rig.until(lambda: not rig.holds(), what="the release")
    assert "uncordon" not in rig.node.calls and rig.node.unschedulable


def test_no_release_before_the_boot_id_changes() -> None:
    rig = Rig()
    to_reboot(rig)
    for _ in range(60):  # ten minutes (the reboot timeout) are far away
        rig.turn()
    assert rig.holds() and rig.phase() is Phase.REBOOTING
    assert rig.rebooter.requests == ["boot-1"]
    assert "uncordon" not in rig.node.calls


def test_one_reboot_per_update_even_across_restarts() -> None:
    rig = Rig()
    to_reboot(rig)
    # Killed while waiting for the reboot: the boot ID has not changed, so no reboot happened and
    # the new process may ask again -- for the same boot.
    rig.restart()
    rig.until(lambda: len(rig.rebooter.requests) == 2, what="the restarted agent's request")
    # Past the reboot timeout, the request is repeated (same boot), once per timeout.
    rig.turn(601)
    rig.turn()
    assert rig.rebooter.requests == ["boot-1"] * 3
    rig.boot()
    rig.until(lambda: not rig.holds(), what="the release")
    # A crash after the boot, while verifying or releasing, never asks for a reboot again.
    rig.restart()
    for _ in range(10):
        rig.turn()
    assert all(boot == "boot-1" for boot in rig.rebooter.requests), rig.rebooter.requests


def test_a_crash_after_the_boot_verifies_and_never_reboots_again() -> None:
    rig = Rig()
    to_reboot(rig)
    rig.check.ok = False
    rig.boot()
    rig.until(lambda: rig.phase() is Phase.VERIFYING, what="verifying")
    for _ in range(3):
        rig.restart()  # crash loop while the checks fail
        for _ in range(5):
            rig.turn()
    rig.check.ok = True
    rig.until(lambda: not rig.holds(), what="the release")
    assert rig.rebooter.requests == ["boot-1"]


def test_a_slot_taken_away_mid_cycle_means_no_reboot_and_the_node_as_found() -> None:
    """rebootctl unlock of a holder: its slot and record go. The agent must not reboot, must undo
    its cordon (it knows by its mark on the node) and queue again behind whoever is first."""
    rig = Rig()
    rig.until(lambda: rig.phase() is Phase.DRAINING, what="draining")
    real_drain = rig.node.drain

    def drain_then_unlock(stop: threading.Event) -> None:
        real_drain(stop)
        assert rig.node.unschedulable, "cordoned before the drain"
        # Someone queued meanwhile; the operator unlocks us before our reboot request.
        rig.queue.join(Waiter(HolderId("n2"), NodeName("n2"), 0.0, 0))
        rig.semaphore.unlock(ME, force=True)

    rig.node.drain = drain_then_unlock  # type: ignore[method-assign]
    for _ in range(10):
        rig.turn()
    assert rig.rebooter.requests == [], "no reboot after the slot was taken away"
    assert not rig.node.unschedulable and rig.node.calls[-1] == "uncordon"
    assert rig.failures("slot_lost") >= 1
    assert [w.id for w in rig.queue.entries] == ["n2", ME], "queued again, behind n2"


def test_the_last_look_before_the_reboot_reads_the_backend_not_the_watch() -> None:
    """The agent decides on a read that an operator's unlock follows at once. The reboot is the
    point of no return, so the agent reads the backend again first and does not reboot."""
    rig = Rig()
    rig.until(lambda: rig.phase() is Phase.REBOOTING, what="rebooting")
    if rig.rebooter.requests:
        pytest.fail("the drain and the reboot request came in one turn; the test needs them apart")
    # Right after the turn's own read: the agent decides on a state already gone.
    rig.store.after_read = lambda: rig.semaphore.unlock(ME, force=True)
    rig.turn()
    assert rig.rebooter.requests == [] and rig.failures("slot_lost") == 1


def test_a_restarted_agent_finds_its_stale_cordon_and_undoes_it() -> None:
    rig = Rig()
    rig.until(lambda: rig.phase() is Phase.REBOOTING, what="rebooting")
    rig.queue.join(Waiter(HolderId("n2"), NodeName("n2"), 0.0, 0))
    rig.semaphore.unlock(ME, force=True)  # while the agent is down
    rig.restart()
    for _ in range(5):
        rig.turn()
    assert not rig.node.unschedulable and not rig.holds()
    assert rig.rebooter.without_slot == []


def test_a_failed_drain_leaves_the_node_as_found_and_gives_the_slot_back() -> None:
    rig = Rig(node=FakeNodeOps(drain_error="evicting web-1: the budget allows no disruption"))
    rig.until(lambda: "drain" in rig.node.calls, what="the drain")
    rig.until(lambda: not rig.holds(), what="the slot given back")
    assert rig.rebooter.requests == []
    assert rig.node.calls[-1] == "uncordon" and not rig.node.unschedulable
    assert "warn:DrainFailed" in rig.node.calls and rig.failures("drain_failed") == 1
    # It queues again, but not before a third of the drain timeout (30 s here).
    rig.node.drain_error = ""
    steps_before = len(rig.steps)
    for _ in range(5):
        rig.turn()
    assert not rig.holds(), "not straight back in"
    assert all(isinstance(s, Rest) for s in rig.steps[steps_before:])
    rig.until(lambda: rig.rebooter.requests, turns=30, what="the second attempt")


def test_a_closed_window_or_a_blocker_takes_no_slot() -> None:
    rig = Rig(settings={"windows": [{"start": "Thu 04:00", "length": "1m"}]})
    for _ in range(5):
        rig.turn()
    assert not rig.holds() and rig.queue.entries == []
    rig = Rig()
    rig.blocker.ok = False
    for _ in range(5):
        rig.turn()
    assert not rig.holds() and rig.rebooter.requests == []
    rig.blocker.ok = True
    to_reboot(rig)


def test_an_operator_lock_on_our_id_is_left_alone() -> None:
    rig = Rig()
    rig.semaphore.ensure(1)
    now = rig.clock()
    rig.semaphore.lock(
        ME, HolderRecord(ME, NodeName("n1"), Group("g"), Phase.LOCKED, "", now, now, kind=MANUAL)
    )
    for _ in range(10):
        rig.turn()
    assert rig.rebooter.requests == [] and rig.node.calls == []
    assert rig.holds() and rig.record() is not None and rig.record().kind == MANUAL  # type: ignore[union-attr]


def test_an_unreadable_boot_id_is_reported_and_retried_not_a_crash() -> None:
    rig = Rig()
    rig.host.readable = False
    agent = rig.agent
    assert agent is not None
    agent.p.clock = time.time  # the loop's own waits run on real time
    agent._policy = replace(agent._policy, retry_after=timedelta(seconds=0.01))
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(agent.run()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while rig.failures("detector_error") < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    agent.shutdown()
    thread.join(10)
    assert result == [0] and rig.failures("detector_error") >= 3
    assert rig.rebooter.requests == [] and not rig.holds()


def test_a_gate_that_closes_after_its_cached_answer_still_stops_the_slot() -> None:
    # The blockers are cached for a check interval; the answer that lets a slot be taken is a
    # fresh one, looked at right before taking it.
    rig = Rig(settings={"check_interval": "10m"})
    rig.until(lambda: rig.queue.entries, what="a place in the queue")
    rig.blocker.ok = False  # the cached answer still says ok
    for _ in range(5):
        rig.turn()
    assert not rig.holds() and rig.rebooter.requests == []
    assert any(type(s).__name__ == "CheckGates" for s in rig.steps)


def test_a_gate_holding_the_node_back_tells_its_reason_once_in_an_event_and_a_metric() -> None:
    rig = Rig()
    rig.blocker.ok, rig.blocker.reason, rig.blocker.detail = False, "PDBBlocked", "ns/web allows 0"

    def blocked(reason: str) -> float | None:
        return rig.registry.get_sample_value("rebootcoord_blocked", {"reason": reason})

    assert blocked("PDBBlocked") == 0  # a series from the start
    for _ in range(6):
        rig.turn()
    assert not rig.holds() and "cordon" not in rig.node.calls
    assert rig.node.calls.count("warn:PDBBlocked") == 1  # once, not on every check
    assert blocked("PDBBlocked") == 1 and blocked("RebootBlocked") == 0
    rest = rig.steps[-1]
    assert isinstance(rest, Rest) and rest.reason == "blocked: PDBBlocked: ns/web allows 0"
    rig.blocker.ok = True
    to_reboot(rig)
    assert blocked("PDBBlocked") == 0


def test_a_gate_naming_no_reason_is_reported_as_reboot_blocked() -> None:
    rig = Rig()
    rig.blocker.ok = False
    for _ in range(3):
        rig.turn()
    assert rig.node.calls.count("warn:RebootBlocked") == 1
    assert rig.registry.get_sample_value("rebootcoord_blocked", {"reason": "RebootBlocked"}) == 1
    rest = rig.steps[-1]
    assert isinstance(rest, Rest) and rest.reason == "blocked: blocker: failing"


def test_a_max_holders_unlike_the_groups_is_told_once_and_in_a_metric(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = Rig(settings={"max_holders": 1})
    rig.semaphore.set_max(3)
    for _ in range(6):
        rig.turn()
    mismatch = rig.registry.get_sample_value("rebootcoord_max_holders_mismatch", {"group": "g"})
    assert mismatch == 1
    told = [r for r in caplog.records if "max_holders is 1" in r.getMessage()]
    assert len(told) == 1 and "allows 3" in told[0].getMessage()
    rig.semaphore.set_max(1)
    rig.until(lambda: rig.registry.get_sample_value("rebootcoord_max_holders_mismatch", {"group": "g"}) == 0)
