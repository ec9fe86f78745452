"""The Helm chart renders what each configuration needs, and refuses what cannot work.

Rendering only (``helm template``, ``helm lint``): no cluster. The server-side dry run is in
test_server_dry_run.py, the RBAC proof in test_rbac_cluster.py.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from rebootcoord import __version__
from rebootcoord.core.config import json_schema, load_settings
from tests.packaging.conftest import Render, kinds, only
from tests.support.rbac import CHART

# helm comes from testbin/, which `make testbin` builds with the control plane.
pytestmark = pytest.mark.kube


def _agent(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return only(objects, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]


def _config(objects: list[dict[str, Any]]) -> dict[str, Any]:
    cm = next(o for o in objects if o["kind"] == "ConfigMap" and "config.yaml" in o["data"])
    return yaml.safe_load(cm["data"]["config.yaml"])


def _pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return only(objects, "DaemonSet")["spec"]["template"]["spec"]


# ----------------------------------------------------------------------------------------------
# The chart as a package


@pytest.mark.parametrize(
    "args",
    [
        pytest.param([], id="defaults"),
        pytest.param(
            [
                *("--set", "config.reboot_method=signal", "--set", "serviceMonitor.enabled=true"),
                *("--set", "prometheusRule.enabled=true", "--set", "dashboard.enabled=true"),
            ],
            id="signal-and-monitoring",
        ),
    ],
)
def test_helm_lint_is_clean(helm: Path, args: list[str]) -> None:
    proc = subprocess.run(
        [str(helm), "lint", "--strict", str(CHART), *args], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    messages = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    assert messages == [], "helm lint has something to say:\n" + proc.stdout


def test_app_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == __version__


def test_default_objects(render: Render) -> None:
    objects = render()
    where = {(o["kind"], o["metadata"]["name"]): o["metadata"].get("namespace") for o in objects}
    assert where == {
        ("ServiceAccount", "rebootcoord"): "rebootcoord",
        ("ConfigMap", "rebootcoord"): "rebootcoord",
        ("Role", "rebootcoord"): "rebootcoord",  # Leases
        ("RoleBinding", "rebootcoord"): "rebootcoord",
        ("Role", "rebootcoord-events"): "default",  # events about Nodes live there
        ("RoleBinding", "rebootcoord-events"): "default",
        ("ClusterRole", "rebootcoord"): None,
        ("ClusterRoleBinding", "rebootcoord"): None,
        ("Service", "rebootcoord"): "rebootcoord",
        ("DaemonSet", "rebootcoord"): "rebootcoord",
        ("NetworkPolicy", "rebootcoord"): "rebootcoord",
    }


@pytest.mark.parametrize(
    ("config", "roles", "token"),
    [
        pytest.param({}, {"rebootcoord", "rebootcoord-events"}, True, id="lease-backend"),
        pytest.param(
            {"backend": "etcd", "etcd_endpoints": ["http://etcd:2379"], "node_ops": "kubernetes"},
            {"rebootcoord-events"},
            True,
            id="etcd-backend-kubernetes-drain",
        ),
        pytest.param(
            {"backend": "etcd", "etcd_endpoints": ["http://etcd:2379"]}, set(), False, id="etcd-only"
        ),
    ],
)
def test_rbac_and_token_only_where_the_agent_calls_the_api(
    render: Render, config: dict[str, Any], roles: set[str], token: bool
) -> None:
    objects = render({"config": config})
    assert {o["metadata"]["name"] for o in objects if o["kind"] == "Role"} == roles
    assert ("ClusterRole" in kinds(objects)) is token
    assert _pod(objects)["automountServiceAccountToken"] is token
    assert only(objects, "ServiceAccount")["automountServiceAccountToken"] is False


def _cluster_rules(objects: list[dict[str, Any]]) -> dict[str, list[str]]:
    roles = [o for o in objects if o["kind"] == "ClusterRole"]
    return {r["resources"][0]: r["verbs"] for role in roles for r in role["rules"]}


NODE_OPS_OFF = {"node_ops": "none"}
PDB_LIST = {"poddisruptionbudgets": ["list"]}  # the PDB pre-check (pdb_precheck, on by default)


@pytest.mark.parametrize(
    ("config", "rules", "events"),
    [
        pytest.param(
            {},
            {"nodes": ["get", "patch"], "pods": ["list"], "pods/eviction": ["create"], **PDB_LIST},
            True,
            id="defaults",
        ),
        pytest.param(
            {"max_unavailable_nodes": 0},
            {"nodes": ["get", "list", "patch"], "pods": ["list"], "pods/eviction": ["create"], **PDB_LIST},
            True,
            id="budget-gate-lists-nodes",
        ),
        pytest.param(
            {"pdb_precheck": False},
            {"nodes": ["get", "patch"], "pods": ["list"], "pods/eviction": ["create"]},
            True,
            id="no-pdb-precheck-no-budgets",
        ),
        pytest.param(
            {"backend": "etcd", "etcd_endpoints": ["http://etcd:2379"], "node_ops": "kubernetes"},
            {"nodes": ["get", "patch"], "pods": ["list"], "pods/eviction": ["create"], **PDB_LIST},
            True,
            id="etcd-backend-kubernetes-drain-pdb-precheck",
        ),
        # No drain, no pre-check of the drain: the key alone asks for nothing.
        pytest.param(
            NODE_OPS_OFF | {"pdb_precheck": True}, {"nodes": ["get"]}, False, id="pdb-precheck-no-drain"
        ),
        pytest.param(NODE_OPS_OFF, {"nodes": ["get"]}, False, id="no-node-ops-ready-check-reads-the-node"),
        pytest.param(NODE_OPS_OFF | {"verify_node_ready": False}, {}, False, id="no-node-ops-no-check"),
        pytest.param(
            NODE_OPS_OFF | {"verify_node_ready": False, "boot_id_source": "node"},
            {"nodes": ["get"]},
            False,
            id="boot-id-from-the-node",
        ),
        pytest.param(
            NODE_OPS_OFF | {"blocking_pod_selector": "app=db"},
            {"nodes": ["get"], "pods": ["list"]},
            False,
            id="blocker-gate-lists-pods",
        ),
        pytest.param(
            NODE_OPS_OFF | {"verify_pods_ready": True, "verify_node_ready": False},
            {"pods": ["list"]},
            False,
            id="pods-ready-check-lists-pods",
        ),
    ],
)
def test_cluster_rules_follow_the_agents_calls(
    render: Render, config: dict[str, Any], rules: dict[str, list[str]], events: bool
) -> None:
    """The rules mirror rebootcoord/cli/wiring.py: each gate, check and operation its own calls."""
    objects = render({"config": config})
    assert _cluster_rules(objects) == rules
    assert ("ClusterRoleBinding" in kinds(objects)) is bool(rules)
    assert (
        any(o["metadata"]["name"] == "rebootcoord-events" for o in objects if o["kind"] == "Role") is events
    )


def test_lease_role_follows_config_namespace(render: Render) -> None:
    objects = render({"config": {"namespace": "reboots"}})
    role = next(o for o in objects if o["kind"] == "Role" and o["metadata"]["name"] == "rebootcoord")
    binding = next(
        o for o in objects if o["kind"] == "RoleBinding" and o["metadata"]["name"] == "rebootcoord"
    )
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "reboots"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "rebootcoord", "namespace": "rebootcoord"}
    ]


# ----------------------------------------------------------------------------------------------
# Privileges follow the reboot method


SIGNAL = {"config": {"reboot_method": "signal"}}

PRIVILEGED_CASES = [
    pytest.param({}, True, "nsenter", id="command-method"),
    pytest.param(SIGNAL, False, "direct", id="signal-method"),
    pytest.param(
        {"config": {"reboot_method": "signal", "detectors": [{"type": "rpm-ostree"}]}},
        True,
        "nsenter",
        id="signal-with-rpm-ostree-detector",
    ),
    pytest.param(
        {"config": {"reboot_method": "signal", "detectors": ["sentinel", "update-engine"]}},
        True,
        "nsenter",
        id="signal-with-update-engine-detector",
    ),
    pytest.param(
        {
            "config": {
                "reboot_method": "signal",
                "health_checks": [{"type": "command", "argv": ["systemctl", "is-system-running"]}],
            }
        },
        True,
        "nsenter",
        id="signal-with-command-health-check",
    ),
    pytest.param(
        {
            "config": {
                "reboot_method": "signal",
                "health_checks": [{"type": "http", "url": "http://127.0.0.1:10248/healthz"}],
            }
        },
        False,
        "direct",
        id="signal-with-http-health-check",
    ),
]


@pytest.mark.parametrize(("values", "privileged", "host_exec"), PRIVILEGED_CASES)
def test_privileges_follow_the_reboot_method(
    render: Render, values: dict[str, Any], privileged: bool, host_exec: str
) -> None:
    objects = render(values)
    pod, agent = _pod(objects), _agent(objects)
    ctx = agent["securityContext"]
    assert pod["hostPID"] is True
    assert _config(objects)["host_exec"] == host_exec
    assert ctx["privileged"] is privileged
    assert ctx["readOnlyRootFilesystem"] is True
    assert pod["enableServiceLinks"] is False
    containers = {c["name"]: c for c in pod["containers"]}
    if privileged:
        assert ctx["runAsUser"] == 0 and ctx["runAsNonRoot"] is False
        assert "capabilities" not in ctx  # meaningless for a privileged container
        assert set(containers) == {"agent"}
        assert "reboot_signal_relay" not in _config(objects)
        return
    # The agent, which reads host directories, is neither root nor holds any capability...
    assert ctx["runAsUser"] == 65532 and ctx["runAsNonRoot"] is True
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    # ... and the relay, root with CAP_KILL alone, mounts nothing but the socket they share.
    relay = containers["signal-relay"]
    rctx = relay["securityContext"]
    assert rctx["runAsUser"] == 0 and rctx["runAsGroup"] == 65532
    assert rctx["capabilities"] == {"drop": ["ALL"], "add": ["KILL"]}
    assert rctx["allowPrivilegeEscalation"] is False and rctx["readOnlyRootFilesystem"] is True
    assert [m["name"] for m in relay["volumeMounts"]] == ["relay"]
    assert "--allow-uid=65532" in relay["args"] and "--signal=SIGRTMIN+5" in relay["args"]
    assert _config(objects)["reboot_signal_relay"] == "/run/rebootcoord/relay.sock"
    for container in containers.values():
        assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_an_explicit_nsenter_is_kept(render: Render) -> None:
    objects = render({"config": {"reboot_method": "signal", "host_exec": "nsenter"}})
    assert _agent(objects)["securityContext"]["privileged"] is True


# ----------------------------------------------------------------------------------------------
# Contradictions stop the rendering with a message naming the values


CONTRADICTIONS = [
    pytest.param(
        {"config": {"host_exec": "direct"}},
        "config.reboot_method=command with config.host_exec=direct",
        id="command-method-without-nsenter",
    ),
    pytest.param(
        {"config": {"reboot_method": "signal", "host_exec": "direct", "detectors": [{"type": "rpm-ostree"}]}},
        "need config.host_exec=nsenter",
        id="host-detector-without-nsenter",
    ),
    pytest.param(
        {
            "config": {
                "reboot_method": "signal",
                "host_exec": "direct",
                "health_checks": [{"type": "command", "argv": ["true"]}],
            }
        },
        "need config.host_exec=nsenter",
        id="command-check-without-nsenter",
    ),
    pytest.param({"config": {"node_name": "node-1"}}, "the same identity", id="node-name-set"),
    pytest.param({"config": {"holder_id": "x"}}, "the same identity", id="holder-id-set"),
    pytest.param(
        {"config": {"etcd_password": "hunter2"}}, "etcd.passwordSecret.name", id="password-in-configmap"
    ),
    pytest.param({"config": {"host_root": "/"}}, "config.host_root=/", id="host-root-slash"),
    pytest.param({"config": {"backend": "etcd"}}, "config.etcd_endpoints", id="etcd-without-endpoints"),
    pytest.param({"config": {"metrics_address": ""}}, "metrics_address is empty", id="no-metrics-but-probes"),
    pytest.param(
        {"config": {"metrics_address": "127.0.0.1:9727"}},
        "use 0.0.0.0:9727 or :9727",
        id="metrics-on-loopback",
    ),
    pytest.param(
        {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}},
        "serviceMonitor.enabled needs service.enabled",
        id="service-monitor-without-service",
    ),
    pytest.param(
        {"prometheusRule": {"enabled": True}, "config": {"drain_timeout": "1.5h"}},
        "config.drain_timeout=1.5h is not a Prometheus duration",
        id="drain-timeout-not-a-prometheus-duration",
    ),
    pytest.param(
        {"serviceAccount": {"create": False}},
        "serviceAccount.name: name the existing ServiceAccount",
        id="no-service-account-no-name",
    ),
]


@pytest.mark.parametrize(("values", "message"), CONTRADICTIONS)
def test_contradictions_are_refused(
    render_error: Callable[[Mapping[str, Any]], str], values: dict[str, Any], message: str
) -> None:
    assert message in render_error(values)


# values.schema.json: one value at a time, with the path of the culprit in helm's message.
SCHEMA_ERRORS = [
    pytest.param({"replicas": 3}, ["additional properties 'replicas' not allowed"], id="unknown-value"),
    pytest.param(
        {"config": {"max_holder": 2}},
        ["/config", "additional properties 'max_holder' not allowed"],
        id="typo-in-key",
    ),
    pytest.param({"config": {"max_holders": 0}}, ["/config/max_holders", "minimum"], id="max-holders-zero"),
    pytest.param(
        {"config": {"reboot_method": "kexec"}},
        ["/config/reboot_method", "one of 'command', 'signal'"],
        id="unknown-method",
    ),
    pytest.param({"config": {"drain_timeout": "soon"}}, ["/config/drain_timeout"], id="bad-duration"),
    pytest.param(
        {"config": {"detectors": [{"type": "sentinel", "paht": "/x"}]}},
        ["/config/detectors/0"],
        id="detector-typo",
    ),
    pytest.param({"config": {"group": "a b"}}, ["/config/group"], id="bad-group"),
    pytest.param({"image": {"pullPolicy": "Sometimes"}}, ["/image/pullPolicy"], id="pull-policy"),
    pytest.param({"image": {"digest": "latest"}}, ["/image/digest"], id="digest"),
    pytest.param({"service": {"port": 70000}}, ["/service/port", "maximum"], id="port"),
    pytest.param(
        {"prometheusRule": {"alerts": {"slotHeldTooLong": {"for": "2 hours"}}}},
        ["/prometheusRule/alerts/slotHeldTooLong/for"],
        id="alert-for",
    ),
    pytest.param({"tolerations": {"key": "x"}}, ["/tolerations"], id="tolerations-not-a-list"),
]


@pytest.mark.parametrize(("values", "fragments"), SCHEMA_ERRORS)
def test_schema_rejects_bad_values_and_names_them(
    render_error: Callable[[Mapping[str, Any]], str], values: dict[str, Any], fragments: list[str]
) -> None:
    error = render_error(values)
    assert "values don't meet the specifications of the schema" in error
    for fragment in fragments:
        assert fragment in error, error


# ----------------------------------------------------------------------------------------------
# The configuration file is the agent's


def _loads(config: dict[str, Any]) -> None:
    """The agent accepts the rendered file as it would in a pod (NODE_NAME from the downward API)."""
    load_settings(file_data=config, file_name="config.yaml", env={}, fallbacks={"node_name": "node-1"})


@pytest.mark.parametrize("values", [{}, SIGNAL], ids=["defaults", "signal"])
def test_the_agent_accepts_the_rendered_configuration(render: Render, values: dict[str, Any]) -> None:
    config = _config(render(values))
    _loads(config)
    assert config["backend"] == "kubernetes"
    assert config["host_root"] == "/host"


def test_every_agent_key_is_a_value(render: Render) -> None:
    """Every key of the agent's schema can be set through config (here: to its own default)."""
    props = json_schema()["properties"]
    config = {k: p["default"] for k, p in props.items() if "default" in p}
    # What a DaemonSet needs instead of the agent's host defaults (the chart refuses the others).
    config |= {"backend": "kubernetes", "host_root": "/host", "host_exec": "nsenter"}
    rendered = _config(render({"config": config}))
    # Empty identities are left out: each pod takes its node's name from NODE_NAME.
    assert set(rendered) == set(config) - {"node_name", "holder_id"}
    _loads(rendered)


def test_etcd_secrets_are_mounted_and_named_in_the_file(render: Render) -> None:
    objects = render(
        {
            "config": {"backend": "etcd", "etcd_endpoints": ["https://etcd-1:2379"]},
            "etcd": {"tlsSecret": "etcd-client", "passwordSecret": {"name": "etcd-auth"}},
        }
    )
    config, agent, pod = _config(objects), _agent(objects), _pod(objects)
    assert config["etcd_ca_file"] == "/etc/rebootcoord/etcd/ca.crt"
    assert config["etcd_cert_file"] == "/etc/rebootcoord/etcd/tls.crt"
    assert config["etcd_key_file"] == "/etc/rebootcoord/etcd/tls.key"
    assert {"name": "etcd-tls", "mountPath": "/etc/rebootcoord/etcd", "readOnly": True} in agent[
        "volumeMounts"
    ]
    assert {"name": "etcd-tls", "secret": {"secretName": "etcd-client", "defaultMode": 0o400}} in pod[
        "volumes"
    ]
    env = {e["name"]: e for e in agent["env"]}
    assert env["REBOOTCOORD_ETCD_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "etcd-auth",
        "key": "password",
    }
    assert "etcd_password" not in config


# ----------------------------------------------------------------------------------------------
# What the pod gets


def test_identity_and_config_come_from_the_pod(render: Render) -> None:
    agent = _agent(render())
    env = {e["name"]: e for e in agent["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["REBOOTCOORD_CONFIG"]["value"] == "/etc/rebootcoord/config.yaml"
    assert agent["args"] == ["agent", "--config", "/etc/rebootcoord/config.yaml"]


@pytest.mark.parametrize(
    ("detectors", "mounts"),
    [
        pytest.param(None, {"/run": "/host/run"}, id="default-sentinel"),
        pytest.param(["sentinel"], {"/run": "/host/run"}, id="shorthand"),
        pytest.param(
            [
                {"type": "sentinel", "path": "/var/run/reboot-required.d/kernel"},
                {"type": "sentinel", "path": "/run/x"},
            ],
            {"/var/run/reboot-required.d": "/host/var/run/reboot-required.d", "/run": "/host/run"},
            id="two-directories",
        ),
        pytest.param(
            [{"type": "sentinel", "path": "/run/a"}, {"type": "sentinel", "path": "/run/b"}],
            {"/run": "/host/run"},
            id="one-directory-once",
        ),
        pytest.param([{"type": "rpm-ostree"}], {}, id="no-sentinel-no-host-mount"),
    ],
)
def test_only_sentinel_directories_of_the_host_are_mounted(
    render: Render, detectors: list[Any] | None, mounts: dict[str, str]
) -> None:
    values = {"config": {"detectors": detectors}} if detectors else {}
    objects = render(values)
    pod, agent = _pod(objects), _agent(objects)
    host_volumes = {v["name"]: v["hostPath"] for v in pod["volumes"] if "hostPath" in v}
    got = {}
    for m in agent["volumeMounts"]:
        if m["name"] in host_volumes:
            assert m["readOnly"] is True and m["mountPropagation"] == "HostToContainer"
            assert host_volumes[m["name"]]["type"] == "Directory"
            got[host_volumes[m["name"]]["path"]] = m["mountPath"]
    assert got == mounts


def test_ports_and_probes_follow_metrics_address(render: Render) -> None:
    agent = _agent(render({"config": {"metrics_address": ":9100"}}))
    assert agent["ports"] == [{"name": "metrics", "containerPort": 9100, "protocol": "TCP"}]
    for probe in ("livenessProbe", "readinessProbe"):
        assert agent[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}


def test_metrics_off_means_no_port_no_probe_no_service(render: Render) -> None:
    objects = render(
        {
            "config": {"metrics_address": ""},
            "livenessProbe": {"enabled": False},
            "readinessProbe": {"enabled": False},
            "service": {"enabled": False},
        }
    )
    agent = _agent(objects)
    assert "ports" not in agent and "livenessProbe" not in agent and "readinessProbe" not in agent
    assert "Service" not in kinds(objects)
    assert only(objects, "NetworkPolicy")["spec"]["ingress"] is None  # nothing may connect


def test_network_policy_admits_the_metrics_port_only(render: Render) -> None:
    peers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    policy = only(render({"networkPolicy": {"metricsFrom": peers}}), "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    assert policy["ingress"] == [{"ports": [{"port": "metrics", "protocol": "TCP"}], "from": peers}]


def test_scheduling_values(render: Render) -> None:
    tolerations = [{"operator": "Exists"}]
    resources = {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "300Mi"}}
    objects = render(
        {
            "priorityClassName": "system-node-critical",
            "nodeSelector": {"pool": "workers"},
            "tolerations": tolerations,
            "resources": resources,
            "image": {"repository": "registry.example/rebootcoord", "digest": "sha256:" + "a" * 64},
        }
    )
    pod, agent = _pod(objects), _agent(objects)
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux", "pool": "workers"}  # maps merge
    assert pod["tolerations"] == tolerations
    assert agent["resources"] == resources
    assert agent["image"] == "registry.example/rebootcoord@sha256:" + "a" * 64


def test_default_tolerations_and_image(render: Render) -> None:
    pod = _pod(render())
    assert {
        "key": "node-role.kubernetes.io/control-plane",
        "operator": "Exists",
        "effect": "NoSchedule",
    } in pod["tolerations"]
    assert pod["containers"][0]["image"] == f"rebootcoord:{__version__}"


def test_config_changes_roll_the_pods(render: Render) -> None:
    def checksum(values: dict[str, Any]) -> str:
        return only(render(values), "DaemonSet")["spec"]["template"]["metadata"]["annotations"][
            "checksum/config"
        ]

    assert checksum({}) != checksum({"config": {"max_holders": 2}})
