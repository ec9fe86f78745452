"""What only a real kubelet does to the agent: its liveness probe restarts an agent whose main loop
stalls; deleting the pod (SIGTERM) ends the agent within its grace period and the next pod resumes
the cycle; a container killed mid-drain is restarted by the kubelet and finishes the cycle."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import pytest
import yaml

from tests.realnode.conftest import NAMESPACE, Install
from tests.support.cluster import wait_for
from tests.support.kubecluster import KubeTestEnv, wait_for_pdb
from tests.support.realnode import HOST_TEST_DIR, PAUSE_IMAGE, TOLERATION, RealNode

pytestmark = [pytest.mark.kube, pytest.mark.real_node, pytest.mark.timeout(900)]

STALL = HOST_TEST_DIR / "stall"


def agent_pid(inst: Install) -> int:
    pids = inst.node.container_pids(inst.pod_name(), "agent")
    assert pids, "the agent's container has a process"
    return min(pids)  # the container's first process: the agent itself


def test_the_liveness_probe_restarts_an_agent_whose_loop_stalls(install: Any) -> None:
    # A detector that hangs while STALL exists (a stuck rpm-ostree, say): the main loop stops
    # beating, /healthz turns 503 (after 2 x check_interval + 60 s), the kubelet restarts it.
    hang = f"while [ -e {STALL} ]; do sleep 1; done; exit 1"
    inst: Install = install(
        {
            "config": {
                "detectors": ["sentinel", {"type": "command", "argv": ["sh", "-c", hang], "timeout": "1h"}],
            },
            "livenessProbe": {"initialDelaySeconds": 5, "periodSeconds": 3, "failureThreshold": 2},
            # The stalled agent is busy in its detector, not waiting: the kubelet kills it after this.
            "terminationGracePeriodSeconds": 5,
        }
    )
    inst.wait_ready()
    t0 = time.monotonic()
    inst.node.host_path(STALL).write_text("")
    try:
        wait_for(
            lambda: inst.restarts() >= 1, timeout=240, what="the kubelet to restart the agent", interval=1
        )
    finally:
        inst.node.host_path(STALL).unlink(missing_ok=True)
    print(f"stalled loop to restart: {time.monotonic() - t0:.0f}s")
    warnings = inst.kubectl("get", "events", "-n", NAMESPACE, "--field-selector", "reason=Unhealthy")
    assert "Liveness probe failed" in warnings and "503" in warnings, warnings
    inst.wait_ready()  # the restarted agent, no longer stalled, is Ready again


def test_deleting_the_pod_stops_the_agent_in_time_and_the_next_pod_resumes(install: Any) -> None:
    inst: Install = install({"terminationGracePeriodSeconds": 30})
    inst.wait_ready()
    node = inst.node
    inst.touch_sentinel()
    wait_for(inst.reboot_requests, timeout=120, what="the reboot request")
    before = inst.record(node.name)
    assert before is not None and before["phase"] == "rebooting"
    old = inst.pod_name()
    t0 = time.monotonic()
    inst.kubectl("delete", "pod", "-n", NAMESPACE, old, "--wait=true", "--timeout=60s")
    stopped = time.monotonic() - t0
    assert stopped < 30, f"SIGTERM ended the agent within its grace period (took {stopped:.1f}s)"
    # Left as the next pod understands it: the slot, the record, the cordon.
    assert inst.holders() == [node.name] and inst.record(node.name) == before
    assert inst.unschedulable()
    inst.wait_ready(other_than=old)
    # The boot ID has not changed: the new agent asks for the reboot again (it cannot have happened).
    wait_for(lambda: len(inst.reboot_requests()) == 2, timeout=60, what="the resumed agent's reboot request")
    inst.remove_sentinel()
    node.simulate_reboot()
    wait_for(lambda: inst.holders() == [], timeout=180, what="the slot given back")
    assert not inst.unschedulable()
    print(f"pod deletion to agent stopped: {stopped:.1f}s")


def test_a_container_killed_mid_drain_is_restarted_and_finishes_the_cycle(
    install: Any, kube: KubeTestEnv, real_node: RealNode
) -> None:
    # A pod on the node whose PodDisruptionBudget allows no disruption yet: the drain waits.
    cluster = kube.cluster
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "guarded", "namespace": kube.namespace, "labels": {"app": "guarded"}},
        "spec": {
            "nodeName": real_node.name,
            "hostNetwork": True,
            "tolerations": [TOLERATION],
            "terminationGracePeriodSeconds": 2,
            "containers": [{"name": "c", "image": PAUSE_IMAGE, "imagePullPolicy": "Never"}],
        },
    }
    pdb = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "guarded", "namespace": kube.namespace},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "guarded"}}},
    }
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([pod, pdb]))
    wait_for_pdb(kube.api, kube.namespace, "guarded", disruptions_allowed=0)
    # No PDB pre-check: the drain must start while the budget says no, to be killed mid-way.
    inst: Install = install({"config": {"drain_force": True, "pdb_precheck": False}})
    inst.wait_ready()
    inst.touch_sentinel()
    wait_for(lambda: inst.phase() == "draining", timeout=60, what="the drain")
    wait_for(lambda: "refused for now" in inst.logs(), timeout=60, what="the eviction refused by the budget")
    os.kill(agent_pid(inst), signal.SIGKILL)
    wait_for(lambda: inst.restarts() == 1, timeout=60, what="the kubelet to restart the agent")
    inst.wait_ready()
    assert inst.phase() == "draining" and inst.record(real_node.name)["cordoned"] is True  # type: ignore[index]
    # Let the pod go: the restarted agent's drain finishes, and the cycle goes on.
    cluster.kubectl("patch", "pdb", "guarded", "-n", kube.namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"minAvailable": 0}}))  # fmt: skip
    wait_for(inst.reboot_requests, timeout=120, what="the reboot request after the drain")
    inst.remove_sentinel()
    real_node.simulate_reboot()
    wait_for(lambda: inst.holders() == [], timeout=180, what="the slot given back")
    assert len(inst.reboot_requests()) == 1
    assert not inst.unschedulable()
