"""The agent's loop: gather a snapshot, ask ``decide``, carry the step out, record the phase.

Threads: this loop; the backend's watch (it only stores the newest view and wakes the loop);
the metrics server. Every wait is ``stop.wait`` or ``changed.wait``, so SIGTERM ends the loop
at the next step boundary, leaving the holder record in a state the next start understands.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from rebootcoord.adapters.detectors import detect
from rebootcoord.adapters.host import Host
from rebootcoord.core.config import (
    DetectionSettings,
    DrainSettings,
    Identity,
    NotifySettings,
    RebootSettings,
    SemaphoreSettings,
    Settings,
    VerifySettings,
    WindowSettings,
)
from rebootcoord.core.cycle import (
    CHECKS_FAILED,
    Abandon,
    Acquire,
    CheckGates,
    Drain,
    Drained,
    JoinQueue,
    LeaveQueue,
    PauseGroup,
    Persist,
    Policy,
    Reboot,
    Reclaim,
    Release,
    Rest,
    Snapshot,
    Step,
    Uncordon,
    Verify,
    decide,
    gates_due,
    release_outcome,
    step_phase,
)
from rebootcoord.core.documents import described
from rebootcoord.core.group import Ending
from rebootcoord.core.notices import render
from rebootcoord.core.rollout import DRAIN_FAILED, REBOOTED, RECLAIMED
from rebootcoord.core.semaphore import AGENT, GroupView, HolderRecord, Waiter
from rebootcoord.core.types import HolderId, PendingReboot, Phase
from rebootcoord.daemon import holding
from rebootcoord.daemon.events import EventLog
from rebootcoord.daemon.metrics import GATE_BLOCKED, Heartbeat, Metrics
from rebootcoord.errors import (
    AccessDenied,
    ApiError,
    BackendUnavailable,
    Conflict,
    CorruptDocument,
    DetectorError,
    HoldsAgain,
    NodeOperationError,
    RebootError,
    SlotLost,
)
from rebootcoord.ports import (
    Check,
    CheckResult,
    Detector,
    Finalizer,
    NodeOps,
    Notifier,
    Rebooter,
    Semaphore,
)

log = logging.getLogger(__name__)

#: The Warning Events (``_tell``) that people are notified of, and as which event.
NOTIFIED_WARNINGS = {
    "DrainFailed": "failure",
    "RebootFailed": "failure",
    "HealthCheckFailed": "failure",
    "GroupPaused": "paused",
}

#: A waiting agent's watch wakes it when its turn may have come; it reads the group this often
#: anyway, in case a watch could not tell (a store that lost it without an error).
VIEW_REFRESH = 300.0
#: Phases whose annotations on the Node wait for the node's next patch, which follows at once.
DEFERRED_ANNOUNCE = frozenset({Phase.LOCKED, Phase.DRAINING, Phase.RELEASING})
#: How often the first waiter of a full group looks up the Nodes of holders whose record has
#: not moved for as long (a holder whose Node is gone is reclaimed).
GONE_CHECK = 30.0


@dataclass(frozen=True)
class AgentSettings:
    """The sections of the configuration the agent reads. Where etcd is, its password, the
    gates' and the metrics' settings stay with the composition root, which builds the adapters."""

    identity: Identity
    semaphore: SemaphoreSettings
    detection: DetectionSettings
    windows: WindowSettings
    reboot: RebootSettings
    verify: VerifySettings
    drain: DrainSettings
    notify: NotifySettings

    def policy(self) -> Policy:
        """The cycle's rules from these sections: the agent's, and those the FleetLock server
        applies to its clients."""
        return Policy(
            reboot_timeout=self.reboot.reboot_timeout,
            verify_interval=self.verify.verify_interval,
            release_delay=self.verify.release_delay,
            lease_ttl=self.semaphore.lease_ttl,
            drain_failure=self.drain.drain_failure,
            drain_retry_after=self.drain.drain_timeout / 3,
            pause_group_after=self.verify.pause_group_after,
            expected_cycle=self.windows.expected_cycle,
            limits=self.semaphore.limits,
        )

    @classmethod
    def of(cls, s: Settings) -> AgentSettings:
        return cls(
            identity=s.identity,
            semaphore=s.semaphore,
            detection=s.detection,
            windows=s.windows,
            reboot=s.reboot,
            verify=s.verify,
            drain=s.drain,
            notify=s.notify,
        )


@dataclass
class AgentParts:
    """What the composition root hands the agent."""

    settings: AgentSettings
    semaphore: Semaphore
    detectors: Sequence[Detector]
    rebooter: Rebooter
    host: Host
    metrics: Metrics
    events: EventLog
    node_ops: NodeOps  # NoNodeOps on a bare host
    checks: Sequence[Check] = ()  # post-reboot health checks
    blockers: Sequence[Check] = ()  # pre-acquire gates
    boot_id: Callable[[], str] | None = None  # default: the host's boot ID file
    clock: Callable[[], float] = time.time
    notifier: Notifier | None = None  # None: notify_urls is empty
    zone: str = ""  # the node's topology zone (max_holders_per_zone)


class Agent:
    def __init__(self, parts: AgentParts, stop: threading.Event) -> None:
        self.p = parts
        self.s = parts.settings
        self.stop = stop
        self.changed = threading.Event()
        self.heartbeat = Heartbeat(max_age=2 * self.s.detection.check_interval.total_seconds() + 60)
        self._view: GroupView | None = None  # the group as last read
        self._woken = False  # a watch said our turn may have come: read again
        self._stop_wake: Callable[[], None] | None = None
        self._wake_key: tuple[int, str] | None = None  # (revision, role) the wake watch is for
        self._view_at = 0.0  # when the view was read (the agent's clock)
        self._corrupt_told = ""  # the corrupt documents last logged
        self._phase: Phase | None = None
        self._phase_entered = time.monotonic()
        self._reason = ""
        self._pending: PendingReboot | None = None
        self._detector_errors: tuple[str, ...] = ()
        self._detected_at: float | None = None
        self._reboot_issued_at: float | None = None
        self._last_verify_at: float | None = None
        self._healthy_at: float | None = None
        self._retry_not_before: float | None = None
        self._gone: tuple[HolderId, ...] = ()
        self._gone_checked_at = 0.0
        self._blockers: tuple[str, ...] = ()
        self._blocking: tuple[CheckResult, ...] = ()  # the failing results behind _blockers
        self._blockers_at: float | None = None
        self._told_blocked: frozenset[str] = frozenset()  # the gates' reasons last reported
        self._boot_id = parts.boot_id or parts.host.boot_id
        self._last_error = ""
        self._decided_at = 0.0
        self._max_told: int | None = None  # the stored max we warned about differing from ours
        self._gates_fresh = False  # the blockers were looked at for a slot about to be taken
        self._gates_ran = False  # the blockers were looked at in this turn's snapshot
        self._recent = False  # the last turn wrote the group: its answer is the view to start from
        self._holding = False  # the view last read says we hold a slot or have a record
        self._drained: Drained | None = None
        self._policy = self.s.policy()

    # ------------------------------------------------------------------------------------------
    # the loop

    def shutdown(self) -> None:
        """Stop at the next step boundary (SIGTERM). Wakes the loop if it is resting."""
        self.stop.set()
        self.changed.set()

    def run(self) -> int:
        log.info(
            "agent starting",
            extra={
                "node": self.s.identity.node_name,
                "group": self.s.identity.group,
                "holder": self.s.identity.holder,
            },
        )
        stop_watch = self.connect()
        try:
            while not self.stop.is_set():
                self.heartbeat.beat()
                try:
                    step = self.turn()
                except AccessDenied:
                    raise  # a wrong password or a missing right: exit 3, no retry changes it
                except BackendUnavailable as exc:
                    self.p.metrics.backend_up.set(0)
                    self.p.metrics.fail("backend_unavailable")
                    log.warning("semaphore backend unavailable: %s", exc)
                    self._sleep(self._policy.retry_after.total_seconds())
                except Conflict as exc:
                    self.p.metrics.fail("conflict")
                    log.warning("%s", exc)
                except DetectorError as exc:
                    # The boot ID cannot be read: no decision is safe without it.
                    self.p.metrics.fail("detector_error")
                    if str(exc) != self._last_error:
                        log.error("%s; nothing is decided until it can be read", exc)
                    self._last_error = str(exc)
                    self._sleep(self._policy.retry_after.total_seconds())
                else:
                    self._last_error = ""
                    if isinstance(step, Rest):
                        self._rest(step, self._decided_at)
        finally:
            stop_watch()
        log.info("agent stopped", extra={"node": self.s.identity.node_name, "phase": str(self._phase)})
        return 0

    def connect(self) -> Callable[[], None]:
        """Wait for the backend, create the group's semaphore if needed and read it. Returns the
        function that stops the watch of the current wait, if any."""
        self._wait_for_backend()
        return self._unwatch

    def _wait_for_backend(self) -> None:
        delay = 0.2
        while not self.stop.is_set():
            try:
                with contextlib.suppress(CorruptDocument):
                    # it exists: the read reports it, and the loop waits for an operator
                    self.p.semaphore.ensure(
                        self.s.semaphore.max_holders, member=self.s.identity.holder, now=self.p.clock()
                    )
                # The first turn reads the group from what ensure read or wrote a moment ago (no
                # GET), and the line only if a reboot is pending by then (its detection first).
                self._recent = True
                return
            except AccessDenied:
                raise
            except BackendUnavailable as exc:
                self.p.metrics.backend_up.set(0)
                log.warning("waiting for the semaphore backend: %s", exc)
                self._sleep(delay)
                delay = min(delay * 2, 10.0)

    def turn(self) -> Step:
        """One decision, carried out; a Rest is returned, not waited for (the loop waits)."""
        now = self._decided_at = self.p.clock()
        snapshot = self._snapshot(now)
        step = decide(snapshot)
        phase = step_phase(step)
        if phase is Phase.IDLE and snapshot.view is not None:
            # An upper bound for the end of a holding interval cut short by a crash (checker).
            self._enter(phase, getattr(step, "reason", ""), rev=snapshot.view.revision)
        elif phase is not None:
            self._enter(phase, getattr(step, "reason", "") or _describe(step))
        self._report_blocked(self._blocking if snapshot.blockers else ())
        if not isinstance(step, Rest):
            self._carry_out(step, now)
        return step

    def _snapshot(self, now: float) -> Snapshot:
        if (
            self._detected_at is None
            or now >= self._detected_at + self.s.detection.check_interval.total_seconds()
        ):
            self._detect(now)
        window = self.s.windows.schedule.status(datetime.fromtimestamp(now, UTC))
        self.p.metrics.next_window.set(window.next_open.timestamp() if window.next_open else 0)
        view = self._view
        if self._needs_view(view, now):
            # A holder decides on its own record: the line is not read for it.
            view = self._read_view(queue=self._pending is not None and not self._holding, recent=self._recent)
        holder = self.s.identity.holder
        waiting = self._pending is not None and view is not None and not view.holds(holder)
        checked, self._gates_fresh, self._gates_ran = self._gates_fresh, False, False
        blockers = (
            self._check_blockers(now)
            if waiting and view is not None and gates_due(view, holder, blocked=bool(self._blockers))
            else ()
        )
        return Snapshot(
            now=now,
            holder=self.s.identity.holder,
            node=self.s.identity.node,
            group=self.s.identity.group,
            boot_id=self._boot_id(),
            pending=self._pending,
            detector_errors=self._detector_errors,
            window=window,
            view=view,
            blockers=blockers,
            reboot_issued_at=self._reboot_issued_at,
            last_verify_at=self._last_verify_at,
            healthy_at=self._healthy_at,
            gone_holders=self._gone_holders(view, now) if waiting and view is not None else (),
            retry_not_before=self._retry_not_before,
            stale_cordon=self._stale_cordon(view),
            queue_owned=self.p.semaphore.queue_joined(self.s.identity.holder),
            gates_fresh=checked or self._gates_ran or not self.p.blockers,
            drained=self._drained,
            policy=self._policy,
            zone=self.p.zone,
        )

    def _needs_view(self, view: GroupView | None, now: float) -> bool:
        """A fresh read, unless nothing can have changed that this node decides on. An idle node
        (no reboot pending, no slot, no record) sends no request at all; a waiting one reads when
        its watch wakes it (its turn may have come), after its own writes, and every
        VIEW_REFRESH in case a watch could not tell; a holder reads on every turn."""
        if view is None or self._woken or view.corrupt or view.slots is None:
            return True
        holder = self.s.identity.holder
        if view.holds(holder) or view.record(holder) is not None:
            return True
        if self._pending is None:
            return False
        return now - self._view_at >= VIEW_REFRESH

    def _read_view(self, *, queue: bool = True, recent: bool = False) -> GroupView:
        """The group (and the line, with ``queue``); ``recent``: the answer of our own last write
        (or read) will do, with no request for the group."""
        view = self.p.semaphore.read(queue=queue, recent=recent)
        self._view, self._woken, self._view_at, self._recent = view, False, self.p.clock(), False
        holder = self.s.identity.holder
        self._holding = view.holds(holder) or view.record(holder) is not None
        self.p.metrics.backend_up.set(1)
        self.p.metrics.observe_group(view)
        self._compare_max(view)
        if view.corrupt:
            self.p.metrics.fail("corrupt_document")  # every read that finds one
            told = described(view.corrupt)
            if told != self._corrupt_told:
                log.error("%s (left alone for an operator; the node waits)", told)
            self._corrupt_told = told
        else:
            self._corrupt_told = ""
        return view

    def _compare_max(self, view: GroupView) -> None:
        """max_holders only creates the semaphore; later the stored max rules (rebootctl set-max).
        An agent configured otherwise says so once per stored value, and in a metric."""
        if view.slots is None:
            return
        stored, ours = view.slots.max, self.s.semaphore.max_holders
        self.p.metrics.max_mismatch.labels(self.s.identity.group).set(1 if stored != ours else 0)
        if stored == ours:
            self._max_told = None
        elif stored != self._max_told:
            self._max_told = stored
            log.warning(
                "group %s allows %d holder(s), this agent's max_holders is %d: the group's value "
                "rules (change it with rebootctl set-max)",
                self.s.identity.group,
                stored,
                ours,
            )

    def _stale_cordon(self, view: GroupView | None) -> bool:
        """Our cordon without our slot or record. Asked (one read of the Node) only when it can
        be so: at start-up and after a holding phase, never on every turn of a waiting agent."""
        if (
            view is None
            or view.holds(self.s.identity.holder)
            or view.record(self.s.identity.holder) is not None
        ):
            return False
        if self._phase is not None and not self._phase.holds_slot:
            return False
        try:
            return self.p.node_ops.cordoned_by_us()
        except (BackendUnavailable, NodeOperationError, ApiError) as exc:
            log.warning("cannot tell whether our cordon is on the node: %s", exc)
            return False

    def _check_blockers(self, now: float, *, fresh: bool = False) -> tuple[str, ...]:
        """Pre-acquire gates, at most once per check interval (fresh: right before acquiring).
        Asked only when our turn is near (core.cycle.gates_due)."""
        if not self.p.blockers:
            return ()
        if (
            fresh
            or self._blockers_at is None
            or now >= self._blockers_at + self.s.detection.check_interval.total_seconds()
        ):
            self._blocking = tuple(r for r in (b.check() for b in self.p.blockers) if not r.ok)
            self._blockers = tuple(f"{r.reason or r.name}: {r.detail}" for r in self._blocking)
            self._blockers_at = now
            self._gates_ran = True
        return self._blockers

    def _report_blocked(self, blocking: tuple[CheckResult, ...]) -> None:
        """A gate that starts holding the node back says so once: a Warning Event named after its
        reason (PDBBlocked), which also puts the reason on the Node's annotation; and
        ``rebootcoord_blocked{reason}`` is 1 while it holds."""
        reasons: dict[str, CheckResult] = {}
        for result in blocking:
            reasons.setdefault(result.reason or GATE_BLOCKED, result)
        for reason in sorted(reasons.keys() - self._told_blocked):
            result = reasons[reason]
            self._tell(reason, f"blocked: {result.reason or result.name}: {result.detail}")
        for reason in self._told_blocked | reasons.keys():
            self.p.metrics.blocked.labels(reason).set(1 if reason in reasons else 0)
        self._told_blocked = frozenset(reasons)

    def _gone_holders(self, view: GroupView, now: float) -> tuple[HolderId, ...]:
        """Holders whose Node is gone, looked up only by the first waiter of a full group, and
        only those whose record has not moved for GONE_CHECK seconds: a holder that changed its
        phase since was alive then, and its Node with it (a GET would change nothing)."""
        if not view.first_of_full_queue(self.s.identity.holder):
            return ()
        if now - self._gone_checked_at >= GONE_CHECK:
            self._gone_checked_at = now
            gone = []
            for holder, record in view.records.items():
                if (
                    view.holds(holder)
                    and record.kind == AGENT
                    and now - record.phase_since >= GONE_CHECK
                    and self.p.node_ops.node_exists(record.node) is False
                ):
                    gone.append(holder)
            self._gone = tuple(gone)
        return self._gone

    def _detect(self, now: float) -> None:
        pending, errors = detect(self.p.detectors)
        for error in errors:
            if error not in self._detector_errors:
                log.warning("detector error: %s", error)
            self.p.metrics.fail("detector_error")
        if (pending is None) != (self._pending is None):
            log.info("reboot required: %s", pending.reason if pending else "no")
        self._pending, self._detector_errors, self._detected_at = pending, errors, now
        self.p.metrics.reboot_required.labels(self.s.identity.node_name).set(1 if pending else 0)

    def _rest(self, step: Rest, now: float) -> None:
        self._recent = False  # what we knew of the group goes stale while we rest
        timeout = self.s.detection.check_interval.total_seconds()
        if self._detected_at is not None:
            timeout = max(0.0, self._detected_at + timeout - now)
        if step.wake_at is not None:
            timeout = min(timeout, max(0.0, step.wake_at - now))
        self._watch_for_turn()
        try:
            self.changed.wait(timeout)
        finally:
            self.changed.clear()

    def _watch_for_turn(self) -> None:
        """While waiting for a slot, a watch that ends the rest when our turn may have come: the
        head of the line watches the slots, every other waiter only the waiter just ahead of it.
        It stands across rests until it fires or the view it was set on is replaced."""
        view = self._view
        holder = self.s.identity.holder
        waiting = (
            view is not None
            and self._pending is not None
            and not view.holds(holder)
            and view.record(holder) is None
        )
        position = view.queue_position(holder) if view is not None and waiting else None
        if view is None or position is None:
            self._unwatch()
            return
        role = "slots" if position == 0 or view.may_take(holder) else "ahead"
        key = (view.revision, role)
        if key == self._wake_key and self._stop_wake is not None:
            return
        self._unwatch()
        self._wake_key = key
        self._stop_wake = self.p.semaphore.wake_on(view, holder, role, lambda: self._wake(role))

    def _wake(self, role: str) -> None:
        log.debug("woken by the %s watch", role)  # the benchmarks count these lines
        self._wake_key = None  # spent: the next rest sets a new one
        self._woken = True
        self.p.metrics.wakeups.labels(role).inc()
        self.changed.set()

    def _unwatch(self) -> None:
        stop, self._stop_wake, self._wake_key = self._stop_wake, None, None
        if stop is not None:
            stop()

    def _sleep(self, seconds: float) -> None:
        self._recent = False
        self.stop.wait(seconds)

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
                node=self.s.identity.node_name,
                pid=os.getpid(),
                phase=phase.value,
                boot_id=self._boot_id_or_unknown(),
                group=self.s.identity.group,
                reason=reason,
                **extra,
            )
            log.info(
                "phase %s: %s",
                phase.value,
                reason,
                extra={
                    "node": self.s.identity.node_name,
                    "group": self.s.identity.group,
                    "phase": phase.value,
                    "reason": reason,
                },
            )
            self._tell_the_node(self._phase, phase, reason)
            if phase in (Phase.DRAINING, Phase.REBOOTING):
                # Why the node reboots (the update), not the step that moved it on.
                why = self._pending.reason if self._pending is not None else reason
                self._notify("drain" if phase is Phase.DRAINING else "reboot", why, phase)
        elif reason != self._reason:
            log.debug("phase %s: %s", phase.value, reason)
        self._phase = phase
        self._reason = reason

    def _tell_the_node(self, before: Phase | None, phase: Phase, reason: str) -> None:
        """Annotations and an Event on the Node (Kubernetes mode), the waiting taint. Best effort:
        the story is told, but a failure to tell it never stops the cycle."""
        ops = self.p.node_ops
        try:
            if not (phase is Phase.IDLE and (before is None or before in (Phase.IDLE, Phase.PENDING))):
                # Locked: draining follows at once; draining: the cordon (or the drain) writes the
                # node next; releasing: the uncordon or the idle phase. Their patch carries the
                # phase's annotations (a later phase's replace an earlier one's).
                ops.announce(phase, reason, defer=phase in DEFERRED_ANNOUNCE)
            if self.s.drain.taint_while_waiting:
                if phase is Phase.WAITING:
                    ops.set_waiting_taint(True)
                elif phase in (Phase.IDLE, Phase.PENDING, Phase.LOCKED):
                    ops.set_waiting_taint(False)
        except (BackendUnavailable, NodeOperationError, ApiError) as exc:
            log.warning("cannot record phase %s on the node: %s", phase.value, exc)

    def _boot_id_or_unknown(self) -> str:
        try:
            return self._boot_id()
        except (DetectorError, BackendUnavailable):
            return "unknown"

    # ------------------------------------------------------------------------------------------
    # effects

    def _carry_out(self, step: Step, now: float) -> None:
        sem = self.p.semaphore
        try:
            match step:
                case JoinQueue():
                    sem.join_queue(Waiter(self.s.identity.holder, self.s.identity.node, now, 0))
                case LeaveQueue():
                    sem.leave_queue(self.s.identity.holder)
                case CheckGates():
                    self._check_blockers(now, fresh=True)
                    self._gates_fresh = True
                    return  # nothing written: the view still holds
                case Acquire(record=record):
                    line = self._view.waiters if self._view is not None else None
                    revision = sem.acquire(record, limits=self._policy.limits, line=line)
                    if revision is not None:
                        self._holding = True  # the next turn reads no line (a holder's)
                        self._phase = None  # force the event even if a stale view said locked
                        self._enter(Phase.LOCKED, record.reason, rev=revision)
                    else:
                        self._woken = True  # refused: the view that said our turn is stale
                case Reclaim(record=record, reason=reason):
                    if sem.reclaim(record.id, record, Ending(RECLAIMED, now, reason)):
                        log.warning("reclaimed the slot of %s: %s", record.id, reason)
                        self.p.metrics.fail("slot_reclaimed")
                case Persist(record=record):
                    if record.phase is Phase.VERIFYING and not _was(self._phase, Phase.VERIFYING):
                        self.p.metrics.reboots.inc()
                    if record.phase is Phase.DRAINING and not record.abort_reason:
                        # Whether the cordon will be ours, in the same write as the phase: the
                        # drain then writes no record before cordoning.
                        record = holding.claim_cordon(self.p.node_ops, record)
                    sem.update(record)
                case Drain(record=record):
                    self._drain(record)
                case Reboot(record=record):
                    self._reboot(record, now)
                case Verify(record=record):
                    self._verify(record, now)
                case Release(
                    record=record, reason=reason, retry_not_before=retry_not_before, outcome=outcome
                ):
                    self._release(record, reason, retry_not_before, outcome or release_outcome(record))
                case Uncordon(reason=reason):
                    log.warning("%s", reason)
                    self.p.metrics.fail("slot_lost")
                    self.p.node_ops.uncordon()
                    self._reboot_issued_at = None
                    self._enter(Phase.IDLE, "slot lost; the node is as we found it")
                case PauseGroup(info=info, holder=record, reason=reason):
                    sem.pause(info)  # first: repeated after a crash, never lost
                    sem.update(record)
                    log.error("%s", reason)
                    self.p.metrics.fail("group_paused")
                    self._tell("GroupPaused", f"{reason}; `rebootctl resume` lets the others go on")
                case Abandon(record=record, reason=reason):
                    log.warning("%s; undoing our cordon and dropping the record", reason)
                    self.p.metrics.fail("slot_lost")
                    holding.abandon(sem, self.p.node_ops, record)
        except SlotLost as exc:
            self.p.metrics.fail("slot_lost")
            log.warning("%s", exc)
        except CorruptDocument as exc:
            self.p.metrics.fail("corrupt_document")
            log.error("%s", exc)
            self._sleep(self._policy.retry_after.total_seconds())
        except HoldsAgain as exc:
            log.info("%s", exc)
        self._view = None  # our own write changed the group: the next turn reads it
        # ... from the answer of that write; joining or leaving the line writes no group: the
        # group read this turn still holds (the line is read again).
        # A drain or a check takes time, and the group may change meanwhile; but what follows either
        # is a write (a compare-and-swap, which a stale memory only costs a refusal and a read) or
        # the reboot, whose last look is a fresh read: the memory will do for the decision.
        self._recent = isinstance(
            step, (Acquire, Persist, Release, Reclaim, JoinQueue, LeaveQueue, Drain, Verify)
        )

    def _drain(self, record: HolderRecord) -> None:
        drained = holding.drain(
            self.p.semaphore, self.p.node_ops, record, self.stop, labels=self.s.drain.pre_reboot_labels
        )
        if drained is None:
            return  # stopping: the record says draining, the next start drains again
        if not drained.ok:
            # What a failed drain means (abort or reboot anyway) is decide's: it sees the outcome.
            self.p.metrics.fail("drain_failed")
            self._tell("DrainFailed", drained.error)
            log.error("drain failed: %s", drained.error)
        self._drained = drained

    def _tell(self, reason: str, message: str) -> None:
        """A Warning Event on the Node, best effort; people are notified of those that say a
        cycle failed or the group was paused."""
        if reason in NOTIFIED_WARNINGS:
            self._notify(NOTIFIED_WARNINGS[reason], message, self._phase or Phase.IDLE)
        try:
            self.p.node_ops.announce(self._phase or Phase.IDLE, message, warning=True, event_reason=reason)
        except (BackendUnavailable, NodeOperationError, ApiError) as exc:
            log.warning("cannot record %s on the node: %s", reason, exc)

    def _notify(self, event: str, reason: str, phase: Phase) -> None:
        """Hand a notice to the notifier, which sends it in the background: never a wait."""
        if self.p.notifier is None or event not in self.s.notify.notify_events:
            return
        notice = render(
            self.s.notify.notify_templates,
            event,
            node=self.s.identity.node_name,
            group=self.s.identity.group,
            phase=phase.value,
            reason=reason,
            boot_id=self._boot_id_or_unknown(),
        )
        self.p.notifier.notify(notice)

    def _reboot(self, record: HolderRecord, now: float) -> None:
        # Last look before the point of no return: do we still hold the slot?
        view = self.p.semaphore.read(queue=False)  # a fresh read: never our memory of the group
        if not view.holds(record.id) or view.record(record.id) is None:
            raise SlotLost(f"{record.id} lost its slot just before rebooting; not rebooting")
        if self._reboot_issued_at is not None:
            self.p.metrics.fail("reboot_timeout")
            log.error(
                "the boot ID did not change within %s; asking for the reboot again",
                self.s.reboot.reboot_timeout,
            )
        self._reboot_issued_at = now
        self.p.metrics.reboot_requests.inc()
        log.info(
            "rebooting the node", extra={"node": self.s.identity.node_name, "group": self.s.identity.group}
        )
        try:
            if not self._finalized():
                self.p.rebooter.reboot()
        except RebootError as exc:
            self.p.metrics.fail("reboot_failed")
            log.error("%s", exc)
            self._tell("RebootFailed", str(exc))
            self.p.semaphore.update(replace(record, note=str(exc)))

    def _finalized(self) -> bool:
        """A staged update that only its engine applies (rpm-ostree's finalization lock) is
        applied by that engine, which reboots; otherwise the Rebooter reboots."""
        return any(d.finalize() for d in self.p.detectors if isinstance(d, Finalizer))

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
            note = CHECKS_FAILED + "; ".join(failures)
            self.p.metrics.fail("health_gate")
            self.p.metrics.health_failing.set(1)
            log.error("%s (the slot stays held)", note)
            if note != record.note:
                self._tell("HealthCheckFailed", note)
                self.p.semaphore.update(replace(record, note=note))
            return
        self.p.metrics.health_failing.set(0)
        self.p.node_ops.set_labels(self.s.drain.post_reboot_labels)
        self._healthy_at = now

    def _release(
        self, record: HolderRecord, reason: str, retry_not_before: float | None, outcome: str
    ) -> None:
        done = outcome == REBOOTED
        if retry_not_before is not None:
            self._retry_not_before = retry_not_before
            log.warning(
                "%s; queuing again after %s",
                reason,
                datetime.fromtimestamp(retry_not_before, UTC).isoformat(timespec="seconds"),
            )
        ended_at = self.p.clock()
        revision = holding.give_back(
            self.p.semaphore, self.p.node_ops, record, Ending(outcome, ended_at, reason)
        )
        if outcome == DRAIN_FAILED and record.rollout:
            self._told_if_we_paused(ended_at)
        self._drained = None
        self._reboot_issued_at = None
        self._last_verify_at = None
        self._healthy_at = None
        self._detected_at = None  # look again: a new update may be waiting
        self._enter(Phase.IDLE, "slot released", rev=revision)
        if done:
            self._notify("done", reason or "healthy after reboot; slot given back", Phase.RELEASING)

    def _told_if_we_paused(self, ended_at: float) -> None:
        """Our failed drain was the one too many in its wave: the release paused the group (the
        core's rule, in the same write). Say so as stop-the-line does."""
        paused = self.p.semaphore.read(queue=False).paused
        if (
            paused is None
            or paused.at != ended_at
            or f"on node {self.s.identity.node_name}: " not in paused.reason
        ):
            return
        log.error("stopping the line: %s", paused.reason)
        self.p.metrics.fail("group_paused")
        self._tell("GroupPaused", f"{paused.reason}; `rebootctl resume` lets the others go on")


def _was(current: Phase | None, phase: Phase) -> bool:
    return current is phase


def _describe(step: Step) -> str:
    return type(step).__name__.lower()
