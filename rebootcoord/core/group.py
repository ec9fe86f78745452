"""A group's rules, once: the group's state as a frozen value and every change as a pure function.

The stores (etcd keys, a Kubernetes Lease) only read a :class:`GroupState`, hand it to one of
these transitions and write the result if nothing changed meanwhile (``GroupClient``, the one
compare-and-swap loop). A transition returns the new state, the *same object* when there is
nothing to do (asking again changes nothing), or raises a refusal:

==================  ==============================================================
``NoSemaphore``     the group's semaphore does not exist yet
``NoFreeSlot``      every slot is held, or earlier waiters come first
``StoreFull``       a slot whose holder's record could outgrow the store (core.bounds)
``GroupPaused``     an operator paused the group: no new slot
``SlotLost``        the holder's slot or record is gone (an operator unlocked it)
``NotHolder``       the id holds no slot (unlock), or holds it again since (reclaim)
``InvalidMax``      a max below 1 or below the current holders
``HoldsAgain``      a record to drop belongs to a holder that holds a slot again
``CorruptDocument`` a stored document is not what rebootcoord or airlock writes
==================  ==============================================================

The slots, the records, the pause marker and the *ledger* (the rollout in waves and the history,
:mod:`rebootcoord.core.rollout`) change together: a slot taken in a wave, or given back with its
cycle written into the history, is one write.

Nothing here performs I/O or reads the clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from rebootcoord.core.bounds import HISTORY_BYTES, MAX_RECORD_BYTES, MEMBERS_BYTES
from rebootcoord.core.rollout import DRAIN_FAILED, REBOOTED, Cycle, Ledger, Rollout, finished_in
from rebootcoord.core.semaphore import (
    AGENT,
    MANUAL,
    NO_LIMITS,
    GroupView,
    HolderRecord,
    Limits,
    PauseInfo,
    SemaphoreState,
    Waiter,
    admission,
)
from rebootcoord.core.types import Group, HolderId, Phase
from rebootcoord.errors import (
    CorruptDocument,
    GroupPaused,
    HolderBusy,
    HoldsAgain,
    NoFreeSlot,
    NoSemaphore,
    NotHolder,
    SlotLost,
    StoreFull,
)

#: Phases in which an unlock needs --force: the node is cordoned, draining, down or just back.
BUSY_PHASES = frozenset({Phase.LOCKED, Phase.DRAINING, Phase.REBOOTING, Phase.VERIFYING})


@dataclass(frozen=True)
class Ending:
    """How a holding ended, for the history and the rollout: an outcome of core.rollout."""

    outcome: str
    at: float
    reason: str = ""


@dataclass(frozen=True)
class GroupState:
    """One group as a store keeps it: the slots (airlock's document), our holders' records,
    the pause marker and the ledger. ``corrupt`` names documents that could not be read: every
    change is refused while there are any, so that nothing guesses a repair."""

    slots: SemaphoreState | None = None
    records: Mapping[HolderId, HolderRecord] = field(default_factory=dict)
    paused: PauseInfo | None = None
    corrupt: tuple[CorruptDocument, ...] = ()
    ledger: Ledger = field(default_factory=Ledger)

    def holds(self, holder: HolderId) -> bool:
        return self.slots is not None and self.slots.holds(holder)

    def footprint(self) -> int:
        """The most this state can take once stored: the slots, the pause marker and the rollout
        as they are, the history and the members at their bounds, and every holder's record at
        the most a record can grow to (core.bounds)."""
        return (
            (len(self.slots.encode()) if self.slots is not None else 0)
            + (len(self.paused.encode()) if self.paused is not None else 0)
            + len(self.ledger.encode_rollout())
            + HISTORY_BYTES
            + MEMBERS_BYTES
            + len(self.records) * MAX_RECORD_BYTES
        )

    def _fits(self, capacity: int, holder: HolderId) -> None:
        """Refuse a new holder whose record the store could not hold (``capacity`` 0: any)."""
        if capacity <= 0:
            return
        footprint = self.footprint()
        if footprint > capacity:
            raise StoreFull(
                f"no room for {holder!r}: with its record the group's documents could take "
                f"{footprint} bytes, more than the {capacity} its store holds; nothing "
                "was written (a release or `rebootctl unlock` frees room)"
            )

    def view(self, group: Group, waiters: tuple[Waiter, ...] = (), revision: int = 0) -> GroupView:
        """What decide() reads: this state with the queue the wait queue gives."""
        return GroupView(
            group=group,
            slots=self.slots,
            records=dict(self.records),
            waiters=waiters,
            paused=self.paused,
            corrupt=self.corrupt,
            revision=revision,
            ledger=self.ledger,
        )

    # -- transitions ------------------------------------------------------------------------

    def _intact(self) -> None:
        if self.corrupt:
            raise self.corrupt[0]

    def _exists(self) -> SemaphoreState:
        self._intact()
        if self.slots is None:
            raise NoSemaphore("the group's semaphore does not exist yet (no agent started; use set-max)")
        return self.slots

    def created(self, max_holders: int) -> GroupState:
        """The semaphore with ``max_holders`` slots if there is none (airlock writes max only then)."""
        self._intact()
        if self.slots is not None:
            return self
        return replace(self, slots=SemaphoreState(1).with_max(max_holders))

    def take(
        self,
        record: HolderRecord,
        *,
        ahead: int,
        limits: Limits = NO_LIMITS,
        waiting: int = 0,
        capacity: int = 0,
        member: bool = True,
    ) -> GroupState:
        """A slot for ``record.id``, with its record, when ``ahead`` earlier waiters leave a free
        slot for it and ``limits`` -- its zone's, the group's, the rollout's -- let it through now
        (``waiting``: the queue's length; ``record.acquired_at`` is now), and the store
        (``capacity`` bytes) could hold every record at its largest. With ``member``, the taker
        becomes a member of the group. Taking again with the same record changes nothing."""
        record = record.bounded()
        slots = self._exists()
        if slots.holds(record.id):
            held = self.records.get(record.id)
            if held is not None and replace(held, rollout=record.rollout, wave=record.wave) == record:
                return self  # the same record (the wave it was given aside)
            raise NoFreeSlot(f"{record.id!r} already holds a slot")
        if self.paused is not None:
            raise GroupPaused(f"the group is paused by {self.paused.by}")
        if slots.free <= ahead:
            raise NoFreeSlot(f"{slots.free} free slot(s) and {ahead} waiter(s) ahead")
        now = record.acquired_at
        ledger = self.ledger.heard_of(record.id, now) if member else self.ledger
        admitted = admission(
            slots, self.records, ledger, limits, zone=record.zone, waiting=max(waiting, 1), now=now
        )
        if not admitted.ok:
            raise NoFreeSlot(admitted.reason)
        if admitted.rollout is not None:
            record = replace(record, rollout=admitted.rollout.id, wave=admitted.wave)
        if admitted.rollout != ledger.rollout:
            ledger = replace(ledger, rollout=admitted.rollout)
        taken = replace(
            self, slots=slots.acquire(record.id), records={**self.records, record.id: record}, ledger=ledger
        )
        taken._fits(capacity, record.id)
        return taken

    def heard_of(self, member: HolderId, now: float) -> GroupState:
        """``member`` belongs to the group (max_unavailable_percent counts the members); the
        same state while its entry is fresh."""
        self._intact()
        ledger = self.ledger.heard_of(member, now)
        return self if ledger is self.ledger else replace(self, ledger=ledger)

    def update(self, record: HolderRecord) -> GroupState:
        """Our record (a phase change) while we hold the slot. The rollout and wave stay those
        take() gave it: a holder writing a record it built before the take cannot drop them."""
        self._intact()
        if not self.holds(record.id) or record.id not in self.records:
            raise SlotLost(f"{record.id} no longer holds a slot")
        held = self.records[record.id]
        record = replace(record, rollout=held.rollout, wave=held.wave).bounded()
        if held == record:
            return self
        return replace(self, records={**self.records, record.id: record})

    def release(self, holder: HolderId, ending: Ending | None = None) -> GroupState:
        """The slot and the record given back, the cycle written into the history (``ending``:
        how it ended) and counted in its wave. Idempotent."""
        self._intact()
        if not self.holds(holder) and holder not in self.records:
            return self
        slots = (
            self.slots.release(holder) if self.slots is not None and self.slots.holds(holder) else self.slots
        )
        records = {h: r for h, r in self.records.items() if h != holder}
        record = self.records.get(holder)
        if record is None or ending is None:
            return replace(self, slots=slots, records=records)
        return replace(self, slots=slots, records=records)._ended(record, ending)

    def _ended(self, record: HolderRecord, ending: Ending) -> GroupState:
        ledger, paused = self.ledger, self.paused
        rollout = ledger.rollout
        wave = ""
        if record.rollout and rollout is not None and record.rollout == rollout.id:
            wave = f"{rollout.id}/{record.wave + 1}"
            if ending.outcome in (REBOOTED, DRAIN_FAILED):
                rollout = finished_in(
                    rollout, record.wave, record.rollout, ok=ending.outcome == REBOOTED, at=ending.at
                )
                ledger = replace(ledger, rollout=rollout)
                paused = paused or _too_many_failures(rollout, record, ending)
        cycle = Cycle(
            id=record.id,
            node=record.node,
            kind=record.kind,
            started_at=record.acquired_at,
            ended_at=ending.at,
            outcome=ending.outcome,
            reason=ending.reason or record.abort_reason or record.note,
            phases=record.phases(),
            wave=wave,
            zone=record.zone,
        )
        ledger = ledger.recorded(cycle)
        if record.kind == AGENT or record.id in ledger.members:
            # An operator's lock is no node of the group; a FleetLock client is one only when its
            # id stands for something real (take()'s ``member``).
            ledger = ledger.heard_of(record.id, ending.at)
        return replace(self, ledger=ledger, paused=paused)

    def unlock(self, holder: HolderId, *, force: bool = False, ending: Ending | None = None) -> GroupState:
        """An operator's release: refused for an id that holds nothing, and -- unless ``force`` --
        for an agent in the middle of its cycle (locked, draining, rebooting, verifying): its
        slot freed, another node could go down while this one is still down or cordoned."""
        self._intact()
        if not self.holds(holder) and holder not in self.records:
            held = ", ".join(self.slots.holders) if self.slots and self.slots.holders else "none"
            raise NotHolder(f"{holder!r} holds no slot (holders: {held})")
        record = self.records.get(holder)
        if not force and record is not None and record.kind != MANUAL and record.phase in BUSY_PHASES:
            raise HolderBusy(
                f"{holder} is {record.phase} on node {record.node}: freeing its slot now lets another "
                "node drain and reboot while this one may still be down or cordoned",
                record,
            )
        return self.release(holder, ending)

    def reclaim(self, holder: HolderId, expect: HolderRecord, ending: Ending | None = None) -> GroupState:
        """Take back a stale holder's slot, only if it still holds it with the record ``expect``."""
        self._intact()
        current = self.records.get(holder)
        if not self.holds(holder) or current is None or current.acquired_at != expect.acquired_at:
            raise NotHolder(f"{holder!r} holds the slot again since, or not at all; not reclaimed")
        return self.release(holder, ending)

    def drop_record(self, holder: HolderId) -> GroupState:
        """Remove a record that outlived its slot."""
        self._intact()
        if holder not in self.records:
            return self
        if self.holds(holder):
            raise HoldsAgain(f"{holder} holds a slot again; its record stays")
        return replace(self, records={h: r for h, r in self.records.items() if h != holder})

    def lock(self, record: HolderRecord, *, capacity: int = 0) -> GroupState:
        """An operator takes a slot by hand (a manual record): no queue, no pause check."""
        record = record.bounded()
        slots = self._exists()
        if slots.holds(record.id):
            raise NoFreeSlot(f"{record.id!r} already holds a slot")
        locked = replace(self, slots=slots.acquire(record.id), records={**self.records, record.id: record})
        locked._fits(capacity, record.id)
        return locked

    def with_max(self, new_max: int) -> GroupState:
        """A new number of slots: never below 1 or the current holders. Creates the semaphore."""
        self._intact()
        slots = (self.slots or SemaphoreState(1)).with_max(new_max)
        if self.slots is not None and slots.max == self.slots.max:
            return self
        return replace(self, slots=slots)

    def pause(self, info: PauseInfo) -> GroupState:
        """Paused with ``info``; paused already, its new reason is kept beside the earlier ones
        (PauseInfo.again): who paused first, and since when, stay."""
        self._intact()
        if self.paused is None:
            return replace(self, paused=info.bounded())
        again = self.paused.again(info)
        return self if again is self.paused else replace(self, paused=again)

    def resume(self) -> GroupState:
        self._intact()
        if self.paused is None:
            return self
        return replace(self, paused=None)


def stored(group: GroupState | GroupView) -> bool:
    """Anything of the group is stored: its slots, a record, a pause, a rollout or history, or a
    document that cannot be read (a group that exists, for rebootctl)."""
    return (
        bool(group.slots is not None or group.records or group.paused is not None or group.corrupt)
        or not group.ledger.empty
    )


def _too_many_failures(rollout: Rollout | None, record: HolderRecord, ending: Ending) -> PauseInfo | None:
    """Stop the line when drains failed ``drain_failures`` times in the node's wave."""
    if rollout is None or ending.outcome != DRAIN_FAILED or rollout.plan.drain_failures <= 0:
        return None
    wave = rollout.waves[record.wave]
    if wave.failures < rollout.plan.drain_failures:
        return None
    reason = (
        f"{wave.failures} drains failed in {rollout.label(record.wave)} (wave_drain_failures "
        f"{rollout.plan.drain_failures}); the last on node {record.node}: "
        f"{ending.reason or record.abort_reason}"
    )
    return PauseInfo(by=f"rebootcoord rollout {rollout.id}", at=ending.at, reason=reason[:1000])
