"""The chart's RBAC against the real API server: the agent's calls are allowed, each grant is one
that a call uses, and anything else is refused. The audit log is the witness.

These tests make the agent's calls themselves (the list in the chart's rbac.yaml). The fleet e2e
runs real agents with :func:`tests.support.rbac.chart_identity` and asks the same questions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes import watch
from kubernetes.client.exceptions import ApiException

from tests.support.kubecluster import KubeTestEnv, wait_for_pods
from tests.support.rbac import ChartIdentity, Grant, chart_identity

pytestmark = pytest.mark.kube


@pytest.fixture
def ident(kube: KubeTestEnv) -> Iterator[ChartIdentity]:
    with chart_identity(kube.cluster, kube.namespace) as identity:
        yield identity


# Every gate on: the budget gate adds `list nodes` to the defaults' rules (which have the PDB
# pre-check's `list poddisruptionbudgets`).
ALL_GATES = {"config": {"max_unavailable_nodes": 1}}


def _forbidden(call: Callable[[], Any]) -> None:
    with pytest.raises(ApiException) as err:
        call()
    assert err.value.status == 403, err.value


def _watch(list_call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    w = watch.Watch()
    for _ in w.stream(list_call, *args, timeout_seconds=1, **kwargs):
        w.stop()


def _keys(grants: list[Grant]) -> set[tuple[str, str, str]]:
    return {(g.api_group, g.resource, g.verb) for g in grants}


def test_chart_rules_are_enough_and_every_grant_is_used(kube: KubeTestEnv) -> None:
    with chart_identity(kube.cluster, kube.namespace, values=ALL_GATES) as ident:
        _agents_calls_are_allowed_and_nothing_else(kube, ident)


def _agents_calls_are_allowed_and_nothing_else(kube: KubeTestEnv, ident: ChartIdentity) -> None:
    ns = kube.namespace
    (node,) = kube.create_nodes(1)
    kube.core.create_namespaced_pod(
        ns,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"nodeName": node.name, "containers": [{"name": "web", "image": "web:1"}]},
        },
    )
    wait_for_pods(kube.api, ns, "app=web", count=1)
    assert ident.username == f"system:serviceaccount:{ns}:{ident.service_account}"
    # 7 lease verbs, events create, nodes get/list/patch, pods list, eviction, PDBs list
    assert len(ident.rules) == 14

    api = ident.api_client()
    coordination, core, policy = k8s.CoordinationV1Api(api), k8s.CoreV1Api(api), k8s.PolicyV1Api(api)

    # 1. The semaphore: the Lease verbs alone.
    lease = coordination.create_namespaced_lease(
        ns, {"metadata": {"name": "rebootcoord-default"}, "spec": {"holderIdentity": node.name}}
    )
    coordination.read_namespaced_lease("rebootcoord-default", ns)
    coordination.list_namespaced_lease(ns)
    _watch(coordination.list_namespaced_lease, ns)
    lease.spec.lease_duration_seconds = 30
    coordination.replace_namespaced_lease("rebootcoord-default", ns, lease)
    coordination.patch_namespaced_lease("rebootcoord-default", ns, {"metadata": {"annotations": {"a": "b"}}})
    coordination.delete_namespaced_lease("rebootcoord-default", ns)
    unused = _keys(ident.unused_grants())
    assert not any(resource == "leases" for _, resource, _ in unused)
    assert ("", "events", "create") in unused and ("", "pods/eviction", "create") in unused

    # 2. An event about the node, the node, the pods on it, their eviction: the agent's calls.
    # Events about a Node (cluster-scoped) are only accepted in "default".
    core.create_namespaced_event(
        "default",
        {
            "metadata": {"generateName": f"{node.name}."},
            "involvedObject": {"kind": "Node", "name": node.name, "apiVersion": "v1"},
            "reason": "RebootRequired",
            "message": "a reboot is pending",
            "type": "Normal",
        },
    )
    core.read_node(node.name)
    core.list_node(label_selector=f"kubernetes.io/hostname={node.name}")
    core.patch_node(node.name, {"spec": {"unschedulable": True}})
    core.patch_node(node.name, {"spec": {"unschedulable": None}})
    pods = core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node.name}").items
    assert [p.metadata.name for p in pods] == ["web"]
    policy.list_pod_disruption_budget_for_all_namespaces()  # the PDB pre-check: every namespace at once
    core.create_namespaced_pod_eviction(
        "web",
        ns,
        {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "web", "namespace": ns}},
    )

    requests = ident.requests()
    assert ident.denied_requests(requests) == []
    assert ident.unused_grants(requests) == [], "grants no call used: take them out of the chart"

    # 3. And nothing more: each of these is refused, and the accounting says so.
    _forbidden(lambda: core.list_namespaced_secret(ns))
    _forbidden(lambda: core.delete_node(node.name))
    _forbidden(lambda: core.patch_namespaced_pod("web", ns, {"metadata": {"labels": {"x": "y"}}}))
    _forbidden(lambda: coordination.list_namespaced_lease("default"))
    _forbidden(lambda: k8s.AppsV1Api(api).list_namespaced_daemon_set(ns))
    _forbidden(lambda: _watch(core.list_node))
    _forbidden(lambda: core.read_namespaced_pod("web", ns))
    _forbidden(lambda: policy.read_namespaced_pod_disruption_budget("web", ns))
    denied = {(r.verb, r.api_group, r.resource, r.namespace) for r in ident.denied_requests()}
    assert denied == {
        ("watch", "", "nodes", None),
        ("get", "", "pods", ns),
        ("get", "policy", "poddisruptionbudgets", ns),
        ("list", "", "secrets", ns),
        ("delete", "", "nodes", None),
        ("patch", "", "pods", ns),
        ("list", "coordination.k8s.io", "leases", "default"),
        ("list", "apps", "daemonsets", ns),
    }


def test_kubectl_as_the_service_account(kube: KubeTestEnv, ident: ChartIdentity) -> None:
    """The same rules, asked through kubectl's impersonation and the identity's own kubeconfig."""
    ns = kube.namespace

    def can_i(verb: str, resource: str, namespace: str | None = ns) -> bool:
        resource, _, sub = resource.partition("/")
        where = ["-n", namespace] if namespace else []
        sub_flag = [f"--subresource={sub}"] if sub else []
        argv = ["auth", "can-i", verb, resource, *sub_flag, *where, "--as", ident.username]
        return kube.cluster.kubectl(*argv, check=False).strip() == "yes"

    for verb in ("get", "list", "watch", "create", "update", "patch", "delete"):
        assert can_i(verb, "leases.coordination.k8s.io")
        assert not can_i(verb, "leases.coordination.k8s.io", "kube-system")
    assert can_i("create", "events", "default") and not can_i("patch", "events", "default")
    assert not can_i("create", "events")  # elsewhere than "default"
    for verb in ("get", "patch"):
        assert can_i(verb, "nodes", None)
    for verb in ("list", "watch", "update", "delete"):  # list: only with the budget gate on
        assert not can_i(verb, "nodes", None)
    assert can_i("list", "pods", None) and not can_i("get", "pods", None)
    assert can_i("list", "poddisruptionbudgets.policy", None)  # the PDB pre-check, on by default
    for verb in ("get", "watch", "create", "update", "delete"):
        assert not can_i(verb, "poddisruptionbudgets.policy", None)
    assert can_i("create", "pods/eviction", "default") and not can_i("create", "pods", "default")
    assert not can_i("delete", "pods", "default") and not can_i("get", "secrets")

    out = ident.kubectl("get", "leases", "-o", "name").stdout  # the kubeconfig's namespace
    assert out == ""
    assert ident.kubectl("get", "secrets", check=False).returncode != 0


def test_rbac_follows_the_configuration(kube: KubeTestEnv) -> None:
    """etcd holds the semaphore, Kubernetes drains: no Lease rights at all."""
    values = {"config": {"backend": "etcd", "etcd_endpoints": ["http://etcd:2379"], "node_ops": "kubernetes"}}
    with chart_identity(kube.cluster, kube.namespace, values=values) as ident:
        assert not any(g.resource == "leases" for g in ident.rules)
        assert {g.resource for g in ident.rules} == {
            "events", "nodes", "pods", "pods/eviction", "poddisruptionbudgets"
        }  # fmt: skip
        assert len(ident.rules) == 6  # events create, nodes get/patch, pods list, eviction, PDBs list
        _forbidden(lambda: k8s.CoordinationV1Api(ident.api_client()).list_namespaced_lease(kube.namespace))
        assert [r.resource for r in ident.denied_requests()] == ["leases"]


def test_impersonation_is_accounted_to_the_service_account(kube: KubeTestEnv, ident: ChartIdentity) -> None:
    api = ident.impersonating_client()
    k8s.CoordinationV1Api(api).list_namespaced_lease(kube.namespace)
    _forbidden(lambda: k8s.CoreV1Api(api).list_namespaced_secret(kube.namespace))
    requests = ident.requests()
    assert [(r.verb, r.resource) for r in requests if not r.denied] == [("list", "leases")]
    assert [(r.verb, r.resource) for r in ident.denied_requests(requests)] == [("list", "secrets")]
    assert ("coordination.k8s.io", "leases", "list") not in _keys(ident.unused_grants(requests))
