"""The chart's FleetLock server on the real kubelet node, as a user installs it: `helm install` with
fleetlock.enabled, the server's pod Ready through its real probes with no restart, the TLS Secret
read by its non-root uid, and a Zincati cycle -- POST /v1/pre-reboot, /v1/steady-state over
HTTPS with a client certificate, through `kubectl port-forward` -- for the node's own machine ID:
the real node is found, cordoned by the server's own identity (RBAC and admission policy as the
chart renders them), uncordoned, and the slot given back.

One replica here: the node has no pod network, so the server runs in the host's network
namespace, and two replicas on the one node would want the same ports (the scheduler keeps the
second Pending). The drain evicts nothing (drain_pod_selector matches no pod): on a one-node
cluster it would evict the server itself, which then could not come back on the cordoned node.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rebootcoord.core.fleetlock import app_specific_id
from tests.realnode.conftest import NAMESPACE, Install
from tests.support.certs import Pki, make_pki
from tests.support.cluster import KubeCluster, free_port, wait_for
from tests.support.realnode import REAL_NODE_LABEL, TOLERATION, RealNode

pytestmark = [pytest.mark.kube, pytest.mark.real_node, pytest.mark.timeout(900)]

SERVER = "app.kubernetes.io/component=fleetlock-server"
SECRET = "fleetlock-tls"


def server_values(cluster: KubeCluster, port: int, metrics_port: int) -> dict[str, Any]:
    api = cluster.server.removeprefix("https://")
    host, _, api_port = api.partition(":")
    return {
        "fleetlock": {
            "enabled": True,
            "replicas": 1,
            "hostNetwork": True,
            "nodeSelector": {REAL_NODE_LABEL: "true"},
            "tolerations": [TOLERATION],
            # No kube-proxy: the in-cluster client reaches the API server on loopback.
            "extraEnv": [
                {"name": "KUBERNETES_SERVICE_HOST", "value": host},
                {"name": "KUBERNETES_SERVICE_PORT", "value": api_port},
            ],
            "tls": {"secretName": SECRET, "clientCASecret": SECRET},
            "readinessProbe": {"initialDelaySeconds": 1, "periodSeconds": 2},
            "config": {
                # hostNetwork: ports of its own on the machine.
                "fleetlock_listen": f"0.0.0.0:{port}",
                "metrics_address": f"0.0.0.0:{metrics_port}",
                "drain_pod_selector": "rebootcoord.test/drain-me=yes",
                "drain_timeout": "1m",
                "log_format": "text",
            },
        }
    }


@pytest.fixture
def pki(tmp_path: Path, kube_cluster: KubeCluster, real_node: RealNode) -> Iterator[Pki]:
    """A CA, the server's certificate (localhost, 127.0.0.1) and a client's, in the Secret the
    chart mounts (made before the release, in its namespace). The client's certificate names
    its node: the server lets it act as the id that maps to that Node (its Zincati id)."""
    (tmp_path / "pki").mkdir()
    pki = make_pki(tmp_path / "pki", client_cn=real_node.name)
    kube_cluster.kubectl("create", "namespace", NAMESPACE, check=False)

    def b64(path: Path) -> str:
        return base64.b64encode(path.read_bytes()).decode()

    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": SECRET, "namespace": NAMESPACE},
        "data": {"tls.crt": b64(pki.server_cert), "tls.key": b64(pki.server_key), "ca.crt": b64(pki.ca)},
    }
    kube_cluster.kubectl("apply", "-f", "-", input=json.dumps(secret))
    yield pki


def server_pod(cluster: KubeCluster) -> dict[str, Any] | None:
    items = json.loads(cluster.kubectl("get", "pods", "-n", NAMESPACE, "-l", SERVER, "-o", "json"))["items"]
    pods = [p for p in items if not p["metadata"].get("deletionTimestamp")]
    if len(pods) != 1:
        return None
    conditions = {c["type"]: c["status"] for c in pods[0]["status"].get("conditions") or []}
    return pods[0] if conditions.get("Ready") == "True" else None


class PortForward:
    """`kubectl port-forward pod/NAME LOCAL:REMOTE`: the API server and the kubelet carry it."""

    def __init__(self, cluster: KubeCluster, pod: str, remote: int) -> None:
        self.local = free_port()
        self.process = subprocess.Popen(
            [str(cluster.testbin.path("kubectl")), f"--kubeconfig={cluster.kubeconfig}", "port-forward",
             "-n", NAMESPACE, f"pod/{pod}", f"{self.local}:{remote}", "--address=127.0.0.1"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert "Forwarding from 127.0.0.1" in line, line + self.output()

    def output(self) -> str:
        self.stop()
        return self.process.stdout.read() if self.process.stdout else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def post(port: int, context: ssl.SSLContext, operation: str, client_id: str, group: str) -> tuple[int, str]:
    """A FleetLock request as Zincati sends it, over HTTPS; (status, kind)."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=120, context=context)
    body = json.dumps({"client_params": {"id": client_id, "group": group}})
    conn.request("POST", f"/v1/{operation}", body=body,
                 headers={"fleet-lock-protocol": "true", "content-type": "application/json"})  # fmt: skip
    answer = conn.getresponse()
    return answer.status, str(json.loads(answer.read() or b"{}").get("kind", ""))


def test_the_fleetlock_server_on_the_real_node(
    install: Any, pki: Pki, kube_cluster: KubeCluster, real_node: RealNode
) -> None:
    port, metrics_port = free_port(), free_port()
    inst: Install = install(server_values(kube_cluster, port, metrics_port))
    pod = wait_for(lambda: server_pod(kube_cluster), timeout=180, what="the FleetLock server's pod Ready",
                   interval=1)  # fmt: skip
    name = pod["metadata"]["name"]
    (status,) = pod["status"]["containerStatuses"]
    assert status["restartCount"] == 0 and status["ready"] is True
    spec = pod["spec"]
    assert spec["enableServiceLinks"] is False and spec["nodeName"] == real_node.name
    assert spec["serviceAccountName"] == "rebootcoord-fleetlock"
    (container,) = spec["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    env = kube_cluster.kubectl("exec", "-n", NAMESPACE, name, "--", "env")
    assert f"POD_NAMESPACE={NAMESPACE}" in env and f"POD_NAME={name}" in env
    assert "REBOOTCOORD_FLEETLOCK_SERVICE_HOST" not in env  # no service links
    ids = kube_cluster.kubectl("exec", "-n", NAMESPACE, name, "--", "id", "-u")
    assert ids.strip() == "65532"  # and yet it reads its TLS key: the Secret's group is the pod's fsGroup

    node = inst.node_object()
    machine_id = node["status"]["nodeInfo"]["machineID"]
    assert re.fullmatch(r"[0-9a-f]{32}", machine_id), machine_id
    client_id = app_specific_id(machine_id)  # what Zincati sends for this machine
    group = inst.group  # the agents' group: the server serves it by default

    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    anonymous = ssl.create_default_context(cafile=str(pki.ca))
    forward = PortForward(kube_cluster, name, port)
    try:
        assert post(forward.local, context, "pre-reboot", client_id, group) == (200, "ok")
        assert inst.holders() == [client_id]
        node = inst.node_object()
        assert node["spec"]["unschedulable"] is True
        assert node["metadata"]["annotations"]["rebootcoord.io/cordoned-by-rebootcoord"] == "true"
        assert node["metadata"]["annotations"]["rebootcoord.io/phase"] == "rebooting"
        assert post(forward.local, context, "pre-reboot", client_id, group) == (200, "ok")  # recursive
        # rebootctl in the server's pod reads the server's file and uses its rights.
        status = kube_cluster.kubectl(
            "exec", "-n", NAMESPACE, name, "--", "rebootctl", "-o", "json", "status"
        )
        assert [h["id"] for h in json.loads(status)["holders"]] == [client_id]

        assert post(forward.local, context, "steady-state", client_id, group) == (200, "ok")
        assert inst.holders() == []
        assert not inst.unschedulable()
    finally:
        forward.stop()
    # Without a client certificate, nothing (a forward of its own: kubectl ends one whose
    # connection fails).
    forward = PortForward(kube_cluster, name, port)
    try:
        with pytest.raises(OSError):  # ssl.SSLError, or a reset: at the handshake or the first read
            post(forward.local, anonymous, "pre-reboot", client_id, group)
    finally:
        forward.stop()
    assert inst.holders() == []
    logs = kube_cluster.kubectl("logs", "-n", NAMESPACE, name)
    assert "Forbidden" not in logs, logs[-3000:]
    pod = server_pod(kube_cluster)
    assert pod is not None and pod["metadata"]["name"] == name
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
