"""Everything a FleetLock client can make the server store is bounded on the Lease backend too,
refused before the write with a clear answer, and never wedges the group: driven past each bound
on the real API server, with the server as its composition root builds it
(``build_fleetlock_service``, ``backend: kubernetes``), answering in-process. The etcd twin:
tests/integration/test_fleetlock_bounds.py.

After each flood: the group's Lease reads (a GroupClient, and ``rebootctl status`` exits 0), a
holder releases, ``rebootctl unlock --force`` works, and the group Lease's annotations stay under
the API server's 256 KiB. Ids are Lease names at their longest (253 bytes); ``node_ops: none``
so that they need no Node (no directory: every client is granted without node operations).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from rebootcoord.adapters.kube.api import Kube
from rebootcoord.adapters.kube.lease import ANN_LEDGER, LABEL_GROUP, LABEL_ROLE, leases_path
from rebootcoord.core.bounds import HISTORY_BYTES, HISTORY_SIZE, LEASE_CAPACITY
from rebootcoord.core.semaphore import GroupView
from rebootcoord.core.types import Group
from rebootcoord.daemon.group import lease_group
from tests.support.fleetlock import InProcessServers, ask
from tests.support.kubecluster import KubeTestEnv

pytestmark = pytest.mark.kube

GROUP_LEASE = "rebootcoord-default"
#: What the API server allows a Kubernetes object's annotations in all (len(key) + len(value)).
ANNOTATIONS_LIMIT = 256 * 1024


def long_id(i: int) -> str:
    """253 bytes, a Lease name (lower case, digits): the longest id the Lease backend allows."""
    text = "a" * 248 + f"{i:05d}"
    assert len(text.encode()) == 253
    return text


@pytest.fixture
def serve(kube: KubeTestEnv) -> Iterator[Any]:
    servers = InProcessServers(
        {
            "backend": "kubernetes",
            "kubeconfig": str(kube.cluster.kubeconfig),
            "namespace": kube.namespace,
            "max_holders": 1,
            "node_ops": "none",
        }
    )
    yield servers.make
    servers.close()


def ctl(kube: KubeTestEnv, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REBOOTCOORD_", "KUBECONFIG"))}
    return subprocess.run(
        [sys.executable, "-m", "rebootcoord.cli.rebootctl", "--backend", "kubernetes",
         "--kubeconfig", str(kube.cluster.kubeconfig), "--namespace", kube.namespace, *args],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip


def api(kube: KubeTestEnv) -> Kube:
    return Kube(kube.cluster.api_client())


def group_lease(kube: KubeTestEnv) -> dict[str, Any]:
    lease: dict[str, Any] = api(kube).get(f"{leases_path(kube.namespace)}/{GROUP_LEASE}")
    return lease


def annotation_bytes(lease: dict[str, Any]) -> dict[str, int]:
    """Each annotation's len(key) + len(value) in bytes: what the API server's limit counts."""
    annotations = lease["metadata"].get("annotations") or {}
    return {k: len(k.encode()) + len(str(v).encode()) for k, v in annotations.items()}


def compact_len(doc: object) -> int:
    return len(json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())


def waiter_leases(kube: KubeTestEnv) -> list[dict[str, Any]]:
    doc = api(kube).list_objects(
        leases_path(kube.namespace), labelSelector=f"{LABEL_GROUP}=default,{LABEL_ROLE}=waiter"
    )
    return list(doc.get("items") or [])


def read_group(kube: KubeTestEnv) -> GroupView:
    group = lease_group(api(kube), namespace=kube.namespace, group=Group("default"))
    try:
        return group.read()
    finally:
        group.close()


def assert_readable(kube: KubeTestEnv) -> GroupView:
    """The group's Lease reads, through a GroupClient and through ``rebootctl status``."""
    view = read_group(kube)
    assert view.slots is not None and not view.corrupt
    status = ctl(kube, "status")
    assert status.returncode == 0, status.stderr
    assert sum(annotation_bytes(group_lease(kube)).values()) < ANNOTATIONS_LIMIT
    return view


def test_a_thousand_cycles_with_long_ids_keep_the_lease_small(serve: Any, kube: KubeTestEnv) -> None:
    service = serve()
    for i in range(1000):
        assert ask(service, "pre-reboot", long_id(i)) == (200, "ok"), i
        assert ask(service, "steady-state", long_id(i)) == (200, "ok"), i
    lease = group_lease(kube)
    sizes = annotation_bytes(lease)
    history = json.loads(lease["metadata"]["annotations"][ANN_LEDGER])["history"]
    stored = sum(compact_len(cycle) + 1 for cycle in history)  # as core.rollout counts them
    assert 0 < len(history) <= HISTORY_SIZE and stored <= HISTORY_BYTES, (len(history), stored)
    total = sum(sizes.values())
    print(f"\nafter 1,000 cycles: {len(history)} cycles in the history ({stored} bytes); "
          f"annotations {total} bytes {sizes}")  # fmt: skip
    assert max(sizes.values()) < HISTORY_BYTES + 4096, sizes
    assert total < ANNOTATIONS_LIMIT // 4, sizes  # well under the API server's limit
    view = assert_readable(kube)
    assert not view.ledger.members  # ids nobody vouches for are no members
    assert not waiter_leases(kube)  # every place in line went with its take
    # The group still works as it did: a holder releases, an operator unlocks.
    assert ask(service, "pre-reboot", "node-a") == (200, "ok")
    assert ask(service, "steady-state", "node-a") == (200, "ok")
    assert ask(service, "pre-reboot", "node-b") == (200, "ok")
    forced = ctl(kube, "unlock", "--force", "node-b")
    assert forced.returncode == 0, forced.stderr
    history_out = ctl(kube, "history", "--limit", "3")
    assert history_out.returncode == 0 and "node-b" in history_out.stdout


def test_a_thousand_long_ids_fill_the_line_to_its_bound_and_no_further(serve: Any, kube: KubeTestEnv) -> None:
    service = serve(fleetlock_max_waiters=50)
    holder = long_id(99_999)
    assert ask(service, "pre-reboot", holder) == (200, "ok")
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: ask(service, "pre-reboot", long_id(i)), range(1000)))
    kinds = [kind for _, kind in answers]
    assert kinds.count("no_free_slot") == 50, sorted(set(answers))
    assert kinds.count("line_full") == 950
    assert {status for status, kind in answers if kind == "line_full"} == {429}
    line = waiter_leases(kube)
    assert len(line) == 50
    listed = len(json.dumps(line).encode())
    print(f"\nthe line: 50 waiter Leases, {listed} bytes listed")
    assert listed < 256 * 1024  # every read of the line: small
    view = assert_readable(kube)
    assert len(view.waiters) == 50 and view.slots is not None and view.slots.holders == (holder,)
    assert ask(service, "steady-state", holder) == (200, "ok")
    first = view.waiters[0].id
    assert ask(service, "pre-reboot", first) == (200, "ok")  # the first in line: its turn
    forced = ctl(kube, "unlock", "--force", first)
    assert forced.returncode == 0, forced.stderr
    assert_readable(kube)


def test_holders_take_slots_until_the_store_is_full_and_no_further(serve: Any, kube: KubeTestEnv) -> None:
    service = serve(max_holders=200)
    assert ask(service, "steady-state", "node-a") == (200, "ok")  # holds nothing: reads only
    assert ask(service, "pre-reboot", "node-a") == (200, "ok")  # the group's Lease exists
    assert ask(service, "steady-state", "node-a") == (200, "ok")
    taken: list[str] = []
    refused: tuple[int, str] | None = None
    for i in range(200):
        before = group_lease(kube)["metadata"]["resourceVersion"]
        answer = ask(service, "pre-reboot", long_id(i))
        if answer != (200, "ok"):
            refused = answer
            break
        taken.append(long_id(i))
    assert refused == (507, "store_full"), refused  # not the API server's 422, not a 500
    full = long_id(len(taken))
    lease = group_lease(kube)
    print(f"\n{len(taken)} holders of {len(full)}-byte ids fit before store_full; the Lease's "
          f"annotations then {sum(annotation_bytes(lease).values())} bytes")  # fmt: skip
    assert lease["metadata"]["resourceVersion"] == before  # nothing more was written
    assert sum(annotation_bytes(lease).values()) < LEASE_CAPACITY
    view = assert_readable(kube)
    assert view.slots is not None and set(view.slots.holders) == set(taken)
    assert ask(service, "pre-reboot", full) == (507, "store_full")  # asked again: the same answer
    # A holder releases; the one refused (first in line) takes the freed slot.
    assert ask(service, "steady-state", taken[0]) == (200, "ok")
    assert ask(service, "pre-reboot", full) == (200, "ok")
    assert ask(service, "pre-reboot", long_id(999)) == (507, "store_full")
    forced = ctl(kube, "unlock", "--force", full)
    assert forced.returncode == 0, forced.stderr
    assert_readable(kube)
