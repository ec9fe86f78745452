"""The semaphore value and its documents: acquire/release rules, airlock's format, corruption."""

from __future__ import annotations

import json

import pytest

from rebootcoord.core.semaphore import GroupView, HolderRecord, PauseInfo, SemaphoreState, Waiter
from rebootcoord.core.types import Group, HolderId, NodeName, Phase
from rebootcoord.errors import CorruptDocument, InvalidMax, NoFreeSlot, NotHolder

H = HolderId


def test_acquire_until_full_then_refuse() -> None:
    s = SemaphoreState(2)
    s = s.acquire(H("b")).acquire(H("a"))
    assert s.holders == ("a", "b")
    with pytest.raises(NoFreeSlot):
        s.acquire(H("c"))


def test_acquire_again_as_holder_changes_nothing() -> None:
    s = SemaphoreState(1).acquire(H("a"))
    assert s.acquire(H("a")) is s


def test_release_unknown_holder_refused() -> None:
    with pytest.raises(NotHolder, match="'x' holds no slot"):
        SemaphoreState(1).acquire(H("a")).release(H("x"))


@pytest.mark.parametrize(("new_max", "ok"), [(0, False), (1, False), (2, True), (5, True)])
def test_with_max_never_below_holders(new_max: int, ok: bool) -> None:
    s = SemaphoreState(3, (H("a"), H("b")))
    if ok:
        assert s.with_max(new_max).max == new_max
    else:
        with pytest.raises(InvalidMax):
            s.with_max(new_max)


def test_encode_is_airlocks_format() -> None:
    raw = SemaphoreState(3, (H("z"), H("a"))).encode()
    assert json.loads(raw) == {"total_slots": 3, "holders": ["a", "z"]}


def test_decode_airlock_written_documents() -> None:
    # What airlock's Go code writes: holders may be null for an empty slice.
    assert SemaphoreState.decode(b'{"total_slots":2,"holders":null}', key="k") == SemaphoreState(2)
    assert SemaphoreState.decode(b'{"total_slots":2,"holders":["x"]}', key="k").holders == ("x",)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"total_slots": "2", "holders": []}', "total_slots must be an integer"),
        (b'{"total_slots": true, "holders": []}', "total_slots must be an integer"),
        (b'{"total_slots": 0, "holders": []}', "at least 1"),
        (b'{"total_slots": 2, "holders": "a"}', "holders must be a list"),
        (b'{"total_slots": 2, "holders": [1]}', "holders must be a list"),
        (b'{"total_slots": 2, "holders": ["a", "a"]}', "twice"),
        (b'{"total_slots": 1, "holders": ["a", "b"]}', "exceed total_slots"),
    ],
)
def test_corrupt_slot_documents_are_reported_not_repaired(raw: bytes, fragment: str) -> None:
    with pytest.raises(CorruptDocument, match=fragment) as info:
        SemaphoreState.decode(raw, key="com.coreos.airlock/groups/g/v1/semaphore")
    assert info.value.key.endswith("/semaphore")


def record(**changes: object) -> HolderRecord:
    base = HolderRecord(
        id=H("n1"),
        node=NodeName("n1"),
        group=Group("g"),
        phase=Phase.DRAINING,
        boot_id="b1",
        acquired_at=10.0,
        phase_since=11.0,
        cordoned=True,
        update_key="k",
    )
    return HolderRecord(**{**base.__dict__, **changes})  # type: ignore[arg-type]


def test_record_round_trip() -> None:
    r = record(reboot_requested_at=12.5, note="x")
    assert HolderRecord.decode(r.encode(), key="k") == r


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda d: d.pop("boot_id"), "missing field 'boot_id'"),
        (lambda d: d.update(phase="sleeping"), "malformed"),
        (lambda d: d.update(phase="idle"), "holds no slot"),
        (lambda d: d.update(acquired_at="yesterday"), "wrong type"),
        (lambda d: d.update(acquired_at=True), "must be a number"),
        (lambda d: d.update(cordoned="yes"), "wrong type"),
    ],
)
def test_corrupt_records(mutate, fragment: str) -> None:
    doc = json.loads(record().encode())
    mutate(doc)
    with pytest.raises(CorruptDocument, match=fragment):
        HolderRecord.decode(json.dumps(doc).encode(), key="k")


def view(slots: SemaphoreState, waiters: list[str], paused: bool = False) -> GroupView:
    return GroupView(
        group=Group("g"),
        slots=slots,
        waiters=tuple(Waiter(H(w), NodeName(w), 0.0, i) for i, w in enumerate(waiters)),
        paused=PauseInfo("op", 0.0) if paused else None,
    )


@pytest.mark.parametrize(
    ("holders", "waiters", "who", "paused", "expected"),
    [
        ([], ["a", "b"], "a", False, True),
        ([], ["a", "b"], "b", False, True),  # two free slots: the first two in line
        (["x"], ["a", "b"], "b", False, False),  # one free slot: only the first
        (["x", "y"], ["a"], "a", False, False),  # full
        ([], ["a"], "a", True, False),  # paused
        ([], ["a"], "z", False, False),  # not queued
    ],
)
def test_may_take_serves_waiters_in_order(holders, waiters, who, paused, expected) -> None:
    v = view(SemaphoreState(2, tuple(H(h) for h in holders)), waiters, paused)
    assert v.may_take(H(who)) is expected
