"""Small fakes of the agent's ports, for the agent in-process (tests/unit/test_agent.py).

Each keeps to its port's contract and records what was asked of it; none decides anything the
agent should decide. ``MemoryGroupStore`` and ``MemoryWaitQueue`` keep one group in memory, and
``memory_group`` puts the real GroupClient over them: taking a slot honours the queue and the max
exactly as on etcd or a Lease (tests/contract runs the same scenarios on all three).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from rebootcoord.core.group import GroupState
from rebootcoord.core.notices import Notice
from rebootcoord.core.semaphore import Waiter
from rebootcoord.core.types import Group, HolderId, NodeName, PendingReboot, Phase
from rebootcoord.daemon.group import GroupClient
from rebootcoord.errors import Conflict, DetectorError, IdInUse, NodeOperationError, RebootError
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
class FakeFinalizer(FakeDetector):
    """A detector whose engine applies its own staged update (rpm-ostree's finalization lock):
    ``finalizes`` says whether there is one to apply. Records each request with its boot and
    whether the slot was held, as FakeRebooter does."""

    finalizes: bool = True
    fail: str = ""
    requests: list[str] = field(default_factory=list)
    without_slot: list[str] = field(default_factory=list)
    host: FakeHost | None = None
    holds: Callable[[], bool] | None = None

    def finalize(self) -> bool:
        if self.fail:
            raise RebootError(self.fail)
        if not self.finalizes:
            return False
        boot = self.host.boot if self.host else ""
        self.requests.append(boot)
        if self.holds is not None and not self.holds():
            self.without_slot.append(boot)
        return True


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
    reason: str = ""
    calls: int = 0

    def check(self) -> CheckResult:
        self.calls += 1
        return CheckResult(self.ok, self.name, "" if self.ok else self.detail, "" if self.ok else self.reason)


@dataclass
class FakeNotifier:
    """Records each notice handed over; sends nothing (the real one: tests/integration/test_notify.py)."""

    notices: list[Notice] = field(default_factory=list)
    closed: bool = False

    def notify(self, notice: Notice) -> None:
        self.notices.append(notice)

    def close(self, timeout: float) -> None:
        self.closed = True

    def events(self) -> list[str]:
        return [n.event for n in self.notices]


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

    def announce(
        self, phase: Phase, reason: str, *, warning: bool = False, event_reason: str = "", defer: bool = False
    ) -> None:
        if warning:
            self.calls.append(f"warn:{event_reason}")

    def set_labels(self, labels: Sequence[tuple[str, str]]) -> None:
        if labels:
            self.calls.append("labels:" + ",".join(f"{k}={v}" for k, v in labels))

    def set_waiting_taint(self, present: bool) -> None:
        self.calls.append(f"taint:{present}")


class MemoryGroupStore:
    """The GroupStore in memory: a revision per write, Conflict for a stale one, one-shot
    watches. ``after_read`` runs once after the next read (a change that slips in between a read
    and what is done with it); ``watch_delivers`` False makes watches lag (never fire)."""

    def __init__(self, group: str = "g", capacity: int = 0) -> None:
        self.group = Group(group)
        self.capacity = capacity
        self.state = GroupState()
        self.revision = 0
        self.history: list[tuple[int, tuple[HolderId, ...]]] = []  # (revision, holders)
        self.watch_delivers = True
        self.after_read: Callable[[], None] | None = None
        self.reads = 0
        self._watchers: list[tuple[int, Callable[[GroupState | None], None]]] = []

    def read(self) -> tuple[GroupState, int]:
        self.reads += 1
        result = (self.state, self.revision)
        hook, self.after_read = self.after_read, None
        if hook is not None:
            hook()
        return result

    def write(self, new: GroupState, *, expect: int) -> int:
        if expect != self.revision:
            raise Conflict(f"revision {self.revision}, not {expect}")
        old, self.state = self.state, new
        self.revision += 1
        self.history.append((self.revision, new.slots.holders if new.slots else ()))
        if self.watch_delivers and (old.slots, old.paused) != (new.slots, new.paused):
            watchers, self._watchers = self._watchers, []  # slots or pause: never a phase write
            for _since, callback in watchers:
                callback(new)
        return self.revision

    def watch(self, on_change: Callable[[GroupState | None], None], *, since: int = 0) -> Callable[[], None]:
        entry = (since, on_change)
        if self.watch_delivers and self.revision > since:
            on_change(self.state)  # a change came after the read the caller decided on
            return lambda: None
        self._watchers.append(entry)
        return lambda: self._watchers.remove(entry) if entry in self._watchers else None

    def close(self) -> None:
        return None


class MemoryWaitQueue:
    """The WaitQueue in memory: request order; ``die(holder)`` is a waiter whose place expired."""

    def __init__(self) -> None:
        self.entries: list[Waiter] = []
        self.mine: set[HolderId] = set()
        self.joins = 0
        self._order = 0
        self._watchers: list[tuple[HolderId, Callable[[], None]]] = []  # (the waiter watched, callback)

    def waiters(self) -> tuple[Waiter, ...]:
        return tuple(self.entries)

    def join(self, waiter: Waiter) -> None:
        held = next((w for w in self.entries if w.id == waiter.id), None)
        if held is not None and held.kind != waiter.kind:
            raise IdInUse(f"{waiter.id!r} has a place in line as {held.kind}")
        if held is None:
            self._order += 1
            self.entries.append(replace(waiter, order=self._order))
        self.joins += 1
        self.mine.add(waiter.id)

    def joined(self, holder: HolderId) -> bool:
        return holder in self.mine

    def leave(self, holder: HolderId) -> None:
        self.mine.discard(holder)
        self._gone(holder)

    def die(self, holder: HolderId) -> None:
        """The place expired (its process gone): another process of the same id owns nothing."""
        self.mine.discard(holder)
        self._gone(holder)

    def _gone(self, holder: HolderId) -> None:
        before = len(self.entries)
        self.entries = [w for w in self.entries if w.id != holder]
        if len(self.entries) != before:
            for watched, callback in [w for w in self._watchers if w[0] == holder]:
                self._watchers.remove((watched, callback))
                callback()

    def renew(self, holder: HolderId) -> None:
        return None

    def watch_ahead(
        self,
        holder: HolderId,
        on_change: Callable[[], None],
        *,
        line: tuple[Waiter, ...] | None = None,
        since: int = 0,
    ) -> Callable[[], None]:
        ids = [w.id for w in self.entries]
        if holder not in ids or ids.index(holder) == 0:
            on_change()
            return lambda: None
        entry = (ids[ids.index(holder) - 1], on_change)
        self._watchers.append(entry)
        return lambda: self._watchers.remove(entry) if entry in self._watchers else None

    def close(self) -> None:
        return None


def memory_group(group: str = "g") -> tuple[GroupClient, MemoryGroupStore, MemoryWaitQueue]:
    """A GroupClient (the real compare-and-swap loop and the core's rules) on memory."""
    store, queue = MemoryGroupStore(group), MemoryWaitQueue()
    return GroupClient(store, queue), store, queue
