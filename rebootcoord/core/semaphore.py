"""The semaphore as plain values: no I/O. Backends read, apply one of these, write-if-unchanged.

Two documents per group:

- the *slots*: ``{"total_slots": N, "holders": [sorted ids]}``, byte-compatible with airlock's
  etcd v3 semaphore, so Zincati nodes behind airlock share the budget;
- one *holder record* per holder that is one of our agents: node, phase, boot ID at acquisition,
  whether we cordoned. Airlock's holders simply have none.

A document that is not well formed raises ``CorruptDocument``; nothing here guesses a repair.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rebootcoord.core.bounds import MAX_PAUSE_REASON_BYTES, MAX_PAUSE_REASONS, MAX_TEXT_BYTES, clip_utf8
from rebootcoord.core.documents import load_json, load_object, quoted
from rebootcoord.core.rollout import (
    Admission,
    Ledger,
    Rollout,
    WavePlan,
    admit,
    in_progress,
    unavailable_limit,
)
from rebootcoord.core.types import Group, HolderId, NodeName, Phase
from rebootcoord.errors import CorruptDocument, InvalidMax, NoFreeSlot, NotHolder, clipped

MANUAL = "manual"  # kind of a record written by `rebootctl lock`
#: The most slots a group may be given (set-max, max_holders): more than any fleet reboots at once.
MAX_SLOTS = 10_000
AGENT = "agent"
FLEETLOCK = "fleetlock"  # kind of a record written by the FleetLock server for its client


@dataclass(frozen=True)
class SemaphoreState:
    """A counting semaphore: at most ``max`` holders. Asking again as a holder changes nothing."""

    max: int
    holders: tuple[HolderId, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "holders", tuple(sorted(self.holders)))

    @property
    def free(self) -> int:
        return max(0, self.max - len(self.holders))

    def holds(self, holder: HolderId) -> bool:
        return holder in self.holders

    def acquire(self, holder: HolderId) -> SemaphoreState:
        if holder in self.holders:
            return self
        if len(self.holders) >= self.max:
            raise NoFreeSlot(f"all {self.max} slots are held by {', '.join(self.holders)}")
        return SemaphoreState(self.max, (*self.holders, holder))

    def release(self, holder: HolderId) -> SemaphoreState:
        if holder not in self.holders:
            raise NotHolder(f"{holder!r} holds no slot (holders: {', '.join(self.holders) or 'none'})")
        return SemaphoreState(self.max, tuple(h for h in self.holders if h != holder))

    def with_max(self, new_max: int) -> SemaphoreState:
        if new_max < 1:
            raise InvalidMax(f"max must be at least 1, got {new_max}")
        if new_max > MAX_SLOTS:
            raise InvalidMax(f"max must be at most {MAX_SLOTS} (as max_holders), got {quoted(new_max)}")
        if new_max < len(self.holders):
            raise InvalidMax(
                f"max {new_max} is below the {len(self.holders)} current holders "
                f"({', '.join(self.holders)}); wait for them to release or unlock them first"
            )
        return SemaphoreState(new_max, self.holders)

    def encode(self) -> bytes:
        """airlock's format exactly -- Go's encoding/json of its struct: compact, sorted holders, no
        other field (airlock rewrites what it reads)."""
        return json.dumps(
            {"total_slots": self.max, "holders": list(self.holders)}, separators=(",", ":")
        ).encode()

    @classmethod
    def decode(cls, raw: bytes, *, key: str) -> SemaphoreState:
        doc = load_object(raw, key)
        total = doc.get("total_slots")
        holders = doc.get("holders")
        if holders is None:
            holders = []  # Go marshals an empty slice created as nil as null
        if isinstance(total, bool) or not isinstance(total, int):
            raise CorruptDocument(key, f"total_slots must be an integer, got {quoted(total)}")
        if total < 1:
            raise CorruptDocument(key, f"total_slots must be at least 1, got {total}")
        if not isinstance(holders, list) or not all(isinstance(h, str) and h for h in holders):
            raise CorruptDocument(key, f"holders must be a list of non-empty strings, got {quoted(holders)}")
        if len(set(holders)) != len(holders):
            raise CorruptDocument(key, f"holders lists an id twice: {quoted(holders)}")
        if len(holders) > total:
            raise CorruptDocument(
                key, f"{len(holders)} holders exceed total_slots {total}: {quoted(holders)}"
            )
        return cls(total, tuple(HolderId(h) for h in holders))


@dataclass(frozen=True)
class HolderRecord:
    """What one of our holders is doing. Persisted beside the slots; survives crashes and reboots."""

    id: HolderId
    node: NodeName
    group: Group
    phase: Phase
    boot_id: str  # the boot ID when the slot was taken: a different one means we rebooted
    acquired_at: float
    phase_since: float
    kind: str = AGENT
    reason: str = ""
    update_key: str = ""  # identifies the update that caused the reboot (PendingReboot.key)
    cordoned: bool | None = None  # None: not decided yet; True: we cordoned (we must uncordon)
    reboot_requested_at: float | None = None
    note: str = ""  # last failure, for status
    abort_reason: str = ""  # set when a drain failed and the cycle is being undone
    paused_group_at: float | None = None  # this holding's failed gate paused the group (once)
    zone: str = ""  # the node's topology zone, for max_holders_per_zone ("" : none)
    rollout: str = ""  # the rollout this holding is part of ("": none) and its wave (0-based)
    wave: int = 0
    # The phases entered after LOCKED, with when (for the history's time per phase).
    timeline: tuple[tuple[str, float], ...] = ()

    def encode(self) -> bytes:
        return self.encoded

    @functools.cached_property
    def encoded(self) -> bytes:
        doc = dataclasses.asdict(self)
        doc["phase"] = self.phase.value
        doc["timeline"] = [list(t) for t in self.timeline]
        return json.dumps(doc, sort_keys=True, ensure_ascii=False).encode()

    def bounded(self) -> HolderRecord:
        """This record with each free text cut to MAX_TEXT_BYTES (core.bounds): what a record
        may grow to is known, so a phase change is never refused for size."""
        bounded = dataclasses.replace(
            self,
            reason=clip_utf8(self.reason, MAX_TEXT_BYTES),
            update_key=clip_utf8(self.update_key, MAX_TEXT_BYTES),
            note=clip_utf8(self.note, MAX_TEXT_BYTES),
            abort_reason=clip_utf8(self.abort_reason, MAX_TEXT_BYTES),
        )
        return self if bounded == self else bounded

    @classmethod
    def decode(cls, raw: bytes, *, key: str) -> HolderRecord:
        doc = load_object(raw, key)
        try:
            phase = Phase(doc["phase"])
            record = cls(
                id=HolderId(_typed(doc, "id", str)),
                node=NodeName(_typed(doc, "node", str)),
                group=Group(_typed(doc, "group", str)),
                phase=phase,
                boot_id=_typed(doc, "boot_id", str),
                acquired_at=float(_typed(doc, "acquired_at", (int, float))),
                phase_since=float(_typed(doc, "phase_since", (int, float))),
                kind=_typed(doc, "kind", str, AGENT),
                reason=_typed(doc, "reason", str, ""),
                update_key=_typed(doc, "update_key", str, ""),
                cordoned=_typed(doc, "cordoned", (bool, type(None)), None),
                reboot_requested_at=_opt_float(doc, "reboot_requested_at"),
                note=_typed(doc, "note", str, ""),
                abort_reason=_typed(doc, "abort_reason", str, ""),
                paused_group_at=_opt_float(doc, "paused_group_at"),
                zone=_typed(doc, "zone", str, ""),
                rollout=_typed(doc, "rollout", str, ""),
                wave=_typed(doc, "wave", int, 0),
                timeline=tuple((str(p), float(t)) for p, t in _typed(doc, "timeline", list, [])),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise CorruptDocument(key, f"holder record is malformed: {clipped(str(exc))}") from None
        if not record.phase.holds_slot:
            raise CorruptDocument(key, f"holder record in phase {record.phase}, which holds no slot")
        return record

    def moved(self, phase: Phase, now: float, **changes: Any) -> HolderRecord:
        timeline = (*self.timeline, (phase.value, now))[-MAX_TIMELINE:]
        return dataclasses.replace(self, phase=phase, phase_since=now, timeline=timeline, **changes)

    def phases(self) -> tuple[tuple[str, float], ...]:
        """Every phase of this holding with when it was entered, from the slot's taking."""
        return ((Phase.LOCKED.value, self.acquired_at), *self.timeline)


#: Phase changes kept in a record: a cycle has five; the rest are repeats after crashes.
MAX_TIMELINE = 16
_MISSING = object()


def _typed(doc: Mapping[str, Any], name: str, kind: Any, default: Any = _MISSING) -> Any:
    if name not in doc:
        if default is _MISSING:
            raise KeyError(f"missing field {name!r}")
        return default
    value = doc[name]
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise TypeError(f"field {name!r} must be a number, got {value!r}")
    if not isinstance(value, kind):
        raise TypeError(f"field {name!r} has the wrong type: {value!r}")
    return value


def _opt_float(doc: Mapping[str, Any], name: str) -> float | None:
    value = _typed(doc, name, (int, float, type(None)), None)
    return None if value is None else float(value)


@dataclass(frozen=True)
class Waiter:
    """A place in the queue for a slot. ``order`` is the backend's creation order (etcd create
    rev); ``kind`` whose place it is (AGENT, or FLEETLOCK for a client of the FleetLock server:
    a place without a kind, written before places had one, is an agent's)."""

    id: HolderId
    node: NodeName
    since: float
    order: int
    kind: str = AGENT


@dataclass(frozen=True)
class PauseNote:
    """One reason given for a pause: who gave it, when."""

    by: str
    at: float
    reason: str


@dataclass(frozen=True)
class PauseInfo:
    """The pause marker: who paused the group and when (the first pause, while it stays paused),
    the latest reason, and the reasons given while it stayed paused (``reasons``, oldest first,
    the latest among them; empty in a marker that only ever had one -- or none -- and in one
    written before markers kept them). Bounded: core.bounds."""

    by: str
    at: float
    reason: str = ""
    reasons: tuple[PauseNote, ...] = ()

    def bounded(self) -> PauseInfo:
        """This marker with its texts cut to their bounds (core.bounds)."""
        bounded = dataclasses.replace(
            self,
            by=clip_utf8(self.by, MAX_TEXT_BYTES),
            reason=clip_utf8(self.reason, MAX_PAUSE_REASON_BYTES),
            reasons=self.reasons[-MAX_PAUSE_REASONS:],
        )
        return self if bounded == self else bounded

    def notes(self) -> tuple[PauseNote, ...]:
        """Every reason kept, oldest first (the marker's own when it kept no others)."""
        if self.reasons:
            return self.reasons
        return (PauseNote(self.by, self.at, self.reason),) if self.reason else ()

    def again(self, info: PauseInfo) -> PauseInfo:
        """This pause, paused again with ``info``: a new reason is kept beside the earlier ones
        (the newest MAX_PAUSE_REASONS); who paused first and when stay. The same object when
        ``info`` brings no new reason (asking again changes nothing)."""
        reason = clip_utf8(info.reason, MAX_PAUSE_REASON_BYTES)
        if not reason or reason == self.reason:
            return self
        note = PauseNote(clip_utf8(info.by, MAX_TEXT_BYTES), info.at, clip_utf8(info.reason, MAX_TEXT_BYTES))
        return dataclasses.replace(self, reason=reason, reasons=(*self.notes(), note)[-MAX_PAUSE_REASONS:])

    def encode(self) -> bytes:
        doc: dict[str, Any] = {"by": self.by, "at": self.at, "reason": self.reason}
        if self.reasons:
            doc["reasons"] = [{"by": n.by, "at": n.at, "reason": n.reason} for n in self.reasons]
        return json.dumps(doc, ensure_ascii=False).encode()  # the bounds are in UTF-8 bytes

    @classmethod
    def decode(cls, raw: bytes) -> PauseInfo:
        """Any marker pauses the group: an unreadable one still does (never silently resumed).
        Reasons that cannot be read are left out; a marker without them has none."""
        try:
            doc = load_json(raw, "pause marker")
            return cls(
                str(doc.get("by", "?"))[:200],
                float(doc.get("at", 0)),
                str(doc.get("reason", ""))[:MAX_PAUSE_REASON_BYTES],
                _notes(doc.get("reasons")),
            )
        except (CorruptDocument, ValueError, TypeError, AttributeError, OverflowError):
            return cls("?", 0.0, "unreadable pause marker (still paused)")


def _notes(raw: object) -> tuple[PauseNote, ...]:
    if not isinstance(raw, list):
        return ()
    notes = []
    for item in raw[-MAX_PAUSE_REASONS:]:
        try:
            notes.append(
                PauseNote(
                    clip_utf8(str(item["by"]), MAX_TEXT_BYTES),
                    float(item["at"]),
                    clip_utf8(str(item["reason"]), MAX_TEXT_BYTES),
                )
            )
        except (KeyError, TypeError, ValueError, OverflowError):
            continue
    return tuple(notes)


def zone_holders(slots: SemaphoreState | None, records: Mapping[HolderId, HolderRecord], zone: str) -> int:
    """Holders of ``slots`` whose record says they are in ``zone`` (max_holders_per_zone)."""
    return sum(1 for h, r in records.items() if r.zone == zone and slots is not None and slots.holds(h))


def in_flight(slots: SemaphoreState | None, records: Mapping[HolderId, HolderRecord], rollout: str) -> int:
    """Holders of ``slots`` whose record says they took their slot in ``rollout``."""
    return sum(1 for h, r in records.items() if rollout and r.rollout == rollout and slots and slots.holds(h))


@dataclass(frozen=True)
class Limits:
    """What a slot must also fit, beyond being free and our turn: the zone's budget
    (``max_holders_per_zone``), the group's (``max_unavailable_percent`` of its members) and the
    rollout's waves (the one in progress, or the one ``waves`` starts). 0 and None: no limit."""

    per_zone: int = 0
    unavailable_percent: int = 0
    waves: WavePlan | None = None


NO_LIMITS = Limits()


def admission(
    slots: SemaphoreState | None,
    records: Mapping[HolderId, HolderRecord],
    ledger: Ledger,
    limits: Limits,
    *,
    zone: str,
    waiting: int,
    now: float,
) -> Admission:
    """The budgets' answer to one more node (of ``zone``) taking a slot now: the one rule that
    take() applies in the compare-and-swap and decide() rests on."""
    held = len(slots.holders) if slots is not None else 0
    if limits.per_zone > 0 and zone:
        in_zone = zone_holders(slots, records, zone)
        if in_zone >= limits.per_zone:
            return Admission(
                False, reason=f"waits: zone {zone} has {in_zone} of {limits.per_zone} holder(s) "
                "(max_holders_per_zone)",
            )  # fmt: skip
    if limits.unavailable_percent > 0:
        size = ledger.group_size(now)
        allowed = unavailable_limit(limits.unavailable_percent, size)
        if held >= allowed:
            return Admission(
                False, reason=f"waits: {held} of the group's {size} node(s) are rebooting, "
                f"{limits.unavailable_percent}% allows {allowed} (max_unavailable_percent)",
            )  # fmt: skip
    rollout = ledger.rollout
    busy = in_flight(slots, records, rollout.id) if rollout is not None else 0
    return admit(rollout, limits.waves, in_flight=busy, waiting=waiting, now=now)


@dataclass(frozen=True)
class GroupView:
    """Everything the backend knows about one group, at one revision. A pure value."""

    group: Group
    slots: SemaphoreState | None  # None: the semaphore has not been created yet
    records: Mapping[HolderId, HolderRecord] = field(default_factory=dict)
    waiters: tuple[Waiter, ...] = ()  # in request order
    paused: PauseInfo | None = None
    corrupt: tuple[CorruptDocument, ...] = ()
    revision: int = 0
    ledger: Ledger = field(default_factory=Ledger)

    def holds(self, holder: HolderId) -> bool:
        return self.slots is not None and self.slots.holds(holder)

    def admission(self, limits: Limits, now: float, *, zone: str = "") -> Admission:
        return admission(
            self.slots, self.records, self.ledger, limits, zone=zone, waiting=len(self.waiters), now=now
        )

    def rollout(self, now: float) -> Rollout | None:
        """The rollout in progress (None: none, or it has ended)."""
        r = self.ledger.rollout
        busy = in_flight(self.slots, self.records, r.id) if r is not None else 0
        return in_progress(r, in_flight=busy, now=now)

    def record(self, holder: HolderId) -> HolderRecord | None:
        return self.records.get(holder)

    def first_of_full_queue(self, holder: HolderId) -> bool:
        """First in line while no slot is free: the one waiter that may take back a stale slot."""
        return self.slots is not None and self.slots.free == 0 and self.queue_position(holder) == 0

    def queue_position(self, holder: HolderId) -> int | None:
        for i, waiter in enumerate(self.waiters):
            if waiter.id == holder:
                return i
        return None

    def may_take(self, holder: HolderId) -> bool:
        """Our turn: a free slot, not paused, and no earlier waiter that the free slots cannot cover."""
        if self.slots is None or self.paused is not None or self.corrupt:
            return False
        position = self.queue_position(holder)
        return position is not None and position < self.slots.free
