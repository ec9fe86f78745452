"""What only the Lease store and queue do, on the real API server: what ``kubectl get lease``
shows, a corrupt annotation left alone, waiter Leases owned by their agent's Pod (deleted with it,
renewed only every five minutes), the head of the line losing its place when its Node is not
Ready. The semaphore's contract, the same on every store, is tests/contract."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest

from rebootcoord.adapters.kube.api import Kube
from rebootcoord.adapters.kube.lease import ANN_RECORDS, ANN_SLOTS, BOUND_RENEWAL, LeaseWaitQueue, PodRef
from rebootcoord.core.semaphore import HolderRecord, Waiter
from rebootcoord.core.types import Group, HolderId, NodeName, Phase
from rebootcoord.daemon.group import GroupClient, lease_group
from rebootcoord.errors import CorruptDocument
from tests.conftest import wait_for
from tests.support.kubecluster import KubeTestEnv

pytestmark = pytest.mark.kube

Make = Callable[..., GroupClient]


@pytest.fixture
def make_lease(kube: KubeTestEnv) -> Iterator[Make]:
    made: list[GroupClient] = []

    def make(group: str = "default", *, waiter_ttl: float = 30.0) -> GroupClient:
        sem = lease_group(Kube(kube.cluster.api_client()), namespace=kube.namespace, group=Group(group),
                          waiter_ttl=waiter_ttl)  # fmt: skip
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


def get_lease(kube: KubeTestEnv, name: str = "rebootcoord-default") -> dict:
    return json.loads(kube.cluster.kubectl("get", "lease", "-n", kube.namespace, name, "-o", "json"))


def queue_and_take(sem: GroupClient, holder: str) -> int | None:
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
    # The holders' waiter Leases went when they took their slots.
    names = kube.cluster.kubectl("get", "lease", "-n", kube.namespace, "-o", "name")
    assert ".w." not in names


def test_a_corrupt_annotation_is_reported_and_left_alone(make_lease: Make, kube: KubeTestEnv) -> None:
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


def _pod(kube: KubeTestEnv, name: str, node: str) -> PodRef:
    kube.core.create_namespaced_pod(
        kube.namespace,
        {
            "metadata": {"name": name},
            "spec": {
                "nodeName": node,
                "containers": [{"name": "agent", "image": "registry.invalid/agent:1"}],
            },
        },
    )
    pod = kube.core.read_namespaced_pod(name, kube.namespace)
    return PodRef(name, pod.metadata.uid)


def test_a_waiter_lease_goes_with_its_agents_pod_and_is_renewed_rarely(kube: KubeTestEnv) -> None:
    """Bound to its Pod, the place is kept while the Pod lives (five-minute renewals: at most 12
    writes an hour) and goes when the Pod is deleted: the garbage collector deletes the Lease."""
    (node,) = [n.name for n in kube.create_nodes(1)]
    owner = _pod(kube, "agent-0", node)
    queue = LeaseWaitQueue(Kube(kube.cluster.api_client()), namespace=kube.namespace, group=Group("default"),
                           ttl=30.0, owner=owner)  # fmt: skip
    try:
        queue.join(Waiter(HolderId(node), NodeName(node), time.time(), 0))
        assert queue.renew_every == BOUND_RENEWAL and 3600 / queue.renew_every <= 12
        lease = get_lease(kube, queue.name_of(HolderId(node)))
        assert lease["metadata"]["ownerReferences"][0]["uid"] == owner.uid
        assert lease["spec"]["leaseDurationSeconds"] >= 3 * BOUND_RENEWAL
        assert [w.id for w in queue.waiters()] == [node]
        kube.core.delete_namespaced_pod("agent-0", kube.namespace, grace_period_seconds=0)
        wait_for(lambda: queue.waiters() == (), timeout=60, what="the waiter Lease deleted with its Pod")
    finally:
        queue.close()


def test_the_head_on_a_node_that_is_not_ready_loses_its_place(kube: KubeTestEnv) -> None:
    """A bound head of the line renews every five minutes only: when its Node goes NotReady, the
    waiter behind it notices (watching it), deletes its place and moves up."""
    down, up = (n.name for n in kube.create_nodes(2))
    queues = []
    for node in (down, up):
        owner = _pod(kube, f"agent-{node}", node)
        api = Kube(kube.cluster.api_client())
        queue = LeaseWaitQueue(api, namespace=kube.namespace, group=Group("default"), ttl=5.0, owner=owner)
        queue.join(Waiter(HolderId(node), NodeName(node), time.time(), 0))
        time.sleep(0.01)
        queues.append(queue)
    try:
        behind = queues[1]
        assert [w.id for w in behind.waiters()] == [down, up]
        woken = threading.Event()
        stop = behind.watch_ahead(HolderId(up), woken.set)
        time.sleep(6)  # a ttl: nothing happens while the head's Node is Ready
        assert not woken.is_set()
        kube.set_node_ready(down, False)
        wait_for(woken.is_set, timeout=60, what="the waiter behind woken")
        assert [w.id for w in behind.waiters()] == [up]
        stop()
    finally:
        for queue in queues:
            queue.close()


def test_a_wait_on_the_group_lease_ends_at_its_next_write(make_lease: Make) -> None:
    sem = make_lease()
    sem.ensure(1)
    queue_and_take(sem, "a")
    other = make_lease()
    other.join_queue(Waiter(HolderId("b"), NodeName("b"), time.time(), 0))
    woken = threading.Event()
    stop = other.wake_on(other.read(), HolderId("b"), "slots", woken.set)
    time.sleep(0.5)
    assert not woken.is_set()
    sem.release(HolderId("a"))
    wait_for(woken.is_set, timeout=20, what="the release seen")
    assert other.acquire(record("b")) is not None
    stop()
