"""One semaphore, every store: the same scenarios on memory, etcd and a Kubernetes Lease.

The ``backend`` fixture gives a :class:`Backend`: ``client()`` makes a GroupClient on the group,
each with its own connection (as separate agents have), and the store-specific things a
scenario needs done from outside: write a corrupt document as someone else would, stop a
waiter's renewals as a dead process would, read every stored version of the group.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from rebootcoord.core.types import Group, HolderId
from rebootcoord.daemon.group import GroupClient, etcd_group, lease_group
from rebootcoord.sim.checker import Version
from tests.unit.fakes import MemoryGroupStore, MemoryWaitQueue

TTL = 5.0  # waiter TTL: a dead waiter's place goes after this


@dataclass
class Backend:
    name: str
    make: Callable[[], GroupClient]
    corrupt: Callable[[], None]
    kill: Callable[[GroupClient, HolderId], None]
    history: Callable[[], list[Version]]
    made: list[GroupClient] = field(default_factory=list)
    since: int = 0

    def client(self) -> GroupClient:
        made = self.make()
        self.made.append(made)
        return made


@pytest.fixture(
    params=[
        pytest.param("memory"),
        pytest.param("etcd", marks=pytest.mark.etcd),
        pytest.param("lease", marks=pytest.mark.kube),
    ]
)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    name = request.param
    if name == "memory":
        backend = _memory()
    elif name == "etcd":
        backend = _etcd(request.getfixturevalue("etcd"), request.getfixturevalue("prefix"))
    else:
        backend = _lease(request.getfixturevalue("kube"))
    try:
        yield backend
    finally:
        for client in backend.made:
            client.close()


def _memory() -> Backend:
    store, queue = MemoryGroupStore("default"), MemoryWaitQueue()

    def corrupt() -> None:
        from rebootcoord.core.group import GroupState
        from rebootcoord.errors import CorruptDocument

        store.state = GroupState(None, {}, None, (CorruptDocument("memory", "not valid JSON"),))
        store.revision += 1

    def history() -> list[Version]:
        return [Version(rev, 1 << 30, frozenset(holders)) for rev, holders in store.history]

    return Backend("memory", lambda: GroupClient(store, queue), corrupt, lambda _c, h: queue.die(h), history)


def _etcd(etcd: Any, prefix: str) -> Backend:
    from rebootcoord.sim.history import etcd_group_history
    from tests.support.etcdraw import raw_client

    def make() -> GroupClient:
        return etcd_group(
            (etcd.endpoint,), prefix=prefix, group=Group("default"), waiter_ttl=TTL, timeout=5.0
        )

    def corrupt() -> None:
        client = raw_client(etcd)
        client.put(f"{prefix}/groups/default/v1/semaphore", b'{"total_slots": 1, "holders": [')
        client.close()

    def kill(victim: GroupClient, holder: HolderId) -> None:
        queue = victim.queue
        queue.close()  # its keep-alive stops, as a killed process's does
        lease = queue._leases.get(holder)  # type: ignore[attr-defined]
        if lease is not None:
            client = raw_client(etcd)
            client.revoke_lease(lease.id)  # the TTL running out, without waiting for it
            client.close()

    backend = Backend("etcd", make, corrupt, kill, lambda: [])
    backend.history = lambda: etcd_group_history(
        etcd.endpoint, prefix=prefix, group="default", since=backend.since
    )
    return backend


def _lease(kube: Any) -> Backend:
    from rebootcoord.adapters.kube.api import Kube
    from rebootcoord.sim.history import kube_group_history

    def make() -> GroupClient:
        return lease_group(Kube(kube.cluster.api_client()), namespace=kube.namespace, group=Group("default"),
                           waiter_ttl=TTL)  # fmt: skip

    def corrupt() -> None:
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "rebootcoord-default", "namespace": kube.namespace,
                         "labels": {"rebootcoord.io/group": "default", "rebootcoord.io/role": "semaphore"},
                         "annotations": {"rebootcoord.io/semaphore": '{"total_slots": 1, "holders": ['}},
            "spec": {},
        }  # fmt: skip
        kube.cluster.kubectl("apply", "-f", "-", input=json.dumps(lease))

    def kill(victim: GroupClient, holder: HolderId) -> None:
        victim.queue.close()  # no more renewals: the place expires TTL after the last one
        time.sleep(0)

    backend = Backend("lease", make, corrupt, kill, lambda: [])

    def history() -> list[Version]:
        etcd = kube.cluster.endpoints.etcd
        versions, _ = kube_group_history(etcd, namespace=kube.namespace, group="default", since=backend.since)
        return versions

    backend.history = history
    return backend
