"""The ports: small interfaces between the daemon and its adapters.

Each adapter lives in ``rebootcoord.adapters``, one module per concern. Tests use the real
adapters against real backends, or small fakes of these protocols for pure unit tests.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from rebootcoord.core.group import Ending, GroupState
from rebootcoord.core.notices import Notice
from rebootcoord.core.semaphore import NO_LIMITS, GroupView, HolderRecord, Limits, PauseInfo, Waiter
from rebootcoord.core.types import Group, HolderId, NodeName, PendingReboot, Phase


class Detector(Protocol):
    """Is a reboot pending, and why. Raises DetectorError when it cannot tell."""

    name: str

    def pending(self) -> PendingReboot | None: ...


class Rebooter(Protocol):
    """Starts a reboot of the host. Returns once the reboot was asked for; raises RebootError."""

    def reboot(self) -> None: ...


@runtime_checkable
class Finalizer(Protocol):
    """An update engine whose staged update a plain reboot would not apply (rpm-ostree's
    finalization lock), and which reboots into it itself. A detector may be one: the agent asks
    each such detector right before rebooting, with the slot held, before the Rebooter."""

    def finalize(self) -> bool:
        """Reboot into the staged update if only this would apply it: True when the reboot was
        asked for, False to leave the reboot to the Rebooter. Raises RebootError."""


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    name: str
    detail: str = ""
    # Why not, in one CamelCase word, when a gate names it (PDBBlocked): the reason of the Event
    # and the metric label that report a gate holding the node back ("": RebootBlocked).
    reason: str = ""


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

    def announce(
        self, phase: Phase, reason: str, *, warning: bool = False, event_reason: str = "", defer: bool = False
    ) -> None:
        """Show the phase on the node (annotations) and record an Event (``event_reason``, else
        one named after the phase). ``defer``: the annotations ride on the node's next change
        (the cordon of a drain, the uncordon of a release, the next phase), which the caller
        knows follows at once -- one write of the node instead of two."""

    def set_labels(self, labels: Sequence[tuple[str, str]]) -> None: ...

    def set_waiting_taint(self, present: bool) -> None: ...


class GroupStore(Protocol):
    """Where a group's state lives: read it with a version, write it if the version still holds.

    The group's rules are not here (rebootcoord.core.group): a store only decodes, encodes and
    compares. etcd: airlock's key, our records and the pause marker, written as a diff in one
    transaction guarded by mod revisions; Kubernetes: one Lease replaced with its resourceVersion.
    """

    group: Group
    #: Bytes of the group's documents this store holds (core.bounds); 0: no limit.
    capacity: int

    def read(self) -> tuple[GroupState, Any]:
        """The state and an opaque version to write against (its ``revision``: the backend's)."""

    def write(self, new: GroupState, *, expect: Any) -> int:
        """Write ``new`` if the stored state is still the one of ``expect``; the revision written.
        Raises Conflict otherwise."""

    def watch(self, on_change: Callable[[GroupState | None], None], *, since: int = 0) -> Callable[[], None]:
        """Call ``on_change`` once, at the first change after revision ``since`` of the slots or
        the pause marker -- never at a holder's phase write -- or when the watch breaks. Returns
        a function that stops it."""

    def close(self) -> None: ...


@runtime_checkable
class ReadsItsLine(Protocol):
    """A store that reads its group's line with the group, in one snapshot (etcd: one
    transaction): one request where there were two, and never a holder caught between them."""

    def read_with_line(self, queue: WaitQueue) -> tuple[GroupState, Any, tuple[Waiter, ...]] | None:
        """The state, its version and ``queue``'s line, at one revision; None when ``queue`` is
        not a line this store can read."""


@runtime_checkable
class Mirrored(Protocol):
    """A store that keeps its group and line in memory from a watch (etcd, for the FleetLock
    server): a view to refuse from without a request, never one to grant from."""

    def mirrored(
        self, queue: WaitQueue, *, since: int = 0, wait: float = 0.0
    ) -> tuple[GroupState, Any, tuple[Waiter, ...]] | None:
        """The state, its version and ``queue``'s line as last seen, if the mirror is live and has
        seen revision ``since`` (waiting up to ``wait`` seconds for it); None otherwise."""


@runtime_checkable
class KeepsPolledPlaces(Protocol):
    """A line that can keep a polling client's place from what this process knows of it."""

    def keep(self, holder: HolderId) -> bool:
        """The place kept (its refresh on its way) without a request; False: use ``join``."""


@runtime_checkable
class RemembersLast(Protocol):
    """A store that keeps the state it last read or wrote (a Lease: the object a GET or a write
    answered), so that a write can be tried against it with no read first. The compare-and-swap
    still decides: a memory gone stale is a Conflict, and the writer reads again."""

    def remembered(self) -> tuple[GroupState, Any] | None:
        """The state last read or written and its version; None when there is none."""


class WaitQueue(Protocol):
    """The line for a group's slots: request order; a dead waiter's place expires, a restarted
    agent keeps its own; a waiter is woken only when the one ahead of it leaves."""

    def join(self, waiter: Waiter) -> None:
        """Take a place at the end of the line, or keep (and from now on renew) the place this
        id already has -- from this process, or one before it that crashed."""

    def joined(self, holder: HolderId) -> bool:
        """This process keeps ``holder``'s place (join was called and the place is alive)."""

    def leave(self, holder: HolderId) -> None: ...

    def renew(self, holder: HolderId) -> None:
        """Keep the place alive now (pollers; an agent's place is renewed in the background)."""

    def waiters(self) -> tuple[Waiter, ...]:
        """The living waiters, in request order."""

    def watch_ahead(
        self,
        holder: HolderId,
        on_change: Callable[[], None],
        *,
        line: tuple[Waiter, ...] | None = None,
        since: int = 0,
    ) -> Callable[[], None]:
        """Call ``on_change`` once, when the waiter just ahead of ``holder`` in ``line`` (read when
        not given) leaves or dies -- at once when there is none. Events after revision ``since``.
        Returns a function that stops it."""

    def close(self) -> None: ...


class Semaphore(Protocol):
    """One group's semaphore as the agent uses it (GroupClient over a store and a queue)."""

    group: Group

    def ensure(self, max_holders: int, *, member: HolderId | None = None, now: float = 0.0) -> None:
        """Create the group's semaphore with ``max_holders`` slots if it does not exist; with
        ``member``, note that it belongs to the group (max_unavailable_percent)."""

    def read(self, *, queue: bool = True, recent: bool = False) -> GroupView:
        """A fresh view of the group (and its queue, unless ``queue`` is False). ``recent``: the
        state this client last read or wrote will do, when it has one (the turn right after its
        own write): no request for the group."""

    def join_queue(self, waiter: Waiter) -> None: ...

    def queue_joined(self, holder: HolderId) -> bool: ...

    def leave_queue(self, holder: HolderId) -> None: ...

    def wake_on(
        self, view: GroupView, holder: HolderId, role: str, on_wake: Callable[[], None]
    ) -> Callable[[], None]:
        """Call ``on_wake`` once, after ``view``: with ``role`` "slots" when the slots change (the
        head of the line), "ahead" when the waiter ahead leaves. Returns a function that stops it."""

    def acquire(
        self, record: HolderRecord, *, limits: Limits = NO_LIMITS, line: tuple[Waiter, ...] | None = None
    ) -> int | None:
        """Take a slot for ``record.id`` with its record, if it is our turn: the revision
        written, or None when it is not our turn, no slot is free, the group is paused, or
        ``limits`` (the zone's, the group's, the rollout's) let no node through now. ``line``:
        the line as the caller just read it (else it is read); only fairness rests on it, the
        slots are the compare-and-swap's."""

    def update(self, record: HolderRecord) -> None:
        """Write our record if we still hold the slot; raise SlotLost otherwise."""

    def release(self, holder: HolderId, ending: Ending | None = None) -> int | None:
        """Give the slot back and drop the record, the cycle into the group's history as
        ``ending`` says; the revision written. Idempotent (None)."""

    def drop_record(self, holder: HolderId) -> None:
        """Remove a record whose slot is gone (Abandon)."""

    def reclaim(self, holder: HolderId, expect: HolderRecord, ending: Ending | None = None) -> bool:
        """Take back ``holder``'s slot if it still holds it with the record ``expect``."""

    def pause(self, info: PauseInfo) -> object:
        """Pause the group: no new slot until it is resumed (stop the line). What it answers
        (GroupClient: the change applied) is for operators; the agent ignores it."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class NodeFacts:
    """What the FleetLock server reads of a client's Node before it takes a slot for it."""

    boot_id: str = ""  # the boot its kubelet reports now ("" : none)
    zone: str = ""  # its topology zone ("" : none), for max_holders_per_zone
    cordoned_by_us: bool = False  # unschedulable by our cordon (its mark)


class NodeDirectory(Protocol):
    """The FleetLock server's view of the cluster's Nodes: which Node a client is, and what may be
    done to it. Kubernetes: the client id is matched with each Node's status.nodeInfo.machineID."""

    def find(self, client_id: HolderId) -> NodeName | None:
        """The Node of ``client_id`` (its machine's app-specific id for Zincati, or its machine
        id; its Node name only where the operator allowed it), or None when no Node matches."""

    def node_ops(self, node: NodeName) -> NodeOps:
        """Cordon, drain (PDB-aware), uncordon, announce on ``node``, as the agent does."""

    def facts(self, node: NodeName) -> NodeFacts:
        """The Node's boot, zone and our cordon, in one read."""

    def verify(self, node: NodeName) -> tuple[CheckResult, ...]:
        """After the reboot: the configured checks of the Node (Ready, its pods Ready)."""


class GroupCatalog(Protocol):
    """The groups a store holds (the FleetLock server's bound on the groups it creates; the groups
    rebootctl names beside one that does not exist)."""

    def count(self, limit: int) -> int:
        """How many groups exist, counted up to ``limit``."""

    def names(self, limit: int) -> tuple[Group, ...]:
        """The first ``limit`` groups that exist, in name order (rebootctl names them when asked
        for one that does not)."""


class Notifier(Protocol):
    """Tells people about the cycle (Slack, Teams, Matrix, email, a webhook: apprise's services).

    ``notify`` hands a notice over and returns at once: it never waits for a receiver and never
    raises, so a notification cannot hold up or break a cycle. What becomes of it (sent, failed,
    dropped for a full queue) is the adapter's to log and count."""

    def notify(self, notice: Notice) -> None: ...

    def close(self, timeout: float) -> None:
        """Send what is queued for at most ``timeout`` seconds, then stop (the agent is leaving:
        a reboot's notice is sent before the host goes down)."""
