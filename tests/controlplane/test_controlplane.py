"""The test control plane is real: scheduling, PDBs and the Eviction API, optimistic concurrency,
RBAC, kwok node health, and the tools built beside it (kubectl, helm)."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from tests.support.cluster import (
    FAKE_NODE_LABEL,
    KUBELET_VERSION,
    NOT_READY_TAINT,
    POD_CIDR,
    UNREACHABLE_TAINT,
    ZONE_LABEL,
    KubeCluster,
    wait_for,
)
from tests.support.kubecluster import (
    KubeTestEnv,
    wait_for_deployment,
    wait_for_pdb,
    wait_for_pods,
)

pytestmark = pytest.mark.kube


def _deployment(name: str, *, replicas: int, node_selector: dict[str, str]) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": node_selector,
                    "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}],
                },
            },
        },
    }


def _own_nodes(kube: KubeTestEnv, count: int) -> dict[str, str]:
    """Nodes only this test's pods may use (other tests' nodes may still be going away)."""
    selector = {"rebootcoord.test/owner": kube.namespace}
    kube.create_nodes(count, labels=selector)
    return selector


def test_versions_match_the_pins(kube_cluster: KubeCluster) -> None:
    with kube_cluster.api_client() as api:
        version = k8s.VersionApi(api).get_code()
    assert version.git_version == "v1.36.3"
    client = json.loads(kube_cluster.kubectl("version", "--client", "-o", "json"))
    assert client["clientVersion"]["gitVersion"] == "v1.36.3"
    etcd = subprocess.run(
        [str(kube_cluster.testbin.path("etcd")), "--version"], capture_output=True, text=True, check=True
    )
    assert "etcd Version: 3.6." in etcd.stdout
    helm = subprocess.run(
        [str(kube_cluster.testbin.path("helm")), "version", "--short"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert helm.stdout.startswith("v3.21.4")


def test_nodes_carry_zone_machine_id_and_boot_id(kube: KubeTestEnv) -> None:
    made = kube.create_nodes(4, labels={"pool": "workers"})
    assert [n.zone for n in made] == ["zone-a", "zone-b", "zone-c", "zone-a"]
    for fake in made:
        node = kube.core.read_node(fake.name)
        assert node.metadata.labels[ZONE_LABEL] == fake.zone
        assert node.metadata.labels["pool"] == "workers"
        assert node.metadata.labels[FAKE_NODE_LABEL] == "true"
        assert node.status.node_info.machine_id == fake.machine_id
        assert node.status.node_info.boot_id == fake.boot_id
        assert node.status.node_info.kubelet_version == KUBELET_VERSION
        assert not any(t.key == NOT_READY_TAINT for t in node.spec.taints or ())


def test_deployment_pods_are_scheduled_and_become_ready(kube: KubeTestEnv) -> None:
    selector = _own_nodes(kube, 3)
    kube.apps.create_namespaced_deployment(
        kube.namespace, _deployment("web", replicas=5, node_selector=selector)
    )
    wait_for_deployment(kube.api, kube.namespace, "web")
    pods = wait_for_pods(kube.api, kube.namespace, "app=web", count=5)
    our_nodes = set(kube.nodes)
    assert {p.spec.node_name for p in pods} <= our_nodes
    # kwok hands out pod IPs from a loopback block: nothing a test reads leads off the machine.
    assert all(ipaddress.ip_address(p.status.pod_ip) in ipaddress.ip_network(POD_CIDR) for p in pods)
    for name in our_nodes:
        addresses = {a.type: a.address for a in kube.core.read_node(name).status.addresses}
        assert ipaddress.ip_address(addresses["InternalIP"]).is_loopback
        assert addresses["Hostname"] == name


def _evict(kube: KubeTestEnv, pod: str) -> None:
    body = k8s.V1Eviction(metadata=k8s.V1ObjectMeta(name=pod, namespace=kube.namespace))
    kube.core.create_namespaced_pod_eviction(pod, kube.namespace, body)


def test_pdb_budget_and_eviction_beyond_it_is_429(kube: KubeTestEnv) -> None:
    selector = _own_nodes(kube, 3)
    kube.apps.create_namespaced_deployment(
        kube.namespace, _deployment("db", replicas=3, node_selector=selector)
    )
    pdb = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "db"},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "db"}}},
    }
    kube.policy.create_namespaced_pod_disruption_budget(kube.namespace, pdb)
    pods = wait_for_pods(kube.api, kube.namespace, "app=db", count=3)
    wait_for_pdb(kube.api, kube.namespace, "db", disruptions_allowed=1)

    # Within the budget: accepted, and kwok finishes the deletion as a kubelet would.
    _evict(kube, pods[0].metadata.name)
    wait_for_pods(kube.api, kube.namespace, "app=db", count=3)
    wait_for_pdb(kube.api, kube.namespace, "db", disruptions_allowed=1)

    # Beyond it: 429 Too Many Requests, the pod stays.
    kube.policy.patch_namespaced_pod_disruption_budget("db", kube.namespace, {"spec": {"minAvailable": 3}})
    wait_for_pdb(kube.api, kube.namespace, "db", disruptions_allowed=0)
    victim = wait_for_pods(kube.api, kube.namespace, "app=db", count=3)[0].metadata.name
    with pytest.raises(ApiException) as refused:
        _evict(kube, victim)
    assert refused.value.status == 429
    assert "disruption budget" in refused.value.body
    assert kube.core.read_namespaced_pod(victim, kube.namespace).metadata.deletion_timestamp is None


def test_lease_update_with_stale_resource_version_is_409(kube: KubeTestEnv) -> None:
    lease = kube.coordination.create_namespaced_lease(
        kube.namespace,
        {"metadata": {"name": "slots"}, "spec": {"holderIdentity": "node-a", "leaseDurationSeconds": 30}},
    )
    stale = lease.metadata.resource_version
    lease.spec.holder_identity = "node-b"
    fresh = kube.coordination.replace_namespaced_lease("slots", kube.namespace, lease)
    assert fresh.metadata.resource_version != stale

    lease.metadata.resource_version = stale
    lease.spec.holder_identity = "node-c"
    with pytest.raises(ApiException) as conflict:
        kube.coordination.replace_namespaced_lease("slots", kube.namespace, lease)
    assert conflict.value.status == 409
    current = kube.coordination.read_namespaced_lease("slots", kube.namespace)
    assert current.spec.holder_identity == "node-b"


@pytest.mark.parametrize("token", [False, True], ids=["impersonated", "token-request"])
def test_service_account_outside_its_role_gets_403(kube: KubeTestEnv, token: bool) -> None:
    kube.rbac.create_namespaced_role(
        kube.namespace,
        {
            "metadata": {"name": "lease-only"},
            "rules": [
                {
                    "apiGroups": ["coordination.k8s.io"],
                    "resources": ["leases"],
                    "verbs": ["get", "list", "create", "update"],
                }
            ],
        },
    )
    kube.rbac.create_namespaced_role_binding(
        kube.namespace,
        {
            "metadata": {"name": "narrow"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "lease-only"},
            "subjects": [{"kind": "ServiceAccount", "name": "narrow", "namespace": kube.namespace}],
        },
    )
    with kube.service_account("narrow", token=token) as sa_api:
        as_sa = k8s.CoordinationV1Api(sa_api)
        # RBAC caches refresh within a second or so of the binding being written.
        wait_for(
            lambda: as_sa.list_namespaced_lease(kube.namespace) is not None,
            timeout=15,
            what="the RoleBinding to take effect",
            ignore=(ApiException,),
        )
        as_sa.create_namespaced_lease(kube.namespace, {"metadata": {"name": "mine"}, "spec": {}})

        forbidden = [
            lambda: k8s.CoreV1Api(sa_api).list_namespaced_pod(kube.namespace),
            lambda: as_sa.delete_namespaced_lease("mine", kube.namespace),
            lambda: as_sa.list_namespaced_lease("kube-system"),
            lambda: k8s.CoreV1Api(sa_api).patch_node("any-node", {"spec": {"unschedulable": True}}),
        ]
        for call in forbidden:
            with pytest.raises(ApiException) as denied:
                call()
            assert denied.value.status == 403


def test_node_not_ready_and_back_through_kwok(kube: KubeTestEnv) -> None:
    (fake,) = kube.create_nodes(1)
    name = fake.name
    kube.set_node_ready(name, False)

    def tainted() -> bool:
        node = kube.core.read_node(name)
        return any(t.key == NOT_READY_TAINT for t in node.spec.taints or ())

    # node-lifecycle reacts like on a real cluster: NoSchedule/NoExecute not-ready taints.
    wait_for(tainted, timeout=30, what=f"{name} tainted not-ready")
    node = kube.core.read_node(name)
    ready = next(c for c in node.status.conditions if c.type == "Ready")
    assert (ready.status, ready.reason) == ("False", "KubeletNotReady")
    assert node.status.node_info.boot_id == fake.boot_id  # kwok kept nodeInfo

    # kwok keeps the NotReady state (it would otherwise flip the node back at once).
    lease = kube.coordination.read_namespaced_lease(name, "kube-node-lease")
    wait_for(
        lambda: (
            kube.coordination.read_namespaced_lease(name, "kube-node-lease").spec.renew_time
            > lease.spec.renew_time
        ),
        timeout=30,
        what="kwok to renew the node's Lease",
    )
    assert kube.cluster.node_ready(name) is False

    boot_id = kube.cluster.set_boot_id(name)
    kube.set_node_ready(name, True)  # waits for the taint to go too
    node = kube.core.read_node(name)
    assert node.status.node_info.boot_id == boot_id != fake.boot_id
    assert node.status.node_info.machine_id == fake.machine_id
    ready = next(c for c in node.status.conditions if c.type == "Ready")
    assert ready.last_transition_time > node.metadata.creation_timestamp


def test_stopped_kubelet_makes_node_unknown_and_its_pods_unhealthy(kube: KubeTestEnv) -> None:
    selector = _own_nodes(kube, 2)
    kube.apps.create_namespaced_deployment(
        kube.namespace, _deployment("svc", replicas=4, node_selector=selector)
    )
    kube.policy.create_namespaced_pod_disruption_budget(
        kube.namespace,
        {
            "metadata": {"name": "svc"},
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "svc"}}},
        },
    )
    pods = wait_for_pods(kube.api, kube.namespace, "app=svc", count=4)
    wait_for_pdb(kube.api, kube.namespace, "svc", disruptions_allowed=1)
    down = pods[0].spec.node_name
    on_down = {p.metadata.name for p in pods if p.spec.node_name == down}

    kube.set_kubelet_running(down, False)  # returns once Ready=Unknown
    # The node-lifecycle controller taints the node in the same pass, just after the status.
    wait_for(
        lambda: UNREACHABLE_TAINT in {t.key for t in kube.core.read_node(down).spec.taints or ()},
        timeout=15,
        what=f"{down} tainted unreachable",
    )

    def unready() -> bool:
        pods = kube.core.list_namespaced_pod(kube.namespace, label_selector="app=svc").items
        return all(
            any(c.type == "Ready" and c.status == "False" for c in p.status.conditions or ())
            for p in pods
            if p.metadata.name in on_down
        )

    wait_for(unready, timeout=30, what="pods of the silent node marked unready")
    wait_for_pdb(kube.api, kube.namespace, "svc", disruptions_allowed=0)

    kube.set_kubelet_running(down, True)  # returns once Ready, untainted, pods ready again
    wait_for_pods(kube.api, kube.namespace, "app=svc", count=4)
    wait_for_pdb(kube.api, kube.namespace, "svc", disruptions_allowed=1)


def test_simulated_reboot_changes_only_the_boot_id(kube: KubeTestEnv) -> None:
    (fake,) = kube.create_nodes(1)
    boot_id = kube.cluster.simulate_reboot(fake.name)
    info = kube.core.read_node(fake.name).status.node_info
    assert (info.machine_id, info.boot_id) == (fake.machine_id, boot_id)
    assert kube.cluster.node_ready(fake.name) is True


def test_cordoned_node_gets_no_pods_and_deleted_node_takes_its_lease(kube: KubeTestEnv) -> None:
    selector = _own_nodes(kube, 2)
    first, second = kube.nodes
    kube.core.patch_node(first, {"spec": {"unschedulable": True}})
    kube.apps.create_namespaced_deployment(
        kube.namespace, _deployment("api", replicas=2, node_selector=selector)
    )
    pods = wait_for_pods(kube.api, kube.namespace, "app=api", count=2)
    assert {p.spec.node_name for p in pods} == {second}

    # kwok's node Lease is owned by the node: the garbage collector removes it with the node.
    # (Pods bound to a deleted node are removed by the pod GC controller only after its 40 s
    # quarantine; tests that delete nodes with pods on them should not wait for that.)
    kube.delete_node(first)

    def lease_gone() -> bool:
        try:
            kube.coordination.read_namespaced_lease(first, "kube-node-lease")
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_for(lease_gone, timeout=30, what=f"the Lease of deleted node {first}")


def test_kubectl_server_side_dry_run(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    good = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cfg", "namespace": kube_namespace},
        "data": {"k": "v"},
    }
    out = kube_cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(good))
    assert "configmap/cfg created (server dry run)" in out
    bad = {
        **good,
        "kind": "Lease",
        "apiVersion": "coordination.k8s.io/v1",
        "spec": {"leaseDurationSeconds": "x"},
    }
    kubectl = [str(kube_cluster.testbin.path("kubectl")), f"--kubeconfig={kube_cluster.kubeconfig}"]
    proc = subprocess.run(
        [*kubectl, "apply", "--dry-run=server", "-f", "-"],
        input=json.dumps(bad),
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0
    with pytest.raises(ApiException):
        k8s.CoreV1Api(kube_cluster.api_client()).read_namespaced_config_map("cfg", kube_namespace)


def test_helm_template_output_passes_server_side_dry_run(
    kube_cluster: KubeCluster, kube_namespace: str, tmp_path: Path
) -> None:
    chart = tmp_path / "demo"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: demo\nversion: 0.1.0\n")
    (chart / "templates" / "lease.yaml").write_text(
        "apiVersion: coordination.k8s.io/v1\nkind: Lease\n"
        "metadata:\n  name: {{ .Release.Name }}-slots\n"
        "spec:\n  leaseDurationSeconds: 30\n"
    )
    rendered = subprocess.run(
        [
            *(str(kube_cluster.testbin.path("helm")), "template", "demo", str(chart)),
            *("--namespace", kube_namespace, "--kube-version", "1.36.3"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    out = kube_cluster.kubectl("apply", "--dry-run=server", "-n", kube_namespace, "-f", "-", input=rendered)
    assert "lease.coordination.k8s.io/demo-slots created (server dry run)" in out
