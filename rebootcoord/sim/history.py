"""The backend's own history of a run, for the checker: replayed from etcd, never from the agents.

etcd backend: the group's keys (airlock's semaphore key and our holder records) from the run's
first revision. Kubernetes backend: the group's Lease and the Nodes, replayed from the cluster's
etcd, where the API server stores them (as JSON when it runs with
``--storage-media-type=application/json``, as the test cluster does, and uncompacted); a Lease's
resourceVersion is the etcd revision of its write, so Leases and Nodes share one order.
"""

from __future__ import annotations

from rebootcoord.adapters.etcd import EtcdConnection, EtcdOptions, replay
from rebootcoord.sim.checker import NodeVersion, Version, group_history, lease_history, node_history

LEASES = "/registry/leases/"
NODES = "/registry/minions/"


def _connect(endpoint: str) -> EtcdConnection:
    return EtcdConnection(EtcdOptions(endpoints=(endpoint,), timeout=10.0, retry_for=30.0))


def etcd_group_history(endpoint: str, *, prefix: str, group: str, since: int) -> list[Version]:
    base = f"{prefix.strip('/')}/groups/{group}/v1/"
    conn = _connect(endpoint)
    try:
        changes = replay(conn, base, since=since)
    finally:
        conn.close()
    return group_history(changes, slots_key=base + "semaphore", records_prefix=base + "rebootcoord/holders/")


def pause_marker_history(endpoint: str, *, prefix: str, group: str) -> list[tuple[int, bytes | None]]:
    """Each write of the group's pause marker (etcd backend): its revision, and the value
    written (None: the marker deleted, the group resumed)."""
    conn = _connect(endpoint)
    try:
        changes = replay(conn, f"{prefix.strip('/')}/groups/{group}/v1/rebootcoord/paused", since=1)
    finally:
        conn.close()
    return [(rev, value) for rev, _, value in changes]


def kube_group_history(
    etcd_endpoint: str, *, namespace: str, group: str, since: int
) -> tuple[list[Version], list[NodeVersion]]:
    lease_key = f"{LEASES}{namespace}/rebootcoord-{group}"
    conn = _connect(etcd_endpoint)
    try:
        leases = replay(conn, lease_key, since=since)
        nodes = replay(conn, NODES, since=since)
    finally:
        conn.close()
    return lease_history(leases, lease_key=lease_key), node_history(nodes, nodes_prefix=NODES)
