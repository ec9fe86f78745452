"""The chart's optional FleetLock server (fleetlock.*): what it renders, what it refuses, and, on the
real API server, that its objects are valid, that its RBAC is what the real server uses and no
more, and that its admission policy confines it to its groups' Leases and to the node operations.

The RBAC proof runs the real ``rebootcoord fleetlock-server`` (a process on loopback, with a real
token of the chart's ServiceAccount for the server and the chart's own configuration file) through
a whole Zincati cycle on kwok nodes: pre-reboot (cordon, evictions, events), a second client kept
in line, steady-state (Ready check, uncordon, release). The audit log is the witness.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from rebootcoord.adapters.kube.api import Kube
from rebootcoord.adapters.kube.nodes import ANN_CORDONED, KubeNodeOps
from rebootcoord.core.config import load_settings
from rebootcoord.core.fleetlock import app_specific_id
from rebootcoord.core.types import NodeName, Phase
from tests.packaging.conftest import Render, kinds, only
from tests.support.cluster import KubeCluster, wait_for
from tests.support.fleetlock import FleetLockClient, FleetLockServer
from tests.support.kubecluster import KubeTestEnv, wait_for_pods
from tests.support.rbac import (
    CHART,
    RBAC_KINDS,
    ChartIdentity,
    apply_objects,
    chart_identity,
    render_chart,
)

pytestmark = pytest.mark.kube  # helm from testbin/; the cluster tests use the control plane too

ON = {"fleetlock": {"enabled": True}}
COMPONENT = "app.kubernetes.io/component"
SERVER = "fleetlock-server"
VAP = "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy"
POLICY_KINDS = ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")


def _on(**fleetlock: Any) -> dict[str, Any]:
    return {"fleetlock": {"enabled": True, **fleetlock}}


def _server_objects(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if (o["metadata"].get("labels") or {}).get(COMPONENT) == SERVER]


def _pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = only(objects, "Deployment")["spec"]["template"]["spec"]
    return spec


def _container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = _pod(objects)["containers"]
    return container  # type: ignore[no-any-return]


def _server_config(objects: list[dict[str, Any]]) -> dict[str, Any]:
    cm = next(o for o in _server_objects(objects) if o["kind"] == "ConfigMap")
    return yaml.safe_load(cm["data"]["config.yaml"])  # type: ignore[no-any-return]


def _named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def _labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# ----------------------------------------------------------------------------------------------
# What it renders


def test_off_by_default(render: Render) -> None:
    assert _server_objects(render()) == []
    assert "Deployment" not in kinds(render())


def test_objects_when_enabled(render: Render) -> None:
    objects = render(ON, namespace="rebootcoord")
    where = {
        (o["kind"], o["metadata"]["name"]): o["metadata"].get("namespace") for o in _server_objects(objects)
    }
    name = "rebootcoord-fleetlock"
    assert where == {
        ("ServiceAccount", name): "rebootcoord",
        ("ConfigMap", name): "rebootcoord",
        ("Deployment", name): "rebootcoord",
        ("Service", name): "rebootcoord",  # FleetLock, port 9729
        ("Service", f"{name}-metrics"): "rebootcoord",
        ("NetworkPolicy", name): "rebootcoord",
        ("PodDisruptionBudget", name): "rebootcoord",
        ("Role", name): "rebootcoord",  # Leases
        ("RoleBinding", name): "rebootcoord",
        ("Role", f"{name}-events"): "default",
        ("RoleBinding", f"{name}-events"): "default",
        ("ClusterRole", name): None,
        ("ClusterRoleBinding", name): None,
    }
    # The agents' objects are the same as without the server.
    agents = [o for o in objects if o not in _server_objects(objects)]
    assert agents == render({}, namespace="rebootcoord")


def test_the_pod_spec(render: Render) -> None:
    objects = render(ON)
    deployment = only(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 0}
    pod, container = _pod(objects), _container(objects)
    assert pod["enableServiceLinks"] is False
    assert pod["serviceAccountName"] == "rebootcoord-fleetlock"
    assert pod["automountServiceAccountToken"] is True
    assert "hostPID" not in pod and "hostNetwork" not in pod
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container["securityContext"] == {
        "privileged": False,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert (
        container["image"] == only(objects, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["image"]
    )
    assert container["args"] == ["fleetlock-server", "--config", "/etc/rebootcoord/config.yaml"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert "NODE_NAME" not in env and "POD_UID" not in env  # no node of its own; waiters outlive a pod
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"fleetlock": 9729, "metrics": 9727}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["resources"]["limits"] and container["resources"]["requests"]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_the_agents_selectors_never_take_the_server_for_an_agent(render: Render) -> None:
    objects = render({"fleetlock": {"enabled": True}, "serviceMonitor": {"enabled": True}})
    server_pod = only(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    agent_pod = only(objects, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    agent_selectors = [
        only(objects, "DaemonSet")["spec"]["selector"]["matchLabels"],
        _named(objects, "Service", "rebootcoord")["spec"]["selector"],
        _named(objects, "NetworkPolicy", "rebootcoord")["spec"]["podSelector"]["matchLabels"],
    ]
    server_selectors = [
        only(objects, "Deployment")["spec"]["selector"]["matchLabels"],
        _named(objects, "Service", "rebootcoord-fleetlock")["spec"]["selector"],
        _named(objects, "NetworkPolicy", "rebootcoord-fleetlock")["spec"]["podSelector"]["matchLabels"],
        only(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
    ]
    assert all(not _labels_match(s, server_pod) and _labels_match(s, agent_pod) for s in agent_selectors)
    assert all(_labels_match(s, server_pod) and not _labels_match(s, agent_pod) for s in server_selectors)
    # Each ServiceMonitor selects its own metrics Service, and nothing else.
    monitors = {m["metadata"]["name"]: m["spec"]["selector"]["matchLabels"] for m in objects
                if m["kind"] == "ServiceMonitor"}  # fmt: skip
    services = {s["metadata"]["name"]: s["metadata"]["labels"] for s in objects if s["kind"] == "Service"}
    selected = {m: sorted(s for s, labels in services.items() if _labels_match(sel, labels))
                for m, sel in monitors.items()}  # fmt: skip
    assert selected == {
        "rebootcoord": ["rebootcoord"],
        "rebootcoord-fleetlock": ["rebootcoord-fleetlock-metrics"],
    }


def test_the_configuration_file_is_the_agents_with_the_servers_keys_on_top(render: Render) -> None:
    values = {
        "config": {"group": "workers", "max_holders": 2, "verify_pods_ready": True, "drain_timeout": "5m"},
        "fleetlock": {
            "enabled": True,
            "config": {"verify_pods_ready": False, "fleetlock_unknown_id": "grant", "drain_timeout": "20m"},
        },
    }
    config = _server_config(render(values))
    assert config["group"] == "workers" and config["max_holders"] == 2
    assert config["fleetlock_groups"] == ["workers"]  # the agents' group, so the policy names its Leases
    assert config["verify_pods_ready"] is False  # key by key: false on top wins
    assert config["drain_timeout"] == "20m"
    assert config["fleetlock_unknown_id"] == "grant"
    assert config["fleetlock_waiter_ttl"] == "15m" and config["fleetlock_workers"] == 64
    assert "fleetlock_tls_cert_file" not in config
    # The server accepts the file as it would in the pod (its hostname: the pod's name).
    settings = load_settings(
        file_data=config, file_name="config.yaml", env={}, fallbacks={"node_name": "pod"}
    )
    assert settings.fleetlock.fleetlock_groups == ("workers",)
    assert settings.semaphore.backend == "kubernetes"


def test_tls_secrets_are_mounted_and_named_in_the_file(render: Render) -> None:
    objects = render(_on(tls={"secretName": "fleetlock-tls", "clientCASecret": "zincati-ca"}))
    config = _server_config(objects)
    assert config["fleetlock_tls_cert_file"] == "/etc/rebootcoord/fleetlock-tls/tls.crt"
    assert config["fleetlock_tls_key_file"] == "/etc/rebootcoord/fleetlock-tls/tls.key"
    assert config["fleetlock_tls_client_ca_file"] == "/etc/rebootcoord/fleetlock-client-ca/ca.crt"
    volumes = {v["name"]: v for v in _pod(objects)["volumes"]}
    assert volumes["fleetlock-tls"]["secret"]["secretName"] == "fleetlock-tls"
    assert [i["key"] for i in volumes["fleetlock-tls"]["secret"]["items"]] == ["tls.crt", "tls.key"]
    assert volumes["fleetlock-client-ca"]["secret"] == {
        "secretName": "zincati-ca",
        "defaultMode": 0o440,
        "items": [{"key": "ca.crt", "path": "ca.crt"}],
    }
    mounts = {m["name"]: m for m in _container(objects)["volumeMounts"]}
    assert mounts["fleetlock-tls"] == {"name": "fleetlock-tls", "mountPath": "/etc/rebootcoord/fleetlock-tls",
                                       "readOnly": True}  # fmt: skip
    assert mounts["fleetlock-client-ca"]["readOnly"] is True
    # Without a client CA: TLS alone.
    config = _server_config(render(_on(tls={"secretName": "fleetlock-tls"})))
    assert "fleetlock_tls_client_ca_file" not in config


def test_etcd_secrets_are_the_agents(render: Render) -> None:
    values = {
        "config": {"backend": "etcd", "etcd_endpoints": ["https://etcd:2379"]},
        "etcd": {"tlsSecret": "etcd-client", "passwordSecret": {"name": "etcd-auth"}},
        **ON,
    }
    objects = render(values)
    config = _server_config(objects)
    assert config["etcd_cert_file"] == "/etc/rebootcoord/etcd/tls.crt"
    env = {e["name"] for e in _container(objects)["env"]}
    assert {"REBOOTCOORD_ETCD_USERNAME", "REBOOTCOORD_ETCD_PASSWORD"} <= env
    assert _pod(objects)["automountServiceAccountToken"] is False  # etcd only: no API call at all
    assert not [o for o in _server_objects(objects) if o["kind"] in RBAC_KINDS[1:]]


@pytest.mark.parametrize(
    ("fleetlock", "image"),
    [
        pytest.param({}, "registry.example/rebootcoord:1.2.3", id="the-agents"),
        pytest.param({"image": {"tag": "1.3.0"}}, "registry.example/rebootcoord:1.3.0", id="own-tag"),
        pytest.param(
            {"image": {"repository": "mirror.example/rc"}}, "mirror.example/rc:1.2.3", id="own-repository"
        ),
        pytest.param(
            {"image": {"digest": "sha256:" + "1" * 64}},
            "registry.example/rebootcoord@sha256:" + "1" * 64,
            id="own-digest",
        ),
    ],
)
def test_image_defaults_to_the_agents(render: Render, fleetlock: dict[str, Any], image: str) -> None:
    values = {"image": {"repository": "registry.example/rebootcoord", "tag": "1.2.3"}, **_on(**fleetlock)}
    assert _container(render(values))["image"] == image


def test_agent_digest_is_used_unless_the_server_names_its_own_image(render: Render) -> None:
    digest = "sha256:" + "2" * 64
    values = {"image": {"repository": "r.example/rc", "digest": digest}}
    assert _container(render({**values, **ON}))["image"] == f"r.example/rc@{digest}"
    assert _container(render({**values, **_on(image={"tag": "9"})}))["image"] == "r.example/rc:9"


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        pytest.param({}, "preferred", id="soft"),
        pytest.param({"antiAffinity": "hard"}, "required", id="hard"),
        pytest.param({"antiAffinity": "none"}, None, id="none"),
        pytest.param(
            {"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}},
            "yours",
            id="your-own",
        ),
    ],
)
def test_replicas_spread_across_nodes(render: Render, values: dict[str, Any], expected: str | None) -> None:
    pod = _pod(render(_on(**values)))
    anti = (pod.get("affinity") or {}).get("podAntiAffinity")
    if expected is None:
        assert anti is None
    elif expected == "yours":
        assert anti == {"preferredDuringSchedulingIgnoredDuringExecution": []}
    elif expected == "required":
        (term,) = anti["requiredDuringSchedulingIgnoredDuringExecution"]
        assert term["topologyKey"] == "kubernetes.io/hostname"
        assert term["labelSelector"]["matchLabels"][COMPONENT] == SERVER
    else:
        (term,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
        assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"


@pytest.mark.parametrize(("replicas", "budget"), [(1, False), (2, True), (3, True)])
def test_a_disruption_budget_only_with_replicas_to_spare(render: Render, replicas: int, budget: bool) -> None:
    objects = render(_on(replicas=replicas))
    assert ("PodDisruptionBudget" in kinds(objects)) is budget
    if budget:
        pdb = only(objects, "PodDisruptionBudget")["spec"]
        assert pdb["minAvailable"] == 1 and pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_network_policy(render: Render) -> None:
    objects = render(ON)
    policy = _named(objects, "NetworkPolicy", "rebootcoord-fleetlock")["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    assert policy["ingress"] == [  # no `from`: anyone, Zincati hosts are often outside the cluster
        {"ports": [{"port": "fleetlock", "protocol": "TCP"}]},
        {"ports": [{"port": "metrics", "protocol": "TCP"}]},
    ]
    hosts = [{"ipBlock": {"cidr": "10.20.0.0/16"}}]
    monitoring = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    objects = render({"networkPolicy": {"metricsFrom": monitoring}, **_on(networkPolicy={"from": hosts})})
    policy = _named(objects, "NetworkPolicy", "rebootcoord-fleetlock")["spec"]
    assert policy["ingress"] == [
        {"ports": [{"port": "fleetlock", "protocol": "TCP"}], "from": hosts},
        {"ports": [{"port": "metrics", "protocol": "TCP"}], "from": monitoring},
    ]
    assert "NetworkPolicy" not in kinds(_server_objects(render(_on(networkPolicy={"enabled": False}))))


def test_service_types(render: Render) -> None:
    service = _named(render(ON), "Service", "rebootcoord-fleetlock")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "fleetlock", "port": 9729, "targetPort": "fleetlock",
                                         "protocol": "TCP"}]  # fmt: skip
    values = _on(service={"type": "LoadBalancer", "nodePort": 30729, "annotations": {"lb": "internal"},
                          "loadBalancerSourceRanges": ["192.0.2.0/24"]})  # fmt: skip
    service = _named(render(values), "Service", "rebootcoord-fleetlock")
    assert service["metadata"]["annotations"] == {"lb": "internal"}
    assert service["spec"]["ports"][0]["nodePort"] == 30729
    assert service["spec"]["loadBalancerSourceRanges"] == ["192.0.2.0/24"]
    # The metrics stay in the cluster, on a Service of their own.
    metrics = _named(render(values), "Service", "rebootcoord-fleetlock-metrics")
    assert metrics["spec"]["type"] == "ClusterIP" and metrics["spec"]["ports"][0]["name"] == "metrics"


def test_host_network_and_ports_of_its_own(render: Render) -> None:
    values = _on(hostNetwork=True, config={"fleetlock_listen": ":19729", "metrics_address": "0.0.0.0:19727"})
    objects = render(values)
    assert _pod(objects)["hostNetwork"] is True
    assert _pod(objects)["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert {p["name"]: p["containerPort"] for p in _container(objects)["ports"]} == {
        "fleetlock": 19729,
        "metrics": 19727,
    }


def test_extra_args_env_and_scheduling(render: Render) -> None:
    values = _on(
        extraArgs=["--fleetlock-workers=8"],
        extraEnv=[{"name": "TZ", "value": "UTC"}],
        tolerations=[{"operator": "Exists"}],
        priorityClassName="system-cluster-critical",
        topologySpreadConstraints=[
            {
                "maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "ScheduleAnyway",
            }
        ],
    )
    objects = render(values)
    assert _container(objects)["args"][-1] == "--fleetlock-workers=8"
    assert {"name": "TZ", "value": "UTC"} in _container(objects)["env"]
    pod = _pod(objects)
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "topology.kubernetes.io/zone"


def _cluster_rules(objects: list[dict[str, Any]]) -> dict[str, list[str]]:
    roles = [o for o in _server_objects(objects) if o["kind"] == "ClusterRole"]
    return {r["resources"][0]: r["verbs"] for role in roles for r in role["rules"]}


NODE_OPS = {"nodes": ["get", "list", "patch"], "pods": ["list"], "pods/eviction": ["create"]}
PDBS = {"poddisruptionbudgets": ["list"]}


@pytest.mark.parametrize(
    ("config", "rules", "roles"),
    [
        pytest.param(
            {}, NODE_OPS | PDBS, {"rebootcoord-fleetlock", "rebootcoord-fleetlock-events"}, id="lease-backend"
        ),
        pytest.param(
            {"pdb_precheck": False},
            NODE_OPS,
            {"rebootcoord-fleetlock", "rebootcoord-fleetlock-events"},
            id="lease-backend-no-pdb-precheck",
        ),
        pytest.param({"node_ops": "none"}, {}, {"rebootcoord-fleetlock"}, id="no-node-operations"),
        pytest.param(
            {"backend": "etcd", "etcd_endpoints": ["http://etcd:2379"], "node_ops": "kubernetes"},
            NODE_OPS | PDBS,
            {"rebootcoord-fleetlock-events"},
            id="etcd-backend-kubernetes-drain",
        ),
        pytest.param({"backend": "etcd", "etcd_endpoints": ["http://etcd:2379"]}, {}, set(), id="etcd-only"),
        # The agents' gates bind the server's clients too: the same rights for them.
        pytest.param(
            {
                "max_unavailable_nodes": 1,
                "blocking_pod_selector": "app=db",
                "verify_node_ready": False,
                "pdb_precheck": True,
            },
            NODE_OPS | PDBS,
            {"rebootcoord-fleetlock", "rebootcoord-fleetlock-events"},
            id="agent-gates",
        ),
    ],
)
def test_rbac_follows_the_servers_configuration(
    render: Render, config: dict[str, Any], rules: dict[str, list[str]], roles: set[str]
) -> None:
    objects = render({"config": config, **ON})
    assert _cluster_rules(objects) == rules
    assert {o["metadata"]["name"] for o in _server_objects(objects) if o["kind"] == "Role"} == roles
    assert _pod(objects)["automountServiceAccountToken"] is bool(rules or roles)
    lease_role = [o for o in _server_objects(objects) if o["kind"] == "Role" and o["metadata"]["name"] ==
                  "rebootcoord-fleetlock"]  # fmt: skip
    for role in lease_role:
        (rule,) = role["rules"]
        # No watch: the server answers each poll from what it reads (the agents wait on a watch).
        assert rule["verbs"] == ["get", "list", "create", "update", "patch", "delete"]


def test_its_own_service_account_and_bindings(render: Render) -> None:
    objects = render({"config": {"namespace": "reboots"}, **ON})
    for binding in (
        o for o in _server_objects(objects) if o["kind"] in ("RoleBinding", "ClusterRoleBinding")
    ):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "rebootcoord-fleetlock", "namespace": "rebootcoord"}
        ]
    assert _named(objects, "Role", "rebootcoord-fleetlock")["metadata"]["namespace"] == "reboots"
    sa = _named(objects, "ServiceAccount", "rebootcoord-fleetlock")
    assert sa["automountServiceAccountToken"] is False
    # An existing account of the user's, RBAC left to them.
    objects = render(_on(serviceAccount={"create": False, "name": "mine"}) | {"rbac": {"create": False}})
    assert _pod(objects)["serviceAccountName"] == "mine"
    assert [o["kind"] for o in _server_objects(objects) if o["kind"] in RBAC_KINDS] == []


def _policies(render: Render, values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    objects = render_chart(values, namespace="rebootcoord", extra_args=["--api-versions", VAP])
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == "ValidatingAdmissionPolicy"}


def test_each_policy_matches_its_own_account(render: Render) -> None:
    policies = _policies(render, ON)
    assert set(policies) == {"rebootcoord-confine", "rebootcoord-fleetlock-confine"}

    def matched(name: str) -> str:
        (condition,) = policies[name]["spec"]["matchConditions"]
        return str(condition["expression"])

    assert matched("rebootcoord-confine") == (
        'request.userInfo.username == "system:serviceaccount:rebootcoord:rebootcoord"'
    )
    assert matched("rebootcoord-fleetlock-confine") == (
        'request.userInfo.username == "system:serviceaccount:rebootcoord:rebootcoord-fleetlock"'
    )


def test_the_policy_names_the_served_groups_and_the_labels(render: Render) -> None:
    values = {
        "config": {"group": "workers", "pre_reboot_labels": ["rebootcoord.io/draining=yes"]},
        **_on(
            config={"fleetlock_groups": ["workers", "fcos"], "post_reboot_labels": ["a.example/x=1", "b=2"]}
        ),
    }
    spec = _policies(render, values)["rebootcoord-fleetlock-confine"]["spec"]
    rules = [v["expression"] for v in spec["validations"]]
    leases = next(e for e in rules if e.startswith('request.resource.resource != "leases"'))
    for lease in ("rebootcoord-workers", "rebootcoord-fcos"):
        assert f'request.name == "{lease}" || request.name.startsWith("{lease}.w.")' in leases
    # The labels its node operations set: the agents' pre_reboot_labels, its own post_reboot_labels.
    labels = next(e for e in rules if "variables.newLabels" in e)
    assert '["rebootcoord.io/draining","a.example/x","b"]' in labels


@pytest.mark.parametrize(
    ("confine", "served", "policy"),
    [("auto", True, True), ("auto", False, False), ("true", False, True), ("false", True, False)],
)
def test_confinement_follows_rbac_confine(confine: str, served: bool, policy: bool) -> None:
    extra = ["--api-versions", VAP] if served else []
    objects = render_chart({"rbac": {"confine": confine}, **ON}, extra_args=extra)
    names = {o["metadata"]["name"] for o in objects if o["kind"] in POLICY_KINDS}
    assert ("rebootcoord-fleetlock-confine" in names) is policy


def test_helm_lint_with_the_server(helm: Path) -> None:
    proc = subprocess.run(
        [str(helm), "lint", "--strict", str(CHART), "--set", "fleetlock.enabled=true",
         "--set", "fleetlock.tls.secretName=tls", "--set", "serviceMonitor.enabled=true"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [line for line in proc.stdout.splitlines() if line.startswith("[")] == [], proc.stdout


# ----------------------------------------------------------------------------------------------
# What it refuses


def _schema() -> dict[str, Any]:
    return json.loads((CHART / "values.schema.json").read_text())  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "fleetlock",
    [
        {"enabled": "yes"},
        {"replicas": 0},
        {"replicas": "2"},
        {"replicaz": 2},
        {"config": {"fleetlock_unknown_id": "maybe"}},
        {"config": {"fleetlock_workers": 0}},
        {"config": {"fleetlock_waiter_ttl": "a quarter of an hour"}},
        {"config": {"no_such_key": 1}},
        {"service": {"type": "ExternalName"}},
        {"service": {"port": 70000}},
        {"service": {"nodePort": "30000"}},
        {"tls": {"secretName": "Not_A_Name"}},
        {"tls": {"ca": "x"}},
        {"antiAffinity": "always"},
        {"podDisruptionBudget": {"minAvailable": "50%"}},
        {"networkPolicy": {"from": {"ipBlock": {}}}},
        {"image": {"pullPolicy": "Sometimes"}},
        {"extraArgs": [1]},
    ],
    ids=lambda v: json.dumps(v, separators=(",", ":")),
)
def test_schema_rejects(fleetlock: dict[str, Any], render_error: Any) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(_schema()).validate({"fleetlock": fleetlock})
    assert "values don't meet the specifications of the schema" in render_error({"fleetlock": fleetlock})


def test_schema_accepts_the_defaults_and_the_documented_values() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    values["fleetlock"].update(
        enabled=True, replicas=3, antiAffinity="hard", tls={"secretName": "t", "clientCASecret": "ca"},
        service={"type": "NodePort", "nodePort": 30729, "port": 9729, "annotations": {}},
    )  # fmt: skip
    jsonschema.Draft7Validator(_schema()).validate(values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        pytest.param({"config": {"backend": "fleetlock"}}, "its backend cannot be fleetlock", id="backend"),
        pytest.param(
            _on(config={"backend": "etcd"}), "no etcd_endpoints are set", id="etcd-without-endpoints"
        ),
        pytest.param(
            _on(config={"etcd_password": "x"}), "would be stored in a ConfigMap", id="etcd-password"
        ),
        pytest.param(
            _on(serviceAccount={"name": "rebootcoord"}), "is the agents' ServiceAccount", id="agents-account"
        ),
        pytest.param(
            _on(tls={"clientCASecret": "ca"}), "needs fleetlock.tls.secretName", id="client-ca-without-tls"
        ),
        pytest.param(
            _on(config={"fleetlock_listen": "127.0.0.1:9729"}), "listen on every address", id="one-address"
        ),
        pytest.param(
            _on(config={"metrics_address": "0.0.0.0:9729"}), "use the same port (9729)", id="same-ports"
        ),
        pytest.param(_on(config={"metrics_address": ""}), "metrics off", id="probes-without-metrics"),
        pytest.param(
            _on(replicas=2, podDisruptionBudget={"minAvailable": 2}),
            "would let no replica be evicted",
            id="budget-too-tight",
        ),
    ],
)
def test_values_that_cannot_work_are_refused(values: dict[str, Any], message: str, render_error: Any) -> None:
    if "fleetlock" not in values:
        values = {**values, **ON}
    assert message in render_error(values)


def test_metrics_off_without_probes_is_fine(render: Render) -> None:
    values = _on(config={"metrics_address": ""}, livenessProbe={"enabled": False},
                 readinessProbe={"enabled": False})  # fmt: skip
    objects = _server_objects(render(values))
    assert {p["name"] for p in _container(objects)["ports"]} == {"fleetlock"}
    assert not any(o["kind"] == "Service" and o["metadata"]["name"].endswith("-metrics") for o in objects)


# ----------------------------------------------------------------------------------------------
# The real API server: valid objects


@pytest.fixture(scope="module")
def monitoring_crds(kube_cluster: KubeCluster) -> Iterator[None]:
    crds = Path(__file__).with_name("crds") / "monitoring.coreos.com.yaml"
    kube_cluster.kubectl("apply", "-f", str(crds))
    kube_cluster.kubectl("wait", "--for=condition=Established", "crd/servicemonitors.monitoring.coreos.com",
                         "--timeout=60s")  # fmt: skip
    yield
    # Waited for: another module's fixture may apply the same CRDs next, on the same cluster.
    kube_cluster.kubectl("delete", "-f", str(crds), "--ignore-not-found", "--timeout=120s")


def _dry_run(cluster: KubeCluster, manifest: str) -> list[str]:
    out = cluster.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-", input=manifest)
    return out.splitlines()


DRY_RUN_VALUES = [
    pytest.param(ON, id="defaults"),
    pytest.param(
        {
            "serviceMonitor": {"enabled": True},
            "networkPolicy": {
                "metricsFrom": [{"namespaceSelector": {"matchLabels": {"team": "monitoring"}}}]
            },
            **_on(
                replicas=3,
                antiAffinity="hard",
                tls={"secretName": "fleetlock-tls", "clientCASecret": "zincati-ca"},
                service={
                    "type": "LoadBalancer",
                    "nodePort": 30729,
                    "loadBalancerSourceRanges": ["192.0.2.0/24"],
                },
                networkPolicy={"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]},
                topologySpreadConstraints=[
                    {
                        "maxSkew": 1,
                        "topologyKey": "topology.kubernetes.io/zone",
                        "whenUnsatisfiable": "ScheduleAnyway",
                    }
                ],
                config={"pre_reboot_labels": ["example.com/draining=true"], "fleetlock_groups": ["a", "b"]},
                extraArgs=["--log-level=debug"],
            ),
        },
        id="tls-loadbalancer-monitoring",
    ),
    pytest.param(
        {
            "config": {"backend": "etcd", "etcd_endpoints": ["https://etcd:2379"], "node_ops": "kubernetes"},
            "etcd": {"tlsSecret": "etcd-client", "passwordSecret": {"name": "etcd-auth"}},
            **_on(replicas=1, hostNetwork=True, config={"metrics_address": ":19727"}),
        },
        id="etcd-one-replica-host-network",
    ),
]


@pytest.mark.parametrize("values", DRY_RUN_VALUES)
def test_chart_passes_server_side_dry_run(
    kube: KubeTestEnv, monitoring_crds: None, values: dict[str, Any]
) -> None:
    # The policies' CEL is compiled by the API server on the way: a typo would be refused here.
    objects = render_chart(values, namespace=kube.namespace, extra_args=["--api-versions", VAP])
    manifest = yaml.safe_dump_all(_server_objects(objects))
    lines = _dry_run(kube.cluster, manifest)
    assert len(lines) == len(_server_objects(objects)), lines
    assert all(line.endswith("(server dry run)") for line in lines), lines


# ----------------------------------------------------------------------------------------------
# The real API server: the real server's calls, its rights, its confinement


def _fullname(namespace: str) -> str:
    return f"rc-{namespace}"[:40].rstrip("-")


@pytest.fixture
def server_identity(kube: KubeTestEnv) -> Iterator[tuple[ChartIdentity, list[dict[str, Any]]]]:
    """The chart's RBAC and both admission policies applied for the test's namespace; the server's
    identity (a real token) and the chart's objects."""
    values = {"fullnameOverride": _fullname(kube.namespace), "config": {"drain_timeout": "60s"}, **ON}
    objects = render_chart(values, namespace=kube.namespace, extra_args=["--api-versions", VAP])
    policies = [o for o in objects if o["kind"] in POLICY_KINDS]
    apply_objects(kube.cluster, policies)
    try:
        with chart_identity(kube.cluster, kube.namespace, values=values, component=SERVER) as ident:
            yield ident, objects
    finally:
        for obj in policies:
            kube.cluster.kubectl("delete", obj["kind"].lower(), obj["metadata"]["name"], "--ignore-not-found",
                                 "--wait=false", check=False)  # fmt: skip


def _denied(call: Any) -> str:
    with pytest.raises(ApiException) as err:
        call()
    assert err.value.status == 403, err.value
    return str(err.value.body)


def _probe_label() -> dict[str, Any]:
    return {"metadata": {"labels": {"rebootcoord.test/probe": uuid.uuid4().hex[:8]}}}


def test_the_real_server_with_the_charts_rights_and_confinement(
    kube: KubeTestEnv, server_identity: tuple[ChartIdentity, list[dict[str, Any]]], tmp_path: Path
) -> None:
    ident, objects = server_identity
    ns = kube.namespace
    api = ident.api_client()
    core, coordination = k8s.CoreV1Api(api), k8s.CoordinationV1Api(api)
    first, second, operators = kube.create_nodes(3)

    _wait_in_force(core, first.name)

    # A workload on the first node, managed by a controller, as a drain expects.
    kube.apps.create_namespaced_replica_set(ns, {
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"nodeName": first.name, "containers": [{"name": "web", "image": "web:1"}]}},
        },
    })  # fmt: skip
    (web,) = wait_for_pods(kube.api, ns, "app=web", count=1)

    config = {**_server_config(objects), "kubeconfig": str(ident.kubeconfig_path), "namespace": ns}
    server = FleetLockServer(tmp_path, {**config, "log_format": "text"}).start(timeout=60)
    client = FleetLockClient(server.base)

    def post(operation: str, client_id: str) -> tuple[int, str]:
        answer = client.call(operation, client_id)
        return answer.status, answer.kind

    try:
        a, b = app_specific_id(first.machine_id), app_specific_id(second.machine_id)

        # 1. pre-reboot: slot, cordon (marked), the pod evicted, events; then 200.
        assert post("pre-reboot", a) == (200, "ok"), server.log()[-3000:]
        node = kube.core.read_node(first.name)
        assert node.spec.unschedulable is True
        assert node.metadata.annotations["rebootcoord.io/cordoned-by-rebootcoord"] == "true"
        assert web.metadata.uid not in {p.metadata.uid for p in kube.core.list_namespaced_pod(ns).items}
        # 2. a second client waits for the slot, in line (a waiter Lease), and asks again.
        assert post("pre-reboot", b) == (423, "no_free_slot")
        assert post("pre-reboot", b) == (423, "no_free_slot")
        # 3. steady-state: the node Ready, uncordoned, the slot released; the second takes it.
        assert post("steady-state", a) == (200, "ok"), server.log()[-3000:]
        assert not kube.core.read_node(first.name).spec.unschedulable
        assert post("pre-reboot", b) == (200, "ok"), server.log()[-3000:]
        assert post("steady-state", b) == (200, "ok"), server.log()[-3000:]
        assert post("steady-state", b) == (200, "ok")  # idempotent
        # 4. an unknown id is refused before anything is written.
        assert post("pre-reboot", "0" * 32) == (403, "unknown_node")
    finally:
        server.stop()
    log = server.log()
    assert "Forbidden" not in log and "403" not in log, log[-3000:]

    requests = ident.requests()
    assert ident.denied_requests(requests) == []
    assert ident.unused_grants(requests) == [], "grants the server never used: take them out of the chart"

    # RBAC refuses anything else...
    _denied(lambda: core.list_namespaced_secret(ns))
    _denied(lambda: core.delete_node(operators.name))
    _denied(lambda: core.read_namespaced_pod(web.metadata.name, ns))
    _denied(lambda: coordination.list_namespaced_lease("default"))
    _denied(lambda: k8s.AppsV1Api(api).list_namespaced_deployment(ns))
    _denied(lambda: core.patch_node_status(first.name, {"status": {"phase": "x"}}))
    # ... and the policy what RBAC must allow for the server's node operations.
    kube.cluster.kubectl("cordon", operators.name)
    for call, message in [
        (lambda: core.patch_node(operators.name, {"spec": {"unschedulable": None}}),
         "lifts only cordons so marked"),
        (lambda: core.patch_node(second.name, {"spec": {"unschedulable": True}}),
         "marks each cordon it makes"),
        (lambda: core.patch_node(second.name, _probe_label()), "only the labels"),
        (lambda: core.patch_node(second.name, {"metadata": {"annotations": {"example.com/x": "y"}}}),
         "only the rebootcoord.io/ annotations"),
        (lambda: core.patch_node(second.name, {"spec": {"taints": [{"key": "x", "effect": "NoExecute"}]}}),
         "only its own taint"),
        (lambda: core.patch_node(second.name, {"spec": {"taints": [
            {"key": "rebootcoord.io/reboot-pending", "effect": "NoExecute"}]}}), "only its own taint"),
        (lambda: core.patch_node(second.name, {"spec": {"providerID": "kwok://x"}}),
         "only spec.unschedulable and its own taint"),
        (lambda: coordination.create_namespaced_lease(ns, _lease("kube-scheduler")),
         "only the Leases of the groups it serves"),
        (lambda: coordination.create_namespaced_lease(ns, _lease("rebootcoord-other")),
         "only the Leases of the groups it serves"),
    ]:  # fmt: skip
        assert message in _denied(call)
    # What its node operations do is allowed: its own annotations and taint, a marked cordon.
    core.patch_node(second.name, {"metadata": {"annotations": {"rebootcoord.io/phase": "idle"}}})
    core.patch_node(second.name, {"spec": {"taints": [{"key": "rebootcoord.io/reboot-pending",
                                                       "effect": "PreferNoSchedule"}]}})  # fmt: skip
    core.patch_node(second.name, {"spec": {"taints": None}})
    coordination.create_namespaced_lease(ns, _lease("rebootcoord-default.w.someone"))


def _wait_in_force(core: k8s.CoreV1Api, node: str) -> None:
    """The policy is in force once the API server has compiled it: wait for its first denial."""
    wait_for(lambda: _try_denied(lambda: core.patch_node(node, _probe_label())),
             timeout=60, what="the server's admission policy to take effect")  # fmt: skip


def _try_denied(call: Any) -> bool:
    try:
        call()
    except ApiException as exc:
        return exc.status == 403
    return False


def _lease(name: str) -> k8s.V1Lease:
    return k8s.V1Lease(metadata=k8s.V1ObjectMeta(name=name), spec=k8s.V1LeaseSpec(holder_identity="x"))


# ----------------------------------------------------------------------------------------------
# The real API server: the cordon marker, with the server's token
#
# The marker says "this cordon is rebootcoord's" and is what lets the token lift a cordon. Were
# it free like any rebootcoord.io/ annotation, the token could mark an operator's cordon, then lift
# it. It is set only with a cordon of a schedulable Node, and removed only with the uncordon or
# from a schedulable Node.


def _marker(value: str | None) -> dict[str, Any]:
    return {"metadata": {"annotations": {ANN_CORDONED: value}}}


UNCORDON: dict[str, Any] = {"spec": {"unschedulable": None}}


def _cordon_and_marker(kube: KubeTestEnv, node: str) -> tuple[bool, str | None]:
    found = kube.core.read_node(node)
    return bool(found.spec.unschedulable), (found.metadata.annotations or {}).get(ANN_CORDONED)


def _server_node_ops(ident: ChartIdentity, node: str) -> KubeNodeOps:
    """The product's node operations (the patches the server sends), with the server's token."""
    return KubeNodeOps(Kube(ident.api_client()), NodeName(node))


def test_the_servers_token_cannot_mark_an_operators_cordon_and_lift_it(
    kube: KubeTestEnv, server_identity: tuple[ChartIdentity, list[dict[str, Any]]]
) -> None:
    ident, _ = server_identity
    core = k8s.CoreV1Api(ident.api_client())
    (node,) = kube.create_nodes(1)
    _wait_in_force(core, node.name)
    kube.cluster.kubectl("cordon", node.name)  # an operator's cordon: no marker
    assert _cordon_and_marker(kube, node.name) == (True, None)

    claim = (
        "only in the change that cordons a schedulable Node, so that it never claims a cordon it did not"
        f" make; refused on Node {node.name}, cordoned already"
    )
    lift = f"the cordon of Node {node.name} is not marked, so it is someone else's and stays"
    for what, patch, message in [
        ("mark it (the first half of the trick)", _marker("true"), claim),
        ("mark it with the node operations' cordon", {"spec": {"unschedulable": True}, **_marker("true")},
         claim),
        ("uncordon it (the second half)", UNCORDON, lift),
        ("uncordon and mark it in one patch", {**UNCORDON, **_marker("true")}, lift),
        ("the node operations' uncordon", {**UNCORDON, **_marker(None)}, lift),
    ]:  # fmt: skip
        assert message in _denied(partial(core.patch_node, node.name, patch)), what
        assert _cordon_and_marker(kube, node.name) == (True, None), what
    # Their own annotations the node operations still write on it.
    _server_node_ops(ident, node.name).announce(Phase.WAITING, "an operator's cordon: not ours to lift")
    assert _cordon_and_marker(kube, node.name) == (True, None)


def test_the_servers_token_cannot_unmark_a_cordon_it_keeps(
    kube: KubeTestEnv, server_identity: tuple[ChartIdentity, list[dict[str, Any]]]
) -> None:
    ident, _ = server_identity
    core = k8s.CoreV1Api(ident.api_client())
    (node,) = kube.create_nodes(1)
    _wait_in_force(core, node.name)
    _server_node_ops(ident, node.name).cordon()
    assert _cordon_and_marker(kube, node.name) == (True, "true")

    disowned = f"Node {node.name} stays cordoned, and its cordon would pass for someone else's"
    for what, patch in [
        ("remove the marker", _marker(None)),
        ("change it", _marker("false")),
        ("remove it, cordoning again", {"spec": {"unschedulable": True}, **_marker(None)}),
    ]:
        assert disowned in _denied(partial(core.patch_node, node.name, patch)), what
        assert _cordon_and_marker(kube, node.name) == (True, "true"), what


def test_the_node_operations_cycle_passes_with_the_servers_token(
    kube: KubeTestEnv, server_identity: tuple[ChartIdentity, list[dict[str, Any]]]
) -> None:
    ident, _ = server_identity
    node, stale = kube.create_nodes(2)
    _wait_in_force(k8s.CoreV1Api(ident.api_client()), node.name)
    ops = _server_node_ops(ident, node.name)

    ops.cordon()  # a schedulable node: cordon and marker in one patch
    assert _cordon_and_marker(kube, node.name) == (True, "true") and ops.cordoned_by_us()
    ops.cordon()  # again, as a pre-reboot asked again: nothing changes
    ops.announce(Phase.DRAINING, "draining before its reboot")
    ops.set_waiting_taint(True)
    ops.set_waiting_taint(False)
    ops.announce(Phase.REBOOTING, "may reboot: node drained")
    ops.uncordon()  # the uncordon and the marker's removal in one patch
    assert _cordon_and_marker(kube, node.name) == (False, None)
    ops.uncordon()  # again, on a schedulable node: nothing to lift
    ops.announce(Phase.IDLE, "back: uncordoned, slot released")
    assert _cordon_and_marker(kube, node.name) == (False, None)

    # An operator lifts our cordon by hand (kubectl uncordon leaves the marker): the stale marker
    # may be cleaned up from the schedulable node.
    stale_ops = _server_node_ops(ident, stale.name)
    stale_ops.cordon()
    kube.cluster.kubectl("uncordon", stale.name)
    assert _cordon_and_marker(kube, stale.name) == (False, "true")
    k8s.CoreV1Api(ident.api_client()).patch_node(stale.name, _marker(None))
    assert _cordon_and_marker(kube, stale.name) == (False, None)
