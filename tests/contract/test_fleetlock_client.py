"""The semaphore's contract where FleetLock allows it: the agent's ``backend: fleetlock`` adapter
against our FleetLock server, on etcd and on a Lease. FleetLock has no reads, no operator calls
and one holder per client, so the scenarios are the ones a client can see: request order until
full then the handoff, idempotent take and release, a pause, a restarted client that keeps its
slot, racing clients that never exceed the max."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rebootcoord.adapters.fleetlock import FleetLockSemaphore
from rebootcoord.core.semaphore import PauseInfo, Waiter
from rebootcoord.core.types import Group, HolderId, NodeName
from rebootcoord.daemon.group import GroupClient, etcd_group, lease_group
from tests.conftest import wait_for
from tests.contract.test_semaphore import record
from tests.support.fleetlock import fleetlock_servers


@dataclass
class Served:
    """A FleetLock server on a store, clients of it, and the store as an operator sees it."""

    base: str
    state_root: Path
    store: Callable[[], GroupClient]

    def client(self, holder: str, *, poll: float = 0.2) -> FleetLockSemaphore:
        return FleetLockSemaphore(
            self.base, group=Group("default"), holder=HolderId(holder), max_holders=2,
            state_dir=str(self.state_root / holder), poll_interval=poll, timeout=30,
        )  # fmt: skip


@pytest.fixture(
    params=[pytest.param("etcd", marks=pytest.mark.etcd), pytest.param("lease", marks=pytest.mark.kube)]
)
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    config: dict[str, object] = {"max_holders": 2, "fleetlock_waiter_ttl": "20s"}
    if request.param == "etcd":
        etcd, prefix = request.getfixturevalue("etcd"), request.getfixturevalue("prefix")
        config.update(backend="etcd", etcd_endpoints=[etcd.endpoint], etcd_key_prefix=prefix)

        def store() -> GroupClient:
            return etcd_group((etcd.endpoint,), prefix=prefix, group=Group("default"))
    else:
        from rebootcoord.adapters.kube.api import Kube

        kube = request.getfixturevalue("kube")
        config.update(
            backend="kubernetes", namespace=kube.namespace, node_ops="none",
            kubeconfig=str(kube.cluster.endpoints.kubeconfig),
        )  # fmt: skip

        def store() -> GroupClient:
            return lease_group(
                Kube(kube.cluster.api_client()), namespace=kube.namespace, group=Group("default")
            )

    with fleetlock_servers(tmp_path / "server", config) as (server,):
        yield Served(server.base, tmp_path / "clients", store)


def take(sem: FleetLockSemaphore, holder: str) -> int | None:
    sem.join_queue(Waiter(HolderId(holder), NodeName(holder), time.time(), 0))
    return sem.acquire(record(holder))


def holders(served: Served) -> tuple[str, ...]:
    store = served.store()
    try:
        slots = store.read(queue=False).slots
        return slots.holders if slots else ()
    finally:
        store.close()


def test_request_order_until_full_then_the_handoff(served: Served) -> None:
    a, b, c, d = (served.client(h) for h in "abcd")
    assert take(a, "a") is not None and take(b, "b") is not None
    assert take(c, "c") is None and take(d, "d") is None  # full: c, then d, in line
    view = c.read()
    assert view.slots is not None and view.slots.free == 0 and not view.may_take(HolderId("c"))
    assert a.release(HolderId("a")) is not None
    assert d.acquire(record("d")) is None  # c is first
    assert c.acquire(record("c")) is not None
    assert holders(served) == ("b", "c")
    assert c.read().holds(HolderId("c")) and c.read().record(HolderId("c")) is not None


def test_take_and_release_are_idempotent(served: Served) -> None:
    a = served.client("a")
    assert take(a, "a") is not None
    assert a.acquire(record("a")) is not None  # recursive
    assert holders(served) == ("a",)
    assert a.release(HolderId("a")) is not None
    assert a.release(HolderId("a")) is None  # nothing left to give back
    assert holders(served) == ()


def test_a_restarted_client_keeps_its_slot_and_gives_it_back(served: Served) -> None:
    assert take(served.client("a"), "a") is not None
    again = served.client("a")  # a new process, the same state dir (it survives the reboot)
    assert again.read().holds(HolderId("a"))
    assert again.release(HolderId("a")) is not None
    assert holders(served) == ()


def test_a_client_that_lost_its_record_frees_its_slot_by_leaving_the_line(served: Served) -> None:
    a = served.client("a")
    assert take(a, "a") is not None
    a.drop_record(HolderId("a"))  # killed between the 200 and the write of its record
    restarted = served.client("a")
    assert [w.id for w in restarted.read().waiters] == ["a"]  # it may have a place: it says so
    restarted.leave_queue(HolderId("a"))  # no reboot pending any more: it leaves, frees the slot
    assert holders(served) == ()


def test_a_paused_group_grants_nothing(served: Served) -> None:
    store = served.store()
    try:
        store.ensure(2)
        store.pause(PauseInfo("operator", time.time(), "bad update"))
        assert take(served.client("a"), "a") is None
        store.resume()
        assert take(served.client("a"), "a") is not None
    finally:
        store.close()


def test_racing_clients_never_exceed_the_max(served: Served) -> None:
    clients = {f"r{i}": served.client(f"r{i}", poll=0.01) for i in range(8)}
    stop = threading.Event()
    errors: list[BaseException] = []
    lock = threading.Lock()
    now, peak, taken = [0], [0], [0]

    def worker(me: str) -> None:
        sem = clients[me]
        try:
            while not stop.is_set():
                if take(sem, me) is not None:
                    with lock:
                        taken[0] += 1
                        now[0] += 1
                        peak[0] = max(peak[0], now[0])
                    time.sleep(0.01)
                    with lock:
                        now[0] -= 1
                    sem.release(HolderId(me))
                else:
                    time.sleep(0.01)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(me,)) for me in clients]
    for t in threads:
        t.start()
    # A race of so many grants, not of so many seconds: as many races on a busy machine as on an
    # idle one (about 80 grants in 8 s on an idle one).
    try:
        wait_for(lambda: taken[0] >= 40 or errors, timeout=120, what="40 grants among the racing clients")
    finally:
        stop.set()
    for t in threads:
        t.join(60)
    assert errors == []
    assert peak[0] <= 2 and taken[0] >= 8
    assert holders(served) == ()
