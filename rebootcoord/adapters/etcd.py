"""etcd v3 semaphore backend, compatible with airlock's key and value.

Keys of one group (``<p>`` is ``etcd_key_prefix``, ``com.coreos.airlock`` by default)::

    <p>/groups/<group>/v1/semaphore                      {"total_slots": N, "holders": [ids]}  (airlock's)
    <p>/groups/<group>/v1/rebootcoord/holders/<id>       our holder record (phase, boot ID, ...)
    <p>/groups/<group>/v1/rebootcoord/waiters/<id>       a place in the queue, on a lease
    <p>/groups/<group>/v1/rebootcoord/paused             present while the group is paused

Every write is one transaction guarded by the mod revision of what was read, so two writers can
never both take the last slot; the slots and our record change together. A watch on the group's
prefix keeps a cached view fresh: waiters learn of a freed slot within one watch round trip and
only the first in line tries to take it.

This module is the only one that imports ``etcd3`` and ``grpc``; their errors are translated here.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import etcd3
import etcd3.events
import etcd3.exceptions as etcd_exc
import grpc

from rebootcoord.adapters.removal import HolderRemoval
from rebootcoord.adapters.retry import retrying as retrying_for
from rebootcoord.core.semaphore import GroupView, HolderRecord, PauseInfo, SemaphoreState, Waiter
from rebootcoord.core.types import Group, HolderId, NodeName
from rebootcoord.errors import (
    BackendUnavailable,
    Conflict,
    CorruptDocument,
    NoFreeSlot,
    NotHolder,
    SlotLost,
)

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
            self.options.retry_for if retry_for is None else retry_for, first_wait=0.05, max_wait=2.0
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


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        details = exc.details() if hasattr(exc, "details") else ""
        return f"{exc.code().name}: {details}"
    return str(exc) or exc.__class__.__name__


@dataclass
class _Kv:
    value: bytes
    create_revision: int
    mod_revision: int


class EtcdSemaphore(HolderRemoval):
    """The Semaphore port on etcd v3. Thread-safe; one instance per group."""

    def __init__(self, conn: EtcdConnection, *, prefix: str, group: Group, waiter_ttl: float = 10.0) -> None:
        self.conn = conn
        self.group = group
        self.base = f"{prefix.strip('/')}/groups/{group}/v1/"
        self.slots_key = self.base + "semaphore"
        self.records_prefix = self.base + "rebootcoord/holders/"
        self.waiters_prefix = self.base + "rebootcoord/waiters/"
        self.pause_key = self.base + "rebootcoord/paused"
        self.waiter_ttl = max(2, round(waiter_ttl))
        self._leases: dict[HolderId, Any] = {}  # one lease per waiter we queued
        self._decode_cache: dict[str, tuple[int, Any]] = {}
        self.conflicts = 0  # transactions whose comparisons failed: lost races
        self.on_conflict: Callable[[], None] | None = None
        self._watches: list[_GroupWatch] = []
        self._lease_lock = threading.Lock()
        self._keepalive_stop = threading.Event()
        self._keepalive: threading.Thread | None = None

    # --------------------------------------------------------------------------------------
    # reading

    def _range(self, *, retry_for: float | None = None) -> tuple[dict[str, _Kv], int]:
        def fetch(client: Any) -> tuple[dict[str, _Kv], int]:
            resp = client.get_prefix_response(self.base)
            kvs = {kv.key.decode(): _Kv(kv.value, kv.create_revision, kv.mod_revision) for kv in resp.kvs}
            return kvs, int(resp.header.revision)

        return self.conn.call(fetch, retry_for=retry_for)

    def read(self) -> GroupView:
        kvs, revision = self._range()
        for watch in list(self._watches):
            watch.absorb(kvs, revision)
        return self._view(kvs, revision)

    def _decoded(self, key: str, kv: _Kv, decode: Callable[[bytes], Any]) -> Any:
        """Decode a value once per (key, mod revision): every watch event rebuilds the view, and
        a group of a hundred waiters would otherwise decode a hundred documents per event."""
        cached = self._decode_cache.get(key)
        if cached is not None and cached[0] == kv.mod_revision:
            result = cached[1]
        else:
            try:
                result = decode(kv.value)
            except CorruptDocument as exc:
                result = exc
            if len(self._decode_cache) > 10_000:
                self._decode_cache.clear()
            self._decode_cache[key] = (kv.mod_revision, result)
        if isinstance(result, CorruptDocument):
            raise result
        return result

    def _view(self, kvs: dict[str, _Kv], revision: int) -> GroupView:
        corrupt: list[CorruptDocument] = []
        slots = None
        if self.slots_key in kvs:
            try:
                slots = SemaphoreState.decode(kvs[self.slots_key].value, key=self.slots_key)
            except CorruptDocument as exc:
                corrupt.append(exc)
        records: dict[HolderId, HolderRecord] = {}
        waiters: list[Waiter] = []
        paused = None
        for key, kv in kvs.items():
            if key.startswith(self.records_prefix):
                try:
                    record = self._decoded(key, kv, functools.partial(HolderRecord.decode, key=key))
                except CorruptDocument as exc:
                    corrupt.append(exc)
                    continue
                if record.id != key[len(self.records_prefix) :]:
                    corrupt.append(CorruptDocument(key, f"record id {record.id!r} does not match its key"))
                    continue
                records[record.id] = record
            elif key.startswith(self.waiters_prefix):
                holder = key[len(self.waiters_prefix) :]
                decode = functools.partial(_decode_waiter, holder=holder, order=kv.create_revision)
                waiters.append(self._decoded(key, kv, decode))
            elif key == self.pause_key:
                paused = _decode_pause(kv.value)
        waiters.sort(key=lambda w: w.order)
        return GroupView(
            group=self.group,
            slots=slots,
            records=records,
            waiters=tuple(waiters),
            paused=paused,
            corrupt=tuple(corrupt),
            revision=revision,
        )

    def _slots(self, kvs: dict[str, _Kv]) -> tuple[SemaphoreState | None, int]:
        kv = kvs.get(self.slots_key)
        if kv is None:
            return None, 0
        return SemaphoreState.decode(kv.value, key=self.slots_key), kv.mod_revision

    # --------------------------------------------------------------------------------------
    # writing: read, apply, write-if-unchanged; retried on conflict

    def _txn(self, compare: Callable[[Any], list[Any]], success: Callable[[Any], list[Any]]) -> int | None:
        """Run a transaction; the revision it wrote at, or None when a comparison failed."""

        def run(client: Any) -> int | None:
            ok, responses = client.transaction(compare=compare(client), success=success(client), failure=[])
            if not ok:
                self.conflicts += 1
                if self.on_conflict is not None:
                    self.on_conflict()
                return None
            for response in responses:
                kind = response.WhichOneof("response")
                return int(getattr(response, kind).header.revision)
            return 0

        return self.conn.call(run)

    def _cas_loop(self, attempt: Callable[[], int | None]) -> int | None:
        """Repeat read-apply-write until the write lands. ``attempt`` returns the revision written,
        None when the write lost a race, or NOTHING_TO_DO when the state already is as wanted."""
        for i in range(MAX_CAS_ATTEMPTS):
            revision = attempt()
            if revision == NOTHING_TO_DO:
                return None
            if revision is not None:
                return revision
            time.sleep(random.uniform(0, 0.002 * (i + 1)))  # noqa: S311 - jitter, not crypto
        raise Conflict(f"gave up after {MAX_CAS_ATTEMPTS} conflicting writes on {self.slots_key}")

    def ensure(self, max_holders: int) -> None:
        initial = SemaphoreState(max_holders).encode()
        self._txn(  # airlock's own initialisation: put only if the key does not exist
            lambda c: [c.transactions.version(self.slots_key) == 0],
            lambda c: [c.transactions.put(self.slots_key, initial)],
        )

    def acquire(self, record: HolderRecord) -> int | None:
        kvs, revision = self._range()
        view = self._view(kvs, revision)
        if view.corrupt:
            raise view.corrupt[0]
        if view.holds(record.id):
            return revision if view.record(record.id) == record else None
        if not view.may_take(record.id):
            return None
        slots, mod = self._slots(kvs)
        assert slots is not None
        new = slots.acquire(record.id)
        rkey = self.records_prefix + record.id
        written = self._txn(
            lambda c: [
                c.transactions.mod(self.slots_key) == mod,
                c.transactions.version(self.pause_key) == 0,
                c.transactions.version(rkey) == 0,
            ],
            lambda c: [
                c.transactions.put(self.slots_key, new.encode()),
                c.transactions.put(rkey, record.encode()),
                c.transactions.delete(self.waiters_prefix + record.id),
            ],
        )
        if written is not None:
            self._drop_lease(record.id)  # the waiter key went with the transaction
        return written

    def update(self, record: HolderRecord) -> None:
        rkey = self.records_prefix + record.id

        def attempt() -> int | None:
            kvs, _ = self._range()
            slots, mod = self._slots(kvs)
            current = kvs.get(rkey)
            if current is None or slots is None or not slots.holds(record.id):
                raise SlotLost(f"{record.id} no longer holds a slot in group {self.group}")
            return self._txn(
                lambda c: [
                    c.transactions.mod(self.slots_key) == mod,
                    c.transactions.create(rkey) == current.create_revision,
                ],
                lambda c: [c.transactions.put(rkey, record.encode())],
            )

        self._cas_loop(attempt)

    def _remove(
        self, holder: HolderId, *, must_hold: bool, expect: HolderRecord | None
    ) -> tuple[HolderRecord | None, int | None]:
        rkey = self.records_prefix + holder
        removed: list[HolderRecord | None] = [None]

        def attempt() -> int | None:
            kvs, _ = self._range()
            slots, mod = self._slots(kvs)
            had_record = rkey in kvs
            holds = slots is not None and slots.holds(holder)
            if not holds and not had_record:
                if must_hold:
                    held = ", ".join(slots.holders) if slots and slots.holders else "none"
                    raise NotHolder(f"{holder!r} holds no slot in group {self.group} (holders: {held})")
                return NOTHING_TO_DO
            removed[0] = _maybe_record(kvs.get(rkey), rkey)
            if expect is not None and (removed[0] is None or removed[0].acquired_at != expect.acquired_at):
                raise NotHolder(f"{holder!r} holds the slot again since; not reclaimed")
            ops: list[Callable[[Any], Any]] = [
                lambda c: c.transactions.delete(rkey),
                lambda c: c.transactions.delete(self.waiters_prefix + holder),
            ]
            if holds and slots is not None:
                encoded = slots.release(holder).encode()
                ops.append(lambda c: c.transactions.put(self.slots_key, encoded))
            return self._txn(
                lambda c: [c.transactions.mod(self.slots_key) == mod],
                lambda c: [op(c) for op in ops],
            )

        revision = self._cas_loop(attempt)
        self._drop_lease(holder)  # the waiter key, if any, went with the transaction
        return removed[0], revision

    def drop_record(self, holder: HolderId) -> None:
        rkey = self.records_prefix + holder

        def attempt() -> int | None:
            kvs, _ = self._range()
            slots, mod = self._slots(kvs)
            if rkey not in kvs:
                return NOTHING_TO_DO
            if slots is not None and slots.holds(holder):
                raise Conflict(f"{holder} holds a slot again; its record stays")
            return self._txn(
                lambda c: [c.transactions.mod(self.slots_key) == mod],
                lambda c: [c.transactions.delete(rkey)],
            )

        self._cas_loop(attempt)

    def lock(self, holder: HolderId, record: HolderRecord) -> None:
        rkey = self.records_prefix + holder

        def attempt() -> int | None:
            kvs, _ = self._range()
            slots, mod = self._slots(kvs)
            if slots is None:
                raise NotHolder(f"group {self.group} has no semaphore yet (no agent started; use set-max)")
            if slots.holds(holder):
                raise NoFreeSlot(f"{holder!r} already holds a slot")
            new = slots.acquire(holder)
            return self._txn(
                lambda c: [c.transactions.mod(self.slots_key) == mod],
                lambda c: [
                    c.transactions.put(self.slots_key, new.encode()),
                    c.transactions.put(rkey, record.encode()),
                ],
            )

        self._cas_loop(attempt)

    def set_max(self, new_max: int) -> None:
        def attempt() -> int | None:
            kvs, _ = self._range()
            slots, mod = self._slots(kvs)
            if slots is None:
                encoded = SemaphoreState(1).with_max(new_max).encode()
                return self._txn(
                    lambda c: [c.transactions.version(self.slots_key) == 0],
                    lambda c: [c.transactions.put(self.slots_key, encoded)],
                )
            encoded = slots.with_max(new_max).encode()
            return self._txn(
                lambda c: [c.transactions.mod(self.slots_key) == mod],
                lambda c: [c.transactions.put(self.slots_key, encoded)],
            )

        self._cas_loop(attempt)

    def pause(self, info: PauseInfo) -> None:
        doc = json.dumps({"by": info.by, "at": info.at, "reason": info.reason}).encode()
        self.conn.call(lambda c: c.put(self.pause_key, doc))

    def resume(self) -> None:
        self.conn.call(lambda c: c.delete(self.pause_key))

    # --------------------------------------------------------------------------------------
    # the queue: waiter keys on a lease, so a dead agent's place goes away by itself

    def join_queue(self, waiter: Waiter) -> None:
        doc = json.dumps({"id": waiter.id, "node": waiter.node, "since": waiter.since}).encode()
        key = self.waiters_prefix + waiter.id

        def put(client: Any) -> None:
            # put() on an existing key keeps its create revision: a restarted agent keeps its place.
            try:
                client.put(key, doc, lease=self._lease_for(client, waiter.id))
            except grpc.RpcError as exc:
                if not _lease_gone(exc):
                    raise
                # Our lease expired while this process could not renew it (stopped, or cut off
                # longer than the TTL): the place is lost; queue again on a new lease.
                log.info("the waiter lease of %s expired; queueing again", waiter.id)
                with self._lease_lock:
                    self._leases.pop(waiter.id, None)
                client.put(key, doc, lease=self._lease_for(client, waiter.id))

        self.conn.call(put)
        self._start_keepalive()

    def leave_queue(self, holder: HolderId) -> None:
        self.conn.call(lambda c: c.delete(self.waiters_prefix + holder))
        self._drop_lease(holder)

    def _lease_for(self, client: Any, holder: HolderId) -> Any:
        with self._lease_lock:
            if holder not in self._leases:
                self._leases[holder] = client.lease(self.waiter_ttl)
            return self._leases[holder]

    def _drop_lease(self, holder: HolderId) -> None:
        with self._lease_lock:
            lease = self._leases.pop(holder, None)
        if lease is not None:
            try:
                self.conn.call(_revoker(lease.id))
            except BackendUnavailable:
                log.debug("revoking the waiter lease failed; it expires by itself")

    def _start_keepalive(self) -> None:
        if self._keepalive is not None and self._keepalive.is_alive():
            return
        self._keepalive_stop.clear()
        self._keepalive = threading.Thread(
            target=self._keepalive_loop, name="etcd-lease-keepalive", daemon=True
        )
        self._keepalive.start()

    def _keepalive_loop(self) -> None:
        while not self._keepalive_stop.wait(self.waiter_ttl / 3):
            with self._lease_lock:
                leases = list(self._leases.items())
            for holder, lease in leases:
                try:
                    responses = self.conn.call(_refresher(lease.id), retry_for=0)
                except BackendUnavailable as exc:
                    if isinstance(exc.__cause__, grpc.RpcError) and _lease_gone(exc.__cause__):
                        responses = []  # expired: dropped below, the agent queues again
                    else:
                        log.warning("cannot refresh the waiter lease: %s", exc)
                        continue
                if not responses or responses[0].TTL <= 0:
                    log.info("waiter lease of %s expired; the queue place will be taken again", holder)
                    with self._lease_lock:
                        if self._leases.get(holder) is lease:
                            del self._leases[holder]

    # --------------------------------------------------------------------------------------
    # watching

    def watch(self, on_change: Callable[[GroupView | None], None]) -> Callable[[], None]:
        watcher = _GroupWatch(self, on_change)
        self._watches.append(watcher)
        watcher.start()

        def stop() -> None:
            watcher.stop()
            self._watches.remove(watcher)

        return stop

    def close(self) -> None:
        self._keepalive_stop.set()
        self.conn.close()


class _GroupWatch:
    """Keeps a cached copy of the group's keys from one range read plus a watch from its revision.

    The watch covers the slots, the queue and the pause marker, but not the holder records: every
    phase change of every holder would otherwise wake every waiter of the group, and none of them
    decides anything on another node's phase. Records in the cache come from reads instead (the
    first one here, and every ``EtcdSemaphore.read()``, which the agent makes after each of its
    own writes), so a node's own record is always current. The key layout makes this one range:
    ``rebootcoord/holders/`` < ``rebootcoord/paused`` < ``rebootcoord/waiters/`` < ``semaphore``.

    The etcd3 watcher calls back on its own thread; a broken stream or a compacted revision makes
    this thread read again and watch anew, with backoff. Views are published in revision order.
    """

    def __init__(self, sem: EtcdSemaphore, on_change: Callable[[GroupView | None], None]) -> None:
        self.sem = sem
        self.on_change = on_change
        self._stop = threading.Event()
        self._broken = threading.Event()
        self._lock = threading.Lock()
        self._kvs: dict[str, _Kv] = {}
        self._revision = 0  # of the cache: the newest event applied or read absorbed
        self._floor = 0  # events at or below this revision are already in the cache
        self._watch_id: Any = None
        self._thread = threading.Thread(target=self._run, name=f"etcd-watch-{sem.group}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._broken.set()
        self._cancel()

    def _run(self) -> None:
        delay = 0.1
        while not self._stop.is_set():
            self._broken.clear()
            try:
                self._sync()
                delay = 0.1
            except _WATCH_ERRORS as exc:
                log.warning("etcd watch of group %s interrupted: %s", self.sem.group, exc)
                self.on_change(None)
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._broken.wait()
            self._cancel()
            if not self._stop.is_set():
                self._stop.wait(0.05)

    def _sync(self) -> None:
        # One attempt: this loop has its own backoff, and must report an outage promptly.
        kvs, revision = self.sem._range(retry_for=0)
        with self._lock:
            self._kvs = kvs
            self._revision = self._floor = revision
        self._publish()
        with self.sem.conn.translating():
            self._watch_id = self.sem.conn.client().add_watch_callback(
                self.sem.pause_key,
                self._on_event,
                range_end=_prefix_end(self.sem.base),
                start_revision=revision + 1,
            )

    def absorb(self, kvs: dict[str, _Kv], revision: int) -> None:
        """Take a fresh read into the cache: all of it when it is newer than what the watch has
        delivered, else only the holder records (which are not watched, so the read's are the
        newest known). Then publish, so the holder sees its own last write."""
        prefix = self.sem.records_prefix
        with self._lock:
            if revision > self._revision:
                self._kvs = dict(kvs)
                self._revision = self._floor = revision
            else:
                for key in [k for k in self._kvs if k.startswith(prefix)]:
                    del self._kvs[key]
                self._kvs.update({k: v for k, v in kvs.items() if k.startswith(prefix)})
        self._publish()

    def _cancel(self) -> None:
        watch_id, self._watch_id = self._watch_id, None
        if watch_id is not None:
            try:
                self.sem.conn.client().cancel_watch(watch_id)
            except Exception:
                log.debug("cancelling the etcd watch failed", exc_info=True)

    def _on_event(self, response: Any) -> None:
        if isinstance(response, BaseException):
            self._broken.set()
            return
        with self._lock:
            for event in response.events:
                if event.mod_revision <= self._floor:
                    continue  # already in a read that was absorbed
                key = event.key.decode()
                if isinstance(event, etcd3.events.DeleteEvent):
                    self._kvs.pop(key, None)
                else:
                    self._kvs[key] = _Kv(event.value, event.create_revision, event.mod_revision)
                self._revision = max(self._revision, int(event.mod_revision))
        self._publish()

    def _publish(self) -> None:
        with self._lock:
            view = self.sem._view(dict(self._kvs), self._revision)
        self.on_change(view)


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


def _decode_waiter(raw: bytes, *, holder: str, order: int) -> Waiter:
    try:
        doc = json.loads(raw)
        return Waiter(
            HolderId(holder), NodeName(str(doc.get("node", holder))), float(doc.get("since", 0)), order
        )
    except (ValueError, TypeError, AttributeError):
        # A waiter key is only a place in line; a bad one still holds its place.
        return Waiter(HolderId(holder), NodeName(holder), 0.0, order)


def _decode_pause(raw: bytes) -> PauseInfo:
    try:
        doc = json.loads(raw)
        return PauseInfo(str(doc.get("by", "?")), float(doc.get("at", 0)), str(doc.get("reason", "")))
    except (ValueError, TypeError, AttributeError):
        return PauseInfo("?", 0.0, "unreadable pause marker (still paused)")


def _maybe_record(kv: _Kv | None, key: str) -> HolderRecord | None:
    if kv is None:
        return None
    try:
        return HolderRecord.decode(kv.value, key=key)
    except CorruptDocument:
        return None


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
