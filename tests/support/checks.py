"""The invariant checker (rebootcoord.sim.checker) on a fleet that ran in a test: the backend's
history replayed from etcd, the hosts' log, the agents' events and logs."""

from __future__ import annotations

from rebootcoord.sim.checker import Report, check_run
from rebootcoord.sim.fleet import Fleet
from rebootcoord.sim.history import etcd_group_history, kube_group_history
from tests.support.cluster import KubeCluster


def etcd_report(fleet: Fleet, endpoint: str, prefix: str, *, finished: bool = True) -> Report:
    history = etcd_group_history(endpoint, prefix=prefix, group=fleet.group, since=fleet.start_revision)
    return check_run(fleet.run_log(history=history, finished=finished))


def kube_report(
    fleet: Fleet,
    cluster: KubeCluster,
    namespace: str,
    *,
    precordoned: frozenset[str] = frozenset(),
    finished: bool = True,
) -> Report:
    versions, nodes = kube_group_history(
        cluster.endpoints.etcd, namespace=namespace, group=fleet.group, since=fleet.start_revision
    )
    mine = [n for n in nodes if n.node in fleet.nodes]
    return check_run(
        fleet.run_log(history=versions, node_history=mine, precordoned=precordoned, finished=finished)
    )
