"""The agent installed on the real kubelet node as users install it, and what the tests drive.

``install(values)`` runs ``helm install rebootcoord charts/rebootcoord -n rebootcoord
--create-namespace`` (the README's command) with the values a test cluster needs on top of the
chart's defaults -- the image from ``make image`` imported into the node's containerd, hostNetwork
(the node's CNI is loopback only), a toleration of the real node's taint -- and a harmless reboot
command that records each request in a file of the test. Nothing else is changed: probes, RBAC,
security contexts and mounts are the chart's.

The node's host directories (/run: the sentinel file, the boot ID file the agent is configured to
read) are the node's private ones (tests/support/realnode.py), reached here through
``real_node.host_path``.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.support.cluster import REPO_ROOT, ClusterError, KubeCluster, free_port, wait_for
from tests.support.realnode import HOST_TEST_DIR, REAL_NODE_LABEL, TOLERATION, RealNode

NAMESPACE = "rebootcoord"  # the README's
RELEASE = "rebootcoord"
CHART = REPO_ROOT / "charts" / "rebootcoord"
#: The end-to-end values and workload, shared with the kind workflow.
E2E_VALUES = REPO_ROOT / "hack" / "e2e" / "values.yaml"
E2E_WORKLOAD = REPO_ROOT / "hack" / "e2e" / "workload.yaml"
SENTINEL = Path("/run/reboot-required")
#: Where the harmless reboot command records each request, on the node's host (its /run).
REQUESTS_FILE = HOST_TEST_DIR / "reboot-requests"


@pytest.fixture(scope="session")
def node_image(real_node: RealNode, agent_image: str) -> str:
    """The image `make image` built, imported into the real node's containerd."""
    seconds = real_node.import_image(agent_image)
    print(f"image import into containerd: {seconds:.1f}s")
    return agent_image


def cluster_values(node: RealNode, image: str, requests_file: Path) -> dict[str, Any]:
    """hack/e2e/values.yaml (shared with the kind workflow), plus what the real node needs."""
    repository, _, tag = image.rpartition(":")
    api = urlsplit(node.cluster.server)
    real_node = {
        "image": {"repository": repository, "tag": tag},
        # No pod network on this node (loopback-only CNI), and a taint of its own.
        "hostNetwork": True,
        "nodeSelector": {REAL_NODE_LABEL: "true"},
        "tolerations": [TOLERATION],
        # No kube-proxy: the in-cluster client reaches the API server on loopback, where it listens.
        "extraEnv": [
            {"name": "KUBERNETES_SERVICE_HOST", "value": api.hostname},
            {"name": "KUBERNETES_SERVICE_PORT", "value": str(api.port)},
        ],
        "config": {
            # hostNetwork: a port of its own on the machine.
            "metrics_address": f"0.0.0.0:{free_port()}",
            # The node's boot ID, in a host directory the chart mounts (/run, for the sentinel).
            "boot_id_file": f"/host{node.boot_id_file}",
            # The node's host is its mount namespace, whose holder stands in for PID 1 (the
            # machine's PID 1 is not ours to enter). Harmless: records the request in the node's
            # /run, which the container itself can only read.
            "nsenter_argv": ["nsenter", "--target", str(node.holder_pid), "--mount", "--"],
            "reboot_command": [
                "sh",
                "-c",
                f'echo "$(date +%s.%N) $(readlink /proc/self/ns/mnt)" >> {requests_file}',
            ],
        },
    }
    return merge(yaml.safe_load(E2E_VALUES.read_text()), real_node)


def merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


@dataclass
class Install:
    """One installation of the agent on the real node: the pod, its logs, the Lease."""

    cluster: KubeCluster
    node: RealNode
    requests_file: Path
    namespace: str = NAMESPACE
    selector: str = "app.kubernetes.io/name=rebootcoord"
    group: str = "e2e"
    timings: dict[str, float] = field(default_factory=dict)

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> str:
        return self.cluster.kubectl(*args, check=check, input=input)

    def json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", "-o", "json", *args))

    def pods(self) -> list[dict[str, Any]]:
        items = self.json("pods", "-n", self.namespace, "-l", self.selector)["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]

    def pod(self) -> dict[str, Any]:
        pods = self.pods()
        assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
        return pods[0]

    def pod_name(self) -> str:
        return str(self.pod()["metadata"]["name"])

    def wait_ready(self, *, timeout: float = 120.0, other_than: str = "") -> dict[str, Any]:
        """The agent's pod Running and Ready (through its readiness probe)."""

        def ready() -> dict[str, Any] | None:
            pods = [p for p in self.pods() if p["metadata"]["name"] != other_than]
            if len(pods) != 1:
                return None
            status = pods[0].get("status") or {}
            conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
            return pods[0] if conditions.get("Ready") == "True" else None

        return wait_for(ready, timeout=timeout, what="the agent's pod Ready", interval=0.5)

    def restarts(self, container: str = "agent") -> int:
        for status in self.pod()["status"].get("containerStatuses") or []:
            if status["name"] == container:
                return int(status["restartCount"])
        raise AssertionError(f"no container {container}")

    def logs(self, *, previous: bool = False, container: str = "agent") -> str:
        args = ["logs", "-n", self.namespace, self.pod_name(), "-c", container]
        return self.kubectl(*args, *(["--previous"] if previous else []), check=not previous)

    def exec(
        self, *argv: str, container: str = "agent", check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.cluster.testbin.path("kubectl")), f"--kubeconfig={self.cluster.kubeconfig}",
             "exec", "-n", self.namespace, self.pod_name(), "-c", container, "--", *argv],
            capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
        if check and proc.returncode != 0:
            raise ClusterError(f"exec {argv} exited {proc.returncode}: {proc.stderr}")
        return proc

    def lease(self) -> dict[str, Any]:
        return self.json("lease", "-n", self.namespace, f"rebootcoord-{self.group}")  # type: ignore[no-any-return]

    def holders(self) -> list[str]:
        try:
            slots = json.loads(self.lease()["metadata"]["annotations"]["rebootcoord.io/semaphore"])
        except ClusterError:
            return []
        return list(slots["holders"])

    def record(self, holder: str) -> dict[str, Any] | None:
        try:
            records = json.loads(self.lease()["metadata"]["annotations"]["rebootcoord.io/holders"])
        except ClusterError:
            return None
        return records.get(holder)  # type: ignore[no-any-return]

    def phase(self) -> str | None:
        record = self.record(self.node.name)
        return None if record is None else str(record["phase"])

    def node_object(self) -> dict[str, Any]:
        return self.json("node", self.node.name)  # type: ignore[no-any-return]

    def unschedulable(self) -> bool:
        return bool(self.node_object()["spec"].get("unschedulable"))

    def reboot_requests(self) -> list[str]:
        path = self.node.host_path(self.requests_file)
        return path.read_text().splitlines() if path.exists() else []

    def dump(self) -> None:
        """What a failed test needs to be understood: pods, the Lease, the agent's logs."""
        print(self.kubectl("get", "pods", "-A", "-o", "wide", check=False))
        print(self.kubectl("get", "lease", "-n", self.namespace, "-o", "yaml", check=False)[-3000:])
        for pod in self.pods():
            name = pod["metadata"]["name"]
            for previous in ("--previous", None):
                args = ["logs", "-n", self.namespace, name, "--all-containers", "--tail=60"]
                print(f"--- logs {name} {previous or ''}")
                print(self.kubectl(*args, *([previous] if previous else []), check=False))
        print(self.kubectl("describe", "pods", "-n", self.namespace, check=False)[-4000:])

    # -- the host ------------------------------------------------------------------------------

    def touch_sentinel(self) -> None:
        self.node.host_path(SENTINEL).write_text("")

    def remove_sentinel(self) -> None:
        self.node.host_path(SENTINEL).unlink(missing_ok=True)

    def events(self, reason: str) -> list[dict[str, Any]]:
        items = self.json("events", "-A", "--field-selector", f"involvedObject.name={self.node.name}")[
            "items"
        ]
        return [e for e in items if e.get("reason") == reason]


def _install_cmd(cluster: KubeCluster, values_file: Path) -> list[str]:
    return [
        str(cluster.testbin.path("helm")), "install", RELEASE, str(CHART),
        "-n", NAMESPACE, "--create-namespace",
        f"--kubeconfig={cluster.kubeconfig}", "--values", str(values_file), "--wait=false",
    ]  # fmt: skip


@pytest.fixture
def install(
    kube_cluster: KubeCluster, real_node: RealNode, node_image: str, tmp_path: Path
) -> Iterator[Callable[..., Install]]:
    """install(values=None) -> Install: the chart installed as the README says, with the test
    cluster's values (see cluster_values) and ``values`` merged in. Uninstalled (and its namespace
    gone, the sentinel removed, the node uncordoned) when the test ends."""
    requests_file = REQUESTS_FILE
    real_node.host_path(requests_file).unlink(missing_ok=True)
    installed: list[Install] = []

    def run(values: Mapping[str, Any] | None = None) -> Install:
        base = cluster_values(real_node, node_image, requests_file)
        merged = merge(base, values or {})
        merged["extraEnv"] = [*base["extraEnv"], *(values or {}).get("extraEnv", [])]
        values_file = tmp_path / "values.yaml"
        values_file.write_text(yaml.safe_dump(merged))
        inst = Install(kube_cluster, real_node, requests_file, group=merged["config"]["group"])
        installed.append(inst)
        t0 = time.monotonic()
        proc = subprocess.run(_install_cmd(kube_cluster, values_file), capture_output=True, text=True)
        assert proc.returncode == 0, f"helm install failed: {proc.stderr}"
        inst.timings["helm_install"] = time.monotonic() - t0
        return inst

    try:
        yield run
    finally:
        for inst in installed:
            inst.dump()  # shown when the test failed
        if installed:
            uninstall(kube_cluster, real_node)


def uninstall(cluster: KubeCluster, node: RealNode) -> None:
    """Remove a release or an applied manifest and everything a test left on the node."""
    helm = str(cluster.testbin.path("helm"))
    subprocess.run([helm, "uninstall", RELEASE, "-n", NAMESPACE, f"--kubeconfig={cluster.kubeconfig}"],
                   capture_output=True, check=False)  # fmt: skip
    cluster.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=false", check=False)
    # What kubectl apply made outside the namespace: cluster roles, and the events Role in default.
    for kinds, where in (("clusterrole,clusterrolebinding", []), ("role,rolebinding", ["-n", "default"])):
        cluster.kubectl("delete", kinds, *where, "-l", "app.kubernetes.io/name=rebootcoord",
                        "--ignore-not-found", check=False)  # fmt: skip
    node.host_path(SENTINEL).unlink(missing_ok=True)
    node.host_path(REQUESTS_FILE).unlink(missing_ok=True)
    cluster.kubectl("uncordon", node.name, check=False)
    wait_for(
        lambda: not cluster.kubectl("get", "namespace", NAMESPACE, "--ignore-not-found", check=False).strip(),
        timeout=120,
        what=f"namespace {NAMESPACE} gone",
        interval=1,
    )


@pytest.fixture
def host_test_dir(real_node: RealNode) -> Path:
    """The node's /run/rebootcoord-test (hostPath-mountable), as the test reaches it."""
    return real_node.host_path(HOST_TEST_DIR)
