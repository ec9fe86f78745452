"""etcd v3: the group's store and wait queue, compatible with airlock's key and value.

``EtcdGroupStore`` reads and writes the group's state (airlock's semaphore key, our holder records
beside it, the pause marker) with compare-and-swap transactions; the rules are the core's
(``rebootcoord.core.group``, applied by ``rebootcoord.daemon.group.GroupClient``).
``EtcdWaitQueue`` keeps the line: one key per waiter on a lease, each waiter watching only the
key just ahead of it. ``replay`` gives a run's history to the checker.

This module is the only one that imports ``etcd3`` and ``grpc``; their errors are translated here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit

import etcd3
import etcd3.events
import etcd3.exceptions as etcd_exc
import grpc
from etcd3 import etcdrpc

from rebootcoord.adapters.retry import retrying as retrying_for
from rebootcoord.core.bounds import ETCD_CAPACITY
from rebootcoord.core.documents import load_json, quoted
from rebootcoord.core.group import GroupState
from rebootcoord.core.rollout import Cycle, Ledger, decode_members
from rebootcoord.core.semaphore import AGENT, FLEETLOCK, HolderRecord, PauseInfo, SemaphoreState, Waiter
from rebootcoord.core.types import Group, HolderId, NodeName
from rebootcoord.errors import AccessDenied, BackendUnavailable, Conflict, CorruptDocument, IdInUse

log = logging.getLogger(__name__)
T = TypeVar("T")

_TRANSIENT: tuple[type[BaseException], ...] = (
    etcd_exc.ConnectionFailedError,
    etcd_exc.ConnectionTimeoutError,
    etcd_exc.InternalServerError,
    etcd_exc.NoServerAvailableError,
    etcd_exc.WatchTimedOut,
    grpc.RpcError,
    ValueError,  # etcd3 raises ValueError("Trying to use a failed node") between failovers
)
_WATCH_ERRORS: tuple[type[BaseException], ...] = (BackendUnavailable, *_TRANSIENT)
_KEEPALIVE = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 0),  # etcd answers pings without streams with GOAWAY
    ("grpc.http2.max_pings_without_data", 0),
]
MAX_CAS_ATTEMPTS = 50
NOTHING_TO_DO = -1


@dataclass(frozen=True)
class EtcdOptions:
    endpoints: tuple[str, ...]
    timeout: float = 5.0
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: str | None = None
    retry_for: float = 30.0  # how long one operation retries transient errors before giving up
    stop: threading.Event | None = field(default=None, compare=False)  # set: back-offs end at once


class EtcdConnection:
    """One etcd client, rebuilt when its auth token expires or its channel breaks."""

    def __init__(self, options: EtcdOptions) -> None:
        self.options = options
        self._client: Any = None
        self._lock = threading.Lock()

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._build()
            return self._client

    def reset(self) -> None:
        with self._lock:
            old, self._client = self._client, None
        if old is not None:
            try:
                old.close()
            except Exception:
                log.debug("closing the etcd client failed", exc_info=True)

    def _build(self) -> Any:
        o = self.options
        creds = None
        if o.ca_file or o.cert_file or any(ep.startswith("https://") for ep in o.endpoints):
            creds = grpc.ssl_channel_credentials(_read(o.ca_file), _read(o.key_file), _read(o.cert_file))
        endpoints = []
        for ep in o.endpoints:
            parts = urlsplit(ep if "://" in ep else "http://" + ep)
            endpoints.append(_endpoint(str(parts.hostname), int(parts.port or 2379), creds))
        try:
            client = etcd3.MultiEndpointEtcd3Client(
                endpoints=endpoints,
                timeout=o.timeout,
                user=o.username,
                password=o.password,
                failover=True,
            )
        except _TRANSIENT as exc:
            _raise_denied(exc)
            raise BackendUnavailable(f"etcd at {', '.join(o.endpoints)}: {_describe(exc)}") from exc
        if creds is None:
            # gRPC refuses call credentials on a plain channel; the token also travels as
            # metadata, which is what etcd reads.
            client.call_credentials = None
        return client

    @contextmanager
    def translating(self) -> Iterator[None]:
        """Translate etcd3/grpc errors into ours; drop the client when it may be the cause."""
        try:
            yield
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            self.reset()
            _raise_denied(exc)
            if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT):
                raise BackendUnavailable(f"etcd refused the request: {_describe(exc)}") from exc
            raise BackendUnavailable(f"etcd: {_describe(exc)}") from exc
        except _TRANSIENT as exc:
            self.reset()
            raise BackendUnavailable(
                f"etcd at {', '.join(self.options.endpoints)}: {_describe(exc)}"
            ) from exc

    def call(self, fn: Callable[[Any], T], *, retry_for: float | None = None) -> T:
        """Run ``fn(client)`` with retries and backoff on transient errors (tenacity)."""
        retrying = retrying_for(
            self.options.retry_for if retry_for is None else retry_for,
            first_wait=0.05,
            max_wait=2.0,
            stop=self.options.stop,
        )
        for attempt in retrying:
            with attempt, self.translating():
                return fn(self.client())
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        self.reset()


def _endpoint(host: str, port: int, creds: Any) -> Any:
    # time_retry: python-etcd3 would otherwise shun a failed endpoint for 300 s after one error.
    return etcd3.Endpoint(host, port, secure=creds is not None, creds=creds, time_retry=0.2, opts=_KEEPALIVE)


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as fh:
        return fh.read()


#: What etcd answers a wrong user or password, a missing one while auth is on, or a role without
#: the right: no retry changes it (an expired token, "invalid auth token", is retried).
_DENIED = ("authentication failed", "user name is empty", "permission denied", "user name not found")


def _raise_denied(exc: BaseException) -> None:
    """Raise AccessDenied if ``exc`` is etcd refusing who we are."""
    if not isinstance(exc, grpc.RpcError):
        return
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED) or any(
        d in details.lower() for d in _DENIED
    ):
        what = "permission denied" if "permission" in details.lower() else "authentication failed"
        raise AccessDenied(f"etcd {what}: {details or code} (check etcd_username and etcd_password)") from exc


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        details = exc.details() if hasattr(exc, "details") else ""
        return f"{exc.code().name}: {details}"
    return str(exc) or exc.__class__.__name__


@dataclass(frozen=True)
class _Kv:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int = 0


def _txn(client: Any, compare: list[Any], success: list[Any]) -> tuple[bool, int, list[list[_Kv]]]:
    """One transaction, answering (succeeded, header revision, the kvs of each range op).
    python-etcd3's own ``transaction()`` drops the header, which a consistent read needs."""
    request = etcdrpc.TxnRequest(
        compare=[c.build_message() for c in compare], success=client._ops_to_requests(success), failure=[]
    )
    response = client.kvstub.Txn(
        request, client.timeout, credentials=client.call_credentials, metadata=client.metadata
    )
    ranges = []
    for item in response.responses:
        if item.WhichOneof("response") == "response_range":
            ranges.append(
                [
                    _Kv(kv.key.decode(), kv.value, int(kv.create_revision), int(kv.mod_revision), kv.lease)
                    for kv in item.response_range.kvs
                ]
            )
    return bool(response.succeeded), int(response.header.revision), ranges


class _Keys:
    """One group's keys (``<p>`` is ``etcd_key_prefix``, ``com.coreos.airlock`` by default)::

    <p>/groups/<group>/v1/semaphore                 {"total_slots": N, "holders": [ids]}  (airlock's)
    <p>/groups/<group>/v1/rebootcoord/holders/<id>  our holder record (phase, boot ID, ...)
    <p>/groups/<group>/v1/rebootcoord/paused        present while the group is paused
    <p>/groups/<group>/v1/rebootcoord/waiters/<id>  a place in the queue, on a lease
    <p>/groups/<group>/v1/rebootcoord/ledger        the rollout in waves (core.rollout)
    <p>/groups/<group>/v1/rebootcoord/members       the group's members: {"<id>": last heard of}
    <p>/groups/<group>/v1/rebootcoord/history/<k>   one cycle of the history per key (Cycle.key)

    The history has a key per cycle, so that a release writes its own entry, not the history;
    a ledger written before members and history had keys of their own (both inside it) is read
    as well, and moved out at the next write.
    """

    def __init__(self, prefix: str, group: Group) -> None:
        self.base = f"{prefix.strip('/')}/groups/{group}/v1/"
        self.slots = self.base + "semaphore"
        self.records = self.base + "rebootcoord/holders/"
        self.waiters = self.base + "rebootcoord/waiters/"
        self.pause = self.base + "rebootcoord/paused"
        self.ledger = self.base + "rebootcoord/ledger"
        self.members = self.base + "rebootcoord/members"
        self.history = self.base + "rebootcoord/history/"


@dataclass(frozen=True)
class EtcdVersion:
    """A read's revision and what a write must find unchanged: the mod revisions of the
    semaphore key, of the pause marker, of the ledger and of the members (0: absent), and the
    state read (to write its diff), with the history keys it was read from and whether the
    ledger still held what now has keys of its own (``legacy``)."""

    revision: int
    slots_mod: int
    pause_mod: int
    ledger_mod: int
    members_mod: int = 0
    state: GroupState = field(default_factory=GroupState, compare=False, repr=False)
    history_keys: frozenset[str] = field(default=frozenset(), compare=False, repr=False)
    legacy: bool = field(default=False, compare=False)


class EtcdGroupStore:
    """The GroupStore on etcd v3 (keys: ``_Keys``), airlock's key and value unchanged.

    A read is one transaction of three ranges, at one revision. A write puts and deletes the
    diff of the new state against the one read, in one transaction that requires the semaphore
    key and the pause marker unchanged (or still absent) and no record written since the read.
    A record deleted since is deleted with a change of the semaphore key (a release), or is an
    orphan that nothing could write back. airlock's own writes compare the key's version.
    """

    capacity = ETCD_CAPACITY

    def __init__(
        self,
        conn: EtcdConnection,
        *,
        prefix: str,
        group: Group,
        owns_connection: bool = True,
        mirror: GroupMirror | None = None,
    ) -> None:
        """``owns_connection``: close ``conn`` with this store (False: it is shared by other
        groups, and whoever made it closes it). ``mirror``: the group's keys kept by a watch
        (``mirrored``; the FleetLock server's), stopped with this store."""
        self.conn = conn
        self.group = group
        self.keys = _Keys(prefix, group)
        self.owns_connection = owns_connection
        self.mirror = mirror
        self.conflicts = 0
        self._decoded: dict[str, tuple[int, Any]] = {}
        self._made: tuple[tuple[Any, ...], GroupState, bool] | None = None  # (its keys' revisions, ...)
        self._lock = threading.Lock()

    def read(self) -> tuple[GroupState, EtcdVersion]:
        state, version, _ = self._read(line=False)
        return state, version

    def read_with_line(self, queue: Any) -> tuple[GroupState, EtcdVersion, tuple[Waiter, ...]] | None:
        """The group and its line in one transaction (one snapshot, one request), when ``queue``
        is this group's line on etcd; None otherwise."""
        if not isinstance(queue, EtcdWaitQueue) or queue.keys.waiters != self.keys.waiters:
            return None
        return self._read(line=True)

    def _read(self, *, line: bool) -> tuple[GroupState, EtcdVersion, tuple[Waiter, ...]]:
        k = self.keys

        def fetch(client: Any) -> tuple[int, list[list[_Kv]]]:
            t = client.transactions
            gets = [
                t.get(k.slots),
                t.get(k.records, range_end=_prefix_end(k.records)),
                t.get(k.pause),
                t.get(k.ledger),
                t.get(k.members),
                t.get(k.history, range_end=_prefix_end(k.history)),
            ]
            if line:
                gets.append(t.get(k.waiters, range_end=_prefix_end(k.waiters)))
            _, revision, ranges = _txn(client, [], gets)
            return revision, ranges

        revision, ranges = self.conn.call(fetch)
        slots_kvs, record_kvs, pause_kvs, ledger_kvs, member_kvs, history_kvs = ranges[:6]
        return self._assemble(
            revision,
            slots_kvs[0] if slots_kvs else None,
            record_kvs=record_kvs,
            pause_kv=pause_kvs[0] if pause_kvs else None,
            ledger_kv=ledger_kvs[0] if ledger_kvs else None,
            members_kv=member_kvs[0] if member_kvs else None,
            history_kvs=history_kvs,
            place_kvs=ranges[6] if line else [],
        )

    def mirrored(
        self, queue: Any, *, since: int = 0, wait: float = 0.0
    ) -> tuple[GroupState, EtcdVersion, tuple[Waiter, ...]] | None:
        """The group and ``queue``'s line as this store's mirror keeps them (a watch), when it
        has one, it is live and it has seen revision ``since`` (waiting up to ``wait`` seconds
        for it); None otherwise. Cheap: built once per revision."""
        mirror = self.mirror
        if mirror is None or not isinstance(queue, EtcdWaitQueue) or queue.keys.waiters != self.keys.waiters:
            return None
        if wait > 0:
            mirror.wait_for(since, wait)
        got = mirror.latest(self._from_kvs)
        if got is None or got[1].revision < since:
            return None
        return got

    def _from_kvs(
        self, revision: int, kvs: Iterable[_Kv]
    ) -> tuple[GroupState, EtcdVersion, tuple[Waiter, ...]]:
        """The group and its line from its keys (the mirror's), as ``_read`` makes them."""
        k = self.keys
        single: dict[str, _Kv] = {}
        records: list[_Kv] = []
        history: list[_Kv] = []
        places: list[_Kv] = []
        for kv in sorted(kvs, key=lambda kv: kv.key):  # a range's order
            if kv.key.startswith(k.records):
                records.append(kv)
            elif kv.key.startswith(k.history):
                history.append(kv)
            elif kv.key.startswith(k.waiters):
                places.append(kv)
            else:
                single[kv.key] = kv
        return self._assemble(
            revision,
            single.get(k.slots),
            record_kvs=records,
            pause_kv=single.get(k.pause),
            ledger_kv=single.get(k.ledger),
            members_kv=single.get(k.members),
            history_kvs=history,
            place_kvs=places,
        )

    def _assemble(
        self,
        revision: int,
        slots_kv: _Kv | None,
        *,
        record_kvs: list[_Kv],
        pause_kv: _Kv | None,
        ledger_kv: _Kv | None,
        members_kv: _Kv | None,
        history_kvs: list[_Kv],
        place_kvs: list[_Kv],
    ) -> tuple[GroupState, EtcdVersion, tuple[Waiter, ...]]:
        k = self.keys
        waiters = _line(k.waiters, ((kv.key, kv.value, kv.create_revision) for kv in place_kvs))
        # The state is made again only when one of its keys changed: most revisions of a busy
        # group are places in line (and a history of 100 cycles is most of the decoding).
        signature = (
            *(kv.mod_revision if kv else 0 for kv in (slots_kv, pause_kv, ledger_kv, members_kv)),
            tuple((kv.key, kv.mod_revision) for kv in record_kvs),
            tuple((kv.key, kv.mod_revision) for kv in history_kvs),
        )
        with self._lock:
            made = self._made if self._made is not None and self._made[0] == signature else None
        if made is not None:
            state, legacy = made[1], made[2]
        else:
            state, legacy = self._state(
                slots_kv,
                record_kvs=record_kvs,
                pause_kv=pause_kv,
                ledger_kv=ledger_kv,
                members_kv=members_kv,
                history_kvs=history_kvs,
            )
            with self._lock:
                self._made = (signature, state, legacy)
        version = EtcdVersion(
            revision,
            slots_kv.mod_revision if slots_kv else 0,
            pause_kv.mod_revision if pause_kv else 0,
            ledger_kv.mod_revision if ledger_kv else 0,
            members_kv.mod_revision if members_kv else 0,
            state,
            frozenset(kv.key[len(k.history) :] for kv in history_kvs),
            legacy,
        )
        return state, version, waiters

    def _state(
        self,
        slots_kv: _Kv | None,
        *,
        record_kvs: list[_Kv],
        pause_kv: _Kv | None,
        ledger_kv: _Kv | None,
        members_kv: _Kv | None,
        history_kvs: list[_Kv],
    ) -> tuple[GroupState, bool]:
        k = self.keys
        corrupt: list[CorruptDocument] = []
        slots = None
        if slots_kv is not None:
            try:
                slots = SemaphoreState.decode(slots_kv.value, key=k.slots)
            except CorruptDocument as exc:
                corrupt.append(exc)
        records: dict[HolderId, HolderRecord] = {}
        for kv in record_kvs:
            key = kv.key
            decoded = self._record(key, kv)
            if isinstance(decoded, CorruptDocument):
                corrupt.append(decoded)
            elif decoded.id != key[len(k.records) :]:
                corrupt.append(CorruptDocument(key, f"record id {quoted(decoded.id)} does not match its key"))
            else:
                records[decoded.id] = decoded
        paused = PauseInfo.decode(pause_kv.value) if pause_kv is not None else None
        ledger, legacy = Ledger(), False
        try:
            if ledger_kv is not None:
                ledger = Ledger.decode(ledger_kv.value, key=k.ledger)
                legacy = bool(ledger.history or ledger.members)
            members = dict(ledger.members)
            if members_kv is not None:
                members.update(self._decoded_once(members_kv, _members))
            history = {c.key: c for c in ledger.history}
            for kv in history_kvs:
                cycle = self._decoded_once(kv, _cycle)
                history[kv.key[len(k.history) :]] = cycle
            ledger = replace(ledger, members=members, history=tuple(history[key] for key in sorted(history)))
        except CorruptDocument as exc:
            corrupt.append(exc)
        return GroupState(slots, records, paused, tuple(corrupt), ledger), legacy

    def _record(self, key: str, kv: _Kv) -> HolderRecord | CorruptDocument:
        try:
            return self._decoded_once(kv, HolderRecord.decode)
        except CorruptDocument as exc:
            return exc

    def _decoded_once(self, kv: _Kv, decode: Callable[..., T]) -> T:
        """``decode(value, key=...)``, once per (key, mod revision): a group is read often, its
        records and history entries change rarely. A CorruptDocument is raised again each time."""
        with self._lock:
            cached = self._decoded.get(kv.key)
        if cached is None or cached[0] != kv.mod_revision:
            result: Any
            try:
                result = decode(kv.value, key=kv.key)
            except CorruptDocument as exc:
                result = exc
            cached = (kv.mod_revision, result)
            with self._lock:
                if len(self._decoded) > 10_000:
                    self._decoded.clear()
                self._decoded[kv.key] = cached
        if isinstance(cached[1], CorruptDocument):
            raise cached[1]
        return cached[1]  # type: ignore[no-any-return]

    def write(self, new: GroupState, *, expect: EtcdVersion) -> int:
        old, k = expect.state, self.keys

        def run(client: Any) -> int:
            t = client.transactions
            compare = [
                t.mod(k.slots) == expect.slots_mod if expect.slots_mod else t.version(k.slots) == 0,
                t.mod(k.pause) == expect.pause_mod if expect.pause_mod else t.version(k.pause) == 0,
                t.mod(k.ledger) == expect.ledger_mod if expect.ledger_mod else t.version(k.ledger) == 0,
                t.mod(k.members) == expect.members_mod if expect.members_mod else t.version(k.members) == 0,
                t.mod(k.records, range_end=_prefix_end(k.records)) < expect.revision + 1,
                t.mod(k.history, range_end=_prefix_end(k.history)) < expect.revision + 1,
            ]
            ops: list[Any] = []
            if new.slots != old.slots and new.slots is not None:
                ops.append(t.put(k.slots, new.slots.encode()))
            for holder, record in new.records.items():
                if old.records.get(holder) != record:
                    ops.append(t.put(k.records + holder, record.encode()))
            ops.extend(t.delete(k.records + holder) for holder in old.records if holder not in new.records)
            if new.paused != old.paused:
                ops.append(t.put(k.pause, new.paused.encode()) if new.paused else t.delete(k.pause))
            if new.ledger.rollout != old.ledger.rollout or expect.legacy:
                ops.append(t.put(k.ledger, new.ledger.encode_rollout()))
            if new.ledger.members != old.ledger.members or (expect.legacy and new.ledger.members):
                ops.append(t.put(k.members, new.ledger.encode_members()))
            kept = {c.key: c for c in new.ledger.history}
            ops.extend(
                t.put(k.history + key, cycle.encoded)
                for key, cycle in kept.items()
                if key not in expect.history_keys
            )
            ops.extend(t.delete(k.history + key) for key in expect.history_keys if key not in kept)
            ok, revision, _ = _txn(client, compare, ops)
            if not ok:
                raise Conflict(f"group {self.group} changed since revision {expect.revision}")
            return revision

        try:
            return self.conn.call(run)
        except Conflict:
            self.conflicts += 1
            raise

    def watch(self, on_change: Callable[[GroupState | None], None], *, since: int = 0) -> Callable[[], None]:
        """The semaphore key and the pause marker (never the records), from ``since`` + 1."""
        return _KeyWatch(
            self.conn, [self.keys.slots, self.keys.pause], since, lambda: on_change(None)
        ).start()

    def close(self) -> None:
        if self.mirror is not None:
            self.mirror.stop()
        if self.owns_connection:
            self.conn.close()


class GroupMirror:
    """A group's keys as a watch keeps them in memory: what the FleetLock server answers its
    refusals from, so that a poll that is refused costs etcd nothing but its place's refresh.

    Started, in a thread of its own, by the first ``latest`` (one range of the group's prefix,
    then a watch from its revision); until it is live, and when the watch breaks, ``latest``
    answers None (a new start is tried at most once per ``RETRY_AFTER`` seconds) and the caller
    reads etcd instead. Its revision is the newest it has seen of the group's keys: a change that
    has not reached it yet is simply not in it, which only ever makes an answer drawn from it
    older -- a refusal, never a grant (grants are the compare-and-swap's). Thread-safe."""

    RETRY_AFTER = 1.0
    #: How often the mirror's semaphore key is compared with etcd's: a watch that stopped
    #: delivering without an error is given up when the key stayed behind for two checks.
    CHECK_EVERY = 5.0

    def __init__(self, conn: EtcdConnection, *, prefix: str, group: Group) -> None:
        self.conn = conn
        keys = _Keys(prefix, group)
        self.base = keys.base
        self._sentinel = keys.slots  # what every take and release writes
        self._checked_at = time.monotonic()
        self._behind = False  # the last check found etcd's semaphore key newer than ours
        self._checking = threading.Lock()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._starting = threading.Lock()
        self._kvs: dict[str, _Kv] = {}
        self._revision = 0
        self._generation = 0  # a start's; events of an older watch are dropped
        self._live = False
        self._watch: tuple[Any, Any] | None = None  # (client, watch id)
        self._retry_at = 0.0
        self._built: dict[Any, tuple[int, Any]] = {}  # build -> (revision, what it made)
        self._stopped = False

    def latest(self, build: Callable[[int, Iterable[_Kv]], T]) -> T | None:
        """``build(revision, keys)`` of the newest state seen, made once per revision; None while
        the watch is not live."""
        if time.monotonic() - self._checked_at >= self.CHECK_EVERY and self._checking.acquire(blocking=False):
            self._checked_at = time.monotonic()
            threading.Thread(target=self._check, name="etcd-group-mirror-check", daemon=True).start()
        with self._lock:
            live = self._live
            if live:
                built = self._built.get(build)
                if built is not None and built[0] == self._revision:
                    return built[1]  # type: ignore[no-any-return]
                revision, kvs = self._revision, list(self._kvs.values())
        if not live:
            self._start_soon()
            return None
        result = build(revision, kvs)
        with self._lock:
            if self._revision == revision:
                self._built[build] = (revision, result)
        return result

    def wait_for(self, revision: int, timeout: float) -> bool:
        """Wait until the mirror is live and has seen ``revision``, at most ``timeout`` seconds."""
        with self._changed:
            return self._changed.wait_for(lambda: self._live and self._revision >= revision, timeout)

    def lease_of(self, key: str) -> int:
        """The lease ``key`` is on as last seen (0: none, or no such key, or not live)."""
        with self._lock:
            kv = self._kvs.get(key) if self._live else None
        return kv.lease if kv is not None else 0

    def seen(self, key: str, *, since: int) -> bool | None:
        """Whether ``key`` exists as of the newest revision seen, if the mirror is live and has
        seen revision ``since``; None otherwise (it cannot say)."""
        with self._lock:
            if not self._live or self._revision < since:
                return None
            return key in self._kvs

    def _start_soon(self) -> None:
        """Start the mirror in a thread of its own (a caller never waits for it), at most once
        per RETRY_AFTER seconds."""
        if self._stopped or time.monotonic() < self._retry_at or not self._starting.acquire(blocking=False):
            return  # stopped, tried just now, or being started
        self._retry_at = time.monotonic() + self.RETRY_AFTER
        threading.Thread(target=self._start, name="etcd-group-mirror", daemon=True).start()

    def _start(self) -> None:
        """(In its thread, holding ``_starting``.) One range of the group, then a watch from it."""
        try:
            base = self.base

            def fetch(client: Any) -> tuple[int, list[_Kv]]:
                _, revision, ranges = _txn(
                    client, [], [client.transactions.get(base, range_end=_prefix_end(base))]
                )
                return revision, ranges[0]

            revision, kvs = self.conn.call(fetch, retry_for=0)
            with self._lock:
                self._generation += 1
                generation = self._generation
                self._kvs = {kv.key: kv for kv in kvs}
                self._revision, self._behind = revision, False
                self._built.clear()
            with self.conn.translating():
                client = self.conn.client()
                watch_id = client.add_watch_prefix_callback(
                    base, lambda response: self._on(generation, response), start_revision=revision + 1
                )
            with self._lock:
                if self._generation == generation and not self._stopped:
                    self._live, self._watch = True, (client, watch_id)
                    return
            self._cancel((client, watch_id))
        except _WATCH_ERRORS as exc:
            log.debug("the group's mirror could not start: %s", exc)
        finally:
            self._starting.release()

    def _check(self) -> None:
        """(In its thread, holding ``_checking``; started by ``latest`` every CHECK_EVERY
        seconds at most.) Compare the semaphore key's mod revision with
        etcd's; behind at two checks in a row: the watch is given up and started again."""
        try:
            meta = self.conn.call(lambda client: client.get(self._sentinel)[1], retry_for=0)
            theirs = int(meta.mod_revision) if meta is not None else 0
            with self._lock:
                mine = self._kvs.get(self._sentinel)
                behind = theirs > (mine.mod_revision if mine is not None else 0)
                stale, self._behind = behind and self._behind, behind
                watch = None
                if stale and self._live:
                    self._live, self._generation = False, self._generation + 1
                    watch, self._watch = self._watch, None
            if stale:
                log.warning("the mirror of %s fell behind etcd silently; starting it again", self.base)
                self._cancel(watch)
        except _WATCH_ERRORS as exc:
            log.debug("checking the group's mirror: %s", exc)
        finally:
            self._checking.release()

    def _on(self, generation: int, response: Any) -> None:
        with self._lock:
            if generation != self._generation:
                return
            if not hasattr(response, "events"):  # an error, or None: the stream ended
                self._live, self._generation = False, self._generation + 1
                watch, self._watch = self._watch, None
            else:
                for event in response.events:
                    key = event.key.decode()
                    if isinstance(event, etcd3.events.DeleteEvent):
                        self._kvs.pop(key, None)
                    else:
                        self._kvs[key] = _Kv(
                            key, bytes(event.value), int(event.create_revision), int(event.mod_revision),
                            int(event.lease),
                        )  # fmt: skip
                    self._revision = max(self._revision, int(event.mod_revision))
                self._changed.notify_all()
                return
        log.debug("the group's mirror lost its watch: %s", response)
        self._cancel(watch)

    def stop(self) -> None:
        with self._lock:
            self._stopped, self._live = True, False
            self._generation += 1
            watch, self._watch = self._watch, None
        self._cancel(watch)

    @staticmethod
    def _cancel(watch: tuple[Any, Any] | None) -> None:
        if watch is not None:
            with contextlib.suppress(Exception):
                watch[0].cancel_watch(watch[1])


class EtcdGroupCatalog:
    """The GroupCatalog on etcd: the groups under ``<prefix>/groups/``, found by a skip scan --
    one key per group, then past all of its keys -- so listing N groups reads N keys, however
    many keys each group has."""

    def __init__(self, conn: EtcdConnection, *, prefix: str) -> None:
        self.conn = conn
        self.base = f"{prefix.strip('/')}/groups/"

    def count(self, limit: int) -> int:
        return len(self.names(limit))

    def names(self, limit: int) -> tuple[Group, ...]:
        def scan(client: Any) -> tuple[Group, ...]:
            found: list[Group] = []
            start, end = self.base, _prefix_end(self.base)
            while len(found) < limit:
                response = client.get_range_response(start, end, limit=1, keys_only=True)
                if not response.kvs:
                    break
                group = response.kvs[0].key.decode("utf-8", "replace")[len(self.base) :].split("/", 1)[0]
                found.append(Group(group))
                start = _prefix_end(f"{self.base}{group}/")
            return tuple(found)

        return self.conn.call(scan)


def _members(raw: bytes, *, key: str) -> dict[HolderId, float]:
    return decode_members(load_json(raw, key), key)


def _cycle(raw: bytes, *, key: str) -> Cycle:
    return Cycle.from_json(load_json(raw, key), key)


class _KeepAliveStream:
    """One LeaseKeepAlive stream for the refreshes of many leases: a refresh is one message on a
    stream kept open, not a stream of its own. python-etcd3's ``refresh_lease`` opens a stream per
    call, with a thread to feed it: a third of a refused FleetLock poll's CPU. etcd answers a
    stream's requests in order, each with its lease's id and the TTL left (0: the lease is gone).
    A refresh that this stream cannot answer (it broke, or it is slow) raises; the caller then
    refreshes the old way. Thread-safe; a broken stream is opened again by the next refresh."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()
        self._client: Any = None
        self._requests: queue.SimpleQueue[Any] | None = None
        self._waiting: dict[int, deque[Future[int]]] = {}

    def refresh(self, client: Any, lease_id: int) -> int:
        """Refresh lease ``lease_id``; the TTL it has left (0 or less: it expired)."""
        return self.refresh_many(client, [lease_id])[lease_id]

    def refresh_many(self, client: Any, lease_ids: Iterable[int]) -> dict[int, int]:
        """Refresh every lease of ``lease_ids`` at once (the requests sent, then the answers
        awaited); the TTL each has left."""
        answers: dict[int, Future[int]] = {}
        with self._lock:
            if self._requests is None or self._client is not client:
                self._open(client)
            requests = self._requests
            assert requests is not None
            for lease_id in lease_ids:
                if lease_id not in answers:
                    answers[lease_id] = Future()
                    self._waiting.setdefault(lease_id, deque()).append(answers[lease_id])
                    requests.put(etcdrpc.LeaseKeepAliveRequest(ID=lease_id))
        deadline = time.monotonic() + self.timeout
        try:
            return {
                lease_id: answer.result(max(0.0, deadline - time.monotonic()))
                for lease_id, answer in answers.items()
            }
        except FutureTimeout:
            self._broken(requests, TimeoutError("no keep-alive answer"))
            raise

    def close(self) -> None:
        with self._lock:
            requests, self._requests = self._requests, None
            self._fail(ConnectionError("closed"))
        if requests is not None:
            requests.put(None)

    def _open(self, client: Any) -> None:
        """(Under the lock.) A new stream on ``client``; the old one's answers are given up."""
        if self._requests is not None:
            self._requests.put(None)
        self._fail(ConnectionError("the keep-alive stream was replaced"))
        requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        responses = client.leasestub.LeaseKeepAlive(
            iter(requests.get, None), credentials=client.call_credentials, metadata=client.metadata
        )
        self._client, self._requests = client, requests
        threading.Thread(
            target=self._read, args=(requests, responses), name="etcd-keepalive-stream", daemon=True
        ).start()

    def _read(self, requests: queue.SimpleQueue[Any], responses: Any) -> None:
        try:
            for response in responses:
                with self._lock:
                    line = self._waiting.get(int(response.ID))
                    answer = line.popleft() if line else None
                    if line is not None and not line:
                        del self._waiting[int(response.ID)]
                if answer is not None:
                    answer.set_result(int(response.TTL))
        except grpc.RpcError as exc:
            self._broken(requests, exc)
            return
        self._broken(requests, ConnectionError("the keep-alive stream ended"))

    def _broken(self, requests: queue.SimpleQueue[Any] | None, why: BaseException) -> None:
        with self._lock:
            if requests is None or requests is not self._requests:
                return  # replaced already: its answers were given up then
            self._requests = None
            self._fail(why)
        requests.put(None)

    def _fail(self, why: BaseException) -> None:
        """(Under the lock.) Every refresh still waiting raises ``why``."""
        waiting, self._waiting = self._waiting, {}
        for line in waiting.values():
            for answer in line:
                if not answer.done():
                    answer.set_exception(why)


@dataclass(frozen=True)
class _Place:
    """A poller's place as this process last gave or kept it."""

    lease: int  # 0: it left the line
    granted: int  # the lease's TTL
    polled: float  # when (time.monotonic())
    put: int  # the revision of the place's last put


class EtcdWaitQueue:
    """The WaitQueue on etcd: one key per waiter on a lease of ``ttl`` seconds, ordered by its
    create revision. A put on an existing key keeps its create revision: a restarted agent that
    joins again keeps its place, if it comes back before its old lease ran out. etcd deletes the
    keys of a lease that is not kept alive: a dead waiter's place expires by itself, and the one
    behind it, which watches only its key, is woken by that delete."""

    #: How long a poll kept by ``keep`` waits for its refresh, sent with the others of that time.
    KEEP_BATCH = 1.0
    #: Places whose lease this process remembers (``keep``); the least recently polled go first.
    MAX_POLLED = 10_000
    #: How long a read of the line waits for the mirror to show this process's last put.
    MIRROR_WAIT = 0.05

    def __init__(
        self,
        conn: EtcdConnection,
        *,
        prefix: str,
        group: Group,
        ttl: float,
        background: bool = True,
        mirror: GroupMirror | None = None,
    ) -> None:
        """``background``: keep this process's places alive (an agent); without it (the FleetLock
        server, whose clients poll) each join keeps the place for about one and a half of the
        client's own poll intervals (core.fleetlock.place_ttl), at most ``ttl``, whichever
        replica answered it. ``mirror``: the group's keys kept by a watch, which lets ``keep``
        keep a poller's place without asking etcd."""
        self.conn = conn
        self.background = background
        self.group = group
        self.keys = _Keys(prefix, group)
        self.ttl = round(ttl)  # whole seconds from 5 s: checked once, in config (p_waiter_ttl)
        self._leases: dict[HolderId, Any] = {}
        self._lock = threading.Lock()
        self._keepalive_stop = threading.Event()
        self._keepalive: threading.Thread | None = None
        self._stream = _KeepAliveStream(conn.options.timeout)  # the pollers' places' refreshes
        self.keepalives = 0  # lease refreshes sent (the benchmarks' "writes" of a waiting agent)
        self.mirror = mirror
        self._polled: OrderedDict[HolderId, _Place] = OrderedDict()  # the pollers this process knows
        self._due: set[int] = set()  # leases to refresh with the next batch
        self._put = 0  # the revision of this process's last put of a place
        self._batcher: threading.Thread | None = None

    def waiters(self) -> tuple[Waiter, ...]:
        prefix = self.keys.waiters
        if self.mirror is not None and self.mirror.wait_for(self._put, self.MIRROR_WAIT):
            # the line as the mirror shows it once it has seen this process's last put
            line = self.mirror.latest(self._line_of)
            if line is not None:
                return line

        def fetch(client: Any) -> list[Any]:
            return list(client.get_prefix(prefix))

        found = self.conn.call(fetch)
        return _line(prefix, ((meta.key.decode(), value, int(meta.create_revision)) for value, meta in found))

    def _line_of(self, revision: int, kvs: Iterable[_Kv]) -> tuple[Waiter, ...]:
        prefix = self.keys.waiters
        places = (kv for kv in kvs if kv.key.startswith(prefix))
        return _line(prefix, ((kv.key, kv.value, kv.create_revision) for kv in places))

    def join(self, waiter: Waiter) -> None:
        key = self.keys.waiters + waiter.id
        if not self.background:
            self.conn.call(lambda client: self._poll(client, key, waiter))
            return
        doc = _encode_waiter(waiter)

        def put(client: Any) -> None:
            try:
                client.put(key, doc, lease=self._lease_for(client, waiter.id))
            except grpc.RpcError as exc:
                if not _lease_gone(exc):
                    raise
                # Our lease expired while this process could not renew it (stopped, or cut off
                # longer than the TTL): the place is lost; queue again on a new lease.
                log.info("the waiter lease of %s expired; queueing again", waiter.id)
                with self._lock:
                    self._leases.pop(waiter.id, None)
                client.put(key, doc, lease=self._lease_for(client, waiter.id))

        self.conn.call(put)  # also when we think the place ours: the agent asks only when it is not
        self._start_keepalive()

    def _poll(self, client: Any, key: str, waiter: Waiter) -> None:
        """A polling client's place (the FleetLock server's): created at the end of the line on
        a lease of ``place_ttl``, or kept -- its lease refreshed, no write to etcd's log -- and
        its lease's TTL fitted to the client's own poll interval (the time since its last poll
        is what the lease had run down). Never where a place of another kind is (an agent's)
        or where the id has a holder record (a holder queues no more): IdInUse. Every put is
        guarded in its transaction, so neither can slip in between."""
        from rebootcoord.core.fleetlock import place_ttl  # the server's rules: no agent loads them

        t = client.transactions
        record = self.keys.records + waiter.id
        # No place, as the mirror saw it after this process's last put: try to create it at once
        # (the transaction's guard checks it; if one is there after all, it is looked up).
        absent = self.mirror is not None and self.mirror.seen(key, since=self._put) is False
        for attempt in range(3):
            value, meta = (b"", None) if absent and attempt == 0 else client.get(key)
            if meta is None:
                ttl = place_ttl(self._since_last_poll(waiter.id), self.ttl)
                lease = client.lease(ttl)
                guard = [t.create(key) == 0, t.create(record) == 0]
                put = t.put(key, _encode_waiter(waiter), lease=lease.id)
                ok, revision, _ = _txn(client, guard, [put])
                if ok:
                    self._remember(waiter.id, lease.id, ttl, revision)
                    return
                client.revoke_lease(lease.id)
                self._no_record(client, record, waiter)
                continue
            kind = _decode_waiter(value, holder=waiter.id, order=0).kind
            if kind != waiter.kind:
                raise IdInUse(f"{waiter.id!r} has a place in line as {_a(kind)}, not as {_a(waiter.kind)}")
            old_lease = int(getattr(meta, "lease_id", 0) or 0)
            info = _lease_info(client, old_lease) if old_lease else None
            if info is not None and info.TTL > 0:
                ttl = place_ttl(info.grantedTTL - info.TTL, self.ttl)
                if abs(ttl - info.grantedTTL) <= max(1, info.grantedTTL // 4):
                    if self._refresh(client, old_lease) > 0:
                        self._remember(waiter.id, old_lease, int(info.grantedTTL), int(meta.mod_revision))
                        return
                    continue  # it expired just now: queue again
            else:
                ttl = place_ttl(None, self.ttl)
            lease = client.lease(ttl)
            guard = [t.mod(key) == int(meta.mod_revision), t.create(record) == 0]
            ok, revision, _ = _txn(client, guard, [t.put(key, value, lease=lease.id)])
            if ok:  # a put keeps the place
                self._remember(waiter.id, lease.id, ttl, revision)
                if old_lease:
                    with contextlib.suppress(grpc.RpcError):
                        client.revoke_lease(old_lease)
                return
            client.revoke_lease(lease.id)
            self._no_record(client, record, waiter)
        raise Conflict(f"the place of {waiter.id!r} in line kept changing")

    def keep(self, holder: HolderId) -> bool:
        """Keep a polling client's place without asking etcd, when this process knows it: the
        mirror shows the place on the lease this process gave or refreshed it last, and that
        lease's TTL still fits the client's polls (core.fleetlock.place_ttl, as ``join`` fits
        it). The lease is refreshed with the next batch, within KEEP_BATCH seconds: the place
        lives at least its TTL after this poll. False: keep it with ``join``."""
        from rebootcoord.core.fleetlock import place_ttl  # the server's rules: no agent loads them

        if self.background or self.mirror is None:
            return False
        now = time.monotonic()
        with self._lock:
            known = self._polled.get(holder)
        if known is None or not known.lease:
            return False
        key = self.keys.waiters + holder
        # the place is on our lease as the mirror saw it, or the mirror has not seen our put yet
        if self.mirror.lease_of(key) != known.lease and self.mirror.seen(key, since=known.put) is not None:
            return False
        if abs(place_ttl(now - known.polled, self.ttl) - known.granted) > max(1, known.granted // 4):
            return False  # the client polls at another pace now: join fits the lease to it
        with self._lock:
            self._polled[holder] = replace(known, polled=now)
            self._polled.move_to_end(holder)
            self._due.add(known.lease)
            if self._batcher is None or not self._batcher.is_alive():
                self._batcher = threading.Thread(target=self._batches, name="etcd-place-batches", daemon=True)
                self._batcher.start()
        return True

    def _since_last_poll(self, holder: HolderId) -> float | None:
        """Seconds since this process last kept or gave ``holder`` a place (None: never), so
        that a client queueing again gets a lease fitted to its polls from the start."""
        with self._lock:
            known = self._polled.get(holder)
        return None if known is None else time.monotonic() - known.polled

    def _remember(self, holder: HolderId, lease: int, granted: int, put: int) -> None:
        with self._lock:
            self._polled[holder] = _Place(lease, granted, time.monotonic(), put)
            self._polled.move_to_end(holder)
            self._put = max(self._put, put)
            while len(self._polled) > self.MAX_POLLED:
                self._polled.popitem(last=False)

    def _batches(self) -> None:
        """Refresh the leases of the places ``keep`` kept, KEEP_BATCH seconds' worth at a time,
        on the shared stream; a lease found expired is forgotten (the client queues again)."""
        while not self._keepalive_stop.wait(self.KEEP_BATCH):
            with self._lock:
                due, self._due = self._due, set()
            if not due:
                continue
            try:
                left = self.conn.call(partial(self._stream.refresh_many, lease_ids=due), retry_for=0)
            except (BackendUnavailable, TimeoutError, FutureTimeout, ConnectionError) as exc:
                log.debug("refreshing %d kept places failed: %s", len(due), exc)
                continue
            self.keepalives += len(due)
            gone = {lease for lease, ttl in left.items() if ttl <= 0}
            if gone:
                with self._lock:
                    for holder in [h for h, known in self._polled.items() if known.lease in gone]:
                        del self._polled[holder]

    def _refresh(self, client: Any, lease_id: int) -> int:
        """Refresh a polling client's place's lease on the shared stream, else on a stream of its
        own; the TTL it has left."""
        try:
            return self._stream.refresh(client, lease_id)
        except (grpc.RpcError, TimeoutError, FutureTimeout, ConnectionError) as exc:
            log.debug("keep-alive stream: %s; refreshing on a stream of its own", exc)
        responses = _refresher(lease_id)(client)
        return int(responses[0].TTL) if responses else 0

    @staticmethod
    def _no_record(client: Any, record: str, waiter: Waiter) -> None:
        if client.get(record)[1] is not None:
            raise IdInUse(f"{waiter.id!r} holds a slot (a holder record): it takes no place in line")

    def joined(self, holder: HolderId) -> bool:
        with self._lock:
            return holder in self._leases

    def leave(self, holder: HolderId) -> None:
        key = self.keys.waiters + holder
        with self._lock:
            lease = self._leases.pop(holder, None)
            polled = self._polled.get(holder)
            if polled is not None:  # no place to keep; when it polled last still counts
                self._polled[holder] = replace(polled, lease=0)
        # Nothing to delete where the mirror, having seen this process's last put, shows no place
        # (a holder giving its slot back: its place went when it took the slot).
        if lease is None and self.mirror is not None and self.mirror.seen(key, since=self._put) is False:
            return
        self.conn.call(lambda c: c.delete(key))
        if lease is not None:
            try:
                self.conn.call(_revoker(lease.id), retry_for=0)
            except BackendUnavailable:
                log.debug("revoking the waiter lease failed; it expires by itself")

    def renew(self, holder: HolderId) -> None:
        with self._lock:
            lease = self._leases.get(holder)
        if lease is not None:
            self.conn.call(_refresher(lease.id))
            self.keepalives += 1

    def watch_ahead(
        self,
        holder: HolderId,
        on_change: Callable[[], None],
        *,
        line: tuple[Waiter, ...] | None = None,
        since: int = 0,
    ) -> Callable[[], None]:
        """The key of the waiter just ahead in ``line`` (read when not given), from ``since`` + 1:
        woken when it is deleted (it left, or its lease ran out)."""
        line = self.waiters() if line is None else line
        ids = [w.id for w in line]
        if holder not in ids or ids.index(holder) == 0:
            on_change()
            return lambda: None
        key = self.keys.waiters + line[ids.index(holder) - 1].id
        return _KeyWatch(self.conn, [key], since, on_change, deletes_only=True).start()

    def _lease_for(self, client: Any, holder: HolderId) -> Any:
        with self._lock:
            if holder not in self._leases:
                self._leases[holder] = client.lease(self.ttl)
            return self._leases[holder]

    def _start_keepalive(self) -> None:
        if self._keepalive is not None and self._keepalive.is_alive():
            return
        self._keepalive_stop.clear()
        self._keepalive = threading.Thread(
            target=self._keepalive_loop, name="etcd-lease-keepalive", daemon=True
        )
        self._keepalive.start()

    def _keepalive_loop(self) -> None:
        while not self._keepalive_stop.wait(self.ttl / 3):
            with self._lock:
                leases = list(self._leases.items())
            for holder, lease in leases:
                try:
                    responses = self.conn.call(_refresher(lease.id), retry_for=0)
                    self.keepalives += 1
                except BackendUnavailable as exc:
                    if isinstance(exc.__cause__, grpc.RpcError) and _lease_gone(exc.__cause__):
                        responses = []  # expired: dropped below, the agent queues again
                    else:
                        log.warning("cannot refresh the waiter lease: %s", exc)
                        continue
                if not responses or responses[0].TTL <= 0:
                    log.info("waiter lease of %s expired; the queue place will be taken again", holder)
                    with self._lock:
                        if self._leases.get(holder) is lease:
                            del self._leases[holder]

    def close(self) -> None:
        self._keepalive_stop.set()
        self._stream.close()


class _KeyWatch:
    """A watch on a few keys from a revision, for one wait: ``on_change`` is called once, at the
    first event (of a delete, with ``deletes_only``) or when the watch breaks, then it ends. The
    waiter reads and decides again, and watches anew if it still has to wait."""

    def __init__(
        self,
        conn: EtcdConnection,
        keys: list[str],
        since: int,
        on_change: Callable[[], None],
        *,
        deletes_only: bool = False,
    ) -> None:
        self.conn = conn
        self.keys = keys
        self.since = since
        self.on_change = on_change
        self.deletes_only = deletes_only
        self._ids: list[Any] = []
        self._fired = threading.Event()
        self._lock = threading.Lock()

    def start(self) -> Callable[[], None]:
        try:
            with self.conn.translating():
                client = self.conn.client()
                for key in self.keys:
                    kwargs = {"start_revision": self.since + 1} if self.since else {}
                    self._ids.append(client.add_watch_callback(key, self._on_event, **kwargs))
        except BackendUnavailable:
            self._fire()
        return self.stop

    def _on_event(self, response: Any) -> None:
        if isinstance(response, BaseException):
            self._fire()
            return
        events = list(getattr(response, "events", []))
        if self.deletes_only and not any(isinstance(e, etcd3.events.DeleteEvent) for e in events):
            return
        if events:
            self._fire()

    def _fire(self) -> None:
        with self._lock:
            if self._fired.is_set():
                return
            self._fired.set()
        self.on_change()

    def stop(self) -> None:
        self._fired.set()
        ids, self._ids = self._ids, []
        for watch_id in ids:
            with contextlib.suppress(Exception):
                self.conn.client().cancel_watch(watch_id)


def _lease_gone(exc: grpc.RpcError) -> bool:
    """etcd's answer about a lease that expired or was revoked: NOT_FOUND, "requested lease not found"."""
    return hasattr(exc, "code") and exc.code() == grpc.StatusCode.NOT_FOUND


def _prefix_end(prefix: str) -> str:
    """The first key after every key that starts with ``prefix`` (etcd's range_end)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _refresher(lease_id: int) -> Callable[[Any], list[Any]]:
    return lambda client: list(client.refresh_lease(lease_id))


def _revoker(lease_id: int) -> Callable[[Any], Any]:
    return lambda client: client.revoke_lease(lease_id)


def _line(prefix: str, kvs: Iterable[tuple[str, bytes, int]]) -> tuple[Waiter, ...]:
    """The places under ``prefix`` -- (key, value, create revision) -- in request order."""
    found = [_decode_waiter(value, holder=key[len(prefix) :], order=created) for key, value, created in kvs]
    return tuple(sorted(found, key=lambda w: w.order))


def _encode_waiter(waiter: Waiter) -> bytes:
    """A place's value: its node, since when, whose (the id is the key's last segment)."""
    doc = {"node": waiter.node, "since": waiter.since, "kind": waiter.kind}
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def _decode_waiter(raw: bytes, *, holder: str, order: int) -> Waiter:
    try:
        doc = load_json(raw, "waiter")
        kind = doc.get("kind", AGENT)
        return Waiter(
            HolderId(holder),
            NodeName(str(doc.get("node", holder))[:253]),
            float(doc.get("since", 0)),
            order,
            kind if kind in (AGENT, FLEETLOCK) else AGENT,
        )
    except (CorruptDocument, ValueError, TypeError, AttributeError, OverflowError):
        # A waiter key is only a place in line; a bad one still holds its place (an agent's:
        # nothing that speaks FleetLock takes it over).
        return Waiter(HolderId(holder), NodeName(holder), 0.0, order)


def _a(kind: str) -> str:
    return "an agent" if kind == AGENT else "a FleetLock client"


def _lease_info(client: Any, lease_id: int) -> Any:
    """The lease's remaining and granted TTL (None: it is gone)."""
    try:
        return client.leasestub.LeaseTimeToLive(
            etcdrpc.LeaseTimeToLiveRequest(ID=lease_id, keys=False),
            client.timeout,
            credentials=client.call_credentials,
            metadata=client.metadata,
        )
    except grpc.RpcError as exc:
        if _lease_gone(exc):
            return None
        raise


def replay(conn: EtcdConnection, prefix: str, *, since: int = 1) -> list[tuple[int, str, bytes | None]]:
    """Every change under ``prefix`` from revision ``since`` on, in revision order: (revision,
    key, value, or None for a delete). A watch replayed from ``since``: the history must not have
    been compacted. For checkers of a run, not for the agent.

    The watch delivers the stored history at once, in batches; it is complete once it has passed
    the newest revision of a key that still exists and a moment passed without more (a delete after
    that, of a key that is gone now, arrives in that moment)."""
    changes: list[tuple[int, str, bytes | None]] = []
    idle = threading.Event()
    lock = threading.Lock()
    last_event = [time.monotonic()]

    def on(response: Any) -> None:
        if isinstance(response, BaseException):
            idle.set()
            return
        with lock:
            for event in response.events:
                value = None if isinstance(event, etcd3.events.DeleteEvent) else bytes(event.value)
                changes.append((int(event.mod_revision), event.key.decode(), value))
            last_event[0] = time.monotonic()

    def newest(client: Any) -> int:
        resp = client.get_prefix_response(prefix, keys_only=True)
        return max((int(kv.mod_revision) for kv in resp.kvs), default=0)

    target = conn.call(newest)  # retried while etcd comes back
    with conn.translating():
        client = conn.client()
        watch_id = client.add_watch_callback(
            prefix, on, range_end=_prefix_end(prefix), start_revision=max(1, since)
        )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not idle.is_set():
            with lock:
                seen = max((c[0] for c in changes), default=0)
                quiet = time.monotonic() - last_event[0]
            if seen >= target and quiet > 0.5:
                break
            time.sleep(0.05)
    finally:
        with contextlib.suppress(Exception):
            client.cancel_watch(watch_id)
    with lock:
        return sorted(changes, key=lambda c: c[0])
