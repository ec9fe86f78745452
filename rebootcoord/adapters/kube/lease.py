"""Kubernetes Lease semaphore backend.

One ``coordination.k8s.io/v1`` Lease per group, ``rebootcoord-<group>`` in the agent's namespace,
holds the slots and the holder records; ``spec.holderIdentity`` lists the holders, so
``kubectl get lease`` shows who is rebooting::

    metadata.annotations:
      rebootcoord.io/semaphore: {"total_slots": N, "holders": [sorted ids]}   (airlock's format)
      rebootcoord.io/holders:   {"<id>": <holder record>, ...}
      rebootcoord.io/paused:    {"by": ..., "at": ..., "reason": ...}           (while paused)
    spec.holderIdentity: "node-a,node-b"

Every change is a replace carrying the resourceVersion that was read: the API server answers 409
to a stale writer, which reads again. Waiters queue in their own Leases
(``rebootcoord-<group>.w.<id>``, label ``rebootcoord.io/group``), ordered by ``spec.acquireTime``
and alive while renewed; one watch on the group's label serves both, so a freed slot is seen
without polling. No expiry on holders by default: a reboot outlives any short TTL.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rebootcoord.adapters.kube.api import Gone, Kube, NotFound, micro_time, parse_time, path_segment
from rebootcoord.adapters.removal import HolderRemoval
from rebootcoord.core.semaphore import GroupView, HolderRecord, PauseInfo, SemaphoreState, Waiter
from rebootcoord.core.types import Group, HolderId, NodeName
from rebootcoord.errors import BackendUnavailable, Conflict, CorruptDocument, NoFreeSlot, NotHolder, SlotLost

log = logging.getLogger(__name__)

ANN_SLOTS = "rebootcoord.io/semaphore"
ANN_RECORDS = "rebootcoord.io/holders"
ANN_PAUSED = "rebootcoord.io/paused"
ANN_NODE = "rebootcoord.io/node"
LABEL_GROUP = "rebootcoord.io/group"
LABEL_ROLE = "rebootcoord.io/role"
MANAGED_BY = {"app.kubernetes.io/managed-by": "rebootcoord"}
MAX_CAS_ATTEMPTS = 50
# A watch lasts this long before it is re-established: the only requests of an idle agent.
WATCH_SECONDS = 900


_Decoded = tuple[SemaphoreState, dict[HolderId, HolderRecord], PauseInfo | None]
MAX_CACHED_WAITERS = 40_000


@dataclass(frozen=True)
class _QueuePlace:
    """A decoded waiter Lease: its place in line, and when it leaves the line unless renewed."""

    name: str
    queued: float
    renewed: float
    ttl: float
    waiter: Waiter

    def expired(self, now: float, *, ttls: int = 1) -> bool:
        """Not renewed for ``ttls`` times its lease duration."""
        return self.renewed + self.ttl * ttls < now


def _is_waiter(item: dict[str, Any]) -> bool:
    return (item["metadata"].get("labels") or {}).get(LABEL_ROLE) == "waiter"


class LeaseSemaphore(HolderRemoval):
    """The Semaphore port on a Kubernetes Lease. Thread-safe; one instance per group."""

    def __init__(
        self,
        kube: Kube,
        *,
        namespace: str,
        group: Group,
        waiter_ttl: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.group = group
        self.name = f"rebootcoord-{group}"
        self.waiter_ttl = max(5, round(waiter_ttl))
        self.clock = clock
        self.base = f"/apis/coordination.k8s.io/v1/namespaces/{path_segment(namespace)}/leases"
        self.path = f"{self.base}/{path_segment(self.name)}"
        self.selector = f"{LABEL_GROUP}={group}"
        self.conflicts = 0  # 409s met, for metrics and benchmarks
        self.on_conflict: Callable[[], None] | None = None
        self._mine: dict[HolderId, float] = {}  # waiters this process renews: id -> acquireTime
        self._renew_stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._lock = threading.Lock()
        # Decoded Leases by name, with the resourceVersion they were decoded at: a view of W
        # waiters decodes only those that changed since the last one (views are built on every
        # watch event, by every agent).
        self._waiters: dict[str, tuple[str, _QueuePlace]] = {}
        self._slots: tuple[str, _Decoded | CorruptDocument] | None = None

    def waiter_name(self, holder: HolderId) -> str:
        return f"{self.name}.w.{holder}"

    # ------------------------------------------------------------------------------------------
    # reading

    def _list(self) -> tuple[list[dict[str, Any]], str]:
        doc = self.kube.list_objects(self.base, labelSelector=self.selector)
        return list(doc.get("items") or []), str(doc["metadata"]["resourceVersion"])

    def read(self) -> GroupView:
        items, rv = self._list()
        return self.view(items, rv)

    def view(self, items: list[dict[str, Any]], resource_version: str) -> GroupView:
        """Build a view from the group's Leases (the semaphore and the waiters)."""
        lease = next((i for i in items if i["metadata"]["name"] == self.name), None)
        corrupt: list[CorruptDocument] = []
        slots = None
        records: dict[HolderId, HolderRecord] = {}
        paused = None
        if lease is not None:
            decoded = self._decode_cached(lease)
            if isinstance(decoded, CorruptDocument):
                corrupt.append(decoded)
            else:
                slots, records, paused = decoded
        now = self.clock()
        places = [self._place(item) for item in items if _is_waiter(item)]
        waiters = sorted((p for p in places if not p.expired(now)), key=lambda p: (p.queued, p.name))
        return GroupView(
            group=self.group,
            slots=slots,
            records=records,
            waiters=tuple(p.waiter for p in waiters),
            paused=paused,
            corrupt=tuple(corrupt),
            revision=_revision(resource_version),
        )

    def _place(self, item: dict[str, Any]) -> _QueuePlace:
        """A waiter Lease's place in line, decoded once per resourceVersion."""
        meta = item["metadata"]
        name, rv = meta["name"], str(meta.get("resourceVersion", ""))
        cached = self._waiters.get(name)
        if cached is not None and cached[0] == rv and rv:
            return cached[1]
        spec = item.get("spec") or {}
        renewed = parse_time(spec.get("renewTime")) or 0.0
        queued = parse_time(spec.get("acquireTime")) or renewed
        holder = HolderId(str(spec.get("holderIdentity") or ""))
        node = NodeName((meta.get("annotations") or {}).get(ANN_NODE, holder))
        place = _QueuePlace(
            name=name,
            queued=queued,
            renewed=renewed,
            ttl=float(spec.get("leaseDurationSeconds") or self.waiter_ttl),
            waiter=Waiter(holder, node, queued, round(queued * 1e6)),
        )
        if len(self._waiters) >= MAX_CACHED_WAITERS:
            self._waiters.clear()  # mostly names of waiters long gone; the live ones decode again
        self._waiters[name] = (rv, place)
        return place

    def _decode_cached(self, lease: dict[str, Any]) -> _Decoded | CorruptDocument:
        rv = str(lease["metadata"].get("resourceVersion", ""))
        cached = self._slots
        if cached is not None and cached[0] == rv and rv:
            return cached[1]
        decoded: _Decoded | CorruptDocument
        try:
            decoded = self._decode(lease)
        except CorruptDocument as exc:
            decoded = exc
        self._slots = (rv, decoded)
        return decoded

    def _decode(self, lease: dict[str, Any]) -> _Decoded:
        where = f"Lease {self.namespace}/{self.name}"
        annotations = lease["metadata"].get("annotations") or {}
        raw_slots = annotations.get(ANN_SLOTS)
        if raw_slots is None:
            raise CorruptDocument(where, f"annotation {ANN_SLOTS} is missing")
        slots = SemaphoreState.decode(raw_slots.encode(), key=f"{where} annotation {ANN_SLOTS}")
        records: dict[HolderId, HolderRecord] = {}
        try:
            raw_records = json.loads(annotations.get(ANN_RECORDS) or "{}")
        except ValueError as exc:
            raise CorruptDocument(f"{where} annotation {ANN_RECORDS}", f"not valid JSON ({exc})") from None
        if not isinstance(raw_records, dict):
            raise CorruptDocument(f"{where} annotation {ANN_RECORDS}", "expected a JSON object")
        for holder, doc in raw_records.items():
            record = HolderRecord.decode(json.dumps(doc).encode(), key=f"{where} holder {holder}")
            if record.id != holder:
                raise CorruptDocument(where, f"record id {record.id!r} filed under {holder!r}")
            records[record.id] = record
        paused = None
        if ANN_PAUSED in annotations:
            try:
                doc = json.loads(annotations[ANN_PAUSED])
                paused = PauseInfo(
                    str(doc.get("by", "?")), float(doc.get("at", 0)), str(doc.get("reason", ""))
                )
            except (ValueError, TypeError, AttributeError):
                paused = PauseInfo("?", 0.0, "unreadable pause marker (still paused)")
        return slots, records, paused

    # ------------------------------------------------------------------------------------------
    # writing: read the Lease, change it, replace it with the resourceVersion that was read

    def _get(self) -> dict[str, Any] | None:
        try:
            lease: dict[str, Any] = self.kube.get(self.path)
            return lease
        except NotFound:
            return None

    def _replace(self, lease: dict[str, Any], slots: SemaphoreState, records: dict[HolderId, HolderRecord], *,
                 paused: PauseInfo | bool | None = False, acquired: bool = False) -> int:  # fmt: skip
        """Write the new state with the read resourceVersion; the new revision. Raises Conflict."""
        meta = lease["metadata"]
        annotations = dict(meta.get("annotations") or {})
        annotations[ANN_SLOTS] = slots.encode().decode()
        annotations[ANN_RECORDS] = json.dumps(
            {h: json.loads(r.encode()) for h, r in sorted(records.items())}, sort_keys=True
        )
        if paused is None:
            annotations.pop(ANN_PAUSED, None)
        elif isinstance(paused, PauseInfo):
            annotations[ANN_PAUSED] = json.dumps({"by": paused.by, "at": paused.at, "reason": paused.reason})
        spec = dict(lease.get("spec") or {})
        now = micro_time(self.clock())
        spec["holderIdentity"] = ",".join(slots.holders) or None
        spec["renewTime"] = now
        if acquired:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {**meta, "annotations": annotations},
            "spec": {k: v for k, v in spec.items() if v is not None},
        }
        try:
            written = self.kube.replace(self.path, body)
        except Conflict:
            with self._lock:
                self.conflicts += 1
            if self.on_conflict is not None:
                self.on_conflict()
            raise
        return _revision(written["metadata"]["resourceVersion"])

    def _cas(
        self, attempt: Callable[[dict[str, Any]], int | None], *, missing_ok: bool = False
    ) -> int | None:
        """Read, ``attempt`` the write, again on 409. No Lease: None if ``missing_ok``, else NotHolder."""
        for _ in range(MAX_CAS_ATTEMPTS):
            lease = self._get()
            if lease is None:
                if missing_ok:
                    return None
                raise NotHolder(f"group {self.group} has no semaphore Lease {self.namespace}/{self.name} yet")
            try:
                return attempt(lease)
            except Conflict:
                continue
        raise Conflict(f"gave up after {MAX_CAS_ATTEMPTS} conflicting writes on Lease {self.name}")

    def ensure(self, max_holders: int) -> None:
        # Read first: every agent start ensures, and a create of an existing Lease is a 409 that
        # would count as a conflict (and an error in the API server's metrics) for nothing.
        if self._get() is not None:
            return
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": {**MANAGED_BY, LABEL_GROUP: self.group, LABEL_ROLE: "semaphore"},
                "annotations": {ANN_SLOTS: SemaphoreState(max_holders).encode().decode(), ANN_RECORDS: "{}"},
            },
            "spec": {"renewTime": micro_time(self.clock())},
        }
        with contextlib.suppress(Conflict):  # AlreadyExists: like airlock, max is written at creation only
            self.kube.create(self.base, body)

    def acquire(self, record: HolderRecord) -> int | None:
        items, rv = self._list()  # the semaphore Lease and the queue, at one resourceVersion
        lease = next((i for i in items if i["metadata"]["name"] == self.name), None)
        if lease is None:
            return None
        view = self.view(items, rv)
        if view.corrupt:
            raise view.corrupt[0]
        if view.holds(record.id):
            return view.revision if view.record(record.id) == record else None
        if view.slots is None or not view.may_take(record.id):
            return None
        try:
            written = self._replace(
                lease, view.slots.acquire(record.id), {**view.records, record.id: record}, acquired=True
            )
        except (Conflict, NoFreeSlot):
            return None
        self.leave_queue(record.id)
        self.prune_waiters(items)  # waiter Leases of agents long gone (deleted nodes, removed pods)
        return written

    def update(self, record: HolderRecord) -> None:
        def attempt(lease: dict[str, Any]) -> int | None:
            slots, records, _ = self._decode(lease)
            if not slots.holds(record.id) or record.id not in records:
                raise SlotLost(f"{record.id} no longer holds a slot in group {self.group}")
            return self._replace(lease, slots, {**records, record.id: record})

        try:
            self._cas(attempt)
        except NotHolder as exc:
            raise SlotLost(str(exc)) from None

    def _remove(
        self, holder: HolderId, *, must_hold: bool, expect: HolderRecord | None
    ) -> tuple[HolderRecord | None, int | None]:
        removed: list[HolderRecord | None] = [None]

        def attempt(lease: dict[str, Any]) -> int | None:
            slots, records, _ = self._decode(lease)
            holds = slots.holds(holder)
            if not holds and holder not in records:
                if must_hold:
                    held = ", ".join(slots.holders) or "none"
                    raise NotHolder(f"{holder!r} holds no slot in group {self.group} (holders: {held})")
                return None
            current = records.get(holder)
            if expect is not None and (current is None or current.acquired_at != expect.acquired_at):
                raise NotHolder(f"{holder!r} holds the slot again since; not reclaimed")
            removed[0] = current
            new_slots = slots.release(holder) if holds else slots
            return self._replace(lease, new_slots, {h: r for h, r in records.items() if h != holder})

        revision = self._cas(attempt, missing_ok=True)
        return removed[0], revision

    def drop_record(self, holder: HolderId) -> None:
        def attempt(lease: dict[str, Any]) -> int | None:
            slots, records, _ = self._decode(lease)
            if holder not in records:
                return None
            if slots.holds(holder):
                raise Conflict(f"{holder} holds a slot again; its record stays")
            return self._replace(lease, slots, {h: r for h, r in records.items() if h != holder})

        self._cas(attempt)

    def lock(self, holder: HolderId, record: HolderRecord) -> None:
        def attempt(lease: dict[str, Any]) -> int | None:
            slots, records, _ = self._decode(lease)
            if slots.holds(holder):
                raise NoFreeSlot(f"{holder!r} already holds a slot")
            return self._replace(lease, slots.acquire(holder), {**records, holder: record}, acquired=True)

        self._cas(attempt)

    def set_max(self, new_max: int) -> None:
        if self._get() is None:
            SemaphoreState(1).with_max(new_max)  # validates
            self.ensure(new_max)
            return

        def attempt(lease: dict[str, Any]) -> int | None:
            slots, records, _ = self._decode(lease)
            return self._replace(lease, slots.with_max(new_max), records)

        self._cas(attempt)

    def pause(self, info: PauseInfo) -> None:
        def attempt(lease: dict[str, Any]) -> int | None:
            slots, records, _ = self._decode(lease)
            return self._replace(lease, slots, records, paused=info)

        self._cas(attempt)

    def resume(self) -> None:
        def attempt(lease: dict[str, Any]) -> int | None:
            slots, records, _ = self._decode(lease)
            return self._replace(lease, slots, records, paused=None)

        self._cas(attempt)

    # ------------------------------------------------------------------------------------------
    # the queue: one Lease per waiter, renewed by its agent

    def join_queue(self, waiter: Waiter) -> None:
        name = self.waiter_name(waiter.id)
        path = f"{self.base}/{path_segment(name)}"
        now = self.clock()
        try:
            existing = self.kube.get(path)
        except NotFound:
            existing = None
        if existing is not None:
            # Keep the place in line across a restart: same acquireTime, renewed.
            queued = parse_time((existing.get("spec") or {}).get("acquireTime")) or now
            self.kube.merge_patch(path, {"spec": {"renewTime": micro_time(now)}})
        else:
            queued = now
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": name,
                    "namespace": self.namespace,
                    "labels": {**MANAGED_BY, LABEL_GROUP: self.group, LABEL_ROLE: "waiter"},
                    "annotations": {ANN_NODE: waiter.node},
                },
                "spec": {
                    "holderIdentity": waiter.id,
                    "leaseDurationSeconds": self.waiter_ttl,
                    "acquireTime": micro_time(now),
                    "renewTime": micro_time(now),
                },
            }
            with contextlib.suppress(Conflict):  # created meanwhile by our previous incarnation
                self.kube.create(self.base, body)
        with self._lock:
            self._mine[waiter.id] = queued
        self._start_renewer()

    def leave_queue(self, holder: HolderId) -> None:
        with self._lock:
            self._mine.pop(holder, None)
        with contextlib.suppress(NotFound):
            self.kube.delete(f"{self.base}/{path_segment(self.waiter_name(holder))}")

    def _start_renewer(self) -> None:
        if self._renewer is not None and self._renewer.is_alive():
            return
        self._renew_stop.clear()
        self._renewer = threading.Thread(target=self._renew_loop, name="lease-waiter-renew", daemon=True)
        self._renewer.start()

    def _renew_loop(self) -> None:
        while not self._renew_stop.wait(self.waiter_ttl / 3):
            with self._lock:
                mine = list(self._mine)
            for holder in mine:
                path = f"{self.base}/{path_segment(self.waiter_name(holder))}"
                try:
                    self.kube.request("PATCH", path, body={"spec": {"renewTime": micro_time(self.clock())}},
                                      content_type="application/merge-patch+json")  # fmt: skip
                except NotFound:
                    log.info("waiter Lease of %s is gone; the agent will queue again", holder)
                    with self._lock:
                        self._mine.pop(holder, None)
                except BackendUnavailable as exc:
                    log.warning("cannot renew the waiter Lease of %s: %s", holder, exc)

    def prune_waiters(self, view_items: list[dict[str, Any]]) -> None:
        """Delete waiter Leases whose agents stopped renewing them (precondition: unchanged)."""
        now = self.clock()
        for item in view_items:
            if _is_waiter(item) and self._place(item).expired(now, ttls=3):
                meta = item["metadata"]
                body = {"preconditions": {"resourceVersion": meta["resourceVersion"]}}
                with contextlib.suppress(NotFound, Conflict):
                    self.kube.delete(f"{self.base}/{path_segment(meta['name'])}", body)

    # ------------------------------------------------------------------------------------------
    # watching

    def watch(self, on_change: Callable[[GroupView | None], None]) -> Callable[[], None]:
        watcher = _LeaseWatch(self, on_change)
        watcher.start()
        return watcher.stop

    def close(self) -> None:
        self._renew_stop.set()


class _LeaseWatch:
    """List + watch of the group's Leases (label selector), re-listing on 410 Gone.

    Every waiter renews its Lease every waiter_ttl/3, and every agent watches every renewal: with
    W waiters, each agent receives 3W/waiter_ttl events a second. A renewal changes no view (the
    waiter stays in line), so it is stored without building one: building a view reads all W
    waiters, and doing so per renewal costs the fleet W^2 work per renewal period.

    A waiter that stops renewing leaves the line by the passing of time, not by an event: a local
    timer (no request) republishes the view when the set of expired waiters has changed.
    """

    def __init__(self, sem: LeaseSemaphore, on_change: Callable[[GroupView | None], None]) -> None:
        self.sem = sem
        self.on_change = on_change
        self._stop = threading.Event()
        self._items: dict[str, dict[str, Any]] = {}
        self._rv = "0"
        self._expired: frozenset[str] = frozenset()  # expired waiters as of the last view
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"lease-watch-{sem.group}", daemon=True)
        self._ticker = threading.Thread(target=self._tick, name=f"lease-tick-{sem.group}", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ticker.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        delay = 0.2
        need_list = True
        while not self._stop.is_set():
            try:
                if need_list:
                    items, rv = self.sem.kube.call(self.sem._list, retry_for=0)
                    with self._lock:
                        self._items = {i["metadata"]["name"]: i for i in items}
                        self._rv = rv
                    self._publish()
                    need_list = False
                for event in self.sem.kube.watch(
                    self.sem.base,
                    resource_version=self._rv,
                    labelSelector=self.sem.selector,
                    timeout_seconds=WATCH_SECONDS,
                ):
                    if self._stop.is_set():
                        return
                    self._apply(event)
                delay = 0.2
            except Gone:
                need_list = True
            except BackendUnavailable as exc:
                log.warning("Lease watch of group %s interrupted: %s", self.sem.group, exc)
                self.on_change(None)
                need_list = True
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)

    def _apply(self, event: dict[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        meta = obj.get("metadata") or {}
        with self._lock:
            if meta.get("resourceVersion"):
                self._rv = str(meta["resourceVersion"])
            if kind == "BOOKMARK":
                return
            if kind == "DELETED":
                self._items.pop(meta.get("name", ""), None)
            else:
                before = self._items.get(meta["name"])
                self._items[meta["name"]] = obj
                if kind == "MODIFIED" and self._renewed(before, obj):
                    return
        self._publish()

    def _renewed(self, before: dict[str, Any] | None, after: dict[str, Any]) -> bool:
        """A waiter that was in line renewed its Lease, and nothing else changed."""
        if before is None or not _is_waiter(after):
            return False
        if before["metadata"]["name"] in self._expired:
            return False  # back in line: the view changes
        return _unrenewed(before) == _unrenewed(after)

    def _expired_now(self) -> frozenset[str]:
        now = self.sem.clock()
        items = self._items.items()
        return frozenset(name for name, i in items if _is_waiter(i) and self.sem._place(i).expired(now))

    def _publish(self) -> None:
        with self._lock:
            items, rv = list(self._items.values()), self._rv
            self._expired = self._expired_now()
        self.on_change(self.sem.view(items, rv))

    def _tick(self) -> None:
        while not self._stop.wait(max(1.0, self.sem.waiter_ttl / 3)):
            with self._lock:
                changed = bool(self._items) and self._expired_now() != self._expired
            if changed:
                self._publish()


def _unrenewed(lease: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A Lease without what a renewal changes: spec.renewTime and the bookkeeping of every write."""
    meta = {k: v for k, v in lease["metadata"].items() if k not in ("resourceVersion", "managedFields")}
    spec = {k: v for k, v in (lease.get("spec") or {}).items() if k != "renewTime"}
    return meta, spec


def _revision(resource_version: str) -> int:
    try:
        return int(resource_version)
    except (TypeError, ValueError):
        return 0
