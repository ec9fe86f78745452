"""What only the etcd store does, against a real etcd: airlock's exact document and sharing its
budget, a waiter lease that expired while its process could not renew it, an unreachable etcd, a
watch across an etcd restart, and the shape of the keys. The semaphore's contract, the same on
every store, is tests/contract."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import replace

import pytest

from rebootcoord.core.semaphore import HolderRecord, Waiter
from rebootcoord.core.types import Group, HolderId, NodeName, Phase
from rebootcoord.daemon.group import GroupClient, etcd_group
from rebootcoord.errors import BackendUnavailable, CorruptDocument
from rebootcoord.sim.etcd_server import EtcdServer
from tests.conftest import wait_for
from tests.support.etcdraw import raw_client

pytestmark = pytest.mark.etcd

Make = Callable[..., GroupClient]


def record(holder: str, phase: Phase = Phase.LOCKED, **kw: object) -> HolderRecord:
    now = time.time()
    base = HolderRecord(
        id=HolderId(holder), node=NodeName(holder), group=Group("default"), phase=phase,
        boot_id="b0", acquired_at=now, phase_since=now, update_key="u",
    )  # fmt: skip
    return replace(base, **kw)  # type: ignore[arg-type]


def queue_and_take(sem: GroupClient, holder: str) -> int | None:
    sem.join_queue(Waiter(HolderId(holder), NodeName(holder), time.time(), 0))
    return sem.acquire(record(holder))


def test_ensure_writes_airlocks_document_once(make_semaphore: Make, etcd: EtcdServer, prefix: str) -> None:
    sem = make_semaphore()
    sem.ensure(2)
    sem.ensure(5)  # like airlock: written only at creation
    client = raw_client(etcd)
    value, _ = client.get(f"{prefix}/groups/default/v1/semaphore")
    assert json.loads(value) == {"total_slots": 2, "holders": []}
    queue_and_take(sem, "b")
    queue_and_take(sem, "a")
    value, _ = client.get(f"{prefix}/groups/default/v1/semaphore")
    assert value == b'{"total_slots":2,"holders":["a","b"]}'  # airlock's exact bytes, sorted
    keys = sorted(meta.key.decode()[len(prefix) :] for _, meta in client.get_prefix(prefix))
    assert keys == [
        "/groups/default/v1/rebootcoord/holders/a",
        "/groups/default/v1/rebootcoord/holders/b",
        "/groups/default/v1/rebootcoord/members",  # the takers, members of the group
        "/groups/default/v1/semaphore",
    ]
    client.close()


def test_a_phase_change_writes_only_the_record(make_semaphore: Make, etcd: EtcdServer, prefix: str) -> None:
    """The diff of the state, nothing else: airlock's key keeps its version on a phase change."""
    sem = make_semaphore()
    sem.ensure(1)
    queue_and_take(sem, "a")
    client = raw_client(etcd)
    _, before = client.get(f"{prefix}/groups/default/v1/semaphore")
    sem.update(record("a", Phase.DRAINING))
    _, after = client.get(f"{prefix}/groups/default/v1/semaphore")
    assert after.version == before.version and after.mod_revision == before.mod_revision
    client.close()


def test_airlock_holders_share_the_budget(make_semaphore: Make, etcd: EtcdServer, prefix: str) -> None:
    """A Zincati node's id added by airlock (plain JSON, no record) counts against max; releasing
    as airlock would (rewriting the document) frees it for our agents."""
    sem = make_semaphore()
    sem.ensure(2)
    key = f"{prefix}/groups/default/v1/semaphore"
    zincati = "9f1c0ffee0ddf00d9f1c0ffee0ddf00d"
    client = raw_client(etcd)
    value, meta = client.get(key)
    doc = json.loads(value)
    doc["holders"] = sorted([*doc["holders"], zincati])
    ok, _ = client.transaction(
        compare=[client.transactions.version(key) == meta.version],
        success=[client.transactions.put(key, json.dumps(doc, separators=(",", ":")))],
        failure=[],
    )
    assert ok
    assert queue_and_take(sem, "a") is not None
    assert queue_and_take(sem, "b") is None  # 1 airlock + 1 ours = 2
    status = sem.read()
    assert status.slots is not None and zincati in status.slots.holders
    assert status.record(HolderId(zincati)) is None
    # airlock's UnlockIfHeld rewrites {"total_slots","holders"} and keeps our holder
    value, meta = client.get(key)
    doc = json.loads(value)
    doc["holders"] = [h for h in doc["holders"] if h != zincati]
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
def test_corrupted_document_is_reported_and_never_repaired(
    make_semaphore: Make, etcd: EtcdServer, prefix: str, corrupt: bytes
) -> None:
    sem = make_semaphore()
    key = f"{prefix}/groups/default/v1/semaphore"
    client = raw_client(etcd)
    client.put(key, corrupt)
    view = sem.read()
    assert view.corrupt and key in str(view.corrupt[0])
    with pytest.raises(CorruptDocument):
        sem.ensure(2)
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


def test_a_waiter_whose_lease_expired_meanwhile_queues_again(make_semaphore: Make, etcd: EtcdServer) -> None:
    """Found by the fault runner: an agent stopped (SIGSTOP) longer than the waiter TTL came back
    with its lease gone; every put on it was NOT_FOUND, retried as an outage, for ever."""
    sem = make_semaphore()
    sem.ensure(1)
    sem.join_queue(Waiter(HolderId("w"), NodeName("w"), time.time(), 0))
    assert [w.id for w in sem.read().waiters] == ["w"]
    queue = sem.queue
    lease = queue._leases[HolderId("w")]  # type: ignore[attr-defined]
    # The process does not run (SIGSTOP): neither does its keep-alive thread.
    queue._keepalive_stop.set()  # type: ignore[attr-defined]
    queue._keepalive.join(10)  # type: ignore[attr-defined]
    client = raw_client(etcd)
    client.revoke_lease(lease.id)  # what the passing of its TTL does to a process that cannot renew
    client.close()
    wait_for(lambda: sem.read().waiters == (), what="the waiter key gone with its lease")
    assert queue.joined(HolderId("w")), "the process still believes the place is its own"
    sem.join_queue(Waiter(HolderId("w"), NodeName("w"), time.time(), 0))
    assert [w.id for w in sem.read().waiters] == ["w"]
    assert queue._leases[HolderId("w")].id != lease.id  # type: ignore[attr-defined]


def test_unreachable_etcd_is_backend_unavailable() -> None:
    sem = etcd_group(("http://127.0.0.1:1",), prefix="x", group=Group("g"), timeout=0.5, retry_for=1.0)
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match=r"127\.0\.0\.1:1"):
        sem.read()
    assert time.monotonic() - started < 20
    sem.close()


def test_a_wait_survives_an_etcd_restart(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The head of the line watches the slots; etcd is killed and comes back on its data: the
    wait ends (the watch breaks: read and decide again), and a new one sees the release."""
    server = EtcdServer(data_dir=str(tmp_path_factory.mktemp("etcd-restart"))).start()
    try:
        sem = etcd_group((server.endpoint,), prefix="r", group=Group("g"), timeout=2.0)
        other = etcd_group((server.endpoint,), prefix="r", group=Group("g"), timeout=2.0)
        sem.ensure(1)
        queue_and_take(other, "a")
        sem.join_queue(Waiter(HolderId("w"), NodeName("w"), time.time(), 0))
        woken = threading.Event()
        stop = sem.wake_on(sem.read(), HolderId("w"), "slots", woken.set)
        server.kill()
        wait_for(woken.is_set, timeout=60, what="the wait to end with etcd gone")
        stop()
        server.start()
        woken.clear()
        stop = sem.wake_on(sem.read(), HolderId("w"), "slots", woken.set)
        other.release(HolderId("a"))
        wait_for(woken.is_set, timeout=60, what="the release seen after the restart")
        assert sem.acquire(record("w")) is not None
        stop()
        sem.close()
        other.close()
    finally:
        server.cleanup()
