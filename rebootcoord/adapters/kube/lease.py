"""Kubernetes Leases: the group's store and wait queue.

``LeaseGroupStore``: one ``coordination.k8s.io/v1`` Lease per group, ``rebootcoord-<group>`` in
the agent's namespace, holds the slots and the holder records; ``spec.holderIdentity`` lists the
holders, so ``kubectl get lease`` shows who is rebooting::

    metadata.annotations:
      rebootcoord.io/semaphore: {"total_slots": N, "holders": [sorted ids]}   (airlock's format)
      rebootcoord.io/holders:   {"<id>": <holder record>, ...}
      rebootcoord.io/paused:    {"by": ..., "at": ..., "reason": ...}           (while paused)
      rebootcoord.io/ledger:    {"rollout": {...}, "history": [...]}             (core.rollout)
    spec.holderIdentity: "node-a,node-b"

A write replaces the Lease with the resourceVersion that was read: the API server answers 409
to a stale writer (Conflict), which reads again. The rules are the core's (rebootcoord.core.group).

``LeaseWaitQueue``: a waiter's place is a Lease of its own, ``rebootcoord-<group>.w.<id>`` (an id
that does not make a valid Lease name, or makes one over 253 characters, is hashed:
``rebootcoord-<group>.w.h-<sha256 of the id, 40 hex digits>``; the id is the Lease's holderIdentity)
(labels ``rebootcoord.io/group`` and ``rebootcoord.io/role=waiter``), ordered by
``spec.acquireTime``. Bound to its agent's Pod (an ownerReference, when POD_NAME and POD_UID say
which), it goes with the Pod -- the garbage collector deletes it when the Pod is deleted, and the
pods of a deleted Node are deleted -- and is renewed only every five minutes as a safety valve;
unbound (an agent outside a Pod), every ``ttl``/3, and it expires ``ttl`` after its last
renewal. Each waiter watches only the Lease just ahead of it: woken when it is deleted, when it
expires, or -- for the head of the line, by the waiter behind it -- when its Node is not Ready.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rebootcoord.adapters.kube.api import Gone, Kube, NotFound, micro_time, parse_time, path_segment
from rebootcoord.core.bounds import LEASE_CAPACITY
from rebootcoord.core.documents import load_object, quoted
from rebootcoord.core.fleetlock import place_ttl
from rebootcoord.core.group import GroupState
from rebootcoord.core.rollout import Ledger
from rebootcoord.core.semaphore import AGENT, FLEETLOCK, HolderRecord, PauseInfo, SemaphoreState, Waiter
from rebootcoord.core.types import Group, HolderId, NodeName, lease_name_ok
from rebootcoord.errors import BackendUnavailable, Conflict, CorruptDocument, IdInUse

log = logging.getLogger(__name__)

ANN_SLOTS = "rebootcoord.io/semaphore"
ANN_RECORDS = "rebootcoord.io/holders"
ANN_PAUSED = "rebootcoord.io/paused"
ANN_LEDGER = "rebootcoord.io/ledger"
ANN_NODE = "rebootcoord.io/node"
ANN_KIND = "rebootcoord.io/kind"  # a waiter Lease's: whose place it is (agent, fleetlock)
LABEL_GROUP = "rebootcoord.io/group"
LABEL_ROLE = "rebootcoord.io/role"
MANAGED_BY = {"app.kubernetes.io/managed-by": "rebootcoord"}
#: A waiter Lease bound to its Pod is renewed this often (at most 12 writes an hour).
BOUND_RENEWAL = 300.0
#: The waiter just behind the head of the line looks at the head's Node this often (not Ready:
#: the head loses its place).
NODE_CHECK = 15.0
MAX_CACHED_WAITERS = 40_000


@dataclass(frozen=True)
class PodRef:
    """The agent's own Pod (downward API: POD_NAME, POD_UID): the owner of its waiter Lease."""

    name: str
    uid: str


@dataclass(frozen=True)
class LeaseVersion:
    revision: int  # the resourceVersion as a number (an etcd revision)
    resource_version: str | None  # None: the Lease does not exist
    lease: dict[str, Any] | None = field(default=None, compare=False, repr=False)


def leases_path(namespace: str) -> str:
    return f"/apis/coordination.k8s.io/v1/namespaces/{path_segment(namespace)}/leases"


class LeaseGroupStore:
    """The GroupStore on one Lease. Thread-safe. Its annotations total at most 256 KiB (the API
    server's limit): the group's documents may take ``capacity`` of it (core.bounds)."""

    capacity = LEASE_CAPACITY

    def __init__(
        self, kube: Kube, *, namespace: str, group: Group, clock: Callable[[], float] = time.time
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.group = group
        self.clock = clock
        self.name = f"rebootcoord-{group}"
        self.base = leases_path(namespace)
        self.path = f"{self.base}/{path_segment(self.name)}"
        self.conflicts = 0
        self._decoded: tuple[str, GroupState] | None = None
        # (revision, slots, pause) of the Lease last read: what a wait for the slots compares with
        self._seen: tuple[int, object, object] | None = None
        self._known: dict[str, Any] | None = None  # the Lease as last read or written (RemembersLast)
        self._lock = threading.Lock()

    def remembered(self) -> tuple[GroupState, LeaseVersion] | None:
        """The Lease as this store last read or wrote it: what a write can be tried against
        with no GET (a stale one is a 409), and what the writer's next turn may start from."""
        with self._lock:
            lease = self._known
        if lease is None:
            return None
        rv = str(lease["metadata"].get("resourceVersion", ""))
        return self.decode(lease), LeaseVersion(_revision(rv), rv, lease)

    def _remember(self, lease: dict[str, Any] | None) -> None:
        with self._lock:
            self._known = lease
            if lease is not None:
                rv = str(lease["metadata"].get("resourceVersion", ""))
                self._seen = (_revision(rv), *_slots_and_pause(lease))

    def read(self) -> tuple[GroupState, LeaseVersion]:
        try:
            lease = self.kube.get(self.path)
        except NotFound:
            self._remember(None)
            # No Lease yet: the revision is the store's now (what a watch or a history starts from).
            doc = self.kube.list_objects(self.base, limit=1, labelSelector=f"{LABEL_GROUP}={self.group}")
            return GroupState(), LeaseVersion(_revision(str(doc["metadata"]["resourceVersion"])), None)
        rv = str(lease["metadata"].get("resourceVersion", ""))
        with self._lock:
            self._seen = (_revision(rv), *_slots_and_pause(lease))
            self._known = lease
        return self.decode(lease), LeaseVersion(_revision(rv), rv, lease)

    def decode(self, lease: dict[str, Any]) -> GroupState:
        """The state in a Lease, decoded once per resourceVersion."""
        rv = str(lease["metadata"].get("resourceVersion", ""))
        with self._lock:
            cached = self._decoded
        if cached is not None and cached[0] == rv and rv:
            return cached[1]
        state = self._decode(lease)
        with self._lock:
            self._decoded = (rv, state)
        return state

    def _decode(self, lease: dict[str, Any]) -> GroupState:
        where = f"Lease {self.namespace}/{self.name}"
        annotations = lease["metadata"].get("annotations") or {}
        raw_slots = annotations.get(ANN_SLOTS)
        paused = (
            PauseInfo.decode(str(annotations[ANN_PAUSED]).encode()) if ANN_PAUSED in annotations else None
        )
        try:
            if raw_slots is None:
                raise CorruptDocument(where, f"annotation {ANN_SLOTS} is missing")
            slots = SemaphoreState.decode(str(raw_slots).encode(), key=f"{where} annotation {ANN_SLOTS}")
            records = self._records(annotations, where)
        except CorruptDocument as exc:
            return GroupState(None, {}, paused, (exc,))
        try:
            raw_ledger = annotations.get(ANN_LEDGER)
            key = f"{where} annotation {ANN_LEDGER}"
            ledger = Ledger.decode(str(raw_ledger).encode(), key=key) if raw_ledger else Ledger()
        except CorruptDocument as exc:
            return GroupState(slots, records, paused, (exc,))
        return GroupState(slots, records, paused, (), ledger)

    def _records(self, annotations: dict[str, Any], where: str) -> dict[HolderId, HolderRecord]:
        raw = load_object(str(annotations.get(ANN_RECORDS) or "{}"), f"{where} annotation {ANN_RECORDS}")
        records: dict[HolderId, HolderRecord] = {}
        for holder, doc in raw.items():
            record = HolderRecord.decode(json.dumps(doc).encode(), key=f"{where} holder {holder}")
            if record.id != holder:
                raise CorruptDocument(where, f"record id {quoted(record.id)} filed under {quoted(holder)}")
            records[record.id] = record
        return records

    def write(self, new: GroupState, *, expect: LeaseVersion) -> int:
        try:
            if expect.lease is None:
                return self._create(new)
            return self._replace(new, expect.lease)
        except Conflict:
            with self._lock:
                self.conflicts += 1
            raise

    def _annotations(self, new: GroupState, base: dict[str, Any]) -> dict[str, Any]:
        annotations = dict(base)
        assert new.slots is not None, "a state without slots is never written"
        annotations[ANN_SLOTS] = new.slots.encode().decode()
        annotations[ANN_RECORDS] = json.dumps(
            {h: json.loads(r.encode()) for h, r in sorted(new.records.items())},
            sort_keys=True,
            ensure_ascii=False,
        )
        if new.paused is None:
            annotations.pop(ANN_PAUSED, None)
        else:
            annotations[ANN_PAUSED] = new.paused.encode().decode()
        if new.ledger.empty:
            annotations.pop(ANN_LEDGER, None)
        else:
            annotations[ANN_LEDGER] = new.ledger.encode().decode()
        return annotations

    def _create(self, new: GroupState) -> int:
        now = micro_time(self.clock())
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": {**MANAGED_BY, LABEL_GROUP: self.group, LABEL_ROLE: "semaphore"},
                "annotations": self._annotations(new, {}),
            },
            "spec": {"renewTime": now, **({"holderIdentity": ",".join(new.slots.holders)}
                                          if new.slots and new.slots.holders else {})},
        }  # fmt: skip
        created = self.kube.create(self.base, body)  # AlreadyExists: a 409, a Conflict
        self._remember(created)
        return _revision(created["metadata"]["resourceVersion"])

    def _replace(self, new: GroupState, lease: dict[str, Any]) -> int:
        meta = lease["metadata"]
        old = self.decode(lease)
        spec = dict(lease.get("spec") or {})
        now = micro_time(self.clock())
        holders = new.slots.holders if new.slots else ()
        spec["holderIdentity"] = ",".join(holders) or None
        spec["renewTime"] = now
        if set(holders) - set(old.slots.holders if old.slots else ()):
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {**meta, "annotations": self._annotations(new, meta.get("annotations") or {})},
            "spec": {k: v for k, v in spec.items() if v is not None},
        }
        try:
            written = self.kube.replace(self.path, body)
        except Conflict:
            self._remember(None)  # stale: the next write reads first
            raise
        self._remember(written)
        return _revision(written["metadata"]["resourceVersion"])

    def watch(self, on_change: Callable[[GroupState | None], None], *, since: int = 0) -> Callable[[], None]:
        """The slots and the pause in the group's Lease, from ``since``. The Lease holds the
        holders' records, too: a write that changes neither slots nor pause (a phase change)
        wakes nobody, when ``since`` is the version this store last read (else any write does)."""
        query = {"fieldSelector": f"metadata.name={self.name}"}
        with self._lock:
            seen = self._seen
        baseline = seen[1:] if seen is not None and seen[0] == since else None

        def wanted(event: dict[str, Any]) -> bool:
            if baseline is None or event.get("type") != "MODIFIED":
                return True
            return _slots_and_pause(event.get("object") or {}) != baseline

        return _OneShotWatch(
            self.kube, self.base, query, since=since, wanted=wanted, on_change=lambda: on_change(None)
        ).start()

    def close(self) -> None:
        return None


class LeaseGroupCatalog:
    """The GroupCatalog on Leases: the groups' semaphore Leases of the namespace."""

    def __init__(self, kube: Kube, *, namespace: str) -> None:
        self.kube = kube
        self.base = leases_path(namespace)

    def count(self, limit: int) -> int:
        return len(self._items(limit))

    def names(self, limit: int) -> tuple[Group, ...]:
        """Each semaphore Lease's group (its label; its name without the prefix, without one)."""
        found = []
        for item in self._items(limit):
            meta = item.get("metadata") or {}
            group = (meta.get("labels") or {}).get(LABEL_GROUP) or str(meta.get("name", "")).removeprefix(
                "rebootcoord-"
            )
            found.append(Group(str(group)))
        return tuple(sorted(found))

    def _items(self, limit: int) -> list[dict[str, Any]]:
        doc = self.kube.list_objects(self.base, limit=limit, labelSelector=f"{LABEL_ROLE}=semaphore")
        return list(doc.get("items") or [])


def _slots_and_pause(lease: dict[str, Any]) -> tuple[object, object]:
    annotations = (lease.get("metadata") or {}).get("annotations") or {}
    return annotations.get(ANN_SLOTS), annotations.get(ANN_PAUSED)


@dataclass(frozen=True)
class _Place:
    """A decoded waiter Lease: its place in line, and when it leaves the line unless renewed."""

    name: str
    queued: float
    renewed: float
    ttl: float
    bound: bool  # owned by its agent's Pod
    node: str
    rv: str
    waiter: Waiter

    def expired(self, now: float, *, ttls: int = 1) -> bool:
        return self.renewed + self.ttl * ttls < now


def _is_waiter(item: dict[str, Any]) -> bool:
    return (item["metadata"].get("labels") or {}).get(LABEL_ROLE) == "waiter"


class LeaseWaitQueue:
    """The WaitQueue on waiter Leases. Thread-safe."""

    def __init__(
        self,
        kube: Kube,
        *,
        namespace: str,
        group: Group,
        ttl: float = 30.0,
        owner: PodRef | None = None,
        clock: Callable[[], float] = time.time,
        background: bool = True,
    ) -> None:
        """``background``: renew this process's places (an agent); without it (the FleetLock
        server, whose clients poll) a join renews the place, which lives ``ttl`` from then."""
        self.kube = kube
        self.background = background
        self.namespace = namespace
        self.group = group
        self.ttl = float(ttl)  # from 5 s: checked once, in config (p_waiter_ttl)
        self.owner = owner
        self.clock = clock
        self.base = leases_path(namespace)
        self.selector = f"{LABEL_GROUP}={group},{LABEL_ROLE}=waiter"
        # Bound to its Pod, a waiter goes with it; the Lease's own TTL is only a safety valve.
        self.renew_every = max(self.ttl / 3, BOUND_RENEWAL) if owner else self.ttl / 3
        self.duration = max(self.ttl, 3 * self.renew_every)
        self.renewals = 0  # PATCHes of our waiter Leases (the benchmarks' writes of a waiting agent)
        self._mine: dict[HolderId, str] = {}  # holder -> name of the Lease this process renews
        self._left: set[HolderId] = set()  # an agent's places it deleted and has not joined since
        self._places: dict[str, tuple[str, _Place]] = {}
        self._lock = threading.Lock()
        self._renew_stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def name_of(self, holder: HolderId) -> str:
        name = f"rebootcoord-{self.group}.w.{holder}"
        if lease_name_ok(name):
            return name
        digest = hashlib.sha256(holder.encode("utf-8", "surrogatepass")).hexdigest()[:40]
        return f"rebootcoord-{self.group}.w.h-{digest}"

    def _path(self, name: str) -> str:
        return f"{self.base}/{path_segment(name)}"

    # -- the line ------------------------------------------------------------------------------

    def waiters(self) -> tuple[Waiter, ...]:
        doc = self.kube.list_objects(self.base, labelSelector=self.selector)
        now = self.clock()
        places = [self._place(item) for item in doc.get("items") or [] if _is_waiter(item)]
        alive = sorted((p for p in places if not p.expired(now)), key=lambda p: (p.queued, p.name))
        for place in places:
            if place.expired(now, ttls=3):
                self._delete(place.name, place.rv)  # long dead: its Lease goes (precondition: unchanged)
        return tuple(p.waiter for p in alive)

    def _place(self, item: dict[str, Any]) -> _Place:
        """A waiter Lease's place in line, decoded once per resourceVersion."""
        meta = item["metadata"]
        name, rv = meta["name"], str(meta.get("resourceVersion", ""))
        with self._lock:
            cached = self._places.get(name)
        if cached is not None and cached[0] == rv and rv:
            return cached[1]
        spec = item.get("spec") or {}
        renewed = parse_time(spec.get("renewTime")) or 0.0
        queued = parse_time(spec.get("acquireTime")) or renewed
        holder = HolderId(str(spec.get("holderIdentity") or ""))
        annotations = meta.get("annotations") or {}
        node = str(annotations.get(ANN_NODE, holder))
        kind = annotations.get(ANN_KIND, AGENT)
        place = _Place(
            name=name,
            queued=queued,
            renewed=renewed,
            ttl=float(spec.get("leaseDurationSeconds") or self.ttl),
            bound=any(o.get("kind") == "Pod" for o in meta.get("ownerReferences") or []),
            node=node,
            rv=rv,
            waiter=Waiter(
                holder,
                NodeName(node),
                queued,
                round(queued * 1e6),
                kind if kind in (AGENT, FLEETLOCK) else AGENT,
            ),
        )
        with self._lock:
            if len(self._places) >= MAX_CACHED_WAITERS:
                self._places.clear()  # mostly names of waiters long gone; the live ones decode again
            self._places[name] = (rv, place)
        return place

    def join(self, waiter: Waiter) -> None:
        """Take or keep ``waiter``'s place. A poller's (``background`` False) lives one and a
        half of its own poll intervals after each poll (core.fleetlock.place_ttl): the time since
        the Lease's last renewal is the client's interval. A place of another kind (an agent's)
        is never taken over: IdInUse."""
        name = self.name_of(waiter.id)
        now = self.clock()
        owner = self._owner_refs()
        duration = round(self.duration)
        if self.background and self._create(waiter, name, now, duration, owner):
            # An agent joins with no read first: a place of its own from a previous incarnation
            # (or another kind's) answers 409, and only then is it read.
            self._joined(waiter.id, name)
            return
        try:
            existing = self.kube.get(self._path(name))
        except NotFound:
            existing = None
        if existing is not None:
            place = self._place(existing)
            if place.waiter.kind != waiter.kind:
                raise IdInUse(f"{waiter.id!r} has a place in line as {place.waiter.kind}, not {waiter.kind}")
            if not self.background:
                duration = place_ttl(now - place.renewed if place.renewed else None, self.ttl)
            # Keep the place in line across a restart: same acquireTime, renewed, owned anew.
            patch: dict[str, Any] = {"spec": {"renewTime": micro_time(now), "leaseDurationSeconds": duration}}
            if not self.background:
                patch["metadata"] = {"resourceVersion": place.rv}  # what was checked is what is kept
            if owner:
                patch["metadata"] = {"ownerReferences": owner}
            try:
                self.kube.merge_patch(self._path(name), patch)
            except NotFound:
                existing = None  # expired and deleted meanwhile: queue again
        if existing is None:
            if not self.background:
                duration = place_ttl(None, self.ttl)
            self._create(waiter, name, now, duration, owner)  # 409: created meanwhile, kept
        if self.background:
            self._joined(waiter.id, name)

    def _create(
        self, waiter: Waiter, name: str, now: float, duration: int, owner: list[dict[str, Any]]
    ) -> bool:
        """Create ``waiter``'s Lease; False when it exists already (409)."""
        metadata: dict[str, Any] = {
            "name": name,
            "namespace": self.namespace,
            "labels": {**MANAGED_BY, LABEL_GROUP: self.group, LABEL_ROLE: "waiter"},
            "annotations": {ANN_NODE: waiter.node, ANN_KIND: waiter.kind},
        }
        if owner:
            metadata["ownerReferences"] = owner
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": {
                "holderIdentity": waiter.id,
                "leaseDurationSeconds": duration,
                "acquireTime": micro_time(now),
                "renewTime": micro_time(now),
            },
        }
        try:
            self.kube.create(self.base, body)
        except Conflict:
            return False
        return True

    def _joined(self, holder: HolderId, name: str) -> None:
        with self._lock:
            self._mine[holder] = name
            self._left.discard(holder)
        self._start_renewer()

    def _owner_refs(self) -> list[dict[str, Any]]:
        if self.owner is None:
            return []
        return [{"apiVersion": "v1", "kind": "Pod", "name": self.owner.name, "uid": self.owner.uid}]

    def joined(self, holder: HolderId) -> bool:
        with self._lock:
            return holder in self._mine

    def leave(self, holder: HolderId) -> None:
        """Delete ``holder``'s place. An agent that deleted it already (a take leaves the line,
        the release leaves it again) and has not joined since has none: no request."""
        with self._lock:
            self._mine.pop(holder, None)
            if holder in self._left:
                return
        with contextlib.suppress(NotFound):
            self.kube.delete(self._path(self.name_of(holder)))
        if self.background:  # only this process recreates its places (the server's: its peers too)
            with self._lock:
                self._left.add(holder)

    def renew(self, holder: HolderId) -> None:
        body = {"spec": {"renewTime": micro_time(self.clock())}}
        self.kube.request("PATCH", self._path(self.name_of(holder)), body=body,
                          content_type="application/merge-patch+json")  # fmt: skip
        self.renewals += 1

    def _start_renewer(self) -> None:
        if self._renewer is not None and self._renewer.is_alive():
            return
        self._renew_stop.clear()
        self._renewer = threading.Thread(target=self._renew_loop, name="lease-waiter-renew", daemon=True)
        self._renewer.start()

    def _renew_loop(self) -> None:
        while not self._renew_stop.wait(self.renew_every):
            with self._lock:
                mine = list(self._mine)
            for holder in mine:
                try:
                    self.renew(holder)
                except NotFound:
                    log.info("waiter Lease of %s is gone; the agent will queue again", holder)
                    with self._lock:
                        self._mine.pop(holder, None)
                        self._left.add(holder)
                except BackendUnavailable as exc:
                    log.warning("cannot renew the waiter Lease of %s: %s", holder, exc)

    def _delete(self, name: str, rv: str) -> None:
        body = {"preconditions": {"resourceVersion": rv}} if rv else None
        with contextlib.suppress(NotFound, Conflict, BackendUnavailable):
            self.kube.delete(self._path(name), body)

    # -- waking ----------------------------------------------------------------------------------

    def watch_ahead(
        self,
        holder: HolderId,
        on_change: Callable[[], None],
        *,
        line: tuple[Waiter, ...] | None = None,
        since: int = 0,
    ) -> Callable[[], None]:
        """The Lease just ahead in ``line`` (read when not given): woken when it is deleted, when
        it expires unrenewed, or -- when it is the head of the line and bound to its Pod -- when
        its Node is not Ready (then this waiter deletes it, as it would have expired)."""
        line = self.waiters() if line is None else line
        ids = [w.id for w in line]
        if holder not in ids or ids.index(holder) == 0:
            on_change()
            return lambda: None
        ahead, head = line[ids.index(holder) - 1], ids.index(holder) == 1
        name = self.name_of(ahead.id)
        query = {"fieldSelector": f"metadata.name={name}"}

        def wanted(event: dict[str, Any]) -> bool:
            if event.get("type") == "DELETED":
                return True
            if event.get("object"):
                self._place(event["object"])  # a renewal: the expiry timer sees it, unasked
            return False

        watch = _OneShotWatch(self.kube, self.base, query, since=since, wanted=wanted, on_change=on_change)
        timer = threading.Thread(target=self._expiry_watch, args=(name, head, watch), daemon=True)
        stop = watch.start()
        timer.start()
        return stop

    def _expiry_watch(self, name: str, head: bool, watch: _OneShotWatch) -> None:
        """Fires the watch when the Lease ahead expires, or its Node turns not Ready. The Lease
        as last seen (listed, or its renewals on the watch) says when it expires: no request,
        but one to confirm before firing, and a look at the head's Node every NODE_CHECK."""
        node_checked = self.clock()
        while not watch.done.wait(min(self.ttl, 5.0)):
            with self._lock:
                cached = self._places.get(name)
            now = self.clock()
            if cached is not None and not cached[1].expired(now):
                place = cached[1]
                if not (head and place.bound and now >= node_checked + NODE_CHECK):
                    continue
            try:
                place = self._place(self.kube.get(self._path(name)))
            except NotFound:
                watch.fire()
                return
            except BackendUnavailable:
                continue
            if place.expired(now):
                watch.fire()
                return
            if head and place.bound and now >= node_checked + NODE_CHECK:
                node_checked = now
                if not _node_ready(self.kube, place.node):
                    log.info("the head of the line, %s, is on a Node that is not Ready: it loses its place",
                             place.waiter.id)  # fmt: skip
                    self._delete(name, place.rv)
                    watch.fire()
                    return

    def close(self) -> None:
        self._renew_stop.set()


def _node_ready(kube: Kube, node: str) -> bool:
    try:
        doc = kube.get(f"/api/v1/nodes/{path_segment(node)}")
    except NotFound:
        return False
    except BackendUnavailable:
        return True  # cannot tell: not a reason to take a place away
    conditions = (doc.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


class _OneShotWatch:
    """A watch for one wait: ``on_change`` is called once -- at the first event ``wanted`` accepts,
    when the watch breaks, or on ``fire()`` -- then it ends. ``stop()`` ends it at once (the
    response is shut down), whoever calls it."""

    def __init__(
        self,
        kube: Kube,
        path: str,
        query: dict[str, Any],
        *,
        since: int,
        wanted: Callable[[dict[str, Any]], bool],
        on_change: Callable[[], None],
    ) -> None:
        self.kube = kube
        self.path = path
        self.query = query
        self.since = since
        self.wanted = wanted
        self.on_change = on_change
        self.done = threading.Event()
        self._response: Any = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="lease-watch", daemon=True)

    def start(self) -> Callable[[], None]:
        self._thread.start()
        return self.stop

    def _opened(self, response: Any) -> None:  # the response of the watch, once open
        with self._lock:
            self._response = response
        if self.done.is_set():
            self._shutdown()

    def _run(self) -> None:
        rv = str(self.since) if self.since else "0"
        try:
            while not self.done.is_set():
                for event in self.kube.watch(
                    self.path, resource_version=rv, timeout_seconds=300, on_open=self._opened, **self.query
                ):
                    if self.done.is_set():
                        return
                    meta = (event.get("object") or {}).get("metadata") or {}
                    if meta.get("resourceVersion"):
                        rv = str(meta["resourceVersion"])
                    if event.get("type") != "BOOKMARK" and self.wanted(event):
                        self.fire()
                        return
        except (Gone, BackendUnavailable, OSError, ValueError):
            self.fire()  # the waiter reads again and decides

    def fire(self) -> None:
        with self._lock:
            if self.done.is_set():
                return
            self.done.set()
        self._shutdown()
        self.on_change()

    def stop(self) -> None:
        self.done.set()
        self._shutdown()

    def _shutdown(self) -> None:
        with self._lock:
            response = self._response
        if response is not None:
            with contextlib.suppress(Exception):
                response.shutdown()


def _revision(resource_version: str) -> int:
    try:
        return int(resource_version)
    except (TypeError, ValueError):
        return 0
