"""The FleetLock protocol (Zincati's) as plain values: what a request must be, what an answer is.

FleetLock v1: ``POST <base>/v1/pre-reboot`` takes a slot, ``POST <base>/v1/steady-state`` gives
it back; the header ``fleet-lock-protocol: true`` is required; the body is
``{"client_params": {"id": "<non-empty>", "group": "<^[a-zA-Z0-9.-]+$>"}}``; 200 is success and
anything else failure, with a JSON body ``{"kind": ..., "value": ...}`` whose ``kind`` is one of
a small set (Zincati counts failures by it). Both calls are recursive and idempotent.

Nothing here performs I/O. The server (rebootcoord.daemon.fleetlock) answers with these.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass

from rebootcoord.core.documents import load_json
from rebootcoord.core.types import Group, HolderId
from rebootcoord.errors import CorruptDocument, clipped

PRE_REBOOT = "/v1/pre-reboot"
STEADY_STATE = "/v1/steady-state"
PROTOCOL_HEADER = "fleet-lock-protocol"
GROUP_PATTERN = re.compile(r"[a-zA-Z0-9.-]+")
MAX_ID = 253  # a DNS name's length: Zincati's ids are 32 hex digits, node names at most this
MAX_GROUP = 63  # the Lease backend names a Lease after the group
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
    "invalid_client_identity": (400, "client_params.id is missing, empty, too long or not text"),
    "invalid_group": (400, "client_params.group does not match ^[a-zA-Z0-9.-]+$"),
    "unknown_group": (400, "the group is not one this server serves (fleetlock_groups)"),
    "request_too_large": (413, "the body is larger than FleetLock needs"),
    "unknown_node": (403, "the id maps to no Node and fleetlock_unknown_id is refuse"),
    "no_free_slot": (423, "every slot is held or earlier clients come first: the client keeps its place"),
    "group_paused": (423, "an operator paused the group"),
    "slot_lost": (409, "an operator unlocked the slot meanwhile: what was cordoned was uncordoned"),
    "drain_failed": (500, "the node could not be drained: it was uncordoned and the slot given back"),
    "node_not_ready": (503, "after the reboot the node is not healthy yet: the slot stays held"),
    "backend_unavailable": (503, "the backend (etcd or the API server) cannot be reached"),
    "corrupt_document": (500, "a stored document of the group is corrupt: nothing was changed"),
    "internal_error": (500, "a bug: the server's log has the traceback"),
}


def refusal(kind: str, value: str) -> Refusal:
    return Refusal(KINDS[kind][0], kind, clipped(value, 500))


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
    if not isinstance(client_id, str) or not client_id.strip() or len(client_id) > MAX_ID:
        raise refusal("invalid_client_identity", f"client_params.id must be text of 1 to {MAX_ID} characters")
    if not client_id.isprintable():
        raise refusal("invalid_client_identity", "client_params.id must be printable text")
    if not isinstance(group, str) or not GROUP_PATTERN.fullmatch(group) or len(group) > MAX_GROUP:
        raise refusal(
            "invalid_group",
            f"client_params.group must match ^[a-zA-Z0-9.-]+$ (at most {MAX_GROUP} characters)",
        )
    return operation, ClientParams(HolderId(client_id), Group(group))


def app_specific_id(machine_id: str, app_id: str = ZINCATI_APP_ID) -> str:
    """systemd's sd_id128_get_machine_app_specific(): HMAC-SHA256 keyed with the machine id's 16
    bytes over the app id's 16 bytes, its first 16 bytes made a v4 UUID, in lower-case hex. What
    Zincati sends as its id; a Node reports the machine id in status.nodeInfo.machineID."""
    key = bytes.fromhex(machine_id.strip().replace("-", ""))
    digest = bytearray(hmac.new(key, bytes.fromhex(app_id), hashlib.sha256).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x40
    digest[8] = (digest[8] & 0x3F) | 0x80
    return digest.hex()
