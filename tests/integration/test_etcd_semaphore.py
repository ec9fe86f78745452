"""The etcd backend against a real etcd: CAS, the queue, the watch, airlock compatibility,
corrupted documents, TLS and authentication, and an etcd restart."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import replace

import etcd3
import pytest

from rebootcoord.adapters.etcd import EtcdConnection, EtcdOptions, EtcdSemaphore
from rebootcoord.core.semaphore import GroupView, HolderRecord, PauseInfo, Waiter
from rebootcoord.core.types import Group, HolderId, NodeName, Phase
from rebootcoord.errors import (
    BackendUnavailable,
    CorruptDocument,
    InvalidMax,
    NoFreeSlot,
    NotHolder,
    SlotLost,
)
from rebootcoord.sim.etcd_server import EtcdServer
from tests.conftest import wait_for

pytestmark = pytest.mark.etcd

Make = Callable[..., EtcdSemaphore]


def record(holder: str, phase: Phase = Phase.LOCKED, **kw: object) -> HolderRecord:
    now = time.time()
    base = HolderRecord(
        id=HolderId(holder), node=NodeName(holder), group=Group("default"), phase=phase,
        boot_id="b0", acquired_at=now, phase_since=now, update_key="u",
    )  # fmt: skip
    return replace(base, **kw)  # type: ignore[arg-type]


def queue_and_take(sem: EtcdSemaphore, holder: str) -> int | None:
    sem.join_queue(Waiter(HolderId(holder), NodeName(holder), time.time(), 0))
    return sem.acquire(record(holder))


def raw_client(etcd: EtcdServer) -> etcd3.MultiEndpointEtcd3Client:
    host, port = etcd.endpoint.split("//")[1].split(":")
    return etcd3.client(host=host, port=int(port))


def test_ensure_writes_airlocks_document_once(make_semaphore: Make, etcd: EtcdServer, prefix: str) -> None:
    sem = make_semaphore()
    sem.ensure(2)
    sem.ensure(5)  # like airlock: written only at creation
    value, _ = raw_client(etcd).get(f"{prefix}/groups/default/v1/semaphore")
    assert json.loads(value) == {"total_slots": 2, "holders": []}


def test_acquire_in_queue_order_until_full(make_semaphore: Make) -> None:
    sem = make_semaphore()
    sem.ensure(2)
    for name in ("a", "b", "c"):
        sem.join_queue(Waiter(HolderId(name), NodeName(name), time.time(), 0))
    assert sem.acquire(record("c")) is None  # two slots, but c is third in line
    assert sem.acquire(record("a")) is not None
    assert sem.acquire(record("b")) is not None
    assert sem.acquire(record("c")) is None  # full
    view = sem.read()
    assert view.slots is not None and view.slots.holders == ("a", "b")
    assert [w.id for w in view.waiters] == ["c"]
    assert set(view.records) == {"a", "b"}
    sem.release(HolderId("a"))
    assert sem.acquire(record("c")) is not None
    assert sem.read().slots.holders == ("b", "c")  # type: ignore[union-attr]


def test_release_is_idempotent_and_unlock_refuses_unknown(make_semaphore: Make) -> None:
    sem = make_semaphore()
    sem.ensure(1)
    queue_and_take(sem, "a")
    sem.release(HolderId("a"))
    assert sem.release(HolderId("a")) is None
    with pytest.raises(NotHolder, match="'ghost' holds no slot"):
        sem.unlock(HolderId("ghost"))


def test_update_after_unlock_raises_slot_lost(make_semaphore: Make) -> None:
    sem = make_semaphore()
    sem.ensure(1)
    queue_and_take(sem, "a")
    sem.update(record("a", Phase.DRAINING))
    assert sem.read().record(HolderId("a")).phase is Phase.DRAINING  # type: ignore[union-attr]
    removed = sem.unlock(HolderId("a"))
    assert removed is not None and removed.phase is Phase.DRAINING
    with pytest.raises(SlotLost):
        sem.update(record("a", Phase.REBOOTING))


def test_concurrent_acquirers_never_exceed_max(make_semaphore: Make, etcd: EtcdServer, prefix: str) -> None:
    """20 threads with their own clients race for 3 slots, repeatedly; etcd's own history of the
    key is the proof that holders never exceeded 3."""
    first = make_semaphore()
    first.ensure(3)
    stop = threading.Event()
    errors: list[BaseException] = []
    taken = [0]
    believers = Believers()

    def worker(i: int) -> None:
        sem = make_semaphore()
        me = f"w{i:02d}"
        try:
            while not stop.is_set():
                sem.join_queue(Waiter(HolderId(me), NodeName(me), time.time(), 0))
                if sem.acquire(record(me)) is not None:
                    taken[0] += 1
                    with believers:  # from the write that took the slot to the one giving it back
                        time.sleep(0.001)
                    sem.release(HolderId(me))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    wait_for(lambda: taken[0] >= 150, timeout=60, what="150 acquisitions")
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors
    history = slot_history(etcd, f"{prefix}/groups/default/v1/semaphore")
    assert len(history) > 150
    assert max(len(doc["holders"]) for doc in history) <= 3
    assert max(len(doc["holders"]) for doc in history) == 3  # the race was real
    # No more workers ever believed at once that they held a slot than there are slots.
    assert believers.peak <= 3, believers.peak
    assert believers.peak >= 2


class Believers:
    """How many workers believe at once that they hold a slot (a context per belief)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = self.peak = 0

    def __enter__(self) -> None:
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.now -= 1


def slot_history(etcd: EtcdServer, key: str) -> list[dict]:
    """Every value the key ever had, replayed by a watch from revision 1."""
    client = raw_client(etcd)
    current_rev = client.get_response(key).header.revision
    events: list[dict] = []
    done = threading.Event()

    def on(response: object) -> None:
        for event in getattr(response, "events", []):
            if isinstance(event, etcd3.events.PutEvent):
                events.append(json.loads(event.value))
            if event.mod_revision >= current_rev:
                done.set()

    watch_id = client.add_watch_callback(key, on, start_revision=1)
    done.wait(10)
    client.cancel_watch(watch_id)
    client.close()
    return events


def test_watch_delivers_changes_without_polling(make_semaphore: Make) -> None:
    sem = make_semaphore()
    sem.ensure(1)
    views: list[GroupView | None] = []
    stop = sem.watch(views.append)
    try:
        wait_for(lambda: views and views[-1] is not None, what="the first view")
        other = make_semaphore()
        queue_and_take(other, "a")
        wait_for(lambda: views[-1] is not None and views[-1].holds(HolderId("a")), what="the holder")
        other.release(HolderId("a"))
        wait_for(lambda: views[-1] is not None and not views[-1].holds(HolderId("a")), what="the release")
    finally:
        stop()


def test_waiter_place_kept_across_restart_and_lost_when_dead(make_semaphore: Make) -> None:
    sem = make_semaphore()
    sem.ensure(1)
    first = make_semaphore()
    first.join_queue(Waiter(HolderId("a"), NodeName("a"), time.time(), 0))
    sem.join_queue(Waiter(HolderId("b"), NodeName("b"), time.time(), 0))
    # "a" restarts (a new process, a new lease) and keeps its place in line.
    first.close()
    again = make_semaphore()
    again.join_queue(Waiter(HolderId("a"), NodeName("a"), time.time(), 0))
    assert [w.id for w in sem.read().waiters] == ["a", "b"]
    # "a" dies for good: its lease expires (TTL 3 s) and "b" moves up.
    again.close()
    wait_for(
        lambda: [w.id for w in sem.read().waiters] == ["b"], timeout=15, what="the dead waiter to expire"
    )


def test_a_waiter_whose_lease_expired_meanwhile_queues_again(make_semaphore: Make, etcd: EtcdServer) -> None:
    """Found by the fault runner: an agent stopped (SIGSTOP) longer than the waiter TTL came back
    with its lease gone; every put on it was NOT_FOUND, retried as an outage, for ever."""
    sem = make_semaphore()
    sem.ensure(1)
    sem.join_queue(Waiter(HolderId("w"), NodeName("w"), time.time(), 0))
    assert [w.id for w in sem.read().waiters] == ["w"]
    lease = sem._leases[HolderId("w")]
    # The process does not run (SIGSTOP): neither does its keep-alive thread.
    sem._keepalive_stop.set()
    assert sem._keepalive is not None
    sem._keepalive.join(10)
    client = raw_client(etcd)
    client.revoke_lease(lease.id)  # what the passing of its TTL does to a process that cannot renew
    client.close()
    wait_for(lambda: sem.read().waiters == (), what="the waiter key gone with its lease")
    sem.join_queue(Waiter(HolderId("w"), NodeName("w"), time.time(), 0))
    assert [w.id for w in sem.read().waiters] == ["w"]
    assert sem._leases[HolderId("w")].id != lease.id


def test_pause_blocks_acquisition_and_resume_restores(make_semaphore: Make) -> None:
    sem = make_semaphore()
    sem.ensure(1)
    sem.pause(PauseInfo("op", time.time(), "change freeze"))
    assert queue_and_take(sem, "a") is None
    assert sem.read().paused is not None and sem.read().paused.reason == "change freeze"  # type: ignore[union-attr]
    sem.resume()
    assert sem.acquire(record("a")) is not None


def test_set_max_at_run_time(make_semaphore: Make) -> None:
    sem = make_semaphore()
    sem.ensure(1)
    queue_and_take(sem, "a")
    assert queue_and_take(sem, "b") is None
    sem.set_max(2)
    assert sem.acquire(record("b")) is not None
    with pytest.raises(InvalidMax, match="below the 2 current holders"):
        sem.set_max(1)
    with pytest.raises(InvalidMax):
        sem.set_max(0)


def test_operator_lock_takes_a_slot_with_a_manual_record(make_semaphore: Make) -> None:
    sem = make_semaphore()
    sem.ensure(1)
    sem.lock(HolderId("maint"), record("maint", kind="manual"))
    assert queue_and_take(sem, "a") is None
    with pytest.raises(NoFreeSlot):
        sem.lock(HolderId("maint2"), record("maint2", kind="manual"))
    assert sem.unlock(HolderId("maint")) is not None


def test_airlock_holders_share_the_budget(make_semaphore: Make, etcd: EtcdServer, prefix: str) -> None:
    """A Zincati node's id added by airlock (plain JSON, no record) counts against max; releasing
    as airlock would (rewriting the document) frees it for our agents."""
    sem = make_semaphore()
    sem.ensure(2)
    key = f"{prefix}/groups/default/v1/semaphore"
    client = raw_client(etcd)
    value, meta = client.get(key)
    doc = json.loads(value)
    doc["holders"] = sorted([*doc["holders"], "9f1c0ffee0ddf00d9f1c0ffee0ddf00d"])
    ok, _ = client.transaction(
        compare=[client.transactions.version(key) == meta.version],
        success=[client.transactions.put(key, json.dumps(doc, separators=(",", ":")))],
        failure=[],
    )
    assert ok
    assert queue_and_take(sem, "a") is not None
    assert queue_and_take(sem, "b") is None  # 1 airlock + 1 ours = 2
    status = sem.read()
    assert status.slots is not None and "9f1c0ffee0ddf00d9f1c0ffee0ddf00d" in status.slots.holders
    assert status.record(HolderId("9f1c0ffee0ddf00d9f1c0ffee0ddf00d")) is None
    # airlock's UnlockIfHeld rewrites {"total_slots","holders"} and keeps our holder
    value, meta = client.get(key)
    doc = json.loads(value)
    doc["holders"] = [h for h in doc["holders"] if h != "9f1c0ffee0ddf00d9f1c0ffee0ddf00d"]
    client.transaction(
        compare=[client.transactions.version(key) == meta.version],
        success=[client.transactions.put(key, json.dumps(doc))],
        failure=[],
    )
    assert sem.acquire(record("b")) is not None
    assert sem.read().slots.holders == ("a", "b")  # type: ignore[union-attr]
    client.close()


@pytest.mark.parametrize(
    "corrupt",
    [b"{not json", b'{"total_slots": 1, "holders": ["x", "y"]}', b'{"total_slots": "1", "holders": []}'],
    ids=["invalid-json", "holders-beyond-max", "wrong-type"],
)
def test_corrupted_document_is_reported_and_left_alone(
    make_semaphore: Make, etcd: EtcdServer, prefix: str, corrupt: bytes
) -> None:
    sem = make_semaphore()
    key = f"{prefix}/groups/default/v1/semaphore"
    client = raw_client(etcd)
    client.put(key, corrupt)
    view = sem.read()
    assert view.corrupt and key in str(view.corrupt[0])
    sem.join_queue(Waiter(HolderId("a"), NodeName("a"), time.time(), 0))
    with pytest.raises(CorruptDocument):
        sem.acquire(record("a"))
    with pytest.raises(CorruptDocument):
        sem.set_max(3)
    sem.ensure(2)  # creation only: does not overwrite
    value, _ = client.get(key)
    assert value == corrupt  # never "repaired"
    client.close()


def test_corrupted_holder_record_is_reported(make_semaphore: Make, etcd: EtcdServer, prefix: str) -> None:
    sem = make_semaphore()
    sem.ensure(2)
    queue_and_take(sem, "a")
    client = raw_client(etcd)
    client.put(f"{prefix}/groups/default/v1/rebootcoord/holders/a", b'{"phase": 7}')
    view = sem.read()
    assert view.corrupt and "holders/a" in str(view.corrupt[0])
    assert not view.may_take(HolderId("b"))  # nobody proceeds on a document we cannot read
    client.close()


def test_unreachable_etcd_is_backend_unavailable(make_semaphore: Make) -> None:
    conn = EtcdConnection(EtcdOptions(endpoints=("http://127.0.0.1:1",), timeout=0.5, retry_for=1.0))
    sem = EtcdSemaphore(conn, prefix="x", group=Group("g"))
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match=r"127\.0\.0\.1:1"):
        sem.read()
    assert time.monotonic() - started < 20
    sem.close()


def test_etcd_restart_watch_resumes(tmp_path_factory: pytest.TempPathFactory) -> None:
    server = EtcdServer(data_dir=str(tmp_path_factory.mktemp("etcd-restart"))).start()
    try:
        conn = EtcdConnection(EtcdOptions(endpoints=(server.endpoint,), timeout=2.0))
        sem = EtcdSemaphore(conn, prefix="r", group=Group("g"))
        sem.ensure(1)
        views: list[GroupView | None] = []
        stop = sem.watch(views.append)
        wait_for(lambda: views and views[-1] is not None, what="the first view")
        server.kill()
        wait_for(lambda: views and views[-1] is None, timeout=60, what="the watch to notice etcd is gone")
        server.start()
        other = EtcdSemaphore(
            EtcdConnection(EtcdOptions(endpoints=(server.endpoint,))), prefix="r", group=Group("g")
        )
        queue_and_take(other, "a")
        wait_for(
            lambda: views and views[-1] is not None and views[-1].holds(HolderId("a")),
            timeout=60,
            what="the watch to resume after the restart",
        )
        stop()
        sem.close()
        other.close()
    finally:
        server.cleanup()
