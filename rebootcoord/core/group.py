"""A group's rules, once: the group's state as a frozen value and every change as a pure function.

The stores (etcd keys, a Kubernetes Lease) only read a :class:`GroupState`, hand it to one of
these transitions and write the result if nothing changed meanwhile (``GroupClient``, the one
compare-and-swap loop). A transition returns the new state, the *same object* when there is
nothing to do (asking again changes nothing), or raises a refusal:

==================  ==============================================================
``NoSemaphore``     the group's semaphore does not exist yet
``NoFreeSlot``      every slot is held, or earlier waiters come first
``GroupPaused``     an operator paused the group: no new slot
``SlotLost``        the holder's slot or record is gone (an operator unlocked it)
``NotHolder``       the id holds no slot (unlock), or holds it again since (reclaim)
``InvalidMax``      a max below 1 or below the current holders
``HoldsAgain``      a record to drop belongs to a holder that holds a slot again
``CorruptDocument`` a stored document is not what rebootcoord or airlock writes
==================  ==============================================================

Nothing here performs I/O or reads the clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from rebootcoord.core.semaphore import (
    MANUAL,
    GroupView,
    HolderRecord,
    PauseInfo,
    SemaphoreState,
    Waiter,
    zone_holders,
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
)

#: Phases in which an unlock needs --force: the node is cordoned, draining, down or just back.
BUSY_PHASES = frozenset({Phase.LOCKED, Phase.DRAINING, Phase.REBOOTING, Phase.VERIFYING})


@dataclass(frozen=True)
class GroupState:
    """One group as a store keeps it: the slots (airlock's document), our holders' records and
    the pause marker. ``corrupt`` names documents that could not be read: every change is refused
    while there are any, so that nothing guesses a repair."""

    slots: SemaphoreState | None = None
    records: Mapping[HolderId, HolderRecord] = field(default_factory=dict)
    paused: PauseInfo | None = None
    corrupt: tuple[CorruptDocument, ...] = ()

    def holds(self, holder: HolderId) -> bool:
        return self.slots is not None and self.slots.holds(holder)

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
        return GroupState(SemaphoreState(1).with_max(max_holders), self.records, self.paused)

    def take(self, record: HolderRecord, *, ahead: int, zone_limit: int = 0) -> GroupState:
        """A slot for ``record.id``, with its record, when ``ahead`` earlier waiters leave a free
        slot for it and -- with ``zone_limit`` -- fewer than that many holders are in its zone.
        Taking again with the same record changes nothing."""
        slots = self._exists()
        if slots.holds(record.id):
            if self.records.get(record.id) == record:
                return self
            raise NoFreeSlot(f"{record.id!r} already holds a slot")
        if self.paused is not None:
            raise GroupPaused(f"the group is paused by {self.paused.by}")
        if slots.free <= ahead:
            raise NoFreeSlot(f"{slots.free} free slot(s) and {ahead} waiter(s) ahead")
        if zone_limit > 0 and record.zone:
            in_zone = zone_holders(slots, self.records, record.zone)
            if in_zone >= zone_limit:
                raise NoFreeSlot(
                    f"zone {record.zone} has {in_zone} of {zone_limit} holder(s) (max_holders_per_zone)"
                )
        return GroupState(slots.acquire(record.id), {**self.records, record.id: record}, self.paused)

    def update(self, record: HolderRecord) -> GroupState:
        """Our record (a phase change) while we hold the slot."""
        self._intact()
        if not self.holds(record.id) or record.id not in self.records:
            raise SlotLost(f"{record.id} no longer holds a slot")
        if self.records[record.id] == record:
            return self
        return GroupState(self.slots, {**self.records, record.id: record}, self.paused)

    def release(self, holder: HolderId) -> GroupState:
        """The slot and the record given back. Idempotent."""
        self._intact()
        if not self.holds(holder) and holder not in self.records:
            return self
        slots = (
            self.slots.release(holder) if self.slots is not None and self.slots.holds(holder) else self.slots
        )
        return GroupState(slots, {h: r for h, r in self.records.items() if h != holder}, self.paused)

    def unlock(self, holder: HolderId, *, force: bool = False) -> GroupState:
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
        return self.release(holder)

    def reclaim(self, holder: HolderId, expect: HolderRecord) -> GroupState:
        """Take back a stale holder's slot, only if it still holds it with the record ``expect``."""
        self._intact()
        current = self.records.get(holder)
        if not self.holds(holder) or current is None or current.acquired_at != expect.acquired_at:
            raise NotHolder(f"{holder!r} holds the slot again since, or not at all; not reclaimed")
        return self.release(holder)

    def drop_record(self, holder: HolderId) -> GroupState:
        """Remove a record that outlived its slot."""
        self._intact()
        if holder not in self.records:
            return self
        if self.holds(holder):
            raise HoldsAgain(f"{holder} holds a slot again; its record stays")
        return GroupState(self.slots, {h: r for h, r in self.records.items() if h != holder}, self.paused)

    def lock(self, record: HolderRecord) -> GroupState:
        """An operator takes a slot by hand (a manual record): no queue, no pause check."""
        slots = self._exists()
        if slots.holds(record.id):
            raise NoFreeSlot(f"{record.id!r} already holds a slot")
        return GroupState(slots.acquire(record.id), {**self.records, record.id: record}, self.paused)

    def with_max(self, new_max: int) -> GroupState:
        """A new number of slots: never below 1 or the current holders. Creates the semaphore."""
        self._intact()
        slots = (self.slots or SemaphoreState(1)).with_max(new_max)
        if self.slots is not None and slots.max == self.slots.max:
            return self
        return GroupState(slots, self.records, self.paused)

    def pause(self, info: PauseInfo) -> GroupState:
        self._intact()
        if self.paused == info:
            return self
        return GroupState(self.slots, self.records, info)

    def resume(self) -> GroupState:
        self._intact()
        if self.paused is None:
            return self
        return GroupState(self.slots, self.records, None)
