"""The FleetLock server: Zincati's protocol over the same groups, queue and rules as the agents.

Stateless: every request reads the group from its store and writes through ``GroupClient`` (the
one compare-and-swap loop over rebootcoord.core.group), so any number of replicas may answer.

What to do is the core's (``rebootcoord.core.fleetlock.pre_reboot`` / ``steady_state``, beside
the agent's ``decide``): this module asks for a step, carries it out -- with the holding effects
the agent uses (``rebootcoord.daemon.holding``) -- and asks again until the answer. It owns who
a request comes from: the certificate that binds an id, the Node an id maps to, the groups it
serves. Never decides a turn, a cordon's owner or whether a node rebooted.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from rebootcoord.adapters.host import NoNodeOps
from rebootcoord.core.cycle import (
    DEFAULT_POLICY,
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
    release_outcome,
)
from rebootcoord.core.fleetlock import (
    PRE_REBOOT,
    Answer,
    ClientParams,
    FleetLockStep,
    Free,
    KeepPlace,
    Refusal,
    Visit,
    line_full,
    parse_request,
    pre_reboot,
    refusal,
    steady_state,
)
from rebootcoord.core.group import Ending
from rebootcoord.core.rollout import REBOOTED
from rebootcoord.core.semaphore import GroupView, HolderRecord
from rebootcoord.core.types import Group, HolderId, NodeName, Phase, lease_name_ok
from rebootcoord.core.windows import Schedule
from rebootcoord.daemon import holding
from rebootcoord.daemon.group import MIRROR_WAIT, GroupClient
from rebootcoord.daemon.httpserve import BoundedHTTPServer, Peer
from rebootcoord.errors import (
    AccessDenied,
    ApiError,
    BackendUnavailable,
    Conflict,
    CorruptDocument,
    GroupPaused,
    IdInUse,
    Interrupted,
    NoFreeSlot,
    SlotLost,
    StoreFull,
)
from rebootcoord.ports import Check, GroupCatalog, NodeDirectory, NodeOps

log = logging.getLogger(__name__)

MAX_CLIENT_LOCKS = 4096
ALWAYS = Schedule()  # no maintenance windows: always open
#: Steps one request may take (a full pre-reboot on Kubernetes takes about eight).
MAX_STEPS = 24
#: How long a count that found the store full of groups stands (fleetlock_any_group).
GROUPS_COUNTED_FOR = 10.0


@dataclass(frozen=True)
class ServerSettings:
    max_holders: int = 1
    #: Served groups (always served; new ones created). fleetlock_groups, default [group].
    groups: tuple[Group, ...] = (Group("default"),)
    #: Serve other groups too: those that exist, and new ones while the store holds fewer than
    #: ``max_groups`` groups.
    any_group: bool = False
    max_groups: int = 64
    unknown_id: str = "refuse"  # "refuse" or "grant" (without node operations)
    lease_names: bool = False  # the Lease backend: groups must make Lease names
    #: The agent's rules that also bind FleetLock clients: budgets (limits), drain_failure,
    #: pause_group_after, expected_cycle (window fit).
    policy: Policy = DEFAULT_POLICY
    schedule: Schedule = ALWAYS
    max_waiters: int = 1000
    #: A certificate's name (CN, DNS or URI SAN) -> further ids it may act as.
    client_ids: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    pre_reboot_labels: tuple[tuple[str, str], ...] = ()
    post_reboot_labels: tuple[tuple[str, str], ...] = ()


class ServerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        ns = "rebootcoord_fleetlock"
        self.requests = Counter(
            f"{ns}_requests", "FleetLock requests answered, by operation and kind (ok: 200)",
            ["operation", "kind"], registry=registry,
        )  # fmt: skip
        self.refusals = Counter(
            f"{ns}_refusals", "FleetLock requests refused, by kind (the reason: a bound, a turn, a gate)",
            ["kind"], registry=registry,
        )  # fmt: skip
        self.seconds = Histogram(
            f"{ns}_request_seconds", "Time to answer a FleetLock request", ["operation"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900),
            registry=registry,
        )  # fmt: skip
        self.in_flight = Gauge(f"{ns}_requests_in_flight", "Requests being answered", registry=registry)
        self.at_once = Counter(
            f"{ns}_answered_at_once", "FleetLock requests answered at once, with no request to the "
            "backend: malformed, or refused from the group's mirror", registry=registry,
        )  # fmt: skip
        self.drains = Counter(
            f"{ns}_drains", "Drains of a client's Node, by outcome", ["outcome"], registry=registry
        )


class FleetLockService:
    """Answers FleetLock requests. Thread-safe; one per process."""

    def __init__(
        self,
        groups: Callable[[Group], GroupClient],
        settings: ServerSettings,
        *,
        directory: NodeDirectory | None = None,
        gates: Callable[[NodeName | None], Sequence[Check]] | None = None,
        catalog: GroupCatalog | None = None,
        metrics: ServerMetrics | None = None,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._open_group = groups
        self.settings = settings
        self.directory = directory
        self.gates = gates or (lambda _node: ())
        self.catalog = catalog
        self.metrics = metrics
        self.stop = stop or threading.Event()
        self.clock = clock
        self._groups: OrderedDict[Group, GroupClient] = OrderedDict()
        self._client_locks: OrderedDict[tuple[Group, HolderId], threading.Lock] = OrderedDict()
        self._lock = threading.Lock()
        self._creating = threading.Lock()  # new groups, one at a time (fleetlock_any_group)
        self._full_until = 0.0  # until then, the store is known to hold max_groups groups
        self.last_backend_error = ""
        self.http_alive: Callable[[], bool] = lambda: True
        self.on_close: Callable[[], None] | None = None  # the connection the groups share

    def healthy(self) -> tuple[bool, str]:
        """/healthz: the listener serves (a backend outage is answered, not a reason to restart)."""
        if not self.http_alive():
            return False, "the FleetLock listener stopped"
        return True, "ok" + (
            f"; last backend error {self.last_backend_error}" if self.last_backend_error else ""
        )

    # -- HTTP-agnostic entry point ----------------------------------------------------------------

    def handle(
        self, method: str, path: str, headers: dict[str, str], body: bytes, peer: Peer | None = None
    ) -> tuple[int, bytes]:
        """(status, JSON body) for one request; ``peer``: who sent it (its certificate)."""
        reply = self._handle(method, path, headers, body, peer, at_once=False)
        assert reply is not None
        return reply

    def handle_at_once(
        self, method: str, path: str, headers: dict[str, str], body: bytes, peer: Peer | None = None
    ) -> tuple[int, bytes] | None:
        """The answer to a request that needs nothing to wait on -- a malformed request, or a
        refusal drawn from the group's mirror while no other request of that client is being
        answered -- else None: ``handle`` it. The HTTP server's own thread answers these, so a
        flood of refused polls never queues ahead of the requests that take and give back."""
        return self._handle(method, path, headers, body, peer, at_once=True)

    def _handle(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes,
        peer: Peer | None,
        *,
        at_once: bool,
    ) -> tuple[int, bytes] | None:
        started = time.monotonic()
        operation = "unknown"
        try:
            operation, client = parse_request(method, path, headers, body)
            if at_once:
                answer = self._at_once(operation, client, peer)
                if answer is None:
                    return None
            else:
                if self.metrics:
                    self.metrics.in_flight.inc()
                try:
                    self._check(client, peer)
                    with self._client_lock(client):
                        answer = self._answer(operation, client, peer)
                finally:
                    if self.metrics:
                        self.metrics.in_flight.dec()
            if answer.refusal is not None:
                raise answer.refusal
            reply, kind = (200, b'{"kind": "ok", "value": "ok"}'), "ok"
        except Refusal as exc:
            reply, kind = (exc.status, exc.body()), exc.kind
        except CorruptDocument as exc:
            reply, kind = self._refused("corrupt_document", str(exc))
        except (BackendUnavailable, AccessDenied, Interrupted, Conflict, ApiError) as exc:
            self.last_backend_error = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}: {exc}"
            log.warning("FleetLock %s: the backend: %s", path[:100], exc)
            reply, kind = self._refused("backend_unavailable", str(exc))
        except Exception:
            log.exception("FleetLock %s %s failed", method[:20], path[:100])
            reply, kind = self._refused("internal_error", "the server failed; its log says why")
        if self.metrics:
            name = operation.rsplit("/", 1)[-1]
            if at_once:
                self.metrics.at_once.inc()
            self.metrics.requests.labels(name, kind).inc()
            if kind != "ok":
                self.metrics.refusals.labels(kind).inc()
            self.metrics.seconds.labels(name).observe(time.monotonic() - started)
        return reply

    def _at_once(self, operation: str, client: ClientParams, peer: Peer | None) -> Answer | None:
        """``_answer`` when it is a refusal from the group's mirror and nothing must be waited
        for: no Node to find (a directory asks the API server), a group already open, the
        client's lock free. None otherwise."""
        if self.directory is not None:
            return None
        with self._lock:
            gc = self._groups.get(client.group)
        if gc is None:
            return None
        self._check(client, peer)  # without a directory and with the group open: no I/O
        lock = self._client_lock(client)
        if not lock.acquire(blocking=False):
            return None
        try:
            return self._from_mirror(gc, operation, client, peer, None)
        finally:
            lock.release()

    @staticmethod
    def _refused(kind: str, value: str) -> tuple[tuple[int, bytes], str]:
        r = refusal(kind, value)
        return (r.status, r.body()), kind

    def _check(self, client: ClientParams, peer: Peer | None) -> None:
        """Who may ask for what, before anything is read: the certificate binds the id; the
        group is served (on the Lease backend, a group that makes a Lease name)."""
        if peer is not None and peer.certified:
            allowed = self.identities(peer)
            if client.id not in allowed and not self._node_named(client, peer):
                raise refusal(
                    "invalid_client_identity",
                    f"the client certificate ({peer.subject}) may act as {sorted(allowed)[:5]}, "
                    f"not as {client.id!r}",
                    status=403,
                )
        if self.settings.lease_names and not lease_name_ok(f"rebootcoord-{client.group}"):
            raise refusal(
                "invalid_group",
                "on the Lease backend a group names a Lease: lower-case letters and digits, '-' and "
                "'.' between them",
            )
        self._served(client.group)

    def identities(self, peer: Peer) -> set[str]:
        """The ids a certificate may act as: its names, and what fleetlock_client_ids adds."""
        allowed = set(peer.names)
        for name in peer.names:
            allowed.update(self.settings.client_ids.get(name, ()))
        return allowed

    def _node_named(self, client: ClientParams, peer: Peer) -> bool:
        """The id maps to a Node (by machine id) that the certificate names."""
        if self.directory is None:
            return False
        node = self.directory.find(client.id)
        return node is not None and node in peer.names

    def _served(self, group: Group) -> None:
        """A group is served if configured; with fleetlock_any_group, also if it exists, or --
        created here and now -- while the store holds fewer than fleetlock_max_groups groups.
        Creations are counted one at a time in this process (replicas may each add one past the
        bound at the same instant); a full count stands for GROUPS_COUNTED_FOR, so a flood of
        new names costs one read each."""
        if group in self.settings.groups:
            return
        if not self.settings.any_group:
            raise refusal(
                "unknown_group",
                f"group {group!r} is not served here (fleetlock_groups: {', '.join(self.settings.groups)})",
            )
        with self._lock:
            if group in self._groups:
                return
        gc = self._open(group)
        view = gc.read(queue=False)
        if view.slots is not None or view.corrupt:
            self._keep(group, gc)
            return
        with self._creating:
            full_until = self._full_until
            if time.monotonic() >= full_until and self._count_groups() < self.settings.max_groups:
                gc.ensure(self.settings.max_holders)
                self._keep(group, gc)
                return
            if full_until <= time.monotonic():
                self._full_until = time.monotonic() + GROUPS_COUNTED_FOR
        gc.close()
        raise refusal(
            "unknown_group",
            f"group {group!r} does not exist, and the store holds fleetlock_max_groups "
            f"({self.settings.max_groups}) groups already",
        )

    def _count_groups(self) -> int:
        if self.catalog is None:
            with self._lock:
                return len(self._groups)
        return self.catalog.count(self.settings.max_groups + 1)

    def _client_lock(self, client: ClientParams) -> threading.Lock:
        """One request at a time per client in this process (Zincati's retry may overlap the
        request still draining); across replicas, the compare-and-swap decides."""
        key = (client.group, client.id)
        with self._lock:
            lock = self._client_locks.pop(key, None) or threading.Lock()
            self._client_locks[key] = lock
            while len(self._client_locks) > MAX_CLIENT_LOCKS:
                self._client_locks.popitem(last=False)
            return lock

    def _open(self, group: Group) -> GroupClient:
        client = self._open_group(group)
        client.stop = self.stop
        return client

    def _keep(self, group: Group, client: GroupClient) -> GroupClient:
        """Keep ``client`` open for ``group``: every served group (configured, and at most
        max_groups more), the least recently used closed beyond. Closing a group's client never
        closes the connection it shares with the others."""
        with self._lock:
            kept = self._groups.pop(group, None)
            if kept is not None and kept is not client:
                client.close()
                client = kept
            self._groups[group] = client
            evicted = []
            while len(self._groups) > len(self.settings.groups) + self.settings.max_groups:
                evicted.append(self._groups.popitem(last=False)[1])
        for old in evicted:
            old.close()
        return client

    def group(self, group: Group) -> GroupClient:
        with self._lock:
            client = self._groups.get(group)
            if client is not None:
                self._groups.move_to_end(group)
                return client
        return self._keep(group, self._open(group))

    def close(self) -> None:
        with self._lock:
            groups, self._groups = list(self._groups.values()), OrderedDict()
        for client in groups:
            client.close()
        if self.on_close is not None:
            self.on_close()

    # -- one request, step by step ------------------------------------------------------------------

    def _node_of(self, client: ClientParams) -> NodeName | None:
        if self.directory is None:
            return None
        node = self.directory.find(client.id)
        if node is None and self.settings.unknown_id != "grant":
            raise refusal("unknown_node", f"no Node has a machine id that {client.id!r} is the id of")
        return node

    def _answer(self, operation: str, client: ClientParams, peer: Peer | None) -> Answer:
        node = self._node_of(client)
        gc = self.group(client.group)
        refused = self._from_mirror(gc, operation, client, peer, node)
        if refused is not None:
            return refused
        decide = pre_reboot if operation == PRE_REBOOT else steady_state
        v = self._visit(client, peer, node, self._read(gc, create=operation == PRE_REBOOT))
        who = _who(client, node, peer)
        for _ in range(MAX_STEPS):
            step = decide(v)
            if isinstance(step, Answer):
                if step.leave:
                    gc.leave_queue(client.id)
                return step
            v = self._carry_out(step, v, gc, who)
        raise AssertionError(f"no answer after {MAX_STEPS} steps for {who}")

    def _from_mirror(
        self, gc: GroupClient, operation: str, client: ClientParams, peer: Peer | None, node: NodeName | None
    ) -> Answer | None:
        """The refusal of a request from the group as its mirror shows it, when it comes
        without a write (``_refused_at_once``); None: answer it from a read of the store."""
        recent = gc.recent_view(own_writes=False)
        if recent is None or recent.slots is None:
            return None  # (a group this request may create: the mirror may not show it yet)
        decide = pre_reboot if operation == PRE_REBOOT else steady_state
        return _refused_at_once(self._visit(client, peer, node, recent), gc, decide)

    def _visit(
        self, client: ClientParams, peer: Peer | None, node: NodeName | None, view: GroupView
    ) -> Visit:
        now = self.clock()
        return Visit(
            now=now,
            client=client,
            view=view,
            policy=self.settings.policy,
            node=node,
            member=node is not None or (peer is not None and peer.certified),
            window=self.settings.schedule.status(datetime.fromtimestamp(now, UTC)),
            max_waiters=self.settings.max_waiters,
        )

    def _read(self, gc: GroupClient, *, create: bool = False) -> GroupView:
        view = gc.read(line_first=True)
        if view.slots is None and not view.corrupt and create:
            gc.ensure(self.settings.max_holders)
            view = gc.read(line_first=True)
        return view

    def _carry_out(self, step: FleetLockStep, v: Visit, gc: GroupClient, who: str) -> Visit:
        """Do what ``step`` says; the visit with what came of it (and the group read again after
        a write)."""
        ops = self._ops(v.node)
        match step:
            case KeepPlace(waiter=waiter):
                new = v.view.queue_position(waiter.id) is None
                if not new and gc.keep_place(waiter.id):
                    return replace(v, joined=True)
                try:
                    gc.join_queue(waiter)
                except IdInUse as exc:  # an agent joined meanwhile under this id
                    raise refusal("id_in_use", str(exc)) from None
                view = v.view
                if new:
                    # Joined the line just now: read it again, so that clients joining at once
                    # never push it past its bound. A newcomer that finds the line longer than
                    # its bound leaves, wherever it stands: places are ordered by the time each
                    # client stamped, not by when its write landed, so a place counted "within
                    # the bound" by one joiner can be pushed past it by a later write with an
                    # earlier stamp. The last write always sees every place that stays.
                    view = replace(view, waiters=gc.queue.waiters())
                    places = [w.id for w in view.waiters if w.kind == waiter.kind]
                    if len(places) > v.max_waiters:
                        gc.leave_queue(waiter.id)
                        raise line_full(v.client.group, len(places) - 1, v.max_waiters)
                if view.queue_position(waiter.id) is None:
                    view = replace(view, waiters=(*view.waiters, waiter))
                return replace(v, joined=True, view=view)
            case CheckGates():
                return self._look(v)
            case Acquire(record=record):
                try:
                    gc.take(record, limits=v.policy.limits, member=v.member, line=v.view.waiters)
                except StoreFull as exc:
                    raise refusal("store_full", str(exc)) from None
                except (NoFreeSlot, GroupPaused) as exc:
                    return replace(v, refused=str(exc), view=self._reread(gc))
                log.info("FleetLock %s took a slot of group %s", who, record.group)
                if ops is not None:
                    ops.announce(Phase.LOCKED, f"FleetLock client {record.id} took a slot")
            case Persist(record=record, reason=reason):
                self._update(gc, record, who)
                log.info("FleetLock %s: %s: %s", who, record.phase, reason)
                if ops is not None and record.phase in (Phase.DRAINING, Phase.REBOOTING):
                    ops.announce(record.phase, f"FleetLock client {record.id}: {reason}")
            case Drain(record=record):
                return replace(v, drained=self._drain(gc, ops, record, who), view=self._reread(gc))
            case Release(record=record, reason=reason, outcome=outcome):
                self._release(
                    gc, ops, record, reason=reason, outcome=outcome or release_outcome(record), who=who
                )
                return replace(v, view=self._reread(gc), gave_back=record.abort_reason or v.gave_back)
            case Free(holder=holder, reason=reason):
                gc.release(holder, Ending(REBOOTED, self.clock(), reason))
                log.info("FleetLock %s gave back a slot held without a record", who)
            case Abandon(record=record, reason=reason):
                log.warning("FleetLock %s: %s; undoing our cordon and dropping the record", who, reason)
                holding.abandon(gc, ops or NoNodeOps(), record)
            case Uncordon(reason=reason):
                log.warning("FleetLock %s: %s", who, reason)
                if ops is not None:
                    ops.uncordon()
                return replace(v, stale_cordon=False)
            case Verify():
                return self._verify(v)
            case PauseGroup(info=info, holder=record, reason=reason):
                gc.pause(info)  # first: repeated by the next steady-state, never lost
                self._update(gc, record, who)
                log.error("FleetLock %s: %s", who, reason)
                if ops is not None:
                    ops.announce(Phase.VERIFYING, f"{reason}; `rebootctl resume` lets the others go on",
                                 warning=True, event_reason="GroupPaused")  # fmt: skip
            case _:
                raise AssertionError(f"unknown step {step!r}")
        return replace(v, view=self._reread(gc))

    def _reread(self, gc: GroupClient) -> GroupView:
        """The group after a step: as its mirror shows it once it has seen this step's write
        (a moment's wait at most), else read."""
        return gc.recent_view(wait=MIRROR_WAIT) or self._read(gc)

    def _update(self, gc: GroupClient, record: HolderRecord, who: str) -> None:
        try:
            gc.update(record)
        except SlotLost as exc:
            raise refusal("slot_lost", f"{exc} (unlocked by an operator); nothing more was done") from None

    def _ops(self, node: NodeName | None) -> NodeOps | None:
        if node is None or self.directory is None:
            return None
        return self.directory.node_ops(node)

    def _look(self, v: Visit) -> Visit:
        """The last look before the client's slot: its gates, its Node's boot and zone, and
        whether our cordon is on it though it holds nothing."""
        blocking = [r for r in (g.check() for g in self.gates(v.node)) if not r.ok]
        blockers = tuple(f"{r.reason or r.name}: {r.detail}" for r in blocking)
        boot, zone, stale = "", "", False
        if v.node is not None and self.directory is not None:
            facts = self.directory.facts(v.node)
            boot, zone, stale = facts.boot_id, facts.zone, facts.cordoned_by_us
        return replace(v, gates_fresh=True, blockers=blockers, boot_id=boot, zone=zone, stale_cordon=stale)

    def _drain(self, gc: GroupClient, ops: NodeOps | None, record: HolderRecord, who: str) -> Drained:
        assert ops is not None  # a Drain step comes only with a Node
        try:
            drained = holding.drain(gc, ops, record, self.stop, labels=self.settings.pre_reboot_labels)
        except SlotLost:
            raise refusal("slot_lost", "the slot was unlocked by an operator during the drain") from None
        if drained is None:
            raise Interrupted("stopping: the drain resumes at the client's next request")
        if self.metrics:
            self.metrics.drains.labels("ok" if drained.ok else "failed").inc()
        if not drained.ok:
            log.error("FleetLock %s: drain failed: %s", who, drained.error)
        return drained

    def _release(
        self,
        gc: GroupClient,
        ops: NodeOps | None,
        record: HolderRecord,
        *,
        reason: str,
        outcome: str,
        who: str,
    ) -> None:
        holding.give_back(gc, ops or NoNodeOps(), record, Ending(outcome, self.clock(), reason))
        log.info("FleetLock %s gave its slot of group %s back (%s): %s", who, record.group, outcome, reason)
        if ops is None:
            return
        if outcome == REBOOTED:
            ops.set_labels(self.settings.post_reboot_labels)
        failed = bool(record.abort_reason)
        ops.announce(
            Phase.IDLE,
            f"FleetLock client {record.id}: {reason}; slot released",
            warning=failed,
            event_reason="DrainFailed" if failed else "",
        )

    def _verify(self, v: Visit) -> Visit:
        assert v.node is not None and self.directory is not None
        failed = [r for r in self.directory.verify(v.node) if not r.ok]
        boot = self.directory.facts(v.node).boot_id
        return replace(v, verified="; ".join(f"{r.name}: {r.detail}" for r in failed), boot_id=boot)


def _refused_at_once(v: Visit, gc: GroupClient, decide: Callable[[Visit], FleetLockStep]) -> Answer | None:
    """The refusal a request gets from the group as its mirror shows it (``recent_view``), when
    it comes without a write: a client that waits its turn keeps the place it has
    (``keep_place``) and hears no. None: anything else -- a new place, a full line, a gate to look
    at, a take, a release, a 200 -- is answered from a read of the store, step by step. Only a refusal may
    come from a view that can lag: the client asks again."""
    step = decide(v)
    keep = isinstance(step, KeepPlace)
    if keep:
        if v.view.queue_position(v.client.id) is None:
            return None  # a new place: a write
        step = decide(replace(v, joined=True))
    if not isinstance(step, Answer) or step.refusal is None or step.leave:
        return None
    if step.refusal.kind == "line_full":
        # A full line is counted on a read: the mirror may still show places that joiners past
        # the bound have just withdrawn, and would turn away one that fits.
        return None
    # Kept only now that the answer is this refusal: a keep records the poll's time, by which
    # the next poll's interval is measured, so a request must keep its place once.
    if keep and not gc.keep_place(v.client.id):
        return None
    return step


def _who(client: ClientParams, node: NodeName | None, peer: Peer | None) -> str:
    """The request's author, for the log: id, Node, certificate, address."""
    parts = [f"node {node}"] if node is not None else []
    if peer is not None:
        parts.append(f"certificate {peer.subject}" if peer.certified else "no certificate")
        if peer.address:
            parts.append(f"from {peer.address}")
    return f"client {client.id!r}" + (f" ({', '.join(parts)})" if parts else "")


@dataclass(frozen=True)
class TlsFiles:
    cert: str
    key: str
    client_ca: str | None = None


def tls_context(tls: TlsFiles) -> ssl.SSLContext:
    """A server context of TLS 1.2+ with ``tls``'s certificate, requiring client certificates of
    its CA when it has one. Raises OSError (ssl.SSLError too) for files that cannot be used."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert, tls.key)
    if tls.client_ca:
        context.load_verify_locations(cafile=tls.client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def start_http(
    service: FleetLockService, address: str, *, workers: int, tls: ssl.SSLContext | None = None
) -> tuple[Callable[[], None], int]:
    """Serve FleetLock on ``address`` (host:port) in background threads: the bounded server of
    daemon/httpserve.py (slow clients never hold a worker; ``workers`` requests answered at once,
    a drain holding one), bodies bounded, TLS when given a context (``tls_context``). Returns
    (stop, bound port). Raises OSError when the address cannot be bound."""
    from rebootcoord.core.fleetlock import MAX_BODY

    def handle(
        method: str, path: str, headers: dict[str, str], body: bytes, peer: Peer
    ) -> tuple[str, str, bytes]:
        status, answer = service.handle(method, path, headers, body, peer)
        return f"{status} {REASONS.get(status, 'Error')}", "application/json", answer

    def at_once(
        method: str, path: str, headers: dict[str, str], body: bytes, peer: Peer
    ) -> tuple[str, str, bytes] | None:
        reply = service.handle_at_once(method, path, headers, body, peer)
        if reply is None:
            return None
        status, answer = reply
        return f"{status} {REASONS.get(status, 'Error')}", "application/json", answer

    host, _, port = address.rpartition(":")
    server = BoundedHTTPServer(
        host.strip("[]") or "0.0.0.0", int(port), handle, workers=workers, max_body=MAX_BODY, tls=tls,
        name="fleetlock", quick=at_once,
    ).start()  # fmt: skip
    service.http_alive = server.alive
    return server.stop, server.port


REASONS = {
    200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    409: "Conflict", 413: "Payload Too Large", 423: "Locked", 429: "Too Many Requests",
    500: "Internal Server Error", 503: "Service Unavailable", 507: "Insufficient Storage",
}  # fmt: skip
