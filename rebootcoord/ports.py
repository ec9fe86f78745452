"""The ports: small interfaces between the daemon and its adapters.

Each adapter lives in ``rebootcoord.adapters``, one module per concern. Tests use the real
adapters against real backends, or small fakes of these protocols for pure unit tests.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from rebootcoord.core.semaphore import GroupView, HolderRecord, PauseInfo, Waiter
from rebootcoord.core.types import Group, HolderId, NodeName, PendingReboot, Phase


class Detector(Protocol):
    """Is a reboot pending, and why. Raises DetectorError when it cannot tell."""

    name: str

    def pending(self) -> PendingReboot | None: ...


class Rebooter(Protocol):
    """Starts a reboot of the host. Returns once the reboot was asked for; raises RebootError."""

    def reboot(self) -> None: ...


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    name: str
    detail: str = ""


class Check(Protocol):
    """A gate: may we go on (before taking a slot), did we come back well (after the reboot)."""

    name: str

    def check(self) -> CheckResult: ...


class NodeOps(Protocol):
    """The node as the cluster sees it: cordon, drain, uncordon, tell the story.

    The bare etcd mode has no cluster (NoNodeOps); Kubernetes mode talks to the API server.
    """

    def is_unschedulable(self) -> bool: ...

    def cordon(self) -> None: ...

    def drain(self, stop: threading.Event) -> None:
        """Evict the node's pods and wait until they are gone. Raises NodeOperationError."""

    def uncordon(self) -> None: ...

    def cordoned_by_us(self) -> bool:
        """The node is unschedulable by our cordon (the mark ``cordon()`` leaves, which outlives
        a holder record an operator removed)."""

    def node_exists(self, node: NodeName) -> bool | None:
        """Whether a Node object exists; None when there is no cluster to ask."""

    def announce(self, phase: Phase, reason: str, *, warning: bool = False, event_reason: str = "") -> None:
        """Show the phase on the node (annotations) and record an Event (``event_reason``, else
        one named after the phase)."""

    def set_labels(self, labels: Sequence[tuple[str, str]]) -> None: ...

    def set_waiting_taint(self, present: bool) -> None: ...


class Semaphore(Protocol):
    """One group's counting semaphore in a backend. Every write is compare-and-swap."""

    group: Group
    #: Called on every compare-and-swap write that lost a race (a metric counts them).
    on_conflict: Callable[[], None] | None

    def ensure(self, max_holders: int) -> None:
        """Create the group's semaphore with ``max_holders`` slots if it does not exist."""

    def read(self) -> GroupView:
        """A fresh, consistent view of the group."""

    def watch(self, on_change: Callable[[GroupView | None], None]) -> Callable[[], None]:
        """Call ``on_change`` with every new view (None while the backend is unreachable).

        Returns a function that stops the watch. No polling: changes arrive by the backend's watch.
        """

    def join_queue(self, waiter: Waiter) -> None: ...

    def leave_queue(self, holder: HolderId) -> None: ...

    def acquire(self, record: HolderRecord) -> int | None:
        """Take a slot for ``record.id`` with its record, if it is our turn.

        Returns the backend revision of the write, or None when it is not our turn, no slot is
        free, or another writer won the race (read again and decide again)."""

    def update(self, record: HolderRecord) -> None:
        """Write our record if we still hold the slot; raise SlotLost otherwise."""

    def release(self, holder: HolderId) -> int | None:
        """Give the slot back and drop the record; the revision written. Idempotent (None)."""

    def drop_record(self, holder: HolderId) -> None:
        """Remove a record whose slot is gone (Abandon)."""

    def reclaim(self, holder: HolderId, expect: HolderRecord) -> bool:
        """Take back ``holder``'s slot if it still holds it with the record ``expect``."""

    # operators (rebootctl)
    def lock(self, holder: HolderId, record: HolderRecord) -> None: ...

    def unlock(self, holder: HolderId) -> HolderRecord | None: ...

    def set_max(self, new_max: int) -> None: ...

    def pause(self, info: PauseInfo) -> None: ...

    def resume(self) -> None: ...

    def close(self) -> None: ...
