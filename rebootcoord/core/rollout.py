"""A group's rollout and history as plain values: the *ledger* beside the slots. No I/O, no clock.

The ledger is one document per group (etcd: ``.../rebootcoord/ledger``; Lease: an annotation),
changed only by the transitions of :mod:`rebootcoord.core.group`, in the same compare-and-swap
as the slot they go with. It holds:

- the **rollout** in progress, when the group reboots in waves (``waves: [1, "10%", "50%",
  "100%"]``, ``wave_soak: 10m``). The rules, in full:

  * A rollout starts when a node takes a slot, its configuration has waves, and no rollout is in
    progress. The starter's waves, soak and drain-failure limit are written into the rollout;
    every agent and the FleetLock server follow the document, whatever their own configuration.
  * Wave sizes are *cumulative*: "10%" lets nodes through until 10 % of the rollout's nodes have
    been through it. A wave's size is fixed when the wave opens, as a share of the rollout's
    nodes known then: those through, those holding a slot of it and those waiting in the queue.
    A number is a count of nodes. Each wave lets at least one more node through than the last.
  * A node that becomes pending later waits in the queue like any other and is counted when the
    next wave opens; once the last wave is open it simply goes (``max_holders`` still caps it).
  * Wave *k+1* opens only when every node that took a slot in wave *k* came back healthy and gave
    its slot back, and ``wave_soak`` has passed since the last of them did. A node whose checks
    fail keeps its slot (and stops the line), so the next wave never opens over it.
  * A drain that fails ``wave_drain_failures`` times in one wave pauses the group.
  * The rollout ends when its last wave is open, no node holds a slot of it, and ``wave_soak``
    has passed since the last one gave it back -- or, whatever its wave, when no node holds a
    slot of it and none opened a wave or came back in it for ``rollout_expiry`` (the nodes that
    needed the update are through; a node pending later needs another). The next node to take a
    slot starts a new one.

- the **members**: every node of the group, with when it last said so (an agent when it starts
  and every few days, anyone when it takes a slot), for ``max_unavailable_percent``. A node
  not heard of for :data:`MEMBER_TTL` is forgotten: a member that is gone only ever makes the
  group look smaller, which allows fewer slots, never more.

  Only nodes whose id stands for something real become members: agents, and FleetLock clients
  whose id maps to a Node or is bound to their certificate. An id anyone may send would let
  anyone grow the group on paper, and its budget with it.

- the **history**: the last cycles (node, start, time per phase, outcome, reason), newest last,
  at most ``HISTORY_SIZE`` of them in ``HISTORY_BYTES`` (core.bounds); the expected length of a
  cycle (window fit) is the p90 of the last healthy ones.

Members and history are bounded in bytes as well as in count: the oldest go first.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from rebootcoord.core.bounds import (
    HISTORY_BYTES,
    HISTORY_SIZE,
    MAX_MEMBERS,
    MAX_TEXT_BYTES,
    MEMBERS_BYTES,
    clip_utf8,
)
from rebootcoord.core.documents import load_object, quoted
from rebootcoord.core.types import HolderId, NodeName
from rebootcoord.errors import CorruptDocument

#: A member not heard of this long is no longer counted (seconds: 14 days); it says so again
#: after half of it. How many members are kept, and in how many bytes: core.bounds.
MEMBER_TTL = 14 * 86400.0
#: Healthy cycles the p90 is taken over, and how many it needs before it replaces the default.
P90_OVER = 20
P90_AFTER = 3

# Outcomes of a cycle in the history.
REBOOTED = "rebooted"  # came back healthy and gave the slot back
DRAIN_FAILED = "drain_failed"  # the drain failed; the node was uncordoned and the slot given back
ABORTED = "aborted"  # gave the slot back before rebooting for another reason
UNLOCKED = "unlocked"  # an operator released it (rebootctl unlock)
RECLAIMED = "reclaimed"  # its node vanished or it held the slot past the TTL
OUTCOMES = (REBOOTED, DRAIN_FAILED, ABORTED, UNLOCKED, RECLAIMED)


@dataclass(frozen=True)
class WaveSize:
    """One entry of ``waves``: a cumulative count of nodes, or a percentage of the rollout."""

    value: int
    percent: bool = False

    def nodes(self, members: int) -> int:
        return math.ceil(self.value * members / 100) if self.percent else self.value

    def __str__(self) -> str:
        return f"{self.value}%" if self.percent else str(self.value)

    @classmethod
    def parse(cls, text: str) -> WaveSize:
        """ "10%" or "3"; ValueError otherwise (the config loader names the key)."""
        text = text.strip()
        percent = text.endswith("%")
        digits = text[:-1].strip() if percent else text
        if not digits.isdigit() or len(digits) > 6:
            raise ValueError(text)
        value = int(digits)
        if value < 1 or (percent and value > 100):
            raise ValueError(text)
        return cls(value, percent)


@dataclass(frozen=True)
class WavePlan:
    """The configured waves (the agent's or the server's), written into a rollout it starts."""

    sizes: tuple[WaveSize, ...]
    soak: float  # seconds
    drain_failures: int = 3  # a drain failing this many times in a wave pauses the group (0: never)
    expiry: float = 7 * 86400.0  # a rollout idle this long ends (seconds; 0: only by its last wave)


@dataclass(frozen=True)
class Wave:
    """An open wave: when it opened, how many of the rollout's nodes it lets through in all
    (None: the last wave, no limit), how many came through it and how many drains failed."""

    opened_at: float
    quota: int | None
    done: int = 0
    failures: int = 0
    last_done_at: float | None = None


@dataclass(frozen=True)
class Rollout:
    id: str
    started_at: float
    plan: WavePlan
    waves: tuple[Wave, ...]  # opened so far; the last is the current one

    @property
    def current(self) -> int:
        return len(self.waves) - 1

    @property
    def through(self) -> int:
        return sum(w.done for w in self.waves)

    @property
    def last(self) -> bool:
        return len(self.waves) >= len(self.plan.sizes)

    def label(self, index: int | None = None) -> str:
        i = self.current if index is None else index
        return f"wave {i + 1} of {len(self.plan.sizes)} ({self.plan.sizes[i]})"


@dataclass(frozen=True)
class Admission:
    """What the rollout says to a node that would take a slot now. ``rollout`` is the rollout
    to write (started, or with a wave opened) and ``wave`` the wave the node goes in; refused:
    ``reason`` and when to look again (``wake_at``, None: when something changes)."""

    ok: bool
    rollout: Rollout | None = None
    wave: int = 0
    reason: str = ""
    wake_at: float | None = None


def admit(
    rollout: Rollout | None,
    plan: WavePlan | None,
    *,
    in_flight: int,
    waiting: int,
    now: float,
) -> Admission:
    """May one more node take a slot in the rollout now? ``in_flight``: the rollout's nodes that
    hold a slot; ``waiting``: nodes in the queue (the asker among them). Pure and total: the same
    rule for decide() (to rest) and for take() (in the compare-and-swap)."""
    previous = rollout
    if rollout is not None and _ended(rollout, in_flight, now):
        rollout = None
    if rollout is None:
        if plan is None or not plan.sizes:
            return Admission(True)
        members = max(1, waiting + in_flight)
        first = Wave(opened_at=now, quota=_quota(plan, 0, members, 0))
        rollout = Rollout(id=_rollout_id(now, previous), started_at=now, plan=plan, waves=(first,))
        return Admission(True, rollout, 0, f"starts a rollout in {rollout.label(0)}")
    while True:
        wave = rollout.waves[-1]
        if wave.quota is None or rollout.through + in_flight < wave.quota:
            return Admission(True, rollout, rollout.current)
        nxt = f"wave {rollout.current + 2} of {len(rollout.plan.sizes)}"
        if in_flight > 0:
            return Admission(
                False,
                reason=f"waits: {nxt} opens when the {in_flight} node(s) still in {rollout.label()} "
                "are back healthy",
            )
        opens_at = (wave.last_done_at or wave.opened_at) + rollout.plan.soak
        if now < opens_at:
            return Admission(
                False,
                reason=f"waits: {nxt} opens after {rollout.label()} soaks, in {math.ceil(opens_at - now)}s",
                wake_at=opens_at,
            )
        members = rollout.through + waiting
        index = len(rollout.waves)
        opened = Wave(opened_at=opens_at, quota=_quota(rollout.plan, index, members, rollout.through))
        rollout = replace(rollout, waves=(*rollout.waves, opened))


def unavailable_limit(percent: int, members: int) -> int:
    """The holders ``max_unavailable_percent`` allows in a group of ``members``: at least one."""
    return max(1, percent * members // 100)


def in_progress(rollout: Rollout | None, *, in_flight: int, now: float) -> Rollout | None:
    """``rollout`` unless it has ended (its next node would start a new one)."""
    return None if rollout is None or _ended(rollout, in_flight, now) else rollout


def _quota(plan: WavePlan, index: int, members: int, through: int) -> int | None:
    if index >= len(plan.sizes) - 1:
        return None  # the last wave: every node left
    return max(plan.sizes[index].nodes(members), through + 1)


def _ended(rollout: Rollout, in_flight: int, now: float) -> bool:
    if in_flight > 0:
        return False
    latest = max(max(w.opened_at, w.last_done_at or 0.0) for w in rollout.waves)
    if rollout.plan.expiry > 0 and now >= latest + rollout.plan.expiry:
        return True
    wave = rollout.waves[-1]
    return rollout.last and now >= (wave.last_done_at or wave.opened_at) + rollout.plan.soak


def _rollout_id(now: float, previous: Rollout | None = None) -> str:
    """A rollout's id, readable: ``r-20261207-145003``, when it started (UTC, to the second),
    with ``.2``, ``.3``... for another that starts in the same second as the one it follows.
    Ids written before (``r1765119003123``, milliseconds) are only compared, never parsed."""
    base = "r-" + _utc(now, "%Y%m%d-%H%M%S")
    if previous is None or not (previous.id == base or previous.id.startswith(base + ".")):
        return base
    n = previous.id[len(base) + 1 :]
    return f"{base}.{int(n) + 1 if n.isdigit() else 2}"


def _utc(at: float, fmt: str) -> str:
    try:
        return time.strftime(fmt, time.gmtime(at))
    except (OverflowError, OSError, ValueError):
        return str(int(at)) if math.isfinite(at) else "0"


def finished_in(
    rollout: Rollout | None, wave: int, rollout_id: str, *, ok: bool, at: float
) -> Rollout | None:
    """The rollout once a node of ``wave`` gave its slot back: counted through when ``ok``, else
    as a failed drain. Holdings of another rollout (or none) change nothing."""
    if rollout is None or rollout.id != rollout_id or not 0 <= wave < len(rollout.waves):
        return rollout
    w = rollout.waves[wave]
    w = replace(w, done=w.done + 1, last_done_at=at) if ok else replace(w, failures=w.failures + 1)
    return replace(rollout, waves=(*rollout.waves[:wave], w, *rollout.waves[wave + 1 :]))


# -- history ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cycle:
    """One cycle in the history: a holding of a slot from its start to its end."""

    id: HolderId
    node: NodeName
    kind: str
    started_at: float
    ended_at: float
    outcome: str
    reason: str = ""
    phases: tuple[tuple[str, float], ...] = ()  # (phase, entered at), in order
    wave: str = ""  # "r…/2": the rollout and its wave (1-based), "" outside a rollout
    zone: str = ""

    @property
    def seconds(self) -> float:
        return max(0.0, self.ended_at - self.started_at)

    @functools.cached_property
    def encoded(self) -> bytes:
        """This entry as stored (compact, sorted keys): its bytes count in HISTORY_BYTES."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    @functools.cached_property
    def key(self) -> str:
        """A name for this entry that sorts as the history does (etcd keeps one key per entry):
        when it ended, in milliseconds, and a digest of who and when it started."""
        digest = hashlib.sha256(f"{self.id}\0{self.started_at!r}".encode("utf-8", "surrogatepass"))
        return f"{max(0, int(self.ended_at * 1000)):016d}-{digest.hexdigest()[:12]}"

    def phase_seconds(self) -> dict[str, float]:
        """Time spent in each phase (the last one ends with the cycle)."""
        out: dict[str, float] = {}
        ends = [t for _, t in self.phases[1:]] + [self.ended_at]
        for (phase, since), end in zip(self.phases, ends, strict=True):
            out[phase] = out.get(phase, 0.0) + max(0.0, end - since)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "node": self.node,
            "kind": self.kind,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "outcome": self.outcome,
            "reason": self.reason,
            "phases": [[p, t] for p, t in self.phases],
            "wave": self.wave,
            "zone": self.zone,
        }

    @classmethod
    def from_json(cls, doc: Any, key: str) -> Cycle:
        if not isinstance(doc, dict):
            raise CorruptDocument(key, f"a history entry must be an object, got {quoted(doc)}")
        try:
            phases = tuple((str(p), float(t)) for p, t in doc.get("phases", []))
            return cls(
                id=HolderId(_str(doc["id"])),
                node=NodeName(_str(doc["node"])),
                kind=_str(doc.get("kind", "")),
                started_at=_num(doc["started_at"]),
                ended_at=_num(doc["ended_at"]),
                outcome=_str(doc["outcome"]),
                reason=_str(doc.get("reason", "")),
                phases=phases,
                wave=_str(doc.get("wave", "")),
                zone=_str(doc.get("zone", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptDocument(key, f"a history entry is malformed: {quoted(str(exc))}") from None


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _num(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def p90(seconds: Iterable[float]) -> float:
    """The 90th percentile, nearest rank (of 10 cycles: the 9th shortest)."""
    ordered = sorted(seconds)
    if not ordered:
        raise ValueError("no values")
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


# -- the ledger -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ledger:
    rollout: Rollout | None = None
    history: tuple[Cycle, ...] = ()
    members: Mapping[HolderId, float] = field(default_factory=dict)  # id -> last heard of

    @property
    def empty(self) -> bool:
        return self.rollout is None and not self.history and not self.members

    def group_size(self, now: float) -> int:
        """The members heard of within MEMBER_TTL."""
        return sum(1 for seen in self.members.values() if now - seen < MEMBER_TTL)

    def heard_of(self, member: HolderId, now: float) -> Ledger:
        """``member`` is in the group now; the same ledger while its entry is fresh (less than
        half MEMBER_TTL old). Members not heard of for MEMBER_TTL are forgotten, and the oldest
        beyond MAX_MEMBERS or MEMBERS_BYTES: a forgotten member only makes the group look
        smaller (fewer slots, never more)."""
        seen = self.members.get(member)
        if seen is not None and 0 <= now - seen < MEMBER_TTL / 2:
            return self
        alive = sorted(
            ((m, t) for m, t in self.members.items() if now - t < MEMBER_TTL and m != member),
            key=lambda kv: kv[1],
        )
        kept: list[tuple[HolderId, float]] = [(member, now)]
        size = _member_bytes(member, now)
        for m, t in reversed(alive):  # newest first
            size += _member_bytes(m, t)
            if len(kept) >= MAX_MEMBERS or size > MEMBERS_BYTES:
                break
            kept.append((m, t))
        return replace(self, members=dict(reversed(kept)))

    def recorded(self, cycle: Cycle) -> Ledger:
        """The history with ``cycle`` last (its reason cut to MAX_TEXT_BYTES), the oldest
        entries dropped beyond HISTORY_SIZE or HISTORY_BYTES."""
        cycle = replace(cycle, reason=clip_utf8(cycle.reason, MAX_TEXT_BYTES))
        kept = [cycle]
        size = len(cycle.encoded)
        for old in reversed(self.history):
            size += len(old.encoded) + 1
            if len(kept) >= HISTORY_SIZE or size > HISTORY_BYTES:
                break
            kept.append(old)
        return replace(self, history=tuple(reversed(kept)))

    @functools.cached_property
    def size(self) -> int:
        """Bytes of the ledger once stored (as one document; etcd stores its parts apart)."""
        return (
            len(self.encode_rollout())
            + sum(len(c.encoded) + 1 for c in self.history)
            + sum(_member_bytes(m, t) for m, t in self.members.items())
        )

    def expected_cycle(self, default: float) -> tuple[float, str]:
        """Seconds a cycle is expected to take, and where the figure comes from."""
        healthy = [c.seconds for c in self.history if c.outcome == REBOOTED][-P90_OVER:]
        if len(healthy) < P90_AFTER:
            return default, "expected_cycle"
        return p90(healthy), f"p90 of the group's last {len(healthy)} cycles"

    def encode(self) -> bytes:
        """The whole ledger as one document (a Lease's annotation)."""
        doc: dict[str, Any] = {"history": [c.to_json() for c in self.history]}
        if self.members:
            doc["members"] = dict(self.members)
        if self.rollout is not None:
            doc["rollout"] = _rollout_doc(self.rollout)
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    def encode_rollout(self) -> bytes:
        """The rollout alone (etcd keeps the members and each history entry in keys of their
        own, so a cycle's write does not carry the history)."""
        doc = {} if self.rollout is None else {"rollout": _rollout_doc(self.rollout)}
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    def encode_members(self) -> bytes:
        return json.dumps(
            dict(self.members), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()

    @classmethod
    def decode(cls, raw: bytes, *, key: str) -> Ledger:
        doc = load_object(raw, key)
        history = doc.get("history", [])
        if not isinstance(history, list):
            raise CorruptDocument(key, f"history must be a list, got {quoted(history)}")
        cycles = tuple(Cycle.from_json(c, key) for c in history[-HISTORY_SIZE:])
        raw_rollout = doc.get("rollout")
        return cls(
            _rollout(raw_rollout, key) if raw_rollout is not None else None,
            cycles,
            decode_members(doc.get("members", {}), key),
        )


def decode_members(members: object, key: str) -> dict[HolderId, float]:
    if not isinstance(members, dict) or not all(
        isinstance(t, int | float) and not isinstance(t, bool) for t in members.values()
    ):
        raise CorruptDocument(key, f"members must map ids to times, got {quoted(members)}")
    return {HolderId(m): float(t) for m, t in members.items()}


def _member_bytes(member: str, seen: float) -> int:
    return len(json.dumps(member, ensure_ascii=False).encode()) + len(repr(seen)) + 2  # "id":t


def _rollout_doc(r: Rollout) -> dict[str, Any]:
    return {
        "id": r.id,
        "started_at": r.started_at,
        "waves_spec": [str(s) for s in r.plan.sizes],
        "soak": r.plan.soak,
        "drain_failures": r.plan.drain_failures,
        "expiry": r.plan.expiry,
        "waves": [
            {
                "opened_at": w.opened_at,
                "quota": w.quota,
                "done": w.done,
                "failures": w.failures,
                "last_done_at": w.last_done_at,
            }
            for w in r.waves
        ],
    }


def _rollout(doc: object, key: str) -> Rollout:
    try:
        if not isinstance(doc, Mapping):
            raise TypeError(f"expected an object, got {doc!r}")
        sizes = tuple(WaveSize.parse(_str(s)) for s in doc["waves_spec"])
        plan = WavePlan(
            sizes, _num(doc["soak"]), int(_num(doc.get("drain_failures", 3))), _num(doc.get("expiry", 0))
        )
        waves = []
        for w in doc["waves"]:
            quota = w.get("quota")
            last = w.get("last_done_at")
            waves.append(
                Wave(
                    opened_at=_num(w["opened_at"]),
                    quota=None if quota is None else int(_num(quota)),
                    done=int(_num(w.get("done", 0))),
                    failures=int(_num(w.get("failures", 0))),
                    last_done_at=None if last is None else _num(last),
                )
            )
        if not sizes or not waves or len(waves) > len(sizes):
            raise ValueError(f"{len(waves)} open wave(s) of {len(sizes)}")
        return Rollout(_str(doc["id"]), _num(doc["started_at"]), plan, tuple(waves))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CorruptDocument(key, f"the rollout is malformed: {quoted(str(exc))}") from None
