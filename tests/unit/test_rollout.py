"""Rollouts in waves and the group's history (core.rollout, through GroupState's transitions).

A state machine takes and gives back slots of a group with waves at random, with a clock that
moves; after every step it checks the promise of waves: no node of a wave takes a slot while a
node of an earlier wave holds one, or before the last of them came back and soaked."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from rebootcoord.core.cycle import Policy, Rest, Snapshot, decide
from rebootcoord.core.group import Ending, GroupState
from rebootcoord.core.rollout import (
    DRAIN_FAILED,
    HISTORY_SIZE,
    MEMBER_TTL,
    REBOOTED,
    UNLOCKED,
    Cycle,
    Ledger,
    WavePlan,
    WaveSize,
    admit,
    p90,
)
from rebootcoord.core.semaphore import HolderRecord, Limits, Waiter
from rebootcoord.core.types import Group, HolderId, NodeName, PendingReboot, Phase
from rebootcoord.core.windows import WindowStatus
from rebootcoord.errors import CorruptDocument, GroupPaused, NoFreeSlot

PLAN = WavePlan((WaveSize(1), WaveSize(10, True), WaveSize(50, True), WaveSize(100, True)), soak=60.0)


def rec(holder: str, at: float, zone: str = "") -> HolderRecord:
    return HolderRecord(HolderId(holder), NodeName(holder), Group("g"), Phase.LOCKED, "b0", at, at, zone=zone)


def take(
    state: GroupState, holder: str, at: float, *, waiting: int, plan: WavePlan | None = PLAN
) -> GroupState:
    return state.take(rec(holder, at), ahead=0, limits=Limits(waves=plan), waiting=waiting)


def done(state: GroupState, holder: str, at: float, outcome: str = REBOOTED) -> GroupState:
    return state.release(HolderId(holder), Ending(outcome, at, "test"))


# -- the sizes --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("members", "quotas"),
    [
        pytest.param(30, [1, 3, 15, None], id="30 nodes: 1, 3, 15, the rest"),
        pytest.param(5, [1, 2, 3, None], id="5 nodes: each wave lets one more through at least"),
        pytest.param(2, [1, 2], id="2 nodes"),
    ],
)
def test_wave_sizes_are_cumulative_shares_of_the_nodes_known_when_each_opens(
    members: int, quotas: list[int | None]
) -> None:
    state = GroupState().created(members)
    now = 0.0
    seen: list[int | None] = []
    for i in range(members):
        try:
            state = take(state, f"n{i}", now, waiting=members - i)
        except NoFreeSlot:
            now += PLAN.soak  # soaked: the next wave opens
            state = take(state, f"n{i}", now, waiting=members - i)
        rollout = state.ledger.rollout
        assert rollout is not None and rollout.id == "r-19700101-000000", "one rollout for all"
        seen = [w.quota for w in rollout.waves]
        now += 1
        state = done(state, f"n{i}", now)
    assert seen == quotas[: len(seen)]


def test_a_wave_opens_only_when_its_last_node_is_back_and_soaked() -> None:
    state = GroupState().created(3)
    state = take(state, "n0", 0.0, waiting=30)  # the canary
    with pytest.raises(NoFreeSlot, match="opens when the 1 node"):
        take(state, "n1", 1.0, waiting=29)
    state = done(state, "n0", 10.0)
    with pytest.raises(NoFreeSlot, match="soaks, in 59s"):
        take(state, "n1", 11.0, waiting=29)
    state = take(state, "n1", 70.0, waiting=29)  # wave 2 (10 % of 30: 3 in all) is open
    rollout = state.ledger.rollout
    assert rollout is not None and rollout.current == 1 and rollout.waves[1].quota == 3
    assert rollout.waves[1].opened_at == 70.0  # when the soak ended, not when it was seen
    state = take(state, "n2", 71.0, waiting=28)
    with pytest.raises(NoFreeSlot, match="wave 3 of 4"):
        take(state, "n3", 72.0, waiting=27)  # 3 through or holding: the wave is full
    assert state.records[HolderId("n2")].wave == 1


def test_a_failed_node_keeps_the_next_wave_shut_and_a_retry_takes_its_place() -> None:
    state = GroupState().created(2)
    state = take(state, "n0", 0.0, waiting=10)
    state = done(state, "n0", 1.0, DRAIN_FAILED)  # gave its slot back without rebooting
    state = take(state, "n1", 2.0, waiting=10)  # the wave's one place is free again
    rollout = state.ledger.rollout
    assert rollout is not None and rollout.current == 0 and rollout.waves[0].failures == 1


def test_drains_failing_in_one_wave_pause_the_group_with_the_reason() -> None:
    plan = replace(PLAN, drain_failures=2)
    state = GroupState().created(2)
    for i, at in enumerate((0.0, 2.0)):
        state = take(state, f"n{i}", at, waiting=10, plan=plan)
        state = done(state, f"n{i}", at + 1, DRAIN_FAILED)
    assert state.paused is not None
    assert "2 drains failed in wave 1 of 4" in state.paused.reason and "node n1" in state.paused.reason
    with pytest.raises(GroupPaused):
        take(state, "n2", 5.0, waiting=10, plan=plan)
    state = state.resume()
    state = take(state, "n2", 6.0, waiting=10, plan=plan)  # resumed: on in the same wave
    rollout = state.ledger.rollout
    assert rollout is not None and rollout.current == 0


def test_the_rollout_is_the_starters_and_ends_after_its_last_wave_soaks() -> None:
    state = GroupState().created(10)
    state = take(state, "n0", 0.0, waiting=2)
    # A node configured without waves follows the rollout in progress.
    with pytest.raises(NoFreeSlot):
        take(state, "n1", 1.0, waiting=1, plan=None)
    state = done(state, "n0", 2.0)
    state = take(state, "n1", 62.0, waiting=1, plan=None)
    state = done(state, "n1", 63.0)
    state = take(state, "n2", 123.0, waiting=1, plan=None)  # wave 3 (50 % of 3: 2 in all, 3 at least)
    state = done(state, "n2", 124.0)
    state = take(state, "n3", 184.0, waiting=1, plan=None)  # the last wave: the rest
    state = done(state, "n3", 185.0)
    assert state.ledger.rollout is not None and state.ledger.rollout.last
    late = take(state, "n4", 200.0, waiting=1, plan=None)  # within the soak: still this rollout
    assert late.records[HolderId("n4")].rollout == state.ledger.rollout.id
    after = take(state, "n4", 300.0, waiting=1, plan=None)  # ended; no waves configured: none
    assert after.records[HolderId("n4")].rollout == ""
    fresh = take(state, "n4", 300.0, waiting=1)  # ended; waves configured: a new canary
    assert fresh.ledger.rollout is not None and fresh.ledger.rollout.id != state.ledger.rollout.id


def test_taking_again_with_the_same_record_changes_nothing_in_a_rollout() -> None:
    state = GroupState().created(2)
    record = rec("n0", 0.0)
    after = state.take(record, ahead=0, limits=Limits(waves=PLAN), waiting=1)
    assert after.take(record, ahead=0, limits=Limits(waves=PLAN), waiting=1) is after


# -- the history --------------------------------------------------------------------------------


def test_every_ending_is_written_into_the_history_with_its_phases() -> None:
    state = GroupState().created(1)
    state = take(state, "n0", 100.0, waiting=1, plan=None)
    record = state.records[HolderId("n0")]
    for phase, at in ((Phase.DRAINING, 101.0), (Phase.REBOOTING, 105.0), (Phase.VERIFYING, 130.0)):
        record = record.moved(phase, at)
        state = state.update(record)
    state = done(state, "n0", 140.0)
    (cycle,) = state.ledger.history
    assert (cycle.node, cycle.outcome, cycle.seconds) == ("n0", REBOOTED, 40.0)
    assert cycle.phase_seconds() == {"locked": 1.0, "draining": 4.0, "rebooting": 25.0, "verifying": 10.0}
    assert done(state, "n0", 150.0) is state  # released twice: one entry
    state = state.lock(replace(rec("ops", 160.0), kind="manual"))
    state = state.unlock(HolderId("ops"), ending=Ending(UNLOCKED, 170.0, "by hand"))
    assert [c.outcome for c in state.ledger.history] == [REBOOTED, UNLOCKED]


def test_the_history_is_bounded_and_survives_its_encoding() -> None:
    state = GroupState().created(1)
    for i in range(HISTORY_SIZE + 5):
        state = done(take(state, f"n{i}", float(i), waiting=1, plan=None), f"n{i}", i + 0.5)
    history = state.ledger.history
    assert len(history) == HISTORY_SIZE and history[-1].node == f"n{HISTORY_SIZE + 4}"
    ledger = replace(state.ledger, rollout=take(GroupState().created(1), "x", 0.0, waiting=3).ledger.rollout)
    assert Ledger.decode(ledger.encode(), key="k") == ledger


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'{"history": 3}', id="history not a list"),
        pytest.param(b'{"history": [{"id": "a"}]}', id="an entry without its fields"),
        pytest.param(b'{"history": [], "rollout": {"id": "r1"}}', id="a rollout without its waves"),
        pytest.param(
            b'{"history": [], "rollout": {"id": "r", "started_at": 0, "waves_spec": ["0%"], "soak": 1, '
            b'"waves": [{"opened_at": 0}]}}',
            id="a wave size of 0%",
        ),
        pytest.param(b"[1]", id="not an object"),
    ],
)
def test_a_malformed_ledger_is_a_corrupt_document_not_a_crash(raw: bytes) -> None:
    with pytest.raises(CorruptDocument):
        Ledger.decode(raw, key="ledger")


def test_p90_is_the_nearest_rank() -> None:
    assert p90([float(i) for i in range(1, 11)]) == 9.0
    assert p90([5.0]) == 5.0


def _snapshot(view: Any, now: float, closes_in: float) -> Snapshot:
    closes = datetime.fromtimestamp(now + closes_in, UTC)
    return Snapshot(
        now=now,
        holder=HolderId("n9"),
        node=NodeName("n9"),
        group=Group("g"),
        boot_id="b0",
        pending=PendingReboot("sentinel", "update", "k"),
        detector_errors=(),
        window=WindowStatus(open=True, closes_at=closes, next_open=None),
        view=view,
        policy=Policy(
            timedelta(minutes=10), timedelta(seconds=30), timedelta(0), expected_cycle=timedelta(minutes=5)
        ),
    )


def test_window_fit_uses_the_p90_of_the_groups_cycles_once_it_has_three() -> None:
    state = GroupState().created(1)
    for i, seconds in enumerate((1200.0, 1300.0)):
        state = done(take(state, f"n{i}", i * 2000.0, waiting=1, plan=None), f"n{i}", i * 2000.0 + seconds)
    waiter = (Waiter(HolderId("n9"), NodeName("n9"), 0.0, 1),)
    now = 10_000.0
    # Two cycles: the configured 5 minutes still rule, and 10 minutes are left.
    step = decide(_snapshot(state.view(Group("g"), waiter), now, closes_in=600))
    assert not isinstance(step, Rest) or "next window" not in step.reason
    state = done(take(state, "n2", 5000.0, waiting=1, plan=None), "n2", 6400.0)
    step = decide(_snapshot(state.view(Group("g"), waiter), now, closes_in=600))
    assert "waits: next window" in getattr(step, "reason", "")  # it leaves the queue, or rests
    assert "p90 of the group's last 3 cycles" in step.reason and "23m20s" in step.reason


# -- the promise, under random sequences ---------------------------------------------------------------


@dataclass
class Taken:
    holder: str
    wave: int
    rollout: str
    at: float


NODES = [f"n{i}" for i in range(8)]


class WaveMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = GroupState().created(3)
        self.now = 0.0
        self.holding: dict[str, Taken] = {}
        self.done: list[tuple[str, int, float]] = []  # (rollout, wave, at) of healthy returns

    @rule(seconds=st.sampled_from([1.0, 30.0, 61.0]))
    def tick(self, seconds: float) -> None:
        self.now += seconds

    @rule(node=st.sampled_from(NODES), waiting=st.integers(1, 8))
    def take(self, node: str, waiting: int) -> None:
        before = self.state
        if before.holds(HolderId(node)):
            return
        try:
            self.state = take(before, node, self.now, waiting=waiting)
        except NoFreeSlot:
            assert self.state is before
            return
        record = self.state.records[HolderId(node)]
        assert record.rollout, "a group with waves takes every slot in a rollout"
        for other in self.holding.values():
            if other.rollout == record.rollout:
                assert other.wave >= record.wave or record.wave == other.wave, "an earlier wave still holds"
                assert other.wave == record.wave, (
                    f"{node} in wave {record.wave + 1} while {other.holder} holds"
                )
        earlier = [at for r, w, at in self.done if r == record.rollout and w == record.wave - 1]
        if record.wave > 0:
            assert earlier and self.now >= max(earlier) + PLAN.soak, "the wave opened before the soak ended"
        self.holding[node] = Taken(node, record.wave, record.rollout, self.now)

    @precondition(lambda self: bool(self.holding))
    @rule(data=st.data(), ok=st.booleans())
    def give_back(self, data: Any, ok: bool) -> None:
        node = data.draw(st.sampled_from(sorted(self.holding)))
        taken = self.holding.pop(node)
        self.state = done(self.state, node, self.now, REBOOTED if ok else DRAIN_FAILED)
        if ok:
            self.done.append((taken.rollout, taken.wave, self.now))
        if self.state.paused is not None:
            self.state = self.state.resume()

    @invariant()
    def never_more_in_a_wave_than_its_quota(self) -> None:
        rollout = self.state.ledger.rollout
        if rollout is None:
            return
        wave = rollout.waves[-1]
        in_flight = sum(1 for t in self.holding.values() if t.rollout == rollout.id)
        if wave.quota is not None:
            assert rollout.through + in_flight <= wave.quota

    @invariant()
    def the_ledger_survives_its_encoding(self) -> None:
        assert Ledger.decode(self.state.ledger.encode(), key="k") == self.state.ledger


WaveMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)
test_wave_machine = WaveMachine.TestCase


def test_max_unavailable_percent_counts_the_members_heard_of() -> None:
    limits = Limits(unavailable_percent=25)
    state = GroupState().created(10)
    for i in range(8):
        state = state.heard_of(HolderId(f"n{i}"), 0.0)  # eight agents started
    assert state.heard_of(HolderId("n0"), 10.0) is state  # fresh: no write
    state = state.take(rec("n0", 1.0), ahead=0, limits=limits, waiting=8)
    state = state.take(rec("n1", 2.0), ahead=0, limits=limits, waiting=7)
    with pytest.raises(NoFreeSlot, match=r"2 of the group's 8 node\(s\) are rebooting, 25% allows 2"):
        state.take(rec("n2", 3.0), ahead=0, limits=limits, waiting=6)
    # Fourteen days on, only the two who took a slot are still heard of: one at a time.
    later = MEMBER_TTL + 5.0
    state = state.release(HolderId("n0"), Ending(REBOOTED, later)).release(
        HolderId("n1"), Ending(REBOOTED, later)
    )
    assert state.ledger.group_size(later) == 2
    state = state.take(rec("n2", later), ahead=0, limits=limits, waiting=6)
    with pytest.raises(NoFreeSlot, match="allows 1"):
        state.take(rec("n3", later + 1), ahead=0, limits=limits, waiting=5)


def test_a_zone_full_refuses_in_take_and_in_the_view_alike() -> None:
    limits = Limits(per_zone=1)
    state = GroupState().created(3).take(rec("a1", 0.0, zone="a"), ahead=0, limits=limits)
    with pytest.raises(NoFreeSlot, match="zone a has 1 of 1"):
        state.take(rec("a2", 1.0, zone="a"), ahead=0, limits=limits)
    view = state.view(Group("g"))
    assert not view.admission(limits, 1.0, zone="a").ok and view.admission(limits, 1.0, zone="b").ok


def test_admit_without_waves_or_rollout_lets_anyone_through() -> None:
    assert admit(None, None, in_flight=0, waiting=5, now=0.0).ok


def test_a_history_entry_of_an_unknown_shape_is_refused() -> None:
    with pytest.raises(CorruptDocument):
        Cycle.from_json({"id": 1, "node": "n", "started_at": 0, "ended_at": 1, "outcome": "x"}, "k")


def test_a_holder_cannot_drop_the_wave_its_slot_was_taken_in() -> None:
    """The FleetLock server moved its record on from the one it built before the take: the wave
    stays, and the rollout still counts the canary in flight."""
    state = take(GroupState().created(3), "n0", 0.0, waiting=3)
    built = rec("n0", 0.0)  # without the rollout take() gave it
    state = state.update(built.moved(Phase.REBOOTING, 1.0))
    assert state.records[HolderId("n0")].rollout == state.ledger.rollout.id  # type: ignore[union-attr]
    with pytest.raises(NoFreeSlot, match="opens when the 1 node"):
        take(state, "n1", 2.0, waiting=2)


def test_a_rollout_idle_for_its_expiry_ends_whatever_its_wave() -> None:
    """Two nodes needed the update and went through waves 1 and 2; weeks later the next update
    starts with a canary again, not in the old rollout's wave 3 (16 of 30 at once)."""
    plan = replace(PLAN, expiry=86400.0)
    state = GroupState().created(3)
    state = done(take(state, "n0", 0.0, waiting=30, plan=plan), "n0", 10.0)
    state = done(take(state, "n1", 100.0, waiting=29, plan=plan), "n1", 110.0)
    old = state.ledger.rollout
    assert old is not None and old.current == 1
    still = take(state, "n2", 50_000.0, waiting=28, plan=plan)  # within a day: the same rollout
    assert still.records[HolderId("n2")].rollout == old.id
    later = take(state, "n2", 200_000.0, waiting=30, plan=plan)
    rollout = later.ledger.rollout
    assert rollout is not None and rollout.id != old.id and rollout.current == 0
    with pytest.raises(NoFreeSlot):
        take(later, "n3", 200_001.0, waiting=29, plan=plan)  # the new canary's wave is full
