"""The FleetLock server: Zincati's protocol over the same groups, queue and rules as the agents.

Stateless: every request reads the group from its store and writes through ``GroupClient`` (the
one compare-and-swap loop over rebootcoord.core.group), so any number of replicas may answer.

pre-reboot
    A client that holds a slot and whose node is drained gets 200 again (recursive). Otherwise it
    takes its place in the group's line -- kept ``fleetlock_waiter_ttl`` after its last request,
    whichever replica answered -- and takes a slot when it is its turn: an agent that came later
    waits for it, although the poller asks only every few minutes (the slot is held for it as
    long as its place lives). On Kubernetes the client's Node is then cordoned and drained with
    the agent's PDB-aware drain before 200; when the drain fails, what was cordoned is uncordoned,
    the slot given back, and the answer is ``drain_failed``. The holder record's phase tells a
    replica that answers a retry where the last one stopped (a kill -9 mid-drain included).
steady-state
    A holder's Node must be Ready (and its pods, when configured) before it is uncordoned and
    its slot released; a client that holds nothing gets 200 and leaves the line.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from rebootcoord.core.fleetlock import PRE_REBOOT, ClientParams, Refusal, parse_request, refusal
from rebootcoord.core.group import Ending
from rebootcoord.core.rollout import ABORTED, DRAIN_FAILED, REBOOTED
from rebootcoord.core.semaphore import FLEETLOCK, MANUAL, NO_LIMITS, GroupView, HolderRecord, Limits, Waiter
from rebootcoord.core.types import Group, HolderId, NodeName, Phase
from rebootcoord.daemon.group import GroupClient
from rebootcoord.daemon.httpserve import BoundedHTTPServer
from rebootcoord.errors import (
    AccessDenied,
    BackendUnavailable,
    Conflict,
    CorruptDocument,
    Interrupted,
    NodeOperationError,
    SlotLost,
)
from rebootcoord.ports import NodeDirectory

log = logging.getLogger(__name__)

MAX_GROUPS = 256  # group clients kept open; more are opened again when asked for
MAX_CLIENT_LOCKS = 4096


@dataclass(frozen=True)
class ServerSettings:
    max_holders: int = 1
    groups: tuple[Group, ...] = ()  # served groups; empty: any
    unknown_id: str = "refuse"  # "refuse" or "grant" (without node operations)
    lease_names: bool = False  # the Lease backend: ids and groups must fit Lease names
    limits: Limits = NO_LIMITS  # zone, group and waves budgets (a rollout in progress rules anyway)


class ServerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        ns = "rebootcoord_fleetlock"
        self.requests = Counter(
            f"{ns}_requests", "FleetLock requests answered, by operation and kind (ok: 200)",
            ["operation", "kind"], registry=registry,
        )  # fmt: skip
        self.seconds = Histogram(
            f"{ns}_request_seconds", "Time to answer a FleetLock request", ["operation"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900),
            registry=registry,
        )  # fmt: skip
        self.in_flight = Gauge(f"{ns}_requests_in_flight", "Requests being answered", registry=registry)
        self.drains = Counter(
            f"{ns}_drains", "Drains of a client's Node, by outcome", ["outcome"], registry=registry
        )


def _lease_name_ok(text: str) -> bool:
    return (
        bool(text) and text == text.lower() and text[0].isalnum() and text[-1].isalnum() and "_" not in text
    )


class FleetLockService:
    """Answers FleetLock requests. Thread-safe; one per process."""

    def __init__(
        self,
        groups: Callable[[Group], GroupClient],
        settings: ServerSettings,
        *,
        directory: NodeDirectory | None = None,
        metrics: ServerMetrics | None = None,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._open_group = groups
        self.settings = settings
        self.directory = directory
        self.metrics = metrics
        self.stop = stop or threading.Event()
        self.clock = clock
        self._groups: OrderedDict[Group, GroupClient] = OrderedDict()
        self._client_locks: OrderedDict[tuple[Group, HolderId], threading.Lock] = OrderedDict()
        self._lock = threading.Lock()
        self.last_backend_error = ""
        self.http_alive: Callable[[], bool] = lambda: True

    def healthy(self) -> tuple[bool, str]:
        """/healthz: the listener serves (a backend outage is answered, not a reason to restart)."""
        if not self.http_alive():
            return False, "the FleetLock listener stopped"
        return True, "ok" + (
            f"; last backend error {self.last_backend_error}" if self.last_backend_error else ""
        )

    # -- HTTP-agnostic entry point ----------------------------------------------------------------

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        """(status, JSON body) for one request."""
        started = time.monotonic()
        operation = "unknown"
        if self.metrics:
            self.metrics.in_flight.inc()
        try:
            operation, client = parse_request(method, path, headers, body)
            self._check(client)
            with self._client_lock(client):
                if operation == PRE_REBOOT:
                    self.pre_reboot(client)
                else:
                    self.steady_state(client)
            answer, kind = (200, b'{"kind": "ok", "value": "ok"}'), "ok"
        except Refusal as exc:
            answer, kind = (exc.status, exc.body()), exc.kind
        except CorruptDocument as exc:
            answer, kind = self._refused("corrupt_document", str(exc))
        except (BackendUnavailable, AccessDenied, Interrupted, Conflict) as exc:
            self.last_backend_error = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}: {exc}"
            answer, kind = self._refused("backend_unavailable", str(exc))
        except Exception:
            log.exception("FleetLock %s %s failed", method, path[:100])
            answer, kind = self._refused("internal_error", "the server failed; its log says why")
        finally:
            if self.metrics:
                self.metrics.in_flight.dec()
        if self.metrics:
            name = operation.rsplit("/", 1)[-1]
            self.metrics.requests.labels(name, kind).inc()
            self.metrics.seconds.labels(name).observe(time.monotonic() - started)
        return answer

    @staticmethod
    def _refused(kind: str, value: str) -> tuple[tuple[int, bytes], str]:
        r = refusal(kind, value)
        return (r.status, r.body()), kind

    def _check(self, client: ClientParams) -> None:
        if self.settings.groups and client.group not in self.settings.groups:
            raise refusal("unknown_group", f"group {client.group!r} is not served here")
        if self.settings.lease_names:
            if not _lease_name_ok(client.group):
                raise refusal("invalid_group", "on the Lease backend a group is lower case (a Lease name)")
            if not _lease_name_ok(client.id):
                raise refusal(
                    "invalid_client_identity",
                    "on the Lease backend an id is lower-case letters, digits, '.' and '-' (a Lease name)",
                )

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

    def group(self, group: Group) -> GroupClient:
        with self._lock:
            client = self._groups.pop(group, None)
            if client is None:
                client = self._open_group(group)
                client.stop = self.stop
            self._groups[group] = client
            while len(self._groups) > MAX_GROUPS:
                self._groups.popitem(last=False)[1].close()
            return client

    def close(self) -> None:
        with self._lock:
            groups, self._groups = list(self._groups.values()), OrderedDict()
        for client in groups:
            client.close()

    # -- the two operations -------------------------------------------------------------------------

    def _node_of(self, client: ClientParams) -> NodeName | None:
        if self.directory is None:
            return None
        node = self.directory.find(client.id)
        if node is None and self.settings.unknown_id != "grant":
            raise refusal("unknown_node", f"no Node has a machine id that {client.id!r} is the id of")
        return node

    def pre_reboot(self, client: ClientParams) -> None:
        node = self._node_of(client)
        gc = self.group(client.group)
        view = gc.read()
        if view.slots is None and not view.corrupt:
            gc.ensure(self.settings.max_holders)
            view = gc.read()
        record = view.records.get(client.id)
        if view.holds(client.id):
            if record is None or record.kind == MANUAL or record.phase not in (Phase.LOCKED, Phase.DRAINING):
                return  # granted before (or held by airlock's or an operator's hand): recursive
        else:
            record = self._take(gc, client, node, view)
        if node is not None and self.directory is not None:
            self._drain(gc, record, node)
        elif record.phase is not Phase.REBOOTING:
            gc.update(record.moved(Phase.REBOOTING, self.clock(), reboot_requested_at=self.clock()))

    def _take(
        self, gc: GroupClient, client: ClientParams, node: NodeName | None, view: GroupView
    ) -> HolderRecord:
        """Keep (or take) the client's place in line, and a slot if it is its turn: asked of the
        store (one compare-and-swap) only when ``view``, read just before, says it may be."""
        now = self.clock()
        gc.join_queue(Waiter(client.id, node or NodeName(client.id), now, 0))
        position = view.queue_position(client.id)
        if position is None:
            position = len(view.waiters)  # joined just now: at the end of the line as read
        if view.paused is not None:
            raise refusal(
                "group_paused", f"group {client.group} is paused by {view.paused.by}: {view.paused.reason}"
            )
        if view.corrupt:
            raise view.corrupt[0]
        slots = view.slots
        if slots is not None and position < slots.free:
            known = node is not None and self.directory is not None
            boot = self.directory.boot_id(node) if known else ""  # type: ignore[union-attr, arg-type]
            zone = self.directory.zone(node) if known else ""  # type: ignore[union-attr, arg-type]
            record = HolderRecord(
                id=client.id,
                node=node or NodeName(client.id),
                group=client.group,
                phase=Phase.LOCKED,
                boot_id=boot,
                acquired_at=now,
                phase_since=now,
                kind=FLEETLOCK,
                reason="FleetLock pre-reboot",
                zone=zone,
            )
            if gc.acquire(record, limits=self.settings.limits) is not None:
                log.info("FleetLock client %s (node %s) took a slot of group %s", client.id, record.node,
                         client.group)  # fmt: skip
                return record
            view = gc.read()  # it was not its turn after all: say where it stands now
            position = view.queue_position(client.id) or 0
            slots = view.slots
        held = f"{len(slots.holders)} of {slots.max} slots held" if slots else "no slots"
        line = max(len(view.waiters), position + 1)
        admitted = view.admission(self.settings.limits, now)
        wave = "" if admitted.ok else f"; {admitted.reason}"
        raise refusal(
            "no_free_slot",
            f"{held}{wave}; place {position + 1} of {line} in line; kept while the client keeps asking",
        )

    def _drain(self, gc: GroupClient, record: HolderRecord, node: NodeName) -> None:
        assert self.directory is not None
        ops = self.directory.node_ops(node)
        try:
            if record.cordoned is None:
                ours = not ops.is_unschedulable() or ops.cordoned_by_us()
                record = record.moved(Phase.DRAINING, self.clock(), cordoned=ours)
                gc.update(record)
            if record.cordoned:
                ops.cordon()
            ops.announce(Phase.DRAINING, f"FleetLock client {record.id}: draining before its reboot")
            ops.drain(self.stop)
            if self.metrics:
                self.metrics.drains.labels("ok").inc()
            now = self.clock()
            gc.update(record.moved(Phase.REBOOTING, now, reboot_requested_at=now))
        except SlotLost:
            self._undo(ops, record, "")
            raise refusal(
                "slot_lost", f"{record.id} lost its slot (unlocked by an operator) during the drain"
            ) from None
        except NodeOperationError as exc:
            if self.metrics:
                self.metrics.drains.labels("failed").inc()
            self._undo(ops, record, str(exc))
            gc.release(record.id, Ending(DRAIN_FAILED, self.clock(), f"drain failed: {exc}"))
            raise refusal("drain_failed", f"node {node}: {exc}") from None
        ops.announce(Phase.REBOOTING, f"FleetLock client {record.id} may reboot: node drained")

    def _undo(self, ops: Any, record: HolderRecord, why: str) -> None:
        """Leave the node as found: uncordon only our own cordon."""
        if record.cordoned:
            ops.uncordon()
        if why:
            ops.announce(Phase.IDLE, f"drain failed, uncordoned, slot given back: {why}", warning=True,
                         event_reason="DrainFailed")  # fmt: skip

    def steady_state(self, client: ClientParams) -> None:
        gc = self.group(client.group)
        view = gc.read(queue=False)
        record = view.records.get(client.id)
        if not view.holds(client.id):
            gc.leave_queue(client.id)  # it asks no more: its place goes
            if record is not None:
                gc.drop_record(client.id)
            return
        if record is not None and record.kind == MANUAL:
            return  # an operator's lock under this id: only rebootctl unlock frees it
        node = record.node if record is not None and record.kind == FLEETLOCK else None
        ending = Ending(REBOOTED, self.clock(), "FleetLock steady-state")
        ours = node is not None and self.directory is not None and self.directory.find(client.id) == node
        if ours and not self._verify(gc, record, node):  # type: ignore[arg-type]
            # Back without a reboot: not through its wave, not a cycle for the p90.
            ending = Ending(ABORTED, self.clock(), "FleetLock steady-state: the node did not reboot")
        gc.release(client.id, ending)
        log.info("FleetLock client %s released its slot of group %s", client.id, client.group)

    def _verify(self, gc: GroupClient, record: HolderRecord, node: NodeName) -> bool:
        """The Node's checks pass (else a refusal, the slot held); whether it rebooted."""
        assert self.directory is not None
        failed = [r for r in self.directory.verify(node) if not r.ok]
        ops = self.directory.node_ops(node)
        if failed:
            note = "; ".join(f"{r.name}: {r.detail}" for r in failed)
            if record.phase is not Phase.VERIFYING or record.note != note:
                gc.update(record.moved(Phase.VERIFYING, self.clock(), note=note))
            raise refusal("node_not_ready", f"node {node}: {note}; the slot stays held")
        rebooted = record.boot_id == "" or self.directory.boot_id(node) != record.boot_id
        if record.cordoned:
            ops.uncordon()
        reason = f"FleetLock client {record.id} is back" + ("" if rebooted else " (it did not reboot)")
        ops.announce(Phase.IDLE, reason + ": uncordoned, slot released")
        return rebooted


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

    def handle(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[str, str, bytes]:
        status, answer = service.handle(method, path, headers, body)
        return f"{status} {REASONS.get(status, 'Error')}", "application/json", answer

    host, _, port = address.rpartition(":")
    server = BoundedHTTPServer(
        host.strip("[]") or "0.0.0.0", int(port), handle, workers=workers, max_body=MAX_BODY, tls=tls,
        name="fleetlock",
    ).start()  # fmt: skip
    service.http_alive = server.alive
    return server.stop, server.port


REASONS = {
    200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    409: "Conflict", 413: "Payload Too Large", 423: "Locked", 500: "Internal Server Error",
    503: "Service Unavailable",
}  # fmt: skip
