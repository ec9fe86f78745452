"""The FleetLock protocol (Zincati's) as plain values, and the server's decisions as pure
functions beside the agent's ``decide()``.

FleetLock v1: ``POST <base>/v1/pre-reboot`` takes a slot, ``POST <base>/v1/steady-state`` gives
it back; the header ``fleet-lock-protocol: true`` is required; the body is
``{"client_params": {"id": "<non-empty>", "group": "<^[a-zA-Z0-9.-]+$>"}}``; 200 is success and
anything else failure, with a JSON body ``{"kind": ..., "value": ...}`` whose ``kind`` is one of
a small set (Zincati counts failures by it). Both calls are recursive and idempotent.

``pre_reboot(visit)`` and ``steady_state(visit)`` answer one request as ``decide()`` answers an
agent's turn: one step at a time, with the same rules -- the turn (``GroupView.may_take``), the
budgets (``admission``), the windows (``outside_window``), the way to a reboot
(``toward_reboot``: cordon ownership, drain, abort), the stop of the line and "did it reboot"
(``did_reboot``). The server carries each step out and asks again, until an ``Answer``.

Who may act as which id: a FleetLock request takes, keeps or gives back only what is of
FleetLock kind -- a holder record the server wrote for a client (or a slot held without a
record, as airlock's clients hold theirs) and a place in line it keeps for a client. An agent's
record or place, or an operator's lock, is never touched through FleetLock: ``id_in_use``.

Nothing here performs I/O or reads the clock.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from dataclasses import dataclass, replace

from rebootcoord.core.bounds import MAX_GROUP_BYTES, MAX_ID_BYTES, utf8_len
from rebootcoord.core.cycle import (
    CHECKS_FAILED,
    Abandon,
    Acquire,
    CheckGates,
    Drain,
    Drained,
    PauseGroup,
    Persist,
    Policy,
    Release,
    Uncordon,
    Verify,
    did_reboot,
    gates_say,
    outside_window,
    stop_the_line,
    toward_reboot,
)
from rebootcoord.core.documents import described, load_json
from rebootcoord.core.rollout import ABORTED, REBOOTED
from rebootcoord.core.semaphore import FLEETLOCK, MANUAL, GroupView, HolderRecord, Waiter
from rebootcoord.core.types import Group, HolderId, NodeName, Phase
from rebootcoord.core.windows import WindowStatus
from rebootcoord.errors import CorruptDocument, clipped

PRE_REBOOT = "/v1/pre-reboot"
STEADY_STATE = "/v1/steady-state"
PROTOCOL_HEADER = "fleet-lock-protocol"
GROUP_PATTERN = re.compile(r"[a-zA-Z0-9.-]+")
MAX_ID = MAX_ID_BYTES  # UTF-8 bytes: Zincati's ids are 32 hex digits, node names at most this
MAX_GROUP = MAX_GROUP_BYTES  # the Lease backend names a Lease after the group
MAX_BODY = 16 * 1024  # a request body is ~100 bytes; anything near this is not FleetLock
#: Zincati's application id: its client id is the machine's app-specific id for it.
ZINCATI_APP_ID = "de35106b6ec24688b63afddaa156679b"


@dataclass(frozen=True)
class ClientParams:
    id: HolderId
    group: Group


@dataclass(frozen=True)
class Refusal(Exception):
    """An answer other than 200: its HTTP status, a kind of small cardinality, a readable value."""

    status: int
    kind: str
    value: str

    def __str__(self) -> str:
        return f"{self.status} {self.kind}: {self.value}"

    def body(self) -> bytes:
        return json.dumps({"kind": self.kind, "value": self.value}).encode()


#: Every kind this server answers, its status, and what it means (docs/fleetlock.md's table).
KINDS: dict[str, tuple[int, str]] = {
    "not_found": (404, "no such endpoint (only /v1/pre-reboot and /v1/steady-state)"),
    "method_not_allowed": (405, "FleetLock requests are POST"),
    "missing_header": (400, "the fleet-lock-protocol: true header is missing"),
    "decode_error": (400, "the body is not FleetLock's JSON"),
    "invalid_client_identity": (
        400,
        "client_params.id is missing, empty, over 253 bytes or not text (400); or not an id the "
        "client's certificate may act as (403)",
    ),
    "invalid_group": (400, "client_params.group does not match ^[a-zA-Z0-9.-]+$ or is over 63 bytes"),
    "unknown_group": (
        400,
        "the group is not one this server serves (fleetlock_groups), or with fleetlock_any_group a "
        "new group beyond fleetlock_max_groups",
    ),
    "request_too_large": (413, "the body is larger than FleetLock needs"),
    "unknown_node": (403, "the id maps to no Node and fleetlock_unknown_id is refuse"),
    "id_in_use": (409, "the id is an agent's or an operator's lock: FleetLock never acts for it"),
    "no_free_slot": (423, "every slot is held, or earlier clients come first: the client keeps its place"),
    "group_paused": (423, "an operator paused the group"),
    "gate_blocked": (
        423,
        "a pre-reboot gate says not now: the maintenance window (closed, or too little of it left "
        "for a cycle), firing alerts, a PodDisruptionBudget, the node budget; the value says which",
    ),
    "line_full": (429, "the group's line holds fleetlock_max_waiters clients already: ask again later"),
    "slot_lost": (409, "an operator unlocked the slot meanwhile: what was cordoned was uncordoned"),
    "drain_failed": (500, "the node could not be drained: it was uncordoned and the slot given back"),
    "node_not_ready": (503, "after the reboot the node is not healthy yet: the slot stays held"),
    "store_full": (507, "the group's stored documents would outgrow their store: nothing was written"),
    "backend_unavailable": (
        503,
        "the backend (etcd or the API server) cannot be reached, or refused the write",
    ),
    "corrupt_document": (500, "a stored document of the group is corrupt: nothing was changed"),
    "internal_error": (500, "a bug: the server's log has the traceback"),
}


def refusal(kind: str, value: str, *, status: int = 0) -> Refusal:
    return Refusal(status or KINDS[kind][0], kind, clipped(value, 500))


def parse_request(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[str, ClientParams]:
    """The operation (PRE_REBOOT or STEADY_STATE) and the client of a request; a ``Refusal``
    for anything that is not FleetLock. ``headers``: names in lower case."""
    clean = path.split("?", 1)[0].rstrip("/")  # a base URL may have a path of its own
    operation = next((op for op in (PRE_REBOOT, STEADY_STATE) if clean.endswith(op)), None)
    if operation is None:
        raise refusal("not_found", f"no endpoint {clipped(path, 100)!r}")
    if method != "POST":
        raise refusal("method_not_allowed", f"{clipped(method, 20)} is not allowed, only POST")
    if headers.get(PROTOCOL_HEADER, "").strip().lower() != "true":
        raise refusal("missing_header", f"the header '{PROTOCOL_HEADER}: true' is required")
    if len(body) > MAX_BODY:
        raise refusal("request_too_large", f"a body of {len(body)} bytes; at most {MAX_BODY}")
    try:
        doc = load_json(body, "the request body")
    except CorruptDocument as exc:
        raise refusal("decode_error", exc.reason) from None
    params = doc.get("client_params") if isinstance(doc, dict) else None
    if not isinstance(params, dict):
        raise refusal("decode_error", 'expected {"client_params": {"id": ..., "group": ...}}')
    client_id, group = params.get("id"), params.get("group")
    if not isinstance(client_id, str) or not client_id.strip():
        raise refusal("invalid_client_identity", "client_params.id must be non-empty text")
    if utf8_len(client_id) > MAX_ID:
        raise refusal(
            "invalid_client_identity",
            f"client_params.id is {utf8_len(client_id)} bytes in UTF-8; at most {MAX_ID}",
        )
    if not client_id.isprintable():
        raise refusal("invalid_client_identity", "client_params.id must be printable text")
    if not isinstance(group, str) or not GROUP_PATTERN.fullmatch(group) or len(group) > MAX_GROUP:
        raise refusal(
            "invalid_group",
            f"client_params.group must match ^[a-zA-Z0-9.-]+$ (at most {MAX_GROUP} characters)",
        )
    return operation, ClientParams(HolderId(client_id), Group(group))


#: Zincati asks again about every 5 minutes: what a client that asked only once is taken to do.
ZINCATI_POLL = 300.0
#: The shortest a poller's place lives after a poll (etcd's leases need a few seconds).
MIN_PLACE_TTL = 5


def place_ttl(since_last_poll: float | None, most: float) -> int:
    """Seconds a polling client's place in line lives after this poll: one and a half of its
    own poll intervals -- the time since its last poll, Zincati's 5 minutes after its first --
    at least MIN_PLACE_TTL and at most ``most`` (fleetlock_waiter_ttl). A client that stops
    asking loses its place about one interval after its turn came, and the line moves on; it
    queues again at the end if it comes back."""
    interval = ZINCATI_POLL if since_last_poll is None or since_last_poll < 0 else since_last_poll
    return int(min(max(most, MIN_PLACE_TTL), max(MIN_PLACE_TTL, math.ceil(1.5 * interval))))


def app_specific_id(machine_id: str, app_id: str = ZINCATI_APP_ID) -> str:
    """systemd's sd_id128_get_machine_app_specific(): HMAC-SHA256 keyed with the machine id's 16
    bytes over the app id's 16 bytes, its first 16 bytes made a v4 UUID, in lower-case hex. What
    Zincati sends as its id; a Node reports the machine id in status.nodeInfo.machineID."""
    key = bytes.fromhex(machine_id.strip().replace("-", ""))
    digest = bytearray(hmac.new(key, bytes.fromhex(app_id), hashlib.sha256).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x40
    digest[8] = (digest[8] & 0x3F) | 0x80
    return digest.hex()


# -- the server's decisions ------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """The end of a request: 200 (``refusal`` None) or a refusal. ``leave``: first give up the
    client's place in line (it asks no more, or a gate holds it back and the others go on)."""

    refusal: Refusal | None = None
    leave: bool = False

    @property
    def ok(self) -> bool:
        return self.refusal is None


GRANTED = Answer()


@dataclass(frozen=True)
class KeepPlace:
    """Take the client's place at the end of the line, or keep the one it has (its poll)."""

    waiter: Waiter


@dataclass(frozen=True)
class Free:
    """Give back a slot held without a record (airlock's clients hold theirs so, and etcdctl):
    a FleetLock steady-state of that id frees it, as airlock's would."""

    holder: HolderId
    reason: str = "FleetLock steady-state"


FleetLockStep = (
    Answer
    | Free
    | KeepPlace
    | CheckGates
    | Acquire
    | Persist
    | Drain
    | Release
    | Abandon
    | Uncordon
    | Verify
    | PauseGroup
)


ALWAYS_OPEN = WindowStatus(open=True, closes_at=None, next_open=None)


@dataclass(frozen=True)
class Visit:
    """What the server knows while it answers one request: the input of ``pre_reboot`` and
    ``steady_state``. The server carries out a step, puts what came of it here, asks again."""

    now: float
    client: ClientParams
    view: GroupView
    policy: Policy
    #: The client's Node (node operations on Kubernetes); None: no Node, nothing to drain.
    node: NodeName | None = None
    #: The id stands for something real (a Node found by machine id, a certificate): the client
    #: counts as a member of the group (max_unavailable_percent).
    member: bool = False
    #: The Node's boot ID now (for ``did_reboot``); "" when it reports none.
    boot_id: str = ""
    zone: str = ""
    window: WindowStatus = ALWAYS_OPEN
    #: The most FleetLock places the group's line may hold (fleetlock_max_waiters).
    max_waiters: int = 1000
    #: This request kept the client's place in line already (``view`` shows it).
    joined: bool = False
    #: The pre-reboot gates were looked at in this request, and what they said.
    gates_fresh: bool = False
    blockers: tuple[str, ...] = ()
    #: Why this request's take was refused after all ("" : it was not refused).
    refused: str = ""
    #: How this request's drain of the node ended.
    drained: Drained | None = None
    #: The post-reboot checks as this request ran them: None not yet, "" passing, else why not.
    verified: str | None = None
    #: Our cordon is on the client's Node though it holds nothing: lift it first.
    stale_cordon: bool = False
    #: This request gave the slot back after a failed drain: why (answered as drain_failed).
    gave_back: str = ""


def foreign(view: GroupView, holder: HolderId, *, member: bool = False) -> str:
    """Why ``holder`` is not a FleetLock client's to act as: an agent's or an operator's record,
    an agent's place in line, or -- for a request that cannot prove who it is (``member``
    False) -- a member of the group: agents say they are when they start, and a FleetLock client
    becomes one only when proven, so such an id is an idle agent's or a proven client's ("" :
    it may be)."""
    record = view.records.get(holder)
    if record is not None and record.kind != FLEETLOCK:
        whose = (
            "an operator's lock (rebootctl lock)"
            if record.kind == MANUAL
            else f"the agent of node {record.node}"
        )
        return f"{holder!r} holds a slot as {whose}: a FleetLock request never acts for it"
    place = next((w for w in view.waiters if w.id == holder), None)
    if place is not None and place.kind != FLEETLOCK:
        return (
            f"{holder!r} is in line as the agent of node {place.node}: a FleetLock request never acts for it"
        )
    if not member and record is None and place is None and holder in view.ledger.members:
        return (
            f"{holder!r} is a member of group {view.group} (an agent, or a client proven by its Node or "
            "certificate), which this request cannot prove to be: a FleetLock request never acts for it"
        )
    return ""


def pre_reboot(v: Visit) -> FleetLockStep:
    """The next step of a pre-reboot: take or keep the client's place, its slot when its turn
    has come and the budgets, windows and gates let it, then cordon and drain its Node (the
    agent's way, ``toward_reboot``) before the 200. Recursive: a holder that is through gets
    200 again."""
    view, cid = v.view, v.client.id
    refused = _untouchable(v)
    if refused is not None:
        return refused
    record, holds = view.record(cid), view.holds(cid)
    if v.gave_back and not holds:
        return _refused("drain_failed", v.gave_back)
    if holds and record is None:
        return GRANTED  # held as airlock's clients hold theirs: recursive
    if record is not None and not holds:
        return Abandon(record, "the client's slot was released by someone else")
    if record is not None:
        if v.node is None and record.phase in (Phase.LOCKED, Phase.DRAINING):
            return Persist(
                record.moved(Phase.REBOOTING, v.now, reboot_requested_at=v.now), "no Node to drain"
            )
        step = toward_reboot(record, now=v.now, drained=v.drained, policy=v.policy)
        if step is None:
            return GRANTED  # through the drain: recursive
        return step
    if v.stale_cordon:
        return Uncordon("our cordon is on the client's Node, which holds no slot: lifting it first")
    return _waiting(v)


def _waiting(v: Visit) -> FleetLockStep:
    view, cid = v.view, v.client.id
    position = view.queue_position(cid)
    if view.slots is None:
        return _refused("no_free_slot", "the group's semaphore does not exist yet")
    outside = outside_window(v.window, view.ledger, v.policy, now=v.now)
    if outside is not None:
        return Answer(refusal("gate_blocked", outside[0]), leave=position is not None)
    if not v.joined:
        places = sum(1 for w in view.waiters if w.kind == FLEETLOCK)
        if position is None and places >= v.max_waiters:
            return Answer(line_full(v.client.group, places, v.max_waiters))
        return KeepPlace(Waiter(cid, v.node or NodeName(cid), v.now, 0, FLEETLOCK))
    if view.paused is not None:
        return _refused(
            "group_paused", f"group {v.client.group} is paused by {view.paused.by}: {view.paused.reason}"
        )
    if view.may_take(cid) and not v.refused:
        admitted = view.admission(v.policy.limits, v.now, zone=v.zone)
        if not admitted.ok:
            return _refused("no_free_slot", f"{_held(view)}; {admitted.reason}")
        if not v.gates_fresh:
            return CheckGates()
        if v.blockers:
            # Held back at its turn: the others go on; it queues again at its next poll.
            return Answer(refusal("gate_blocked", gates_say(v.blockers)), leave=True)
        return Acquire(_record(v))
    line = max(len(view.waiters), (position or 0) + 1)
    place = f"place {position + 1} of {line} in line" if position is not None else "not in line"
    refused = f"; {v.refused}" if v.refused else ""
    return _refused("no_free_slot", f"{_held(view)}{refused}; {place}; kept while the client keeps asking")


def _held(view: GroupView) -> str:
    slots = view.slots
    return f"{len(slots.holders)} of {slots.max} slots held" if slots is not None else "no slots"


def _record(v: Visit) -> HolderRecord:
    """The client's holder record for its take: on its Node, the agent's first phase (the drain
    follows); without one, nothing to drain: straight to rebooting."""
    record = HolderRecord(
        id=v.client.id,
        node=v.node or NodeName(v.client.id),
        group=v.client.group,
        phase=Phase.LOCKED,
        boot_id=v.boot_id,
        acquired_at=v.now,
        phase_since=v.now,
        kind=FLEETLOCK,
        reason="FleetLock pre-reboot",
        zone=v.zone,
    )
    if v.node is None:
        return record.moved(Phase.REBOOTING, v.now, reboot_requested_at=v.now)
    return record


def steady_state(v: Visit) -> FleetLockStep:
    """The next step of a steady-state: a holder whose Node passes its checks is uncordoned (our
    cordon only) and gives its slot back, counted rebooted only if its boot changed
    (``did_reboot``); a failing Node keeps its slot and, past ``pause_group_after``, stops the
    line. Idempotent: a client that holds nothing gets 200 and leaves the line."""
    view, cid = v.view, v.client.id
    refused = _untouchable(v)
    if refused is not None:
        return refused
    record, holds = view.record(cid), view.holds(cid)
    if not holds and record is None:
        return Answer(leave=view.queue_position(cid) is not None)
    if record is not None and not holds:
        return Abandon(record, "the client's slot was released by someone else")
    if record is None:
        return Free(cid)
    if record.phase in (Phase.LOCKED, Phase.DRAINING):
        return Release(record, reason="FleetLock steady-state before its drain was through: undone")
    if v.node is None:
        return Release(
            record,
            reason="FleetLock steady-state (without a Node the reboot is the client's word)",
            outcome=REBOOTED,
        )
    if v.verified is None:
        return Verify(record)
    if v.verified:
        note = f"{CHECKS_FAILED}{v.verified}"
        if record.phase is not Phase.VERIFYING:
            return Persist(record.moved(Phase.VERIFYING, v.now, note=note), note)
        stop = stop_the_line(
            record, node=record.node, now=v.now, policy=v.policy, verified=True,
            by=f"rebootcoord fleetlock-server for {record.node}",
        )  # fmt: skip
        if stop is not None:
            return stop
        if record.note != note:
            return Persist(replace(record, note=note), note)
        return _refused("node_not_ready", f"node {record.node}: {v.verified}; the slot stays held")
    if did_reboot(record, v.boot_id):
        return Release(record, reason="FleetLock steady-state: back healthy", outcome=REBOOTED)
    return Release(
        record, reason="FleetLock steady-state: the node is healthy but did not reboot", outcome=ABORTED
    )


def _untouchable(v: Visit) -> Answer | None:
    """Nothing is done in a group with a corrupt document, nor for an id that is not a
    FleetLock client's (``foreign``)."""
    if v.view.corrupt:
        return _refused("corrupt_document", described(v.view.corrupt))
    why = foreign(v.view, v.client.id, member=v.member)
    return _refused("id_in_use", why) if why else None


def line_full(group: Group, places: int, most: int) -> Refusal:
    return refusal(
        "line_full",
        f"the line of group {group} holds {places} FleetLock clients (fleetlock_max_waiters "
        f"{most}); ask again later",
    )


def _refused(kind: str, value: str) -> Answer:
    return Answer(refusal(kind, value))
