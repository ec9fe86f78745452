"""decide(): every branch of the cycle, as a table over snapshots. No I/O, no clock."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from rebootcoord.core.cycle import (
    Abandon,
    Acquire,
    CheckGates,
    Drain,
    Drained,
    JoinQueue,
    LeaveQueue,
    Persist,
    Policy,
    Reboot,
    Reclaim,
    Release,
    Rest,
    Snapshot,
    Verify,
    decide,
    gates_due,
    step_phase,
)
from rebootcoord.core.semaphore import (
    FLEETLOCK,
    MANUAL,
    CorruptDocument,
    GroupView,
    HolderRecord,
    PauseInfo,
    SemaphoreState,
    Waiter,
)
from rebootcoord.core.types import Group, HolderId, NodeName, PendingReboot, Phase
from rebootcoord.core.windows import WindowStatus

ME = HolderId("me")
NOW = 1000.0
PENDING = PendingReboot("sentinel", "/run/reboot-required exists", "k1")
OPEN = WindowStatus(open=True, closes_at=None, next_open=None)
CLOSED = WindowStatus(open=False, closes_at=None, next_open=datetime(2026, 1, 1, tzinfo=UTC))
POLICY = Policy(timedelta(minutes=10), timedelta(seconds=30), timedelta(0))


def rec(phase: Phase, **kw: object) -> HolderRecord:
    base = HolderRecord(
        id=ME, node=NodeName("me"), group=Group("g"), phase=phase, boot_id="boot-1",
        acquired_at=900.0, phase_since=900.0, update_key="k1",
    )  # fmt: skip
    return replace(base, **kw)  # type: ignore[arg-type]


def gv(holders=(), waiters=(), records=(), paused=False, corrupt=False, max_=2, slots=True) -> GroupView:
    return GroupView(
        group=Group("g"),
        slots=SemaphoreState(max_, tuple(HolderId(h) for h in holders)) if slots else None,
        records={r.id: r for r in records},
        waiters=tuple(Waiter(HolderId(w), NodeName(w), 0.0, i) for i, w in enumerate(waiters)),
        paused=PauseInfo("op", 1.0) if paused else None,
        corrupt=(CorruptDocument("k", "bad"),) if corrupt else (),
    )


def snap(view: GroupView | None, **kw: object) -> Snapshot:
    base = Snapshot(
        now=NOW, holder=ME, node=NodeName("me"), group=Group("g"), boot_id="boot-1", pending=PENDING,
        detector_errors=(), window=OPEN, view=view, policy=POLICY,
    )  # fmt: skip
    return replace(base, **kw)  # type: ignore[arg-type]


CASES = [
    ("backend-down", snap(None), Rest, None),
    ("nothing-pending", snap(gv(), pending=None), Rest, Phase.IDLE),
    ("detector-error-is-not-pending", snap(gv(), pending=None, detector_errors=("boom",)), Rest, Phase.IDLE),
    ("pending-joins-queue", snap(gv()), JoinQueue, Phase.WAITING),
    ("window-closed", snap(gv(), window=CLOSED), Rest, Phase.PENDING),
    ("window-closed-leaves-queue", snap(gv(waiters=["me"]), window=CLOSED), LeaveQueue, None),
    ("blocker", snap(gv(), blockers=("alert firing",)), Rest, Phase.PENDING),
    ("no-longer-pending-leaves-queue", snap(gv(waiters=["me"]), pending=None), LeaveQueue, None),
    ("our-turn", snap(gv(waiters=["me"])), Acquire, Phase.WAITING),
    ("not-our-turn", snap(gv(holders=["x"], waiters=["a", "me"])), Rest, Phase.WAITING),
    ("full", snap(gv(holders=["x", "y"], waiters=["me"])), Rest, Phase.WAITING),
    ("paused-keeps-place", snap(gv(waiters=["me"], paused=True)), Rest, Phase.WAITING),
    ("corrupt-blocks", snap(gv(waiters=["me"], corrupt=True)), Rest, Phase.PENDING),
    ("no-semaphore-yet", snap(gv(slots=False)), Rest, Phase.PENDING),
    ("locked-goes-draining", snap(gv(["me"], records=[rec(Phase.LOCKED)])), Persist, Phase.DRAINING),
    ("draining-drains", snap(gv(["me"], records=[rec(Phase.DRAINING)])), Drain, Phase.DRAINING),
    ("rebooting-reboots", snap(gv(["me"], records=[rec(Phase.REBOOTING)])), Reboot, Phase.REBOOTING),
    (
        "rebooting-waits-after-issuing",
        snap(gv(["me"], records=[rec(Phase.REBOOTING)]), reboot_issued_at=NOW - 5),
        Rest,
        Phase.REBOOTING,
    ),
    (
        "reboot-retried-after-timeout",
        snap(gv(["me"], records=[rec(Phase.REBOOTING)]), reboot_issued_at=NOW - 601),
        Reboot,
        Phase.REBOOTING,
    ),
    (
        "boot-changed-verifies",
        snap(gv(["me"], records=[rec(Phase.REBOOTING)]), boot_id="boot-2"),
        Persist,
        Phase.VERIFYING,
    ),
    (
        "boot-changed-while-draining-verifies",
        snap(gv(["me"], records=[rec(Phase.DRAINING)]), boot_id="boot-2"),
        Persist,
        Phase.VERIFYING,
    ),
    (
        "verifying-checks",
        snap(gv(["me"], records=[rec(Phase.VERIFYING)]), boot_id="boot-2"),
        Verify,
        Phase.VERIFYING,
    ),
    (
        "verifying-waits-between-checks",
        snap(gv(["me"], records=[rec(Phase.VERIFYING)]), boot_id="boot-2", last_verify_at=NOW - 5),
        Rest,
        Phase.VERIFYING,
    ),
    (
        "healthy-releases",
        snap(gv(["me"], records=[rec(Phase.VERIFYING, cordoned=True)]), boot_id="boot-2", healthy_at=NOW - 1),
        Persist,
        Phase.RELEASING,
    ),
    (
        "healthy-releases-at-once-when-nothing-to-uncordon",
        snap(gv(["me"], records=[rec(Phase.VERIFYING)]), boot_id="boot-2", healthy_at=NOW - 1),
        Release,
        Phase.RELEASING,
    ),
    (
        "release-delay",
        snap(
            gv(["me"], records=[rec(Phase.VERIFYING)]),
            boot_id="boot-2",
            healthy_at=NOW - 1,
            policy=replace(POLICY, release_delay=timedelta(minutes=5)),
        ),
        Rest,
        Phase.VERIFYING,
    ),
    (
        "releasing-releases",
        snap(gv(["me"], records=[rec(Phase.RELEASING)]), boot_id="boot-2"),
        Release,
        Phase.RELEASING,
    ),
    ("slot-taken-away", snap(gv([], records=[rec(Phase.DRAINING)])), Abandon, Phase.RELEASING),
    (
        "operator-locked-our-id",
        snap(gv(["me"], records=[rec(Phase.LOCKED, kind=MANUAL)])),
        Rest,
        Phase.PENDING,
    ),
    # A FleetLock client sent our id while we were idle (boot ID "" in its record): not ours to
    # take for a reboot, nor to release.
    (
        "fleetlock-client-holds-our-id",
        snap(gv(["me"], records=[rec(Phase.REBOOTING, kind=FLEETLOCK, boot_id="")])),
        Rest,
        Phase.PENDING,
    ),
    ("held-without-record", snap(gv(["me"])), Rest, Phase.PENDING),
    (
        "first-waiter-reclaims-a-gone-holder",
        snap(
            gv(["x"], waiters=["me"], records=[rec(Phase.DRAINING, id=HolderId("x"))], max_=1),
            gone_holders=("x",),
        ),
        Reclaim,
        Phase.WAITING,
    ),
    (
        "second-waiter-leaves-it-to-the-first",
        snap(
            gv(["x"], waiters=["a", "me"], records=[rec(Phase.DRAINING, id=HolderId("x"))], max_=1),
            gone_holders=("x",),
        ),
        Rest,
        Phase.WAITING,
    ),
    (
        "ttl-expired-holder-reclaimed",
        snap(
            gv(
                ["x"],
                waiters=["me"],
                records=[rec(Phase.REBOOTING, id=HolderId("x"), acquired_at=NOW - 7200)],
                max_=1,
            ),
            policy=replace(POLICY, lease_ttl=timedelta(hours=1)),
        ),
        Reclaim,
        Phase.WAITING,
    ),
    (
        "no-ttl-no-reclaim",
        snap(
            gv(
                ["x"],
                waiters=["me"],
                records=[rec(Phase.REBOOTING, id=HolderId("x"), acquired_at=NOW - 7200)],
                max_=1,
            )
        ),
        Rest,
        Phase.WAITING,
    ),
    (
        "drain-abort-releases",
        snap(gv(["me"], records=[rec(Phase.DRAINING, abort_reason="drain failed")])),
        Release,
        Phase.RELEASING,
    ),
    ("retry-later-after-abort", snap(gv(), retry_not_before=NOW + 60), Rest, Phase.PENDING),
    # Holding a slot ignores the window and the pause: a started cycle finishes.
    (
        "holder-ignores-closed-window",
        snap(gv(["me"], records=[rec(Phase.LOCKED)], paused=True), window=CLOSED),
        Persist,
        Phase.DRAINING,
    ),
]


@pytest.mark.parametrize(("name", "snapshot", "kind", "phase"), CASES, ids=[c[0] for c in CASES])
def test_decide(name: str, snapshot: Snapshot, kind: type, phase: Phase | None) -> None:
    step = decide(snapshot)
    assert isinstance(step, kind), step
    if kind is not LeaveQueue:
        assert step_phase(step) == phase


def test_acquire_record_carries_boot_and_update() -> None:
    step = decide(snap(gv(waiters=["me"])))
    assert isinstance(step, Acquire)
    assert step.record.boot_id == "boot-1"
    assert step.record.update_key == "k1"
    assert step.record.phase is Phase.LOCKED


def test_window_closed_wakes_at_next_open() -> None:
    step = decide(snap(gv(), window=CLOSED))
    assert isinstance(step, Rest)
    assert step.wake_at == CLOSED.next_open.timestamp()  # type: ignore[union-attr]


def test_never_reboots_without_holding() -> None:
    """Exhaustively: no snapshot in which we do not hold a slot yields Reboot or Drain."""
    records = [None, *[rec(p) for p in Phase if p.holds_slot]]
    for holders in ([], ["x"], ["x", "y"], ["me"]):
        for record in records:
            for boot in ("boot-1", "boot-2"):
                for pending in (None, PENDING):
                    view = gv(holders, waiters=["me"], records=[record] if record else [])
                    step = decide(snap(view, boot_id=boot, pending=pending))
                    if isinstance(step, Reboot | Drain | Verify | Release):
                        assert "me" in holders, (holders, record, step)


# The policy the agent's effects used to hold: what a failed drain means, the back-off after it,
# the last look at the gates. decide owns it; the effects only report what happened.

DRAINING = gv(["me"], records=[rec(Phase.DRAINING, cordoned=True)])


def test_a_drained_node_moves_to_rebooting() -> None:
    step = decide(snap(DRAINING, drained=Drained(900.0)))
    assert isinstance(step, Persist) and step.record.phase is Phase.REBOOTING
    assert step.record.reboot_requested_at == NOW and step.record.cordoned


def test_a_drain_outcome_of_an_earlier_holding_does_not_count() -> None:
    assert isinstance(decide(snap(DRAINING, drained=Drained(500.0))), Drain)
    assert isinstance(decide(snap(DRAINING, drained=Drained(500.0, "pdb"))), Drain)


def test_a_failed_drain_is_recorded_as_an_abort_then_released_with_a_back_off() -> None:
    policy = replace(POLICY, drain_retry_after=timedelta(minutes=5))
    step = decide(snap(DRAINING, drained=Drained(900.0, "pdb blocks"), policy=policy))
    assert isinstance(step, Persist) and step.record.phase is Phase.DRAINING
    assert step.record.abort_reason == "drain failed: pdb blocks" and step.record.cordoned
    aborted = gv(["me"], records=[step.record])
    release = decide(snap(aborted, drained=Drained(900.0, "pdb blocks"), policy=policy))
    assert isinstance(release, Release) and release.retry_not_before == NOW + 300


def test_drain_failure_force_reboots_anyway() -> None:
    policy = replace(POLICY, drain_failure="force")
    step = decide(snap(DRAINING, drained=Drained(900.0, "pdb blocks"), policy=policy))
    assert isinstance(step, Persist) and step.record.phase is Phase.REBOOTING
    assert not step.record.abort_reason and "rebooting anyway" in step.reason


def test_a_slot_is_taken_only_right_after_a_fresh_look_at_the_gates() -> None:
    assert isinstance(decide(snap(gv(waiters=["me"]), gates_fresh=False)), CheckGates)
    assert isinstance(decide(snap(gv(waiters=["me"]), gates_fresh=True)), Acquire)
    blocked = snap(gv(waiters=["me"]), gates_fresh=True, blockers=("alert firing",))
    assert isinstance(decide(blocked), LeaveQueue)


def test_window_fit_a_cycle_that_cannot_finish_before_the_window_closes_waits_for_the_next() -> None:
    policy = replace(POLICY, expected_cycle=timedelta(minutes=20))
    closes = datetime.fromtimestamp(NOW + 10 * 60, UTC)  # 10 minutes left
    step = decide(snap(gv(waiters=[ME]), window=WindowStatus(True, closes, None), policy=policy))
    assert isinstance(step, LeaveQueue) and "waits: next window" in step.reason
    assert "expected_cycle" in step.reason
    step = decide(snap(gv(), window=WindowStatus(True, closes, None), policy=policy))
    assert isinstance(step, Rest) and step.wake_at == closes.timestamp() and step.phase is Phase.PENDING
    roomy = datetime.fromtimestamp(NOW + 30 * 60, UTC)  # 30 minutes left: it fits
    assert isinstance(decide(snap(gv(), window=WindowStatus(True, roomy, None), policy=policy)), JoinQueue)
    off = replace(policy, expected_cycle=timedelta(0))
    assert isinstance(decide(snap(gv(), window=WindowStatus(True, closes, None), policy=off)), JoinQueue)


# The pre-acquire gates (pods, budgets: requests to the API server) are looked at only when the
# turn is near: first in line, or a place the free slots cover; else not, unless they block us.
@pytest.mark.parametrize(
    ("view", "blocked", "due"),
    [
        (gv(holders=("a", "b"), waiters=("me", "c")), False, True),
        (gv(holders=("a", "b"), waiters=("c", "me")), False, False),
        (gv(holders=("a", "b"), waiters=("c", "d", "e", "me")), False, False),
        (gv(holders=("a",), waiters=("c", "me")), False, False),
        (gv(holders=(), waiters=("c", "me")), False, True),
        (gv(holders=(), waiters=("c", "d", "me")), False, False),
        (gv(holders=("a", "b"), waiters=()), False, True),
        (gv(holders=("a", "b"), waiters=("c",)), False, False),
        (gv(holders=("a",), waiters=("c",)), False, False),
        (gv(holders=(), waiters=("c",)), False, True),
        (gv(holders=("a", "b"), waiters=("c", "d", "me")), True, True),
        (gv(holders=("a", "b"), waiters=("c",)), True, True),
        (gv(slots=False), False, False),
    ],
    ids=[
        "head-of-full-line",
        "second-of-full-line",
        "far-back",
        "second-one-free",
        "second-two-free",
        "third-two-free",
        "not-in-line-would-be-head",
        "not-in-line-would-be-second-none-free",
        "not-in-line-would-be-second-one-free",
        "not-in-line-within-two-free",
        "far-back-but-blocked",
        "not-in-line-blocked",
        "no-semaphore",
    ],
)
def test_gates_are_looked_at_only_when_the_turn_is_near(view: GroupView, blocked: bool, due: bool) -> None:
    assert gates_due(view, ME, blocked=blocked) is due
