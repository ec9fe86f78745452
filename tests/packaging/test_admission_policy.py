"""The chart's ValidatingAdmissionPolicy on the real API server, with pod-bound tokens: the agent's
ServiceAccount may change only the Node its pod runs on, and write only its group's Leases.

RBAC alone lets every agent pod's token patch every Node; here a token bound to a pod on node A
patches A, is denied on B, and cannot create another component's Lease in the namespace; a token
of the same ServiceAccount bound to no pod may change no Node at all.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from tests.conftest import wait_for
from tests.support.cluster import SA_ISSUER
from tests.support.kubecluster import KubeTestEnv
from tests.support.rbac import apply_objects, rbac_objects, render_chart

pytestmark = pytest.mark.kube

POLICY_KINDS = ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")


def _token(kube: KubeTestEnv, sa: str, pod: Any | None) -> str:
    bound = k8s.V1BoundObjectReference(kind="Pod", api_version="v1", name=pod.metadata.name,
                                       uid=pod.metadata.uid) if pod is not None else None  # fmt: skip
    request = k8s.AuthenticationV1TokenRequest(
        spec=k8s.V1TokenRequestSpec(audiences=[SA_ISSUER], expiration_seconds=3600, bound_object_ref=bound)
    )
    answer = kube.core.create_namespaced_service_account_token(sa, kube.namespace, request)
    return str(answer.status.token)


def _as(kube: KubeTestEnv, token: str) -> k8s.ApiClient:
    config = k8s.Configuration()
    config.host = kube.cluster.server
    config.ssl_ca_cert = str(kube.cluster.ca_file)
    config.api_key = {"authorization": token}
    config.api_key_prefix = {"authorization": "Bearer"}
    return k8s.ApiClient(config)


def _denied(call: Any) -> str:
    try:
        call()
    except ApiException as exc:
        assert exc.status == 403, exc
        return str(exc.body)
    return ""


def _lease(name: str) -> k8s.V1Lease:
    return k8s.V1Lease(metadata=k8s.V1ObjectMeta(name=name), spec=k8s.V1LeaseSpec(holder_identity="x"))


def test_an_agent_token_changes_only_its_own_node_and_its_groups_leases(kube: KubeTestEnv) -> None:
    name = f"rc-{kube.namespace}"[:40]
    objects = render_chart(
        {"fullnameOverride": name, "config": {"backend": "kubernetes"}, "rbac": {"confine": "auto"}},
        namespace=kube.namespace,
        extra_args=["--api-versions", "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy"],
    )
    policy = [o for o in objects if o.get("kind") in POLICY_KINDS]
    assert [o["kind"] for o in policy] == list(POLICY_KINDS)
    apply_objects(kube.cluster, [*rbac_objects(objects), *policy])
    sa = next(o for o in objects if o["kind"] == "ServiceAccount")["metadata"]["name"]
    mine, other = (n.name for n in kube.create_nodes(2))
    pod = kube.core.create_namespaced_pod(
        kube.namespace,
        k8s.V1Pod(
            metadata=k8s.V1ObjectMeta(name="agent"),
            spec=k8s.V1PodSpec(
                service_account_name=sa,
                node_name=mine,
                containers=[k8s.V1Container(name="agent", image="rebootcoord")],
            ),
        ),
    )
    agent = _as(kube, _token(kube, sa, pod))
    nodes, leases = k8s.CoreV1Api(agent), k8s.CoordinationV1Api(agent)
    label = {"metadata": {"labels": {"rebootcoord.test/confined": "yes"}}}

    # The policy takes effect once the API server has compiled it: wait for the first denial.
    wait_for(lambda: _denied(lambda: nodes.patch_node(other, label)) != "", timeout=60,
             what="the admission policy to take effect")  # fmt: skip
    body = _denied(lambda: nodes.patch_node(other, label))
    assert "may change only the Node its pod runs on" in body and other in body
    nodes.patch_node(mine, label)  # its own node: allowed
    assert kube.core.read_node(mine).metadata.labels["rebootcoord.test/confined"] == "yes"

    group = "rebootcoord-default"
    leases.create_namespaced_lease(kube.namespace, _lease(group))
    leases.create_namespaced_lease(kube.namespace, _lease(f"{group}.w.{mine}"))
    leases.delete_namespaced_lease(f"{group}.w.{mine}", kube.namespace)
    kube.api and k8s.CoordinationV1Api(kube.api).create_namespaced_lease(
        kube.namespace, _lease("kube-scheduler")
    )
    for call in (
        lambda: leases.create_namespaced_lease(kube.namespace, _lease("kube-scheduler-2")),
        lambda: leases.patch_namespaced_lease(
            "kube-scheduler", kube.namespace, {"spec": {"holderIdentity": "me"}}
        ),
        lambda: leases.delete_namespaced_lease("kube-scheduler", kube.namespace),
        lambda: leases.create_namespaced_lease(kube.namespace, _lease("rebootcoord-other")),
    ):
        assert "may write only the Leases of its group" in _denied(call)

    # The same ServiceAccount's token bound to no pod names no node: it may change none.
    unbound = k8s.CoreV1Api(_as(kube, _token(kube, sa, None)))
    assert "may change only the Node" in _denied(lambda: unbound.patch_node(mine, label))
