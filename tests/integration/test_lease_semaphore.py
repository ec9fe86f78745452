"""The Kubernetes Lease backend against a real kube-apiserver: CAS on resourceVersion, the queue
of waiter Leases, the watch, pause, set-max, reclaim, corrupted annotations, and kubectl's view."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import replace

import pytest

from rebootcoord.adapters.kube.api import Kube, parse_time
from rebootcoord.adapters.kube.lease import ANN_RECORDS, ANN_SLOTS, LeaseSemaphore
from rebootcoord.core.semaphore import GroupView, HolderRecord, PauseInfo, Waiter
from rebootcoord.core.types import Group, HolderId, NodeName, Phase
from rebootcoord.errors import CorruptDocument, InvalidMax, NoFreeSlot, NotHolder, SlotLost
from rebootcoord.sim.history import kube_group_history
from tests.conftest import wait_for
from tests.integration.test_etcd_semaphore import Believers
from tests.support.kubecluster import KubeTestEnv

pytestmark = pytest.mark.kube

Make = Callable[..., LeaseSemaphore]


@pytest.fixture
def make_lease(kube: KubeTestEnv) -> Callable[..., LeaseSemaphore]:
    made: list[LeaseSemaphore] = []

    def make(group: str = "default", *, waiter_ttl: float = 30.0) -> LeaseSemaphore:
        api = Kube(kube.cluster.api_client())
        sem = LeaseSemaphore(api, namespace=kube.namespace, group=Group(group), waiter_ttl=waiter_ttl)
        made.append(sem)
        return sem

    yield make
    for sem in made:
        sem.close()


def record(holder: str, phase: Phase = Phase.LOCKED, **kw: object) -> HolderRecord:
    now = time.time()
    base = HolderRecord(
        id=HolderId(holder), node=NodeName(holder), group=Group("default"), phase=phase,
        boot_id="b0", acquired_at=now, phase_since=now, update_key="u",
    )  # fmt: skip
    return replace(base, **kw)  # type: ignore[arg-type]


def get_lease(kube: KubeTestEnv) -> dict:
    return json.loads(
        kube.cluster.kubectl("get", "lease", "-n", kube.namespace, "rebootcoord-default", "-o", "json")
    )


def queue_and_take(sem: LeaseSemaphore, holder: str) -> int | None:
    sem.join_queue(Waiter(HolderId(holder), NodeName(holder), time.time(), 0))
    return sem.acquire(record(holder))


def test_kubectl_get_lease_shows_the_holders(make_lease: Make, kube: KubeTestEnv) -> None:
    sem = make_lease()
    sem.ensure(2)
    sem.ensure(5)  # written only at creation
    assert queue_and_take(sem, "node-a") is not None
    assert queue_and_take(sem, "node-b") is not None
    out = kube.cluster.kubectl("get", "lease", "-n", kube.namespace, "rebootcoord-default")
    assert "node-a,node-b" in out
    lease = get_lease(kube)
    slots = json.loads(lease["metadata"]["annotations"][ANN_SLOTS])
    assert slots == {"total_slots": 2, "holders": ["node-a", "node-b"]}
    assert set(json.loads(lease["metadata"]["annotations"][ANN_RECORDS])) == {"node-a", "node-b"}
    assert lease["spec"]["leaseTransitions"] == 2


def test_queue_order_full_and_handoff(make_lease: Make) -> None:
    sem = make_lease()
    sem.ensure(2)
    for name in ("a", "b", "c"):
        sem.join_queue(Waiter(HolderId(name), NodeName(name), time.time(), 0))
        time.sleep(0.01)  # acquireTime orders the queue
    assert [w.id for w in sem.read().waiters] == ["a", "b", "c"]
    assert sem.acquire(record("c")) is None  # third in line
    assert sem.acquire(record("a")) is not None
    assert sem.acquire(record("b")) is not None
    assert sem.acquire(record("c")) is None  # full
    assert [w.id for w in sem.read().waiters] == ["c"]  # the holders' waiter Leases are gone
    sem.release(HolderId("a"))
    assert sem.acquire(record("c")) is not None
    assert sem.read().slots.holders == ("b", "c")  # type: ignore[union-attr]
    with pytest.raises(NotHolder, match="'ghost' holds no slot"):
        sem.unlock(HolderId("ghost"))
    assert sem.release(HolderId("ghost")) is None


def test_racing_writers_never_exceed_max_and_meet_409s(make_lease: Make, kube: KubeTestEnv) -> None:
    """Ten agents with their own clients race for 2 slots. A watch of the Lease records every
    version the API server stored: never more than 2 holders. Stale writers got 409s."""
    first = make_lease()
    first.ensure(2)
    since = first.read().revision
    versions: list[int] = []
    corrupt: list[str] = []

    def on_view(view: GroupView | None) -> None:
        if view is None:
            return
        if view.corrupt:  # a breach may look like a corrupt document: recorded, never dropped
            corrupt.extend(str(c) for c in view.corrupt)
        if view.slots is not None:
            versions.append(len(view.slots.holders))

    stop_watch = first.watch(on_view)
    stop = threading.Event()
    errors: list[BaseException] = []
    taken = [0]
    believers = Believers()
    sems = [make_lease() for _ in range(10)]

    def worker(i: int) -> None:
        me = f"w{i}"
        try:
            while not stop.is_set():
                sems[i].join_queue(Waiter(HolderId(me), NodeName(me), time.time(), 0))
                if sems[i].acquire(record(me)) is not None:
                    taken[0] += 1
                    with believers:
                        time.sleep(0.001)
                    sems[i].release(HolderId(me))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    wait_for(lambda: taken[0] >= 40, timeout=120, what="40 acquisitions")
    stop.set()
    for t in threads:
        t.join()
    stop_watch()
    assert not errors, errors
    assert corrupt == []
    assert max(versions) <= 2
    # Every version the API server stored, from etcd (the watch may coalesce): never above 2.
    history, _ = kube_group_history(kube.cluster.endpoints.etcd, namespace=kube.namespace, group="default",
                                    since=since)  # fmt: skip
    assert len(history) > 80 and all(not v.corrupt for v in history)
    assert max(len(v.holders) for v in history) == 2  # the budget was used, never exceeded
    assert all(len(v.holders) <= (v.total or 0) for v in history)
    assert believers.peak <= 2, believers.peak
    assert sum(s.conflicts for s in sems) > 0  # the race was real, and lost races were refused


def test_waiter_that_stops_renewing_leaves_the_queue(make_lease: Make, kube: KubeTestEnv) -> None:
    sem = make_lease(waiter_ttl=5)
    sem.ensure(1)
    dead = make_lease(waiter_ttl=5)
    dead.join_queue(Waiter(HolderId("dead"), NodeName("dead"), time.time(), 0))
    time.sleep(0.01)
    sem.join_queue(Waiter(HolderId("alive"), NodeName("alive"), time.time(), 0))
    assert [w.id for w in sem.read().waiters] == ["dead", "alive"]
    dead.close()  # stops renewing, like a killed agent
    wait_for(lambda: [w.id for w in sem.read().waiters] == ["alive"], timeout=30, what="the dead waiter")
    # A restart keeps the place in line: same acquireTime.
    again = make_lease(waiter_ttl=5)
    again.join_queue(Waiter(HolderId("dead"), NodeName("dead"), time.time(), 0))
    assert [w.id for w in sem.read().waiters] == ["dead", "alive"]
    again.close()
    # Long gone (3 TTLs), its Lease is deleted by the next acquisition.
    wait_for(lambda: [w.id for w in sem.read().waiters] == ["alive"], timeout=30, what="the second expiry")
    name = sem.waiter_name(HolderId("dead"))
    # The 3-TTL grace before a waiter Lease is deleted: until its own renewTime says so.
    lease = json.loads(kube.cluster.kubectl("get", "lease", "-n", kube.namespace, name, "-o", "json"))
    renewed = parse_time(lease["spec"]["renewTime"])
    assert renewed is not None
    wait_for(lambda: time.time() > renewed + 3 * 5 + 0.5, timeout=30, what="three TTLs after its renewal")
    assert sem.acquire(record("alive")) is not None
    assert name not in kube.cluster.kubectl("get", "lease", "-n", kube.namespace, "-o", "name")


def test_watch_sees_changes(make_lease: Make) -> None:
    sem = make_lease()
    sem.ensure(1)
    views: list[GroupView | None] = []
    stop = sem.watch(views.append)
    try:
        wait_for(lambda: views and views[-1] is not None, what="the first view")
        other = make_lease()
        queue_and_take(other, "a")
        wait_for(lambda: views[-1] is not None and views[-1].holds(HolderId("a")), what="the holder")
        other.release(HolderId("a"))
        wait_for(lambda: views[-1] is not None and not views[-1].holds(HolderId("a")), what="the release")
    finally:
        stop()


def test_watch_builds_no_view_for_renewals_and_sees_a_waiter_leave_and_return(
    make_lease: Make, kube: KubeTestEnv
) -> None:
    """Renewals are most of a queue's watch events (every waiter, every waiter_ttl/3): they change
    no view, so none is built for them. Leaving by expiry and coming back still show."""
    sem = make_lease(waiter_ttl=3)
    sem.ensure(1)
    views: list[GroupView | None] = []
    stop = sem.watch(views.append)
    try:
        a, b = make_lease(waiter_ttl=3), make_lease(waiter_ttl=3)
        a.join_queue(Waiter(HolderId("a"), NodeName("a"), time.time(), 0))
        b.join_queue(Waiter(HolderId("b"), NodeName("b"), time.time(), 0))

        def in_line() -> list[str] | None:
            return [w.id for w in views[-1].waiters] if views and views[-1] is not None else None

        wait_for(lambda: in_line() == ["a", "b"], what="both waiters")
        published = len(views)
        name = sem.waiter_name(HolderId("b"))

        def renew_time() -> str:
            return kube.cluster.kubectl(
                "get", "lease", "-n", kube.namespace, name, "-o", "jsonpath={.spec.renewTime}"
            )

        for _ in range(3):  # three renewals of b (and as many of a): events, no view
            before = renew_time()
            wait_for(lambda before=before: renew_time() != before, timeout=10, what="a renewal")
        assert len(views) == published, [v.waiters if v else None for v in views[published:]]

        b.close()  # stops renewing, like a killed agent: the local timer drops it, no event does
        wait_for(lambda: in_line() == ["a"], timeout=15, what="b leaving the line")
        back = make_lease(waiter_ttl=3)  # its restart: a renewal of an expired waiter, back in line
        back.join_queue(Waiter(HolderId("b"), NodeName("b"), time.time(), 0))
        wait_for(lambda: in_line() == ["a", "b"], timeout=15, what="b back in line")
    finally:
        stop()


def test_pause_set_max_lock_update_and_reclaim(make_lease: Make) -> None:
    sem = make_lease()
    sem.ensure(1)
    sem.pause(PauseInfo("op", time.time(), "freeze"))
    assert queue_and_take(sem, "a") is None
    assert sem.read().paused is not None
    sem.resume()
    assert sem.acquire(record("a")) is not None
    with pytest.raises(NoFreeSlot):
        sem.lock(HolderId("maint"), record("maint", kind="manual"))
    sem.set_max(2)
    sem.lock(HolderId("maint"), record("maint", kind="manual"))
    with pytest.raises(InvalidMax, match="below the 2 current holders"):
        sem.set_max(1)
    held = sem.read().record(HolderId("a"))
    assert held is not None
    sem.update(replace(held, phase=Phase.DRAINING))
    assert sem.read().record(HolderId("a")).phase is Phase.DRAINING  # type: ignore[union-attr]
    # reclaim takes the slot back only from the same holding (acquired_at)
    assert not sem.reclaim(HolderId("a"), replace(held, acquired_at=held.acquired_at - 1))
    assert sem.reclaim(HolderId("a"), held)
    with pytest.raises(SlotLost):
        sem.update(replace(held, phase=Phase.REBOOTING))


def test_corrupted_annotation_is_reported_and_left_alone(make_lease: Make, kube: KubeTestEnv) -> None:
    sem = make_lease()
    sem.ensure(1)
    kube.cluster.kubectl(
        "annotate", "lease", "-n", kube.namespace, "rebootcoord-default", "--overwrite",
        f"{ANN_SLOTS}={{\"total_slots\": 1, \"holders\": [\"x\", \"y\"]}}",
    )  # fmt: skip
    view = sem.read()
    assert view.corrupt and "exceed total_slots" in str(view.corrupt[0])
    sem.join_queue(Waiter(HolderId("a"), NodeName("a"), time.time(), 0))
    with pytest.raises(CorruptDocument):
        sem.acquire(record("a"))
    with pytest.raises(CorruptDocument):
        sem.set_max(3)
    lease = get_lease(kube)
    assert json.loads(lease["metadata"]["annotations"][ANN_SLOTS])["holders"] == ["x", "y"]  # untouched
