"""The real API server accepts what the chart renders and the manifests in deploy/.

`kubectl apply --dry-run=server --validate=strict`: every object goes through the API server's
validation, defaulting and admission (and, for the monitoring objects, stand-in CRDs of
prometheus-operator's kinds), and an unknown field anywhere is an error, not a silent prune.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cluster import REPO_ROOT, KubeCluster
from tests.support.kubecluster import KubeTestEnv
from tests.support.rbac import CHART, KUBE_VERSION

pytestmark = pytest.mark.kube

CRDS = Path(__file__).with_name("crds") / "monitoring.coreos.com.yaml"
DEPLOY = REPO_ROOT / "deploy"


@pytest.fixture(scope="module")
def monitoring_crds(kube_cluster: KubeCluster) -> Iterator[None]:
    kube_cluster.kubectl("apply", "-f", str(CRDS))
    kube_cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "crd/servicemonitors.monitoring.coreos.com",
        "crd/prometheusrules.monitoring.coreos.com",
        "--timeout=60s",
    )
    yield
    # Waited for: another module's fixture may apply the same CRDs next, on the same cluster.
    kube_cluster.kubectl("delete", "-f", str(CRDS), "--ignore-not-found", "--timeout=120s")


def _dry_run(cluster: KubeCluster, manifest: str) -> list[str]:
    """Server-side dry run of a multi-document manifest whose objects name their namespaces;
    kubectl's lines, one per object."""
    out = cluster.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-", input=manifest)
    return out.splitlines()


VALUE_SETS = [
    pytest.param({}, id="defaults"),
    pytest.param({"config": {"reboot_method": "signal"}}, id="signal"),
    pytest.param(
        {
            "serviceMonitor": {"enabled": True, "labels": {"release": "kps"}},
            "prometheusRule": {
                "enabled": True,
                "extraRules": [{"record": "x:y", "expr": "sum(rebootcoord_waiters)"}],
            },
            "dashboard": {"enabled": True},
            "networkPolicy": {
                "metricsFrom": [{"namespaceSelector": {"matchLabels": {"team": "monitoring"}}}]
            },
        },
        id="monitoring",
    ),
    pytest.param(
        {
            "config": {
                "backend": "etcd",
                "etcd_endpoints": ["https://etcd-1:2379"],
                "detectors": [{"type": "sentinel"}, {"type": "rpm-ostree"}],
                "health_checks": [{"type": "command", "argv": ["systemctl", "is-system-running"]}],
                "windows": [{"days": ["sat", "sun"], "start": "22:00", "end": "06:00"}],
            },
            "etcd": {"tlsSecret": "etcd-client", "passwordSecret": {"name": "etcd-auth"}},
        },
        id="etcd-backend",
    ),
    pytest.param(
        {
            "priorityClassName": "system-node-critical",
            "nodeSelector": {"pool": "workers"},
            "tolerations": [{"operator": "Exists"}],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["workers"]}]}
                        ]
                    }
                }
            },
            "image": {"repository": "registry.example/rebootcoord", "digest": "sha256:" + "0" * 64},
            "imagePullSecrets": [{"name": "registry"}],
            "podAnnotations": {"a": "b"},
            "serviceAccount": {"annotations": {"c": "d"}},
            "extraEnv": [{"name": "TZ", "value": "UTC"}],
            "extraVolumes": [{"name": "extra", "emptyDir": {}}],
            "extraVolumeMounts": [{"name": "extra", "mountPath": "/extra"}],
            "updateStrategy": {"type": "OnDelete"},
        },
        id="scheduling-and-extras",
    ),
]


@pytest.mark.parametrize("values", VALUE_SETS)
def test_helm_template_passes_server_side_dry_run(
    kube: KubeTestEnv, monitoring_crds: None, helm: Path, values: dict[str, Any]
) -> None:
    rendered = subprocess.run(
        [
            *(str(helm), "template", "rebootcoord", str(CHART), "--namespace", kube.namespace),
            *("--kube-version", KUBE_VERSION, "--values", "-"),
        ],
        input=yaml.safe_dump(values),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    objects = [d for d in yaml.safe_load_all(rendered) if d]
    lines = _dry_run(kube.cluster, rendered)
    assert len(lines) == len(objects), lines
    assert all(line.endswith("(server dry run)") for line in lines), lines


def test_an_unknown_field_is_refused(kube: KubeTestEnv, monitoring_crds: None) -> None:
    """--validate=strict is on: a misspelt field is an error, in core kinds as in the CRDs."""
    for doc in (
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "dataa": {}},
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PrometheusRule",
            "metadata": {"name": "x"},
            "spec": {"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "1", "fro": "5m"}]}]},
        },
    ):
        proc = subprocess.run(
            [
                *(str(kube.cluster.testbin.path("kubectl")), f"--kubeconfig={kube.cluster.kubeconfig}"),
                *("apply", "--dry-run=server", "--validate=strict", "-n", kube.namespace, "-f", "-"),
            ],
            input=yaml.safe_dump(doc),
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode != 0 and "unknown field" in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def deploy_namespace(kube_cluster: KubeCluster) -> Iterator[str]:
    """The namespace deploy/ installs into, applied for real from the manifest (a dry-run Namespace
    does not exist for the objects after it); deleted at the end of the module if it made it."""
    manifest = [d for d in yaml.safe_load_all((DEPLOY / "rebootcoord.yaml").read_text()) if d]
    namespace = manifest[0]
    assert namespace["kind"] == "Namespace"
    existed = bool(kube_cluster.kubectl("get", "namespace", "rebootcoord", "--ignore-not-found").strip())
    kube_cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(namespace))
    yield namespace["metadata"]["name"]
    if not existed:
        # Waited for: the next test on this cluster may install into it (tests/realnode).
        kube_cluster.kubectl("delete", "namespace", "rebootcoord", "--timeout=120s")


@pytest.mark.parametrize(
    "name", ["rebootcoord.yaml", "rebootcoord-signal.yaml", "rebootcoord-fleetlock.yaml"]
)
def test_deploy_manifests_pass_server_side_dry_run(
    kube_cluster: KubeCluster, deploy_namespace: str, name: str
) -> None:
    manifest = (DEPLOY / name).read_text()
    objects = [d for d in yaml.safe_load_all(manifest) if d]
    assert {o["metadata"].get("namespace") for o in objects[1:]} <= {deploy_namespace, "default", None}
    lines = _dry_run(kube_cluster, manifest)
    assert len(lines) == len(objects), lines
    assert all("(server dry run)" in line for line in lines), lines
