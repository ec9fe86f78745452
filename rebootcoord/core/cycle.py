"""The reboot cycle as a pure decision: ``decide(snapshot) -> Step``.

The daemon gathers a ``Snapshot`` (detector answer, boot ID, the group as the backend last showed
it, the window, gates, the time), asks ``decide`` for one step, carries it out, and asks again.
Every step is safe to repeat after a crash: what must survive lives in the holder record.

This module never performs I/O and never reads the clock: ``now`` is in the snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta

from rebootcoord.core.documents import described
from rebootcoord.core.durations import format_duration
from rebootcoord.core.rollout import ABORTED, DRAIN_FAILED, REBOOTED, Ledger
from rebootcoord.core.semaphore import (
    FLEETLOCK,
    MANUAL,
    NO_LIMITS,
    GroupView,
    HolderRecord,
    Limits,
    PauseInfo,
)
from rebootcoord.core.types import Group, HolderId, NodeName, PendingReboot, Phase
from rebootcoord.core.windows import WindowStatus


@dataclass(frozen=True)
class Policy:
    """The configured rules of the cycle: how long to wait for what, what a failed drain means."""

    reboot_timeout: timedelta
    verify_interval: timedelta
    release_delay: timedelta
    retry_after: timedelta = timedelta(seconds=5)
    lease_ttl: timedelta = timedelta(0)  # 0: holders never expire
    drain_failure: str = "abort"  # or "force": reboot anyway
    # After an aborted drain the node queues again no sooner than this: a third of the drain
    # timeout, so that a PodDisruptionBudget that blocked it has time to change.
    drain_retry_after: timedelta = timedelta(minutes=5)
    # Stop the line: post-reboot checks failing this long after the reboot pause the group.
    pause_group_after: timedelta = timedelta(0)  # 0: never
    # Window fit: a cycle is started only when this much of the window is left (0: never checked);
    # once the group has a history, the p90 of its last healthy cycles stands in for it.
    expected_cycle: timedelta = timedelta(0)
    # The zone's and the group's budgets and the waves (a rollout in progress rules anyway).
    limits: Limits = NO_LIMITS


DEFAULT_POLICY = Policy(timedelta(minutes=10), timedelta(seconds=30), timedelta(0))


@dataclass(frozen=True)
class Drained:
    """How a drain by this process ended. ``acquired_at`` ties it to one holding of the slot, so
    that the outcome of an earlier cycle never stands in for this one's drain."""

    acquired_at: float
    error: str = ""  # "": every pod left

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass(frozen=True)
class Snapshot:
    now: float  # unix seconds
    holder: HolderId
    node: NodeName
    group: Group
    boot_id: str
    pending: PendingReboot | None
    detector_errors: tuple[str, ...]
    window: WindowStatus
    view: GroupView | None  # None: the backend could not be read
    blockers: tuple[str, ...] = ()  # pre-acquire gates that say "not now"
    reboot_issued_at: float | None = None  # by this process, in this boot
    last_verify_at: float | None = None  # by this process
    # When this process last saw the post-reboot checks pass. Not persisted: after a crash the
    # checks simply run again.
    healthy_at: float | None = None
    # Holders whose Node object no longer exists (looked up by the daemon when it matters).
    gone_holders: tuple[HolderId, ...] = ()
    # After an aborted drain, this node does not queue again before this time (process-local).
    retry_not_before: float | None = None
    # Our cordon is on the node, but we hold no slot and have no record: someone took the slot
    # away mid-cycle (looked up after a holding phase and at start-up).
    stale_cordon: bool = False
    # This process keeps our place in the queue (False after a restart: join again to keep it).
    queue_owned: bool = True
    # The blockers were looked at right before this snapshot (a slot is taken only then).
    gates_fresh: bool = True
    # How this process's drain of the node ended, in the DRAINING phase.
    drained: Drained | None = None
    policy: Policy = DEFAULT_POLICY
    zone: str = ""  # this node's topology zone ("": none)


# ---------------------------------------------------------------------------------------------
# Steps


@dataclass(frozen=True)
class Rest:
    """Nothing to do now. Report ``phase`` (None: unknown, keep the last) and wait for a change,
    or until ``wake_at``."""

    phase: Phase | None
    reason: str
    wake_at: float | None = None


@dataclass(frozen=True)
class JoinQueue:
    """Take a place in the queue for a slot."""

    reason: str = "reboot required; queued for a slot"


@dataclass(frozen=True)
class LeaveQueue:
    reason: str


@dataclass(frozen=True)
class CheckGates:
    """Look at the blockers again, now: the cached answer may be a check interval old, and the
    next step would take a slot."""

    reason: str = "a last look at the gates before taking the slot"


@dataclass(frozen=True)
class Acquire:
    record: HolderRecord


@dataclass(frozen=True)
class Persist:
    """Write the holder record (a phase change) before doing what the new phase does."""

    record: HolderRecord
    reason: str


@dataclass(frozen=True)
class Drain:
    """Cordon and evict; the outcome comes back in the next snapshot's ``drained``."""

    record: HolderRecord
    reason: str = "cordoning and draining the node"


@dataclass(frozen=True)
class Reboot:
    record: HolderRecord
    retry: bool = False
    reason: str = "asking the host to reboot"


@dataclass(frozen=True)
class Verify:
    record: HolderRecord
    reason: str = "running the post-reboot checks"


@dataclass(frozen=True)
class Release:
    record: HolderRecord
    reason: str = "uncordoning and giving the slot back"
    # After an aborted drain: do not queue again before this time.
    retry_not_before: float | None = None
    # How the holding ended, for the history (core.rollout); "": release_outcome(record).
    outcome: str = ""


@dataclass(frozen=True)
class PauseGroup:
    """Stop the line: this node came back and is not healthy; no other node may start a cycle
    until an operator resumes the group. ``holder`` notes that this holding did it (once)."""

    info: PauseInfo
    holder: HolderRecord
    reason: str


@dataclass(frozen=True)
class Reclaim:
    """Take back the slot of a holder whose node is gone or whose TTL ran out."""

    record: HolderRecord
    reason: str


@dataclass(frozen=True)
class Uncordon:
    """Our slot and record are gone, our cordon is not: leave the node as we found it."""

    reason: str = "our slot was taken away; undoing our cordon"


@dataclass(frozen=True)
class Abandon:
    """Our record outlived our slot (someone released it): undo our cordon, drop the record."""

    record: HolderRecord
    reason: str


Step = (
    Rest
    | JoinQueue
    | LeaveQueue
    | CheckGates
    | Acquire
    | Persist
    | Drain
    | Reboot
    | Verify
    | Release
    | Abandon
    | Uncordon
    | Reclaim
    | PauseGroup
)


def step_phase(step: Step) -> Phase | None:
    """The phase a step puts the node in, for reporting; None when it depends on the outcome."""
    match step:
        case Rest(phase=phase):
            return phase
        case JoinQueue() | CheckGates() | Acquire() | Reclaim():
            return Phase.WAITING
        case Persist(record=record):
            return record.phase
        case Drain():
            return Phase.DRAINING
        case Reboot():
            return Phase.REBOOTING
        case Verify() | PauseGroup():
            return Phase.VERIFYING
        case Release() | Abandon() | Uncordon():
            return Phase.RELEASING
    return None


def decide(s: Snapshot) -> Step:
    if s.view is None:
        return Rest(None, "backend unavailable", _later(s))
    view = s.view
    record = view.record(s.holder)
    holds = view.holds(s.holder)

    if record is not None and record.kind == MANUAL:
        return Rest(Phase.PENDING if s.pending else Phase.IDLE, "our id is held by an operator lock")
    if record is not None and record.kind == FLEETLOCK:
        # A FleetLock client sent our id (the FleetLock server refuses ids it knows for an
        # agent's; one sent while we were idle and unknown is not ours to use or release).
        return Rest(
            Phase.PENDING if s.pending else Phase.IDLE,
            "our id holds a slot as a FleetLock client's (not ours: it waits for that client or an operator)",
        )
    if holds and record is None:
        # airlock, etcdctl or `rebootctl lock` without a record: not ours to use or to release.
        return Rest(Phase.PENDING if s.pending else Phase.IDLE, "our id holds a slot we did not take")
    if record is not None and not holds:
        if view.corrupt:
            return Rest(record.phase, "semaphore document is corrupted; waiting for an operator", _later(s))
        return Abandon(record, "our slot was released by someone else")
    if record is not None:
        return _holding(s, record)
    if s.stale_cordon and not holds:
        return Uncordon()
    return _not_holding(s, view)


def did_reboot(record: HolderRecord, boot_id: str) -> bool:
    """The node rebooted since it took the slot: its boot ID is not the one recorded then. The
    one rule for the agent (its host's boot ID) and the FleetLock server (the Node's)."""
    return record.boot_id != boot_id


def release_outcome(record: HolderRecord) -> str:
    """How a holding given back in ``record``'s phase ended: back healthy from verifying (or
    releasing, which only a healthy node enters), a drain undone, or given back before a reboot."""
    if record.abort_reason:
        return DRAIN_FAILED
    return REBOOTED if record.phase in (Phase.VERIFYING, Phase.RELEASING) else ABORTED


def toward_reboot(
    record: HolderRecord, *, now: float, drained: Drained | None, policy: Policy
) -> Release | Persist | Drain | None:
    """From a slot taken to a node that may reboot, for the agent and the FleetLock server
    alike: LOCKED, then DRAINING (cordon and drain: the outcome comes back as ``drained``),
    then REBOOTING; a drain that failed is undone and the slot given back (or, with
    ``drain_failure: force``, the node reboots anyway). None once the node may reboot."""
    if record.abort_reason and record.phase in (Phase.LOCKED, Phase.DRAINING):
        # A drain that could not finish: leave the node as we found it, give the slot back, and
        # queue again only after a pause.
        return Release(
            record,
            reason=f"aborting: {record.abort_reason}",
            retry_not_before=now + policy.drain_retry_after.total_seconds(),
            outcome=DRAIN_FAILED,
        )
    match record.phase:
        case Phase.LOCKED:
            return Persist(record.moved(Phase.DRAINING, now), "slot held")
        case Phase.DRAINING:
            if drained is None or drained.acquired_at != record.acquired_at:
                return Drain(record)
            if drained.ok:
                return Persist(_to_rebooting(record, now), "node drained")
            if policy.drain_failure == "force":
                return Persist(
                    _to_rebooting(record, now),
                    f"drain failed, rebooting anyway (drain_failure: force): {drained.error}",
                )
            failure = f"drain failed: {drained.error}"
            return Persist(
                replace(record, note=failure, abort_reason=failure),
                f"{failure}; undoing and giving the slot back",
            )
    return None


def _holding(s: Snapshot, record: HolderRecord) -> Step:
    if did_reboot(record, s.boot_id) and record.phase in (Phase.LOCKED, Phase.DRAINING, Phase.REBOOTING):
        return Persist(record.moved(Phase.VERIFYING, s.now, note=""), "boot ID changed: the node rebooted")
    step = toward_reboot(record, now=s.now, drained=s.drained, policy=s.policy)
    if step is not None:
        return step
    match record.phase:
        case Phase.REBOOTING:
            if s.reboot_issued_at is None:
                # First attempt, or a restart after a crash in this phase: the boot ID has not
                # changed, so no reboot happened yet and asking again cannot reboot twice.
                return Reboot(record)
            deadline = s.reboot_issued_at + s.policy.reboot_timeout.total_seconds()
            if s.now >= deadline:
                return Reboot(record, retry=True)
            return Rest(Phase.REBOOTING, "waiting for the reboot", deadline)
        case Phase.VERIFYING:
            if s.healthy_at is None:
                stop = stop_the_line(
                    record, node=s.node, now=s.now, policy=s.policy, verified=s.last_verify_at is not None
                )
                if stop is not None:
                    return stop
                if s.last_verify_at is not None:
                    next_try = s.last_verify_at + s.policy.verify_interval.total_seconds()
                    if s.now < next_try:
                        return Rest(Phase.VERIFYING, record.note or "post-reboot checks failing", next_try)
                return Verify(record)
            release_at = s.healthy_at + s.policy.release_delay.total_seconds()
            if s.now < release_at:
                return Rest(Phase.VERIFYING, "healthy; release delay", release_at)
            if record.cordoned:
                # Uncordoning comes before giving the slot back; record that we are at it.
                return Persist(record.moved(Phase.RELEASING, s.now), "healthy after reboot")
            return Release(record, reason="healthy after reboot; giving the slot back")
        case Phase.RELEASING:
            return Release(record)
    raise AssertionError(f"record in phase {record.phase}")  # decode() refuses these


def _not_holding(s: Snapshot, view: GroupView) -> Step:
    in_queue = view.queue_position(s.holder) is not None
    if s.pending is None:
        if in_queue:
            return LeaveQueue("no reboot pending")
        reason = (
            "detector error: " + "; ".join(s.detector_errors) if s.detector_errors else "no reboot pending"
        )
        return Rest(Phase.IDLE, reason)
    if view.corrupt:
        reason = "semaphore document is corrupted: " + described(view.corrupt)
        return Rest(Phase.PENDING, reason, _later(s))
    if view.slots is None:
        return Rest(Phase.PENDING, "the group's semaphore does not exist yet", _later(s))
    blocked = _blocked(s)
    if blocked is not None:
        reason, wake_at = blocked
        return LeaveQueue(reason) if in_queue else Rest(Phase.PENDING, reason, wake_at)
    if not in_queue or not s.queue_owned:
        # A place from an earlier process of ours is kept only if we take it over (renew it).
        return JoinQueue()
    if view.first_of_full_queue(s.holder):
        # First in line and nothing free: a slot held by a node that no longer exists, or held
        # past the optional TTL, is taken back (only the first waiter does it: no herd).
        stale = _stale_holder(s, view)
        if stale is not None:
            return stale
    if view.may_take(s.holder):
        admitted = view.admission(s.policy.limits, s.now, zone=s.zone)
        if not admitted.ok:
            return Rest(Phase.WAITING, admitted.reason, admitted.wake_at)
        if not s.gates_fresh:
            return CheckGates()
        return Acquire(
            HolderRecord(
                id=s.holder,
                node=s.node,
                group=s.group,
                phase=Phase.LOCKED,
                boot_id=s.boot_id,
                acquired_at=s.now,
                phase_since=s.now,
                reason=s.pending.reason,
                update_key=s.pending.key,
                zone=s.zone,
            )
        )
    if view.paused is not None:
        return Rest(Phase.WAITING, f"group paused by {view.paused.by}")
    position = view.queue_position(s.holder)
    assert position is not None
    return Rest(Phase.WAITING, f"queue position {position + 1}, {view.slots.free} free slot(s)")


#: How a holder's note starts while its post-reboot checks fail (the agent's and the server's).
CHECKS_FAILED = "post-reboot checks failed: "


def stop_the_line(
    record: HolderRecord, *, node: str, now: float, policy: Policy, verified: bool, by: str = ""
) -> PauseGroup | None:
    """The node's checks have failed since it came back (``record`` entered VERIFYING) for
    longer than ``pause_group_after``: pause the group, once per holding (an operator who
    resumes it is not overruled). ``verified``: the checks ran at least once. ``by``: who
    pauses (default: the agent on ``node``)."""
    after = policy.pause_group_after.total_seconds()
    if after <= 0 or record.paused_group_at is not None or not verified:
        return None
    if record.phase is not Phase.VERIFYING or now - record.phase_since < after:
        return None
    failures = (record.note or "").removeprefix(CHECKS_FAILED) or "failing"  # said once
    reason = (
        f"post-reboot checks of {node} failing for {int(now - record.phase_since)}s "
        f"(pause_group_after {format_duration(policy.pause_group_after)}): {failures}"
    )
    return PauseGroup(
        PauseInfo(by=by or f"rebootcoord agent on {node}", at=now, reason=reason[:1000]),
        replace(record, paused_group_at=now),
        f"stopping the line: {reason}",
    )


def _to_rebooting(record: HolderRecord, now: float) -> HolderRecord:
    return record.moved(Phase.REBOOTING, now, reboot_requested_at=now)


def _stale_holder(s: Snapshot, view: GroupView) -> Reclaim | None:
    ttl = s.policy.lease_ttl.total_seconds()
    for holder, record in sorted(view.records.items()):
        if not view.holds(holder):
            continue
        if holder in s.gone_holders:
            return Reclaim(record, f"node {record.node} of holder {holder} no longer exists")
        if ttl > 0 and s.now - record.acquired_at > ttl:
            return Reclaim(
                record, f"holder {holder} held its slot longer than the TTL ({s.policy.lease_ttl})"
            )
    return None


def _blocked(s: Snapshot) -> tuple[str, float | None] | None:
    if s.retry_not_before is not None and s.now < s.retry_not_before:
        return "the last drain was aborted; trying again later", s.retry_not_before
    ledger = s.view.ledger if s.view is not None else Ledger()
    outside = outside_window(s.window, ledger, s.policy, now=s.now)
    if outside is not None:
        return outside
    if s.blockers:
        return gates_say(s.blockers), _later(s)
    return None


def outside_window(
    window: WindowStatus, ledger: Ledger, policy: Policy, *, now: float
) -> tuple[str, float | None] | None:
    """Why no cycle may start now for the maintenance windows, and when to look again: the
    window is closed, or what is left of it is shorter than a cycle (``expected_cycle``, or the
    p90 of the group's last healthy cycles). None: it may. For the agent and the server alike."""
    if not window.open:
        next_open = window.next_open.timestamp() if window.next_open else None
        when = window.next_open.isoformat() if window.next_open else "never"
        return f"outside the maintenance window (next opens {when})", next_open
    default = policy.expected_cycle.total_seconds()
    expected, source = ledger.expected_cycle(default)
    if default > 0 and window.closes_at is not None and now + expected > window.closes_at.timestamp():
        closes = window.closes_at
        takes = format_duration(timedelta(seconds=round(expected)))
        return (
            f"waits: next window (a cycle takes {takes} ({source}) and "
            f"the window closes at {closes.isoformat()}, in {int(closes.timestamp() - now)}s)",
            closes.timestamp(),
        )
    return None


def gates_due(view: GroupView, holder: HolderId, *, blocked: bool) -> bool:
    """Whether a node that waits for a slot looks at its pre-acquire gates now: when its turn is
    near -- first in line, or at a place the free slots cover (for a node not in line yet, the
    place it would join at) -- or while they hold it back (to see them clear). Farther back, an
    answer would be stale by its turn, and the turn looks again right before taking a slot
    (CheckGates): the gates' requests (pods, budgets) are spent only on nodes about to go."""
    if blocked:
        return True
    if view.slots is None:
        return False
    position = view.queue_position(holder)
    if position is None:
        position = len(view.waiters)
    return position == 0 or position < view.slots.free


def gates_say(blockers: tuple[str, ...]) -> str:
    """The reason of a node held back by its pre-acquire gates."""
    return "blocked: " + "; ".join(blockers)


def _later(s: Snapshot) -> float:
    return s.now + s.policy.retry_after.total_seconds()
