"""The agent as a user installs it, on a real kubelet: `helm install` (and `kubectl apply -f
deploy/...`), the pod Ready through its real probes, and a full cycle on the node -- Lease slot,
cordon, eviction of real pods, the reboot command on the host, a simulated boot (new boot ID, the
kubelet restarted, every container killed and started again by it), verification, uncordon,
release. What `kubectl logs` and `kubectl exec ... rebootctl status` show is what users see.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.realnode.conftest import E2E_WORKLOAD, NAMESPACE, REQUESTS_FILE, Install, merge, uninstall
from tests.support.cluster import REPO_ROOT, KubeCluster, wait_for
from tests.support.kubecluster import KubeTestEnv, wait_for_pdb
from tests.support.realnode import TOLERATION, RealNode

pytestmark = [pytest.mark.kube, pytest.mark.real_node, pytest.mark.timeout(900)]

WORKLOAD_LABEL = "rebootcoord.test/workload"


@pytest.fixture
def workload(kube: KubeTestEnv, real_node: RealNode, node_image: str) -> Iterator[str]:
    """hack/e2e/workload.yaml (shared with the kind workflow): two pods on the real node behind a
    PodDisruptionBudget that lets one go at a time, and a kwok node (labelled once both run)
    where their replacements go."""
    cluster = kube.cluster
    cluster.kubectl("label", "node", real_node.name, f"{WORKLOAD_LABEL}=yes", "--overwrite")
    cluster.kubectl("apply", "-n", kube.namespace, "-f", str(E2E_WORKLOAD))
    wait_for(
        lambda: len(running_on(cluster, kube.namespace, real_node.name)) == 2,
        timeout=60,
        what="two web pods running on the real node",
    )
    wait_for_pdb(kube.api, kube.namespace, "web", disruptions_allowed=1)
    # Somewhere for the evicted pods to go (kwok runs them), once they all run on the real node.
    kube.create_nodes(1, labels={WORKLOAD_LABEL: "yes"})
    try:
        yield kube.namespace
    finally:
        cluster.kubectl("label", "node", real_node.name, f"{WORKLOAD_LABEL}-", check=False)


def running_on(cluster: KubeCluster, namespace: str, node: str) -> list[str]:
    pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-l", "app=web", "-o", "json"))["items"]
    return [
        p["metadata"]["name"]
        for p in pods
        if p["spec"].get("nodeName") == node
        and p["status"].get("phase") == "Running"
        and not p["metadata"].get("deletionTimestamp")
    ]


def full_cycle(inst: Install, workload_ns: str) -> dict[str, float]:
    """Sentinel -> slot -> cordon -> evictions -> reboot request -> simulated boot -> released."""
    node = inst.node
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    inst.touch_sentinel()
    wait_for(lambda: inst.holders() == [node.name], timeout=60, what="the agent to take the Lease slot")
    timings["slot"] = time.monotonic() - t0
    wait_for(inst.unschedulable, timeout=30, what="the node cordoned")
    wait_for(inst.reboot_requests, timeout=180, what="the reboot command to run on the host")
    timings["reboot_requested"] = time.monotonic() - t0
    assert running_on(inst.cluster, workload_ns, node.name) == [], "the web pods were evicted first"

    # While it waits for its reboot, the holder is what rebootctl in the pod shows.
    status = inst.exec("rebootctl", "status").stdout
    assert node.name in status and "rebooting" in status, status
    as_json = json.loads(inst.exec("rebootctl", "-o", "json", "status").stdout)
    assert [h["id"] for h in as_json["holders"]] == [node.name]
    assert as_json["holders"][0]["phase"] == "rebooting"
    assert len(inst.reboot_requests()) == 1, "one request while the boot ID has not changed"

    # The "reboot": the update is applied (no sentinel), the kubelet goes down with every container,
    # the boot ID changes, the kubelet comes back and restarts the agent's container.
    before = inst.restarts()
    inst.remove_sentinel()
    boot = node.simulate_reboot()
    timings["boot"] = time.monotonic() - t0
    wait_for(lambda: inst.holders() == [], timeout=180, what="the slot given back after the reboot")
    timings["released"] = time.monotonic() - t0
    assert not inst.unschedulable(), "uncordoned before the slot was given back"
    assert inst.restarts() == before + 1, "the kubelet restarted the agent's container after the boot"
    assert inst.node_object()["status"]["nodeInfo"]["bootID"] == boot
    assert len(inst.reboot_requests()) == 1
    return timings


def test_helm_install_and_a_full_cycle_on_the_real_node(
    install: Any, workload: str, kube: KubeTestEnv
) -> None:
    inst: Install = install()
    t0 = time.monotonic()
    pod = inst.wait_ready()
    inst.timings["ready"] = time.monotonic() - t0 + inst.timings["helm_install"]
    assert inst.restarts() == 0
    spec = pod["spec"]
    assert spec["enableServiceLinks"] is False
    env = inst.exec("env").stdout
    assert "REBOOTCOORD_SERVICE_HOST" not in env and "REBOOTCOORD_CONFIG=" in env

    timings = full_cycle(inst, workload)

    # Where the evicted pods went, and what the cluster recorded.
    wait_for(lambda: len(running_on(kube.cluster, workload, kube.nodes[0])) == 2, timeout=60,
             what="the web pods running on the kwok node")  # fmt: skip
    reasons = {e["reason"] for e in inst.events("SlotAcquired") + inst.events("SlotReleased")}
    assert reasons == {"SlotAcquired", "SlotReleased"}
    annotations = inst.node_object()["metadata"]["annotations"]
    assert annotations["rebootcoord.io/phase"] == "idle"
    # What `kubectl logs` shows: the first container's phases up to the reboot, then the new one's.
    before = inst.logs(previous=True)
    after = inst.logs()
    for phase in ("locked", "draining", "rebooting"):
        assert f"phase {phase}:" in before, before[-3000:]
    for phase in ("verifying", "idle"):
        assert f"phase {phase}:" in after, after[-3000:]
    # The reboot command ran on the node's host (in its mount namespace, through nsenter), not in
    # the container, whose view of the host's /run is read-only.
    recorded = inst.reboot_requests()[0].split()[1]
    assert recorded == os.readlink(f"/proc/{inst.node.holder_pid}/ns/mnt")
    print(
        "real node figures: "
        + json.dumps(
            {
                **{k: round(v, 1) for k, v in inst.timings.items()},
                **{k: round(v, 1) for k, v in timings.items()},
            }
        )
    )


def deploy_manifest(node: RealNode, image: str, requests_file: Path) -> list[dict[str, Any]]:
    """deploy/rebootcoord.yaml with what this test cluster needs (the same as the chart's test
    values: image, hostNetwork, the real node's toleration, a harmless reboot command)."""
    from tests.realnode.conftest import cluster_values

    values = cluster_values(node, image, requests_file)
    docs = [d for d in yaml.safe_load_all((REPO_ROOT / "deploy" / "rebootcoord.yaml").read_text()) if d]
    group = values["config"].get("group", "default")
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            config = yaml.safe_load(doc["data"]["config.yaml"])
            doc["data"]["config.yaml"] = yaml.safe_dump(merge(config, values["config"]))
        if doc["kind"] == "ValidatingAdmissionPolicy":
            # The group is in the policy too (which Leases the agent may write): a user who
            # changes it in the ConfigMap changes it here as well, as docs/deploy.md says.
            for rule in doc["spec"]["validations"]:
                for field in ("expression", "messageExpression"):
                    rule[field] = rule[field].replace("rebootcoord-default", f"rebootcoord-{group}")
        if doc["kind"] == "DaemonSet":
            pod = doc["spec"]["template"]["spec"]
            pod["hostNetwork"] = True
            pod["tolerations"] = [*pod.get("tolerations", []), TOLERATION]
            pod["nodeSelector"] = values["nodeSelector"]
            port = int(values["config"]["metrics_address"].rsplit(":", 1)[1])
            for container in pod["containers"]:
                container["env"] = [*container.get("env", []), *values["extraEnv"]]
                container["image"] = image
                container["imagePullPolicy"] = "Never"
                for p in container.get("ports", []):
                    p["containerPort"] = port
    return docs


def test_kubectl_apply_of_the_plain_manifests(
    kube_cluster: KubeCluster, real_node: RealNode, node_image: str
) -> None:
    requests_file = REQUESTS_FILE
    docs = deploy_manifest(real_node, node_image, requests_file)
    inst = Install(kube_cluster, real_node, requests_file)
    try:
        kube_cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
        pod = inst.wait_ready()
        assert inst.restarts() == 0
        assert pod["spec"]["enableServiceLinks"] is False
        # With service links on (a manifest of the user's own), the agent still starts: the
        # kubelet injects REBOOTCOORD_SERVICE_HOST, ... for the Service named rebootcoord.
        kube_cluster.kubectl(
            "patch", "daemonset", "rebootcoord", "-n", NAMESPACE, "--type=merge",
            "-p", json.dumps({"spec": {"template": {"spec": {"enableServiceLinks": True}}}}),
        )  # fmt: skip
        old = pod["metadata"]["name"]
        wait_for(lambda: old not in [p["metadata"]["name"] for p in inst.pods()], timeout=120,
                 what="the DaemonSet to replace its pod")  # fmt: skip
        inst.wait_ready(other_than=old)
        env = inst.exec("env").stdout
        assert "REBOOTCOORD_SERVICE_HOST=" in env and "REBOOTCOORD_PORT=tcp://" in env, env
        assert inst.restarts() == 0, inst.logs()
        assert "unknown key" not in inst.logs()
    finally:
        uninstall(kube_cluster, real_node)
        kube_cluster.kubectl("delete", "-f", "-", "--ignore-not-found", "--wait=false", check=False,
                             input=yaml.safe_dump_all(docs))  # fmt: skip


def test_a_configuration_error_shows_in_the_pod_status(install: Any) -> None:
    """`kubectl describe pod` shows the named key, not only a restart count."""
    inst: Install = install({"extraEnv": [{"name": "REBOOTCOORD_MAX_HOLDRES", "value": "3"}]})

    def terminated() -> dict[str, Any] | None:
        pods = inst.pods()
        for status in (pods[0]["status"].get("containerStatuses") or []) if pods else []:
            last = status.get("lastState", {}).get("terminated") or status.get("state", {}).get("terminated")
            if status["name"] == "agent" and last:
                return last  # type: ignore[no-any-return]
        return None

    last = wait_for(terminated, timeout=120, what="the agent to exit on its configuration", interval=1)
    assert last["exitCode"] == 2
    assert "max_holdres" in last["message"] and "did you mean 'max_holders'" in last["message"], last
    describe = inst.kubectl("describe", "pod", "-n", NAMESPACE, inst.pod_name())
    assert "max_holdres" in describe and "did you mean 'max_holders'" in describe
