"""The chart's signal method under a real kubelet's security contexts.

The agent container reads the host's /run (the sentinel file) and must reach nothing there: a
test finds every Unix socket under the host directories mounted into it -- the real node's
containerd socket among them -- and connect() must fail for each. The relay container, which
holds the one capability (CAP_KILL), mounts nothing of the host.

The signal itself is tested where PID 1 is a recorder of the test's own, never with hostPID on
these machines (PID 1 of the machine is not ours): the pod runs without hostPID, and the relay
container's first process is a recorder that starts the relay and logs every signal it gets.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.realnode.conftest import (
    CHART,
    NAMESPACE,
    RELEASE,
    REQUESTS_FILE,
    Install,
    cluster_values,
    merge,
    uninstall,
)
from tests.support.cluster import KubeCluster, wait_for
from tests.support.realnode import CONTAINERD_SOCKET, RealNode

pytestmark = [pytest.mark.kube, pytest.mark.real_node, pytest.mark.timeout(900)]

#: PID 1 of the relay container: logs each signal it receives, forwards SIGTERM to the relay.
RECORDER = """\
import signal, subprocess, sys
def record(signum, frame):
    print(f"recorder: PID 1 received signal {signum}", flush=True)
signal.signal(signal.SIGRTMIN + 5, record)
child = subprocess.Popen(sys.argv[1:])
signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))
sys.exit(child.wait())
"""

#: Run in a container: every Unix socket under the given roots, and what connect() said.
PROBE = """\
import json, os, socket, stat, sys
found = {}
for root in sys.argv[1:]:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            try:
                if not stat.S_ISSOCK(os.lstat(path).st_mode):
                    continue
            except OSError:
                continue
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                found[path] = "connected"
            except OSError as exc:
                found[path] = f"{type(exc).__name__}: {exc.strerror}"
            finally:
                s.close()
print(json.dumps({"uid": os.getuid(), "sockets": found}))
"""


def signal_manifest(node: RealNode, image: str, tmp_path: Path, cluster: KubeCluster) -> list[dict[str, Any]]:
    values = merge(cluster_values(node, image, REQUESTS_FILE), {"config": {"reboot_method": "signal"}})
    values["config"].pop("nsenter_argv")
    values["config"].pop("reboot_command")
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    rendered = subprocess.run(
        [str(cluster.testbin.path("helm")), "template", RELEASE, str(CHART), "-n", NAMESPACE,
         "--values", str(values_file)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    for doc in docs:
        if doc["kind"] == "DaemonSet":
            pod = doc["spec"]["template"]["spec"]
            assert pod["hostPID"] is True  # the chart's; these machines' PID 1 is not ours to signal
            pod["hostPID"] = False
            relay = next(c for c in pod["containers"] if c["name"] == "signal-relay")
            relay["command"] = ["python3", "-c", RECORDER, "rebootcoord"]
    return [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}, *docs]


@pytest.fixture
def signal_install(kube_cluster: KubeCluster, real_node: RealNode, node_image: str, tmp_path: Path) -> Any:
    docs = signal_manifest(real_node, node_image, tmp_path, kube_cluster)
    kube_cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    inst = Install(kube_cluster, real_node, REQUESTS_FILE)
    try:
        inst.wait_ready()
        yield inst
    finally:
        inst.dump()
        uninstall(kube_cluster, real_node)


def test_the_agent_reaches_no_socket_of_the_host(signal_install: Install) -> None:
    inst = signal_install
    result = json.loads(inst.exec("python3", "-c", PROBE, "/host").stdout)
    sockets = result["sockets"]
    containerd = f"/host{CONTAINERD_SOCKET}"
    assert containerd in sockets, f"the node's containerd socket is under the mounted /run: {sockets}"
    assert sockets and all(v.startswith("PermissionError") for v in sockets.values()), sockets
    assert result["uid"] == 65532
    # The same probe as root on the node's host connects: it would see a breach.
    local = subprocess.run(
        ["python3", "-c", PROBE, str(inst.node.host_path(CONTAINERD_SOCKET).parent)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "connected" in json.loads(local.stdout)["sockets"].values()
    # The relay, which holds CAP_KILL, has nothing of the host.
    relay = inst.exec("python3", "-c", PROBE, "/", container="signal-relay")
    assert not any(p.startswith("/host") for p in json.loads(relay.stdout)["sockets"])
    assert inst.exec("test", "-e", "/host", container="signal-relay", check=False).returncode == 1


def test_the_signal_method_reboots_through_the_relay(signal_install: Install) -> None:
    inst = signal_install
    node = inst.node
    inst.touch_sentinel()
    wait_for(
        lambda: "received signal" in inst.logs(container="signal-relay"),
        timeout=120,
        what="the relay's signal to reach PID 1",
    )
    relay_log = inst.logs(container="signal-relay")
    assert "recorder: PID 1 received signal 39" in relay_log, relay_log
    assert inst.phase() == "rebooting" and inst.holders() == [node.name]
    inst.remove_sentinel()
    node.simulate_reboot()
    wait_for(lambda: inst.holders() == [], timeout=180, what="the slot given back")
    assert "phase verifying:" in inst.logs() and not inst.unschedulable()
