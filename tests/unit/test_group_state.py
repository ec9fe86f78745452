"""The group's rules as a state machine (hypothesis.stateful): random sequences of every transition
from many holders. After each step: never more holders than slots, no record without its slot,
a refusal changes nothing, and asking again changes nothing (the same object comes back)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from rebootcoord.core.group import BUSY_PHASES, GroupState
from rebootcoord.core.semaphore import AGENT, MANUAL, HolderRecord, Limits, PauseInfo, SemaphoreState
from rebootcoord.core.types import Group, HolderId, NodeName, Phase
from rebootcoord.errors import (
    CorruptDocument,
    GroupPaused,
    HolderBusy,
    HoldsAgain,
    InvalidMax,
    NoFreeSlot,
    NoSemaphore,
    NotHolder,
    SemaphoreError,
    SlotLost,
)

HOLDERS = [HolderId(f"n{i}") for i in range(6)]
PHASES = [Phase.LOCKED, Phase.DRAINING, Phase.REBOOTING, Phase.VERIFYING, Phase.RELEASING]


ZONES = {h: "abc"[i // 2] for i, h in enumerate(HOLDERS)}  # two nodes per zone
ZONE_LIMIT = 1
PERCENT = 50  # max_unavailable_percent: of the members, the nodes that ever took a slot here
LIMITS = Limits(per_zone=ZONE_LIMIT, unavailable_percent=PERCENT)


def record(
    holder: HolderId, phase: Phase = Phase.LOCKED, at: float = 1.0, kind: str = "agent", zone: str = ""
) -> HolderRecord:
    return HolderRecord(holder, NodeName(holder), Group("g"), phase, "b0", at, at, kind=kind, zone=zone)


class GroupMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = GroupState()
        self.clock = 1.0

    def apply(self, change: Any, *args: Any, **kwargs: Any) -> None:
        """Apply a transition; a refusal must leave the state as it was. Then apply it again:
        the second time must change nothing."""
        before = self.state
        try:
            after = change(before, *args, **kwargs)
        except SemaphoreError:
            assert self.state is before
            return
        self.state = after
        try:
            again = change(after, *args, **kwargs)
        except (NoFreeSlot, NotHolder, HoldsAgain):
            return  # lock/unlock/reclaim: the second call is refused, as it must be
        assert again is after, f"{change.__name__} twice changed the state again"

    @rule(n=st.integers(1, 4))
    def create(self, n: int) -> None:
        self.apply(GroupState.created, n)

    @rule(holder=st.sampled_from(HOLDERS), ahead=st.integers(0, 3))
    def take(self, holder: HolderId, ahead: int) -> None:
        self.clock += 1
        before = self.state
        new = record(holder, at=self.clock, zone=ZONES[holder])
        in_zone = sum(1 for h, r in before.records.items() if r.zone == new.zone and before.holds(h))
        members = len({*before.ledger.members, holder})
        group_full = before.slots is not None and len(before.slots.holders) >= max(
            1, PERCENT * members // 100
        )
        try:
            after = before.take(new, ahead=ahead, limits=LIMITS)
        except NoSemaphore:
            assert before.slots is None
            return
        except GroupPaused:
            assert before.paused is not None
            return
        except NoFreeSlot:
            assert before.slots is not None
            assert before.slots.free <= ahead or before.holds(holder) or in_zone >= ZONE_LIMIT or group_full
            return
        assert before.slots is not None and before.slots.free > ahead and before.paused is None
        assert in_zone < ZONE_LIMIT and not group_full
        assert after.take(new, ahead=ahead, limits=LIMITS) is after  # the same record again
        self.state = after

    @rule(holder=st.sampled_from(HOLDERS), phase=st.sampled_from(PHASES))
    def update(self, holder: HolderId, phase: Phase) -> None:
        current = self.state.records.get(holder)
        if current is None:
            with pytest.raises(SlotLost):
                self.state.update(record(holder, phase))
            return
        self.apply(GroupState.update, current.moved(phase, self.clock))

    @rule(holder=st.sampled_from(HOLDERS))
    def release(self, holder: HolderId) -> None:
        self.apply(GroupState.release, holder)
        assert not self.state.holds(holder) and holder not in self.state.records

    @rule(holder=st.sampled_from(HOLDERS), force=st.booleans())
    def unlock(self, holder: HolderId, force: bool) -> None:
        held = self.state.holds(holder) or holder in self.state.records
        if not held:
            with pytest.raises(NotHolder):
                self.state.unlock(holder, force=force)
            return
        record = self.state.records.get(holder)
        if not force and record is not None and record.kind == AGENT and record.phase in BUSY_PHASES:
            with pytest.raises(HolderBusy):  # mid-cycle: only with force
                self.state.unlock(holder)
            return
        self.apply(GroupState.unlock, holder, force=force)
        assert not self.state.holds(holder)

    @rule(holder=st.sampled_from(HOLDERS))
    def drop_record(self, holder: HolderId) -> None:
        self.apply(GroupState.drop_record, holder)

    @rule(holder=st.sampled_from(HOLDERS), fresh=st.booleans())
    def reclaim(self, holder: HolderId, fresh: bool) -> None:
        current = self.state.records.get(holder)
        expect = current if current is not None and not fresh else record(holder, at=-1.0)
        if current is None or fresh or not self.state.holds(holder):
            with pytest.raises(NotHolder):
                self.state.reclaim(holder, expect)
            return
        self.apply(GroupState.reclaim, holder, expect)

    @rule(holder=st.sampled_from(HOLDERS))
    def lock(self, holder: HolderId) -> None:
        self.apply(GroupState.lock, record(holder, kind=MANUAL))

    @rule(n=st.integers(-1, 6))
    def set_max(self, n: int) -> None:
        holders = len(self.state.slots.holders) if self.state.slots else 0
        if n < 1 or n < holders:
            with pytest.raises(InvalidMax):
                self.state.with_max(n)
            return
        self.apply(GroupState.with_max, n)
        assert self.state.slots is not None and self.state.slots.max == n

    @rule(by=st.sampled_from(["ops", "ci"]))
    def pause(self, by: str) -> None:
        self.apply(GroupState.pause, PauseInfo(by, 1.0))

    @rule()
    def resume(self) -> None:
        self.apply(GroupState.resume)

    @invariant()
    def never_more_holders_than_slots(self) -> None:
        slots = self.state.slots
        if slots is not None:
            assert len(slots.holders) <= slots.max

    @invariant()
    def never_more_holders_in_a_zone_than_its_limit(self) -> None:
        for zone in set(ZONES.values()):
            held = [h for h, r in self.state.records.items() if r.zone == zone and self.state.holds(h)]
            assert len(held) <= ZONE_LIMIT, (zone, held)

    @invariant()
    def never_more_holders_than_the_groups_percentage(self) -> None:
        slots, members = self.state.slots, len(self.state.ledger.members)
        takers = [h for h, r in self.state.records.items() if r.kind != MANUAL and self.state.holds(h)]
        if slots is not None and takers:
            # operators' locks ignore every budget; the agents' slots never exceed it
            assert len(takers) <= max(1, PERCENT * members // 100), (takers, members)

    @invariant()
    def no_record_without_its_slot(self) -> None:
        assert set(self.state.records) <= set(self.state.slots.holders if self.state.slots else ())


GroupMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
test_group_state_machine = GroupMachine.TestCase


def test_a_corrupt_state_refuses_every_change() -> None:
    bad = GroupState(SemaphoreState(1), {}, None, (CorruptDocument("k", "not valid JSON"),))
    for change in (
        lambda s: s.take(record(HOLDERS[0]), ahead=0),
        lambda s: s.release(HOLDERS[0]),
        lambda s: s.with_max(3),
        lambda s: s.pause(PauseInfo("x", 1.0)),
        lambda s: s.created(2),
    ):
        with pytest.raises(CorruptDocument):
            change(bad)


def test_take_honours_the_queue_and_the_pause() -> None:
    state = GroupState().created(2)
    with pytest.raises(NoFreeSlot):
        state.take(record(HOLDERS[0]), ahead=2)  # two waiters ahead, two slots: theirs
    state = state.take(record(HOLDERS[0]), ahead=1)
    with pytest.raises(GroupPaused):
        state.pause(PauseInfo("ops", 1.0)).take(record(HOLDERS[1]), ahead=0)
