"""The agent's loop: gather a snapshot, ask ``decide``, carry the step out, record the phase.

Threads: this loop; the backend's watch (it only stores the newest view and wakes the loop);
the metrics server. Every wait is ``stop.wait`` or ``changed.wait``, so SIGTERM ends the loop
at the next step boundary, leaving the holder record in a state the next start understands.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from rebootcoord.adapters.detectors import detect
from rebootcoord.adapters.host import Host
from rebootcoord.core.config import Settings
from rebootcoord.core.cycle import (
    Abandon,
    Acquire,
    Drain,
    JoinQueue,
    LeaveQueue,
    Persist,
    Reboot,
    Release,
    Rest,
    Snapshot,
    Step,
    Timing,
    Verify,
    decide,
    step_phase,
)
from rebootcoord.core.semaphore import GroupView, HolderRecord, Waiter
from rebootcoord.core.types import HolderId, PendingReboot, Phase
from rebootcoord.daemon.events import EventLog
from rebootcoord.daemon.metrics import Heartbeat, Metrics
from rebootcoord.errors import (
    BackendUnavailable,
    Conflict,
    CorruptDocument,
    DetectorError,
    NodeOperationError,
    RebootError,
    SlotLost,
)
from rebootcoord.ports import Check, Detector, NodeOps, Rebooter, Semaphore

log = logging.getLogger(__name__)


class NoNodeOps:
    """Bare etcd mode: there is no cluster to cordon or drain."""

    def is_unschedulable(self) -> bool:
        return True  # no scheduler: never record that we cordoned, never uncordon

    def cordon(self) -> None:
        return None

    def drain(self) -> None:
        return None

    def uncordon(self) -> None:
        return None


@dataclass
class AgentParts:
    """What the composition root hands the agent."""

    settings: Settings
    semaphore: Semaphore
    detectors: Sequence[Detector]
    rebooter: Rebooter
    host: Host
    metrics: Metrics
    events: EventLog
    checks: Sequence[Check] = ()  # post-reboot health checks
    blockers: Sequence[Check] = ()  # pre-acquire gates
    node_ops: NodeOps = field(default_factory=NoNodeOps)
    clock: Callable[[], float] = time.time


class Agent:
    def __init__(self, parts: AgentParts, stop: threading.Event) -> None:
        self.p = parts
        self.s = parts.settings
        self.stop = stop
        self.changed = threading.Event()
        self.heartbeat = Heartbeat(max_age=2 * self.s.check_interval.total_seconds() + 60)
        self._view: GroupView | None = None
        self._last_digest: object = None
        self._view_lock = threading.Lock()
        self._phase: Phase | None = None
        self._phase_entered = time.monotonic()
        self._reason = ""
        self._pending: PendingReboot | None = None
        self._detector_errors: tuple[str, ...] = ()
        self._detected_at: float | None = None
        self._reboot_issued_at: float | None = None
        self._last_verify_at: float | None = None
        self._healthy_at: float | None = None
        self._timing = Timing(
            reboot_timeout=self.s.reboot_timeout,
            verify_interval=self.s.verify_interval,
            release_delay=self.s.release_delay,
        )

    # ------------------------------------------------------------------------------------------
    # the loop

    def run(self) -> int:
        log.info(
            "agent starting",
            extra={"node": self.s.node_name, "group": self.s.group, "holder": self.s.holder},
        )
        self._wait_for_backend()
        stop_watch = self.p.semaphore.watch(self._on_view)
        try:
            while not self.stop.is_set():
                self.heartbeat.beat()
                try:
                    self._turn()
                except BackendUnavailable as exc:
                    self.p.metrics.backend_up.set(0)
                    self.p.metrics.fail("backend_unavailable")
                    log.warning("semaphore backend unavailable: %s", exc)
                    self._sleep(self._timing.retry_after.total_seconds())
                except Conflict as exc:
                    self.p.metrics.fail("conflict")
                    log.warning("%s", exc)
        finally:
            stop_watch()
        log.info("agent stopped", extra={"node": self.s.node_name, "phase": str(self._phase)})
        return 0

    def _wait_for_backend(self) -> None:
        delay = 0.2
        while not self.stop.is_set():
            try:
                self.p.semaphore.ensure(self.s.max_holders)
                self._store_view(self.p.semaphore.read())
                self.p.metrics.backend_up.set(1)
                return
            except BackendUnavailable as exc:
                self.p.metrics.backend_up.set(0)
                log.warning("waiting for the semaphore backend: %s", exc)
                self._sleep(delay)
                delay = min(delay * 2, 10.0)

    def _turn(self) -> None:
        now = self.p.clock()
        snapshot = self._snapshot(now)
        step = decide(snapshot)
        phase = step_phase(step)
        if phase is Phase.IDLE and snapshot.view is not None:
            # An upper bound for the end of a holding interval cut short by a crash (checker).
            self._enter(phase, getattr(step, "reason", ""), rev=snapshot.view.revision)
        elif phase is not None:
            self._enter(phase, getattr(step, "reason", "") or _describe(step))
        if isinstance(step, Rest):
            self._rest(step, now)
        else:
            self._carry_out(step, now)

    def _snapshot(self, now: float) -> Snapshot:
        if self._detected_at is None or now >= self._detected_at + self.s.check_interval.total_seconds():
            self._detect(now)
        window = self.s.schedule.status(datetime.fromtimestamp(now, UTC))
        self.p.metrics.next_window.set(window.next_open.timestamp() if window.next_open else 0)
        blockers: tuple[str, ...] = ()
        with self._view_lock:
            view = self._view
        if (
            self._pending is not None
            and self.p.blockers
            and view is not None
            and not view.holds(self.s.holder)
        ):
            blockers = tuple(
                f"{r.name}: {r.detail}" for r in (b.check() for b in self.p.blockers) if not r.ok
            )
        return Snapshot(
            now=now,
            holder=self.s.holder,
            node=self.s.node,
            group=self.s.group,
            boot_id=self.p.host.boot_id(),
            pending=self._pending,
            detector_errors=self._detector_errors,
            window=window,
            view=view,
            blockers=blockers,
            reboot_issued_at=self._reboot_issued_at,
            last_verify_at=self._last_verify_at,
            healthy_at=self._healthy_at,
            timing=self._timing,
        )

    def _detect(self, now: float) -> None:
        pending, errors = detect(self.p.detectors)
        for error in errors:
            if error not in self._detector_errors:
                log.warning("detector error: %s", error)
            self.p.metrics.fail("detector_error")
        if (pending is None) != (self._pending is None):
            log.info("reboot required: %s", pending.reason if pending else "no")
        self._pending, self._detector_errors, self._detected_at = pending, errors, now
        self.p.metrics.reboot_required.labels(self.s.node_name).set(1 if pending else 0)

    def _rest(self, step: Rest, now: float) -> None:
        timeout = self.s.check_interval.total_seconds()
        if self._detected_at is not None:
            timeout = max(0.0, self._detected_at + timeout - now)
        if step.wake_at is not None:
            timeout = min(timeout, max(0.0, step.wake_at - now))
        self.changed.wait(timeout)
        self.changed.clear()

    def _sleep(self, seconds: float) -> None:
        self.stop.wait(seconds)

    # ------------------------------------------------------------------------------------------
    # views from the backend

    def _on_view(self, view: GroupView | None) -> None:
        if view is None:
            self.p.metrics.backend_up.set(0)
            self.changed.set()
            return
        self.p.metrics.backend_up.set(1)
        self._store_view(view)
        # Wake the loop only when something this node's decision depends on changed: in a group
        # of a hundred waiters, each other holder's phase change would otherwise wake everyone.
        digest = _relevant(view, self.s.holder)
        if digest != self._last_digest:
            self._last_digest = digest
            self.changed.set()

    def _store_view(self, view: GroupView) -> None:
        with self._view_lock:
            if self._view is None or view.revision >= self._view.revision:
                self._view = view
        m = self.p.metrics
        if view.slots is not None:
            m.slots_max.labels(self.s.group).set(view.slots.max)
            m.slots_held.labels(self.s.group).set(len(view.slots.holders))
        m.waiters.labels(self.s.group).set(len(view.waiters))
        m.paused.labels(self.s.group).set(1 if view.paused else 0)

    def _refresh(self) -> None:
        """After our own write, read back so the next decision does not see the world before it."""
        self._store_view(self.p.semaphore.read())

    # ------------------------------------------------------------------------------------------
    # phases: log line, metric, event

    def _enter(self, phase: Phase, reason: str, **extra: object) -> None:
        if phase == self._phase and reason == self._reason and not extra:
            return
        if phase != self._phase:
            if self._phase is not None:
                self.p.metrics.phase_seconds.labels(self._phase.value).observe(
                    time.monotonic() - self._phase_entered
                )
            self._phase_entered = time.monotonic()
            self.p.metrics.set_phase(phase)
            self.p.events.emit(
                ts=self.p.clock(),
                node=self.s.node_name,
                pid=os.getpid(),
                phase=phase.value,
                boot_id=self._boot_id_or_unknown(),
                group=self.s.group,
                reason=reason,
                **extra,
            )
            log.info(
                "phase %s: %s",
                phase.value,
                reason,
                extra={
                    "node": self.s.node_name,
                    "group": self.s.group,
                    "phase": phase.value,
                    "reason": reason,
                },
            )
        elif reason != self._reason:
            log.debug("phase %s: %s", phase.value, reason)
        self._phase = phase
        self._reason = reason

    def _boot_id_or_unknown(self) -> str:
        try:
            return self.p.host.boot_id()
        except DetectorError:
            return "unknown"

    # ------------------------------------------------------------------------------------------
    # effects

    def _carry_out(self, step: Step, now: float) -> None:
        sem = self.p.semaphore
        try:
            match step:
                case JoinQueue():
                    sem.join_queue(Waiter(self.s.holder, self.s.node, now, 0))
                case LeaveQueue():
                    sem.leave_queue(self.s.holder)
                case Acquire(record=record):
                    revision = sem.acquire(record)
                    if revision is not None:
                        self._phase = None  # force the event even if a stale view said locked
                        self._enter(Phase.LOCKED, record.reason, rev=revision)
                case Persist(record=record):
                    if record.phase is Phase.VERIFYING and not _was(self._phase, Phase.VERIFYING):
                        self.p.metrics.reboots.inc()
                    sem.update(record)
                case Drain(record=record):
                    self._drain(record)
                case Reboot(record=record):
                    self._reboot(record, now)
                case Verify(record=record):
                    self._verify(record, now)
                case Release(record=record):
                    self._release(record)
                case Abandon(record=record, reason=reason):
                    log.warning("%s; undoing our cordon and dropping the record", reason)
                    self.p.metrics.fail("slot_lost")
                    if record.cordoned:
                        self.p.node_ops.uncordon()
                    sem.drop_record(record.id)
        except SlotLost as exc:
            self.p.metrics.fail("slot_lost")
            log.warning("%s", exc)
        except CorruptDocument as exc:
            self.p.metrics.fail("corrupt_document")
            log.error("%s", exc)
            self._sleep(self._timing.retry_after.total_seconds())
        self._refresh()

    def _drain(self, record: HolderRecord) -> None:
        sem, ops = self.p.semaphore, self.p.node_ops
        if record.cordoned is None and not ops.is_unschedulable():
            # Record before touching the node: a crash between the two leaves a record that
            # says "we cordon", and uncordoning a schedulable node is harmless. A node that is
            # unschedulable already is not ours to uncordon; nothing to record (None stays None).
            record = replace(record, cordoned=True)
            sem.update(record)
        try:
            if record.cordoned:
                ops.cordon()
            ops.drain()
        except NodeOperationError as exc:
            self.p.metrics.fail("drain_failed")
            log.error("drain failed: %s", exc)
            sem.update(replace(record, note=f"drain failed: {exc}"))
            self._sleep(self._timing.retry_after.total_seconds())
            return
        sem.update(record.moved(Phase.REBOOTING, self.p.clock(), reboot_requested_at=self.p.clock()))

    def _reboot(self, record: HolderRecord, now: float) -> None:
        # Last look before the point of no return: do we still hold the slot?
        view = self.p.semaphore.read()
        if not view.holds(record.id) or view.record(record.id) is None:
            raise SlotLost(f"{record.id} lost its slot just before rebooting; not rebooting")
        if self._reboot_issued_at is not None:
            self.p.metrics.fail("reboot_timeout")
            log.error(
                "the boot ID did not change within %s; asking for the reboot again",
                self.s.reboot_timeout,
            )
        self._reboot_issued_at = now
        self.p.metrics.reboot_requests.inc()
        log.info("rebooting the node", extra={"node": self.s.node_name, "group": self.s.group})
        try:
            self.p.rebooter.reboot()
        except RebootError as exc:
            self.p.metrics.fail("reboot_failed")
            log.error("%s", exc)
            self.p.semaphore.update(replace(record, note=str(exc)))

    def _verify(self, record: HolderRecord, now: float) -> None:
        self._last_verify_at = now
        failures: list[str] = []
        self._detect(now)
        if self._pending is not None and self._pending.key == record.update_key:
            failures.append(f"the update that caused the reboot is still pending ({self._pending.reason})")
        for check in self.p.checks:
            result = check.check()
            if not result.ok:
                failures.append(f"{result.name}: {result.detail}")
        if failures:
            note = "post-reboot checks failed: " + "; ".join(failures)
            self.p.metrics.fail("health_gate")
            self.p.metrics.health_failing.set(1)
            log.error("%s (the slot stays held)", note)
            if note != record.note:
                self.p.semaphore.update(replace(record, note=note))
            return
        self.p.metrics.health_failing.set(0)
        self._healthy_at = now

    def _release(self, record: HolderRecord) -> None:
        if record.cordoned:
            self.p.node_ops.uncordon()
        revision = self.p.semaphore.release(record.id)
        self._reboot_issued_at = None
        self._last_verify_at = None
        self._healthy_at = None
        self._detected_at = None  # look again: a new update may be waiting
        self._enter(Phase.IDLE, "slot released", rev=revision)


def _relevant(view: GroupView, holder: HolderId) -> object:
    """What decide() reads from a view for this holder (see core.cycle)."""
    return (
        view.slots is None,
        view.holds(holder),
        view.queue_position(holder) is not None,
        view.may_take(holder),  # not the position itself: it moves for everyone at each handoff
        view.record(holder),
        view.paused is not None,
        len(view.corrupt),
    )


def _was(current: Phase | None, phase: Phase) -> bool:
    return current is phase


def _describe(step: Step) -> str:
    return type(step).__name__.lower()
