"""Fixtures of the fleet tests on Kubernetes: fleets of agents that act as the chart's identity."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rebootcoord.adapters.kube.api import Kube
from rebootcoord.core.types import Group
from rebootcoord.daemon.group import lease_group
from rebootcoord.sim.fleet import Fleet
from rebootcoord.sim.kwok import KwokRebootHooks
from tests.support.kubecluster import KubeTestEnv
from tests.support.rbac import ChartIdentity, chart_identity

# Agent settings that decide which API calls the agent makes, hence which rights the chart grants.
RBAC_KEYS = (
    "backend", "node_ops", "verify_node_ready", "verify_pods_ready", "max_unavailable_nodes",
    "boot_id_source", "blocking_pod_selector", "pdb_precheck",
)  # fmt: skip


@pytest.fixture
def kube_fleet(kube: KubeTestEnv, tmp_path: Path) -> Iterator[Callable[..., Fleet]]:
    """Fleets whose agents act as the Helm chart's ServiceAccount (a real token, the chart's own
    Role and ClusterRole for the same configuration). At the end of each test, the API server's
    audit log must show no request of theirs refused."""
    fleets: list[Fleet] = []
    identities: list[ChartIdentity] = []

    def make(node_names: list[str], *, max_holders: int = 1, agent_config: dict[str, Any] | None = None,
             reboot_seconds: float = 1.0) -> Fleet:  # fmt: skip
        api = Kube(kube.cluster.api_client())
        config = {
            "backend": "kubernetes",
            "namespace": kube.namespace,
            "drain_timeout": "90s",
            "drain_delete_emptydir_data": True,
            **(agent_config or {}),
        }
        identity = chart_identity(
            kube.cluster, kube.namespace, values={"config": {k: config[k] for k in RBAC_KEYS if k in config}}
        )
        identities.append(identity)
        fleet = Fleet(
            str(tmp_path / f"run{len(fleets)}"),
            nodes=len(node_names),
            node_names=node_names,
            max_holders=max_holders,
            reboot_seconds=reboot_seconds,
            semaphore=lease_group(api, namespace=kube.namespace, group=Group("default")),
            hooks=KwokRebootHooks(api),  # the harness, as admin: it plays the kubelet
            agent_config={**config, "kubeconfig": str(identity.kubeconfig_path)},
        )
        fleet.identity = identity  # type: ignore[attr-defined]
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        fleet.stop()
    try:
        for identity in identities:
            assert identity.denied_requests() == [], "the chart's RBAC refused an agent's request"
    finally:
        for identity in identities:
            identity.delete()


def agent_log(fleet: Fleet, node: str) -> str:
    with open(fleet.nodes[node].log_file, encoding="utf-8") as fh:
        return fh.read()
