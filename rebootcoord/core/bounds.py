"""Every bound on what a group stores, in bytes, in one place. Pure.

Anything a client or a configuration can make us store is bounded here and checked before the
write (``rebootcoord.core.group``): an id, a group, each text of a holder record, the history
(by count and by bytes), the members (by count and by bytes), and the group's documents as a
whole (``GroupState.size`` against the store's ``capacity``). What only grows the state --
taking a slot, an operator's lock -- is refused when the result would not fit; what shrinks it
or keeps it within its own bound -- a phase change, a release with its history entry, an unlock
-- never is, so a full store never wedges a group.

The figures come from the stores' own limits: etcd refuses a request above 1.5 MiB
(``--max-request-bytes``) and its gRPC client a response above 4 MiB; a Kubernetes object's
annotations total at most 256 KiB.
"""

from __future__ import annotations

#: An id (a FleetLock client's, an agent's holder id) in UTF-8 bytes: a DNS name's length.
MAX_ID_BYTES = 253
#: A group name (ASCII by its pattern): a Lease is named after it.
MAX_GROUP_BYTES = 63
#: Each free text of a holder record (reason, note, abort reason, update key) and of a history
#: entry (reason), in UTF-8 bytes; longer texts are cut, saying so.
MAX_TEXT_BYTES = 256
#: The most a holder record can take once encoded: three ids, four texts, a timeline of 16
#: phase changes and its fixed fields. A slot is given only when every holder's record could
#: grow to this and the group still fit (phase changes are never refused for size).
MAX_RECORD_BYTES = 3 * MAX_ID_BYTES + 4 * MAX_TEXT_BYTES + 16 * 40 + 600
#: Cycles kept in the history, and their bytes once encoded (the oldest go first).
HISTORY_SIZE = 100
HISTORY_BYTES = 48 * 1024
#: Members kept (max_unavailable_percent counts them), and their bytes once encoded.
MAX_MEMBERS = 10_000
MEMBERS_BYTES = 64 * 1024
#: What each store holds of one group's documents (slots, records, pause, ledger).
LEASE_CAPACITY = 224 * 1024  # of a Lease's 256 KiB of annotations: room for others' annotations
ETCD_CAPACITY = 1024 * 1024  # a group read stays well under the gRPC client's 4 MiB
#: A pause marker: its reason (and who paused) in UTF-8 bytes, and the reasons given while the
#: group stayed paused that it keeps (the newest; each text at most MAX_TEXT_BYTES).
MAX_PAUSE_REASON_BYTES = 1000
MAX_PAUSE_REASONS = 10
#: FleetLock clients' places in one group's line (each at most ~1 KiB stored).
MAX_FLEETLOCK_WAITERS = 2000


def clip_utf8(text: str, limit: int = MAX_TEXT_BYTES) -> str:
    """``text`` cut so that its UTF-8 encoding fits ``limit`` bytes, ending in "..." when cut
    (never in the middle of a character)."""
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) <= limit:
        return text
    return raw[: max(0, limit - 3)].decode("utf-8", "ignore") + "..."


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))
