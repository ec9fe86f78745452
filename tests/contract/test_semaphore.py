"""The semaphore's contract, the same on every store (tests/contract/conftest.py): queue order,
no herd, idempotent take and release, set-max never below the holders, pause, a corrupt document
reported and left alone, reclaim, and racing writers that never exceed the max."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from rebootcoord.core.semaphore import MANUAL, HolderRecord, PauseInfo, Waiter
from rebootcoord.core.types import Group, HolderId, NodeName, Phase
from rebootcoord.daemon.group import GroupClient
from rebootcoord.errors import CorruptDocument, HolderBusy, InvalidMax, NoFreeSlot, NotHolder, SlotLost
from tests.conftest import wait_for
from tests.contract.conftest import TTL, Backend


def record(holder: str, phase: Phase = Phase.LOCKED, **kw: object) -> HolderRecord:
    now = time.time()
    base = HolderRecord(
        id=HolderId(holder), node=NodeName(holder), group=Group("default"), phase=phase,
        boot_id="b0", acquired_at=now, phase_since=now, update_key="u",
    )  # fmt: skip
    return replace(base, **kw)  # type: ignore[arg-type]


def join(sem: GroupClient, holder: str) -> None:
    sem.join_queue(Waiter(HolderId(holder), NodeName(holder), time.time(), 0))


def take(sem: GroupClient, holder: str) -> int | None:
    join(sem, holder)
    return sem.acquire(record(holder))


def test_queue_order_until_full_then_handoff(backend: Backend) -> None:
    sem = backend.client()
    sem.ensure(2)
    for holder in ("a", "b", "c", "d"):
        join(sem, holder)
        time.sleep(0.002)  # request order, also where it is a timestamp
    assert [w.id for w in sem.read().waiters] == ["a", "b", "c", "d"]
    assert sem.acquire(record("c")) is None  # two ahead of it, two slots: theirs
    assert sem.acquire(record("a")) is not None and sem.acquire(record("b")) is not None
    assert sem.acquire(record("c")) is None  # full
    assert [w.id for w in sem.read().waiters] == ["c", "d"]  # takers left the line
    sem.release(HolderId("a"))
    assert sem.acquire(record("d")) is None  # c is first
    assert sem.acquire(record("c")) is not None
    view = sem.read()
    assert view.slots is not None and view.slots.holders == ("b", "c")
    assert set(view.records) == {"b", "c"}


def test_take_and_release_are_idempotent_and_unlock_refuses_strangers(backend: Backend) -> None:
    sem = backend.client()
    sem.ensure(1)
    mine = record("a")
    join(sem, "a")
    assert sem.acquire(mine) is not None
    assert sem.acquire(mine) is not None  # the same record again: still ours, nothing written
    assert sem.release(HolderId("a")) is not None
    assert sem.release(HolderId("a")) is None
    with pytest.raises(NotHolder, match="'x' holds no slot"):
        sem.unlock(HolderId("x"))


def test_an_unlock_mid_cycle_needs_force_and_a_record_written_after_it_is_refused(backend: Backend) -> None:
    sem = backend.client()
    sem.ensure(1)
    take(sem, "a")
    sem.update(record("a", Phase.DRAINING))
    with pytest.raises(HolderBusy, match="a is draining"):
        sem.unlock(HolderId("a"))  # mid-cycle: refused without force, and nothing changed
    assert sem.read().holds(HolderId("a"))
    removed = sem.unlock(HolderId("a"), force=True)
    assert removed is not None and removed.phase is Phase.DRAINING
    with pytest.raises(SlotLost):
        sem.update(record("a", Phase.REBOOTING))


def test_set_max_never_below_the_holders(backend: Backend) -> None:
    sem = backend.client()
    sem.ensure(1)
    take(sem, "a")
    assert take(sem, "b") is None
    sem.set_max(2)
    assert sem.acquire(record("b")) is not None
    with pytest.raises(InvalidMax, match="below the 2 current holders"):
        sem.set_max(1)
    with pytest.raises(InvalidMax):
        sem.set_max(0)
    assert sem.read().slots.max == 2  # type: ignore[union-attr]


def test_pause_blocks_new_slots_and_resume_restores(backend: Backend) -> None:
    sem = backend.client()
    sem.ensure(1)
    sem.pause(PauseInfo("op", time.time(), "change freeze"))
    assert take(sem, "a") is None
    assert sem.read().paused.reason == "change freeze"  # type: ignore[union-attr]
    sem.resume()
    assert sem.acquire(record("a")) is not None


def test_an_operator_lock_takes_a_slot_with_a_manual_record(backend: Backend) -> None:
    sem = backend.client()
    sem.ensure(1)
    sem.lock(HolderId("maint"), record("maint", kind=MANUAL))
    assert take(sem, "a") is None
    with pytest.raises(NoFreeSlot):
        sem.lock(HolderId("maint2"), record("maint2", kind=MANUAL))
    assert sem.unlock(HolderId("maint")) is not None


def test_a_corrupt_document_is_reported_and_left_alone(backend: Backend) -> None:
    sem = backend.client()
    sem.ensure(1)
    backend.corrupt()
    view = sem.read()
    assert view.corrupt and view.slots is None
    for change in (
        lambda: sem.set_max(3),
        lambda: sem.pause(PauseInfo("op", 1.0)),
        lambda: sem.release(HolderId("a")),
        lambda: take(sem, "a"),
    ):
        with pytest.raises(CorruptDocument):
            change()
    assert sem.read().corrupt  # still there: nothing repaired it


def test_reclaim_only_the_record_that_was_seen(backend: Backend) -> None:
    sem = backend.client()
    sem.ensure(1)
    take(sem, "gone")
    seen = sem.read().record(HolderId("gone"))
    assert seen is not None
    assert sem.reclaim(HolderId("gone"), replace(seen, acquired_at=seen.acquired_at - 1)) is False
    assert sem.reclaim(HolderId("gone"), seen) is True
    assert sem.read().slots.holders == ()  # type: ignore[union-attr]
    assert sem.reclaim(HolderId("gone"), seen) is False


def test_a_dead_waiters_place_expires_and_a_restarted_one_keeps_its_place(backend: Backend) -> None:
    sem = backend.client()
    sem.ensure(1)
    dead = backend.client()
    join(dead, "dead")
    time.sleep(0.002)
    join(sem, "alive")
    assert [w.id for w in sem.read().waiters] == ["dead", "alive"]
    # A restart (a new process of the same id) takes its place over and keeps it.
    again = backend.client()
    join(again, "dead")
    assert [w.id for w in sem.read().waiters] == ["dead", "alive"]
    assert again.queue_joined(HolderId("dead"))
    # Killed for good: no one renews the place; it goes.
    backend.kill(dead, HolderId("dead"))
    backend.kill(again, HolderId("dead"))
    wait_for(
        lambda: [w.id for w in sem.read().waiters] == ["alive"], timeout=4 * TTL, what="the dead waiter gone"
    )


def test_no_herd_a_release_wakes_only_the_head_and_each_taker_the_next(backend: Backend) -> None:
    """Six waiters wait as agents do (the head on the slots, every other one on the waiter just
    ahead). The holder's phase writes wake nobody; a release wakes the head alone; the head's take
    wakes only the one behind it."""
    holder = backend.client()
    holder.ensure(1)
    take(holder, "h")
    names = [f"w{i}" for i in range(6)]
    clients = {name: backend.client() for name in names}
    for name in names:
        join(clients[name], name)
        time.sleep(0.002)
    woken: list[str] = []
    lock = threading.Lock()
    stops = []

    def arm(name: str) -> None:
        view = clients[name].read()
        role = "slots" if view.queue_position(HolderId(name)) == 0 else "ahead"

        def wake(name: str = name) -> None:
            with lock:
                woken.append(name)

        stops.append(clients[name].wake_on(view, HolderId(name), role, wake))

    for name in names:
        arm(name)
    for phase in (Phase.DRAINING, Phase.REBOOTING, Phase.VERIFYING):
        holder.update(record("h", phase))  # the holder's phase writes
    time.sleep(0.5)
    assert woken == [], "nothing woke anyone yet, the holder's phase writes neither"
    holder.release(HolderId("h"))
    wait_for(lambda: woken == ["w0"], timeout=10, what="the head woken")
    time.sleep(0.5)
    assert woken == ["w0"], "only the head"
    assert clients["w0"].acquire(record("w0")) is not None  # takes, leaves the line
    wait_for(lambda: woken == ["w0", "w1"], timeout=10, what="the next in line")
    time.sleep(0.5)
    assert woken == ["w0", "w1"], "only the one behind the taker"
    for stop in stops:
        stop()


def test_racing_writers_never_exceed_the_max(backend: Backend) -> None:
    """Eight clients of their own race for two slots, over and over. Never more believe at once
    that they hold a slot than there are slots, and every stored version agrees."""
    first = backend.client()
    first.ensure(2)
    backend.since = first.read().revision
    clients = [backend.client() for _ in range(8)]
    stop = threading.Event()
    errors: list[BaseException] = []
    taken = [0]
    lock = threading.Lock()
    now, peak = [0], [0]

    def worker(i: int) -> None:
        me = f"r{i}"
        sem = clients[i]
        try:
            while not stop.is_set():
                join(sem, me)
                if sem.acquire(record(me)) is not None:
                    with lock:
                        taken[0] += 1
                        now[0] += 1
                        peak[0] = max(peak[0], now[0])
                    time.sleep(0.001)
                    with lock:
                        now[0] -= 1
                    sem.release(HolderId(me))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    wait_for(lambda: taken[0] >= 40, timeout=120, what="40 acquisitions")
    stop.set()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert peak[0] <= 2, peak[0]
    history = backend.history()
    assert history, "the store's own history"
    assert max(len(v.holders) for v in history) <= 2
    assert sum(c.conflicts for c in clients) > 0 or backend.name == "memory"  # the race was real
