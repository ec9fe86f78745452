"""Prometheus metrics and /healthz, on a registry passed in (nothing global, nothing at import)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from rebootcoord.core.rollout import REBOOTED
from rebootcoord.core.semaphore import GroupView
from rebootcoord.core.types import Phase
from rebootcoord.daemon.httpserve import BoundedHTTPServer, Peer

log = logging.getLogger(__name__)

FAILURE_REASONS = (
    "backend_unavailable",
    "conflict",
    "corrupt_document",
    "detector_error",
    "drain_failed",
    "reboot_failed",
    "reboot_timeout",
    "health_gate",
    "slot_lost",
    "slot_reclaimed",
    "group_paused",  # this node stopped the line (pause_group_after)
)
#: The reasons the agent's gates give for holding a node back; each has a series from the start.
BLOCKED_REASONS = ("PDBBlocked", "RebootBlocked")
GATE_BLOCKED = "RebootBlocked"  # a gate that names no reason of its own
PHASE_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 1800, 3600, 4 * 3600, 24 * 3600)


class Metrics:
    """Every metric the agent exports. Label values are bounded: phases, reasons, one node, groups."""

    def __init__(self, registry: CollectorRegistry, *, node: str, group: str) -> None:
        self.registry = registry
        self.node = node
        self.group = group
        ns = "rebootcoord"
        self.info = Gauge(
            f"{ns}_info",
            "Agent identity",
            ["version", "node", "group", "backend"],
            registry=registry,
        )
        self.reboot_required = Gauge(
            f"{ns}_reboot_required",
            "1 when a detector says this node needs a reboot",
            ["node"],
            registry=registry,
        )
        self.phase = Gauge(
            f"{ns}_phase", "1 for the node's current phase", ["node", "phase"], registry=registry
        )
        self.slot_held = Gauge(
            f"{ns}_slot_held",
            "1 while this node holds a slot",
            ["node", "group"],
            registry=registry,
        )
        self.slots_max = Gauge(f"{ns}_slots_max", "Slots of the group", ["group"], registry=registry)
        self.slots_held = Gauge(f"{ns}_slots_held", "Slots held in the group", ["group"], registry=registry)
        self.waiters = Gauge(f"{ns}_waiters", "Agents queued for a slot", ["group"], registry=registry)
        self.paused = Gauge(f"{ns}_group_paused", "1 while the group is paused", ["group"], registry=registry)
        self.rollout_wave = Gauge(
            f"{ns}_rollout_wave",
            "The open wave of the group's rollout, from 1 (0: no rollout in progress)",
            ["group"],
            registry=registry,
        )
        self.rollout_waves = Gauge(
            f"{ns}_rollout_waves", "Waves of the rollout in progress (0: none)", ["group"], registry=registry
        )
        self.rollout_through = Gauge(
            f"{ns}_rollout_nodes_through",
            "Nodes of the rollout in progress back healthy so far",
            ["group"],
            registry=registry,
        )
        self.last_cycle = Gauge(
            f"{ns}_group_last_cycle_seconds",
            "How long the group's last healthy cycle took, slot taken to slot given back (history)",
            ["group"],
            registry=registry,
        )
        self.max_mismatch = Gauge(
            f"{ns}_max_holders_mismatch",
            "1 while the group's stored max differs from this agent's max_holders (the stored one "
            "rules; max_holders only creates the semaphore)",
            ["group"],
            registry=registry,
        )
        self.backend_up = Gauge(f"{ns}_backend_up", "1 when the semaphore backend answers", registry=registry)
        self.reboots = Counter(
            f"{ns}_reboots", "Reboots completed (boot ID changed while holding)", registry=registry
        )
        self.reboot_requests = Counter(
            f"{ns}_reboot_requests", "Reboots asked of the host", registry=registry
        )
        self.failures = Counter(f"{ns}_failures", "Failures by reason", ["reason"], registry=registry)
        self.health_failing = Gauge(
            f"{ns}_health_gate_failing",
            "1 while post-reboot checks fail (the slot stays held)",
            registry=registry,
        )
        self.blocked = Gauge(
            f"{ns}_blocked",
            "1 while a gate keeps this node from taking a slot, by the reason the gate gives "
            f"(PDBBlocked; {GATE_BLOCKED} for gates that name none)",
            ["reason"],
            registry=registry,
        )
        self.next_window = Gauge(
            f"{ns}_next_window_open_timestamp_seconds",
            "When the next maintenance window opens",
            registry=registry,
        )
        self.api_requests = Counter(
            f"{ns}_kube_requests",
            "Kubernetes API requests by verb (watch: one per established watch)",
            ["verb"],
            registry=registry,
        )
        self.wakeups = Counter(
            f"{ns}_wakeups",
            "Waits for a slot ended by a watch: the head of the line saw the slots change (slots), "
            "a waiter saw the one ahead of it leave (ahead)",
            ["role"],
            registry=registry,
        )
        for role in ("slots", "ahead"):
            self.wakeups.labels(role)
        self.conflicts = Counter(
            f"{ns}_backend_conflicts",
            "Compare-and-swap writes that lost a race (HTTP 409, failed etcd txn)",
            registry=registry,
        )
        self.notifications = Counter(
            f"{ns}_notifications",
            "Notifications by event and outcome, one per URL: sent, failed (the service refused, "
            "or did not answer in notify_timeout), dropped (the queue was full, or the agent stopped)",
            ["event", "outcome"],
            registry=registry,
        )
        self.phase_seconds = Histogram(
            f"{ns}_phase_seconds",
            "Seconds spent per phase",
            ["phase"],
            buckets=PHASE_BUCKETS,
            registry=registry,
        )
        for phase in Phase:
            self.phase.labels(node, phase.value).set(0)
            self.phase_seconds.labels(phase.value)  # zero series from the start, not after a first change
        for reason in FAILURE_REASONS:
            self.failures.labels(reason)
        for reason in BLOCKED_REASONS:
            self.blocked.labels(reason).set(0)
        self.slot_held.labels(node, group).set(0)
        self.reboot_required.labels(node).set(0)
        self.health_failing.set(0)
        self.max_mismatch.labels(group).set(0)

    def set_phase(self, phase: Phase) -> None:
        for p in Phase:
            self.phase.labels(self.node, p.value).set(1 if p is phase else 0)
        self.slot_held.labels(self.node, self.group).set(1 if phase.holds_slot else 0)

    def observe_group(self, view: GroupView) -> None:
        """The group as the agent last saw it: slots, waiters, pause."""
        if view.slots is not None:
            self.slots_max.labels(self.group).set(view.slots.max)
            self.slots_held.labels(self.group).set(len(view.slots.holders))
        self.waiters.labels(self.group).set(len(view.waiters))
        self.paused.labels(self.group).set(1 if view.paused else 0)
        rollout = view.rollout(time.time())
        self.rollout_wave.labels(self.group).set(rollout.current + 1 if rollout else 0)
        self.rollout_waves.labels(self.group).set(len(rollout.plan.sizes) if rollout else 0)
        self.rollout_through.labels(self.group).set(rollout.through if rollout else 0)
        healthy = [c for c in view.ledger.history if c.outcome == REBOOTED]
        if healthy:
            self.last_cycle.labels(self.group).set(healthy[-1].seconds)

    def fail(self, reason: str) -> None:
        self.failures.labels(reason).inc()


def serve(
    address: str, registry: CollectorRegistry, healthy: Callable[[], tuple[bool, str]]
) -> tuple[Callable[[], None], int]:
    """Serve /metrics and /healthz on ``address`` in a thread (a server no client can exhaust:
    daemon/httpserve.py). Returns (stop, bound port)."""
    host, _, port = address.rpartition(":")

    def handle(
        method: str, path: str, headers: dict[str, str], _body: bytes, _peer: Peer
    ) -> tuple[str, str, bytes]:
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"GET only\n"
        path = path.split("?", 1)[0]
        if path == "/healthz":
            ok, detail = healthy()
            return ("200 OK" if ok else "503 Service Unavailable"), "text/plain", (detail + "\n").encode()
        if path in ("/metrics", "/"):
            encoder, content_type = choose_encoder(headers.get("accept", ""))
            return "200 OK", content_type, encoder(registry)
        return "404 Not Found", "text/plain", b"not found\n"

    server = BoundedHTTPServer(host.strip("[]") or "0.0.0.0", int(port), handle).start()
    return server.stop, server.port


class Heartbeat:
    """The main loop beats once per turn; /healthz fails when it stops beating."""

    def __init__(self, max_age: float) -> None:
        self.max_age = max_age
        self._at = time.monotonic()

    def beat(self) -> None:
        self._at = time.monotonic()

    def healthy(self) -> tuple[bool, str]:
        age = time.monotonic() - self._at
        if age > self.max_age:
            return False, f"main loop stalled for {age:.0f}s"
        return True, "ok"
