"""Small fakes of the agent's ports, for the agent in-process (tests/unit/test_agent.py).

Each keeps to its port's contract and records what was asked of it; none decides anything the
agent should decide. ``MemorySemaphore`` keeps one group in memory with the semaphore's own
values (``SemaphoreState`` and ``HolderRecord``), so taking a slot honours the queue and the max
exactly as the backends do; it calls the agent's watch callback synchronously on every change.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from rebootcoord.core.semaphore import GroupView, HolderRecord, PauseInfo, SemaphoreState, Waiter
from rebootcoord.core.types import Group, HolderId, NodeName, PendingReboot, Phase
from rebootcoord.errors import DetectorError, NodeOperationError, NoFreeSlot, NotHolder, RebootError, SlotLost
from rebootcoord.ports import CheckResult


@dataclass
class FakeClock:
    now: float = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeDetector:
    name: str = "fake"
    answer: PendingReboot | None = None
    error: str = ""
    calls: int = 0

    def pending(self) -> PendingReboot | None:
        self.calls += 1
        if self.error:
            raise DetectorError(self.error)
        return self.answer


@dataclass
class FakeHost:
    """The host's boot ID; a reboot changes it only when the test says the host booted."""

    boot: str = "boot-1"
    readable: bool = True

    def boot_id(self) -> str:
        if not self.readable:
            raise DetectorError("cannot read the boot ID from /proc/sys/kernel/random/boot_id")
        return self.boot


@dataclass
class FakeRebooter:
    """Records each request with the boot it came in; ``holds`` says whether the node held a slot
    at that moment (never rebooting without one is checked here, at the edge)."""

    requests: list[str] = field(default_factory=list)
    without_slot: list[str] = field(default_factory=list)
    fail: str = ""
    host: FakeHost | None = None
    holds: Callable[[], bool] | None = None

    def reboot(self) -> None:
        if self.fail:
            raise RebootError(self.fail)
        boot = self.host.boot if self.host else ""
        self.requests.append(boot)
        if self.holds is not None and not self.holds():
            self.without_slot.append(boot)


@dataclass
class FakeCheck:
    name: str = "check"
    ok: bool = True
    detail: str = "failing"
    calls: int = 0

    def check(self) -> CheckResult:
        self.calls += 1
        return CheckResult(self.ok, self.name, "" if self.ok else self.detail)


@dataclass
class FakeNodeOps:
    """A node as the cluster sees it: schedulable or not, and what was done to it."""

    unschedulable: bool = False
    ours: bool = False  # the mark our cordon leaves (KubeNodeOps: an annotation)
    drain_error: str = ""
    calls: list[str] = field(default_factory=list)
    exists: dict[str, bool] = field(default_factory=dict)

    def is_unschedulable(self) -> bool:
        return self.unschedulable

    def cordon(self) -> None:
        self.calls.append("cordon")
        self.unschedulable = self.ours = True

    def cordoned_by_us(self) -> bool:
        return self.unschedulable and self.ours

    def drain(self, stop: threading.Event) -> None:
        self.calls.append("drain")
        if self.drain_error:
            raise NodeOperationError(self.drain_error)

    def uncordon(self) -> None:
        self.calls.append("uncordon")
        self.unschedulable = self.ours = False

    def node_exists(self, node: NodeName) -> bool | None:
        return self.exists.get(node)

    def announce(self, phase: Phase, reason: str, *, warning: bool = False, event_reason: str = "") -> None:
        if warning:
            self.calls.append(f"warn:{event_reason}")

    def set_labels(self, labels: Sequence[tuple[str, str]]) -> None:
        if labels:
            self.calls.append("labels:" + ",".join(f"{k}={v}" for k, v in labels))

    def set_waiting_taint(self, present: bool) -> None:
        self.calls.append(f"taint:{present}")


class MemorySemaphore:
    """One group's semaphore in memory: the Semaphore port with the backends' rules."""

    def __init__(self, group: str = "g") -> None:
        self.group = Group(group)
        self.on_conflict: Callable[[], None] | None = None
        self.slots: SemaphoreState | None = None
        self.records: dict[HolderId, HolderRecord] = {}
        self.waiters: list[Waiter] = []
        self.paused: PauseInfo | None = None
        self.revision = 0
        self.history: list[tuple[int, tuple[HolderId, ...]]] = []  # (revision, holders)
        self._watchers: list[Callable[[GroupView | None], None]] = []
        self._order = 0
        #: False: the watch lags (changes are not delivered), as a slow watch stream would.
        self.watch_delivers = True

    # -- helpers of the tests -----------------------------------------------------------------

    def _changed(self) -> int:
        self.revision += 1
        self.history.append((self.revision, self.slots.holders if self.slots else ()))
        if self.watch_delivers:
            view = self.read()
            for watcher in list(self._watchers):
                watcher(view)
        return self.revision

    def operator_unlock(self, holder: HolderId) -> None:
        """rebootctl unlock of someone else: the slot and the record go."""
        self.unlock(holder)

    # -- the port -----------------------------------------------------------------------------

    def ensure(self, max_holders: int) -> None:
        if self.slots is None:
            self.slots = SemaphoreState(max_holders)
            self._changed()

    def read(self) -> GroupView:
        return GroupView(
            group=self.group,
            slots=self.slots,
            records=dict(self.records),
            waiters=tuple(self.waiters),
            paused=self.paused,
            revision=self.revision,
        )

    def watch(self, on_change: Callable[[GroupView | None], None]) -> Callable[[], None]:
        self._watchers.append(on_change)
        on_change(self.read())
        return lambda: self._watchers.remove(on_change)

    def join_queue(self, waiter: Waiter) -> None:
        if any(w.id == waiter.id for w in self.waiters):
            return
        self._order += 1
        self.waiters.append(replace(waiter, order=self._order))
        self._changed()

    def leave_queue(self, holder: HolderId) -> None:
        before = len(self.waiters)
        self.waiters = [w for w in self.waiters if w.id != holder]
        if len(self.waiters) != before:
            self._changed()

    def acquire(self, record: HolderRecord) -> int | None:
        view = self.read()
        if view.holds(record.id):
            return self.revision if view.record(record.id) == record else None
        if not view.may_take(record.id):
            return None
        assert self.slots is not None
        self.slots = self.slots.acquire(record.id)
        self.records[record.id] = record
        self.waiters = [w for w in self.waiters if w.id != record.id]
        return self._changed()

    def update(self, record: HolderRecord) -> None:
        if self.slots is None or not self.slots.holds(record.id) or record.id not in self.records:
            raise SlotLost(f"{record.id} no longer holds a slot in group {self.group}")
        self.records[record.id] = record
        self._changed()

    def _remove(self, holder: HolderId) -> HolderRecord | None:
        record = self.records.pop(holder, None)
        if self.slots is not None and self.slots.holds(holder):
            self.slots = self.slots.release(holder)
        self.waiters = [w for w in self.waiters if w.id != holder]
        self._changed()
        return record

    def release(self, holder: HolderId) -> int | None:
        if not (self.slots and self.slots.holds(holder)) and holder not in self.records:
            return None
        self._remove(holder)
        return self.revision

    def drop_record(self, holder: HolderId) -> None:
        if holder in self.records and not (self.slots and self.slots.holds(holder)):
            del self.records[holder]
            self._changed()

    def reclaim(self, holder: HolderId, expect: HolderRecord) -> bool:
        current = self.records.get(holder)
        if current is None or current.acquired_at != expect.acquired_at:
            return False
        self._remove(holder)
        return True

    def lock(self, holder: HolderId, record: HolderRecord) -> None:
        assert self.slots is not None
        if self.slots.holds(holder):
            raise NoFreeSlot(f"{holder!r} already holds a slot")
        self.slots = self.slots.acquire(holder)
        self.records[holder] = record
        self._changed()

    def unlock(self, holder: HolderId) -> HolderRecord | None:
        if not (self.slots and self.slots.holds(holder)) and holder not in self.records:
            raise NotHolder(f"{holder!r} holds no slot")
        return self._remove(holder)

    def set_max(self, new_max: int) -> None:
        assert self.slots is not None
        self.slots = self.slots.with_max(new_max)
        self._changed()

    def pause(self, info: PauseInfo) -> None:
        self.paused = info
        self._changed()

    def resume(self) -> None:
        self.paused = None
        self._changed()

    def close(self) -> None:
        return None
