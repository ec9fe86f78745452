"""The semaphore over any store: one compare-and-swap loop, the core's rules, the wait queue.

``GroupClient`` is what the agent (the ``Semaphore`` port) and rebootctl use on etcd and on a
Lease alike. It reads the group's state from its ``GroupStore``, applies one pure transition of
:mod:`rebootcoord.core.group`, and writes the result if the state is still the one read; on a
conflict it reads again after a jittered pause, which ends at once when ``stop`` is set. The
queue is the ``WaitQueue``'s: request order, a waiter woken only when the one ahead leaves.

Never decides anything the core does not: a refusal comes from a transition, unchanged.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rebootcoord.core.group import Ending, GroupState, stored
from rebootcoord.core.semaphore import NO_LIMITS, GroupView, HolderRecord, Limits, PauseInfo, Waiter
from rebootcoord.core.types import Group, HolderId
from rebootcoord.errors import (
    Conflict,
    GroupAbsent,
    GroupPaused,
    Interrupted,
    NoFreeSlot,
    NotHolder,
    SemaphoreError,
    StoreFull,
)
from rebootcoord.ports import GroupStore, KeepsPolledPlaces, Mirrored, ReadsItsLine, RemembersLast, WaitQueue

log = logging.getLogger(__name__)

MAX_CAS_ATTEMPTS = 50
#: How long a write, or a read after one, waits for the store's mirror to show this client's last write.
MIRROR_WAIT = 0.05


@dataclass(frozen=True)
class Applied:
    """A transition applied: the state read, the state written (the same when ``changed`` is
    False) and the revision (of the write, else of the read)."""

    before: GroupState
    after: GroupState
    revision: int
    changed: bool


class GroupClient:
    """One group's semaphore: a store, a wait queue, the core's transitions. Thread-safe."""

    def __init__(
        self,
        store: GroupStore,
        queue: WaitQueue,
        *,
        stop: threading.Event | None = None,
        on_conflict: Callable[[], None] | None = None,
        write_first: bool = False,
    ) -> None:
        """``write_first``: a write is first tried against the state the store remembers (its
        last read or write), with no read before it; for one writer that mostly writes after its
        own reads and writes (an agent), not for a server shared by many."""
        self.store = store
        self.queue = queue
        # A store that reads the group and its line in one snapshot (etcd), else None.
        self._with_line: ReadsItsLine | None = store if isinstance(store, ReadsItsLine) else None
        self._mirrored: Mirrored | None = store if isinstance(store, Mirrored) else None
        self._keeps: KeepsPolledPlaces | None = queue if isinstance(queue, KeepsPolledPlaces) else None
        self._written = 0  # the newest revision this client wrote: a mirror must have seen it
        self._recent: tuple[int, GroupView] | None = None
        self._writing = threading.Lock()
        self._memory: RemembersLast | None = store if isinstance(store, RemembersLast) else None
        self.write_first = write_first
        self.stale_writes = 0  # writes against a remembered state that had changed (409s)
        self.group: Group = store.group
        self.stop = stop or threading.Event()
        self.on_conflict = on_conflict
        self.on_close: Callable[[], None] | None = None  # what else goes with it (its connection)
        self.conflicts = 0
        self._rng = random.Random()  # noqa: S311 - jitter, not crypto

    # -- the loop ---------------------------------------------------------------------------

    def apply(self, change: Callable[[GroupState], GroupState]) -> Applied:
        """Read, change, write if unchanged; again on a conflict. One at a time in this process
        where the store has a mirror (the FleetLock server's requests): each starts from the
        state the one before wrote, instead of losing its compare-and-swap to it. With
        ``write_first``, the first try uses the remembered state: only a write is decided on it
        (the compare-and-swap checks it); a change that refuses or changes nothing is asked again
        of a fresh read."""
        if self._mirrored is None:
            return self._apply(change)
        with self._writing:
            return self._apply(change)

    def _apply(self, change: Callable[[GroupState], GroupState]) -> Applied:
        tried = self._write_first(change)
        if tried is not None:
            return tried
        for attempt in range(MAX_CAS_ATTEMPTS):
            state, version = self.store.read()
            new = change(state)
            if new is state:
                return Applied(state, state, _revision(version), changed=False)
            try:
                revision = self.store.write(new, expect=version)
            except Conflict:
                self.conflicts += 1
                if self.on_conflict is not None:
                    self.on_conflict()
                if self.stop.wait(self._rng.uniform(0, 0.002 * (attempt + 1))):
                    raise Interrupted("stopping: gave up a compare-and-swap retry") from None
                continue
            self._written = max(self._written, revision)
            return Applied(state, new, revision, changed=True)
        raise Conflict(f"gave up after {MAX_CAS_ATTEMPTS} conflicting writes on group {self.group}")

    def _known(self) -> tuple[GroupState, Any] | None:
        """A state this client holds without reading: the store's mirror once it has seen this
        client's writes (the FleetLock server on etcd), or, with ``write_first``, the state the
        store last read or wrote (an agent on a Lease)."""
        if self._mirrored is not None:
            got = self._mirrored.mirrored(self.queue, since=self._written, wait=MIRROR_WAIT)
            return (got[0], got[1]) if got is not None else None
        if self.write_first and self._memory is not None:
            return self._memory.remembered()
        return None

    def _write_first(self, change: Callable[[GroupState], GroupState]) -> Applied | None:
        """The write of ``change`` against a state known without a read (``_known``), if it makes
        one: only a write is decided on it, and the compare-and-swap checks it. A change that
        refuses or changes nothing there is asked again of a fresh read (None), as is one whose
        write finds the state changed."""
        known = self._known()
        if known is None:
            return None
        state, version = known
        try:
            new = change(state)
        except SemaphoreError:
            return None  # perhaps only the known state says so: a fresh read decides
        if new is state:
            return None
        try:
            revision = self.store.write(new, expect=version)
        except Conflict:
            self.stale_writes += 1  # the known state was stale, not a race lost: read and try again
            return None
        self._written = max(self._written, revision)
        return Applied(state, new, revision, changed=True)

    # -- what the agent reads -----------------------------------------------------------------

    def read(self, *, queue: bool = True, line_first: bool = False, recent: bool = False) -> GroupView:
        """The group, and its queue in request order (``queue=False``: no queue read).

        One snapshot where the store can read the line with the group (ReadsItsLine: etcd).
        Elsewhere two reads, not one moment: ``line_first`` reads the line before the group: a
        take writes its record, then leaves the line, so a holder moving from one to the other is
        seen in at least one of them (what the FleetLock server's "whose id is this" needs). The
        agent reads the group first: its watch of the waiter ahead starts from the group's
        revision, so the line must be as new or newer (one snapshot satisfies both).

        ``recent``: the state the store remembers (its last read or write) will do, when it has
        one -- the turn right after this client's own write, whose answer is that state."""
        remembered = self._memory.remembered() if recent and self._memory is not None else None
        if remembered is not None:
            state, version = remembered
            waiters = self.queue.waiters() if queue else ()
            return state.view(self.group, waiters, revision=_revision(version))
        together = (
            self._with_line.read_with_line(self.queue) if queue and self._with_line is not None else None
        )
        if together is not None:
            state, version, waiters = together
            return state.view(self.group, waiters, revision=_revision(version))
        waiters = self.queue.waiters() if queue and line_first else ()
        state, version = self.store.read()
        if queue and not line_first:
            waiters = self.queue.waiters()
        return state.view(self.group, waiters, revision=_revision(version))

    def recent_view(self, *, wait: float = 0.0, own_writes: bool = True) -> GroupView | None:
        """The group and its line as the store's mirror keeps them (``Mirrored``: etcd, for the
        FleetLock server), if it has seen every write of this client; None otherwise (no mirror,
        or not live; ``wait``: seconds to wait for it to see them; ``own_writes`` False: whether
        it has or not -- for a refusal, which a lag only ever makes older). It may lag a change
        made elsewhere by a moment, like any read does by the time it is acted on: what is decided
        from it is written by compare-and-swap, and a grant is only ever such a write."""
        if self._mirrored is None:
            return None
        got = self._mirrored.mirrored(self.queue, since=self._written if own_writes else 0, wait=wait)
        if got is None:
            return None
        state, version, waiters = got
        revision = _revision(version)
        recent = self._recent
        if recent is None or recent[0] != revision:
            recent = (revision, state.view(self.group, waiters, revision=revision))
            self._recent = recent
        return recent[1]

    def ensure(self, max_holders: int, *, member: HolderId | None = None, now: float = 0.0) -> None:
        """The semaphore created if need be, and ``member`` heard of (at ``now``) in the group."""
        self.apply(
            lambda s: (
                s.created(max_holders) if member is None else s.created(max_holders).heard_of(member, now)
            )
        )

    # -- the queue ----------------------------------------------------------------------------

    def join_queue(self, waiter: Waiter) -> None:
        self.queue.join(waiter)

    def keep_place(self, holder: HolderId) -> bool:
        """Keep a polling client's place without a request (``KeepsPolledPlaces``); False: the
        line cannot, and ``join_queue`` must."""
        return self._keeps is not None and self._keeps.keep(holder)

    def queue_joined(self, holder: HolderId) -> bool:
        return self.queue.joined(holder)

    def leave_queue(self, holder: HolderId) -> None:
        self.queue.leave(holder)

    def wake_on(
        self, view: GroupView, holder: HolderId, role: str, on_wake: Callable[[], None]
    ) -> Callable[[], None]:
        """Call ``on_wake`` once when this waiter's turn may have come, after ``view``: ``slots``,
        when the group's slots or pause change (the head of the line); ``ahead``, when the waiter
        ahead of it leaves."""
        if role == "slots":
            return self.store.watch(lambda _state: on_wake(), since=view.revision)
        return self.queue.watch_ahead(holder, on_wake, line=view.waiters, since=view.revision)

    # -- holders --------------------------------------------------------------------------------

    def acquire(
        self, record: HolderRecord, *, limits: Limits = NO_LIMITS, line: tuple[Waiter, ...] | None = None
    ) -> int | None:
        """Take a slot if it is our turn; the revision written, or None (not our turn, no slot,
        paused, the rollout's wave full, no room in the store). Taking again with the same
        record answers the revision read. ``line``: as the caller just read it (else read)."""
        try:
            return self.take(record, limits=limits, line=line)
        except StoreFull as exc:
            log.error("%s", exc)
            return None
        except (NoFreeSlot, GroupPaused):
            return None

    def take(
        self,
        record: HolderRecord,
        *,
        limits: Limits = NO_LIMITS,
        member: bool = True,
        line: tuple[Waiter, ...] | None = None,
    ) -> int:
        """``acquire``, saying why not: raises NoFreeSlot (StoreFull among them) or GroupPaused.
        ``member``: the taker counts as a node of the group (core.rollout's members). ``line``:
        the line as the caller just read it (else it is read). A line a moment old only ever
        shows waiters that have left since (a newcomer joins behind us): we may be refused a
        turn that came, never given one before an earlier waiter; the slots themselves are the
        compare-and-swap's."""
        waiters = self.queue.waiters() if line is None else line
        ahead = next((i for i, w in enumerate(waiters) if w.id == record.id), 1 << 30)
        # (not in line: only a slot already ours with this record answers)
        capacity = self.store.capacity
        applied = self.apply(
            lambda s: s.take(
                record, ahead=ahead, limits=limits, waiting=len(waiters), capacity=capacity, member=member
            )
        )
        if applied.changed:
            self.queue.leave(record.id)  # taken: the one behind us is woken
        return applied.revision

    def update(self, record: HolderRecord) -> None:
        self.apply(lambda s: s.update(record))

    def release(self, holder: HolderId, ending: Ending | None = None) -> int | None:
        """Give the slot back and drop the record, the cycle into the history with ``ending``;
        the revision written (None: nothing to give)."""
        applied = self.apply(lambda s: s.release(holder, ending))
        self.queue.leave(holder)
        return applied.revision if applied.changed else None

    def drop_record(self, holder: HolderId) -> None:
        self.apply(lambda s: s.drop_record(holder))

    def reclaim(self, holder: HolderId, expect: HolderRecord, ending: Ending | None = None) -> bool:
        try:
            self.apply(lambda s: s.reclaim(holder, expect, ending))
        except NotHolder:
            return False
        return True

    # -- operators (rebootctl) -------------------------------------------------------------------
    # ``existing``: refuse a group of which nothing is stored (GroupAbsent), in the same
    # compare-and-swap as the change, so that an operator's typo never creates a group.

    def lock(self, holder: HolderId, record: HolderRecord, *, existing: bool = False) -> None:
        self.apply(self._guarded(lambda s: s.lock(record, capacity=self.store.capacity), existing))

    def unlock(
        self, holder: HolderId, *, force: bool = False, ending: Ending | None = None, existing: bool = False
    ) -> HolderRecord | None:
        """The record of the holder freed (None: it had none)."""
        applied = self.apply(self._guarded(lambda s: s.unlock(holder, force=force, ending=ending), existing))
        self.queue.leave(holder)
        return applied.before.records.get(holder)

    def set_max(self, new_max: int) -> Applied:
        """Creates the group if need be (as the first agent would)."""
        return self.apply(lambda s: s.with_max(new_max))

    def pause(self, info: PauseInfo, *, existing: bool = False) -> Applied:
        return self.apply(self._guarded(lambda s: s.pause(info), existing))

    def resume(self, *, existing: bool = False) -> Applied:
        return self.apply(self._guarded(lambda s: s.resume(), existing))

    def _guarded(
        self, change: Callable[[GroupState], GroupState], existing: bool
    ) -> Callable[[GroupState], GroupState]:
        if not existing:
            return change

        def on_existing(state: GroupState) -> GroupState:
            if not stored(state):
                raise GroupAbsent(f"group {self.group} does not exist")
            return change(state)

        return on_existing

    def close(self) -> None:
        self.queue.close()
        self.store.close()
        if self.on_close is not None:
            self.on_close()


def _revision(version: Any) -> int:
    """The backend revision of a store's version (etcd: the read revision; Lease: its RV)."""
    rev = getattr(version, "revision", version)
    try:
        return int(rev)
    except (TypeError, ValueError):
        return 0


def etcd_group(
    endpoints: tuple[str, ...], *, prefix: str, group: Group, waiter_ttl: float = 30.0, **options: Any
) -> GroupClient:
    """A GroupClient on etcd with its own connection (simulators, tests, benchmarks)."""
    from rebootcoord.adapters.etcd import EtcdConnection, EtcdGroupStore, EtcdOptions, EtcdWaitQueue

    conn = EtcdConnection(EtcdOptions(endpoints=endpoints, **options))
    return GroupClient(
        EtcdGroupStore(conn, prefix=prefix, group=group),
        EtcdWaitQueue(conn, prefix=prefix, group=group, ttl=waiter_ttl),
    )


def lease_group(kube: Any, *, namespace: str, group: Group, waiter_ttl: float = 30.0) -> GroupClient:
    """A GroupClient on a Kubernetes Lease (simulators, tests, benchmarks)."""
    from rebootcoord.adapters.kube.lease import LeaseGroupStore, LeaseWaitQueue

    return GroupClient(
        LeaseGroupStore(kube, namespace=namespace, group=group),
        LeaseWaitQueue(kube, namespace=namespace, group=group, ttl=waiter_ttl),
    )
