"""Figures of the real kubelet test node, printed as JSON, with a plot of the cycle's phases.

- ``node_ready_seconds``: RealNode.start() to the Node Ready (namespace, containerd, pause image,
  kubelet), over ``--starts`` starts on one control plane;
- ``image_import_seconds``: `podman save` of the `make image` image and `ctr images import`;
- ``install_to_ready_seconds``: `helm install` (the README's command, hack/e2e/values.yaml) to
  the agent's pod Ready through its readiness probe;
- ``cycle``: ``--cycles`` full cycles, each from the sentinel created on the node's host to the
  slot given back -- slot taken, reboot requested (after cordon and the drain of two pods behind a
  PodDisruptionBudget), boot simulated (kubelet restarted), slot released -- as seconds since
  the sentinel.

The build of the kubelet is timed by `/usr/bin/time -v make testbin` (docs/test-control-plane.md).
Run: ``.venv/bin/python benchmarks/realnode.py [--starts 3] [--cycles 5]`` (root, `make testbin`,
`make image`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import OUT, summarize, write_json
from tests.realnode.conftest import E2E_WORKLOAD, REQUESTS_FILE, Install, cluster_values, uninstall
from tests.support.cluster import KubeCluster, Testbin, wait_for
from tests.support.image import IMAGE
from tests.support.realnode import RealNode

WORKLOAD_LABEL = "rebootcoord.test/workload"


def _running_on(cluster: KubeCluster, node: str) -> int:
    jsonpath = "jsonpath={range .items[*]}{.spec.nodeName} {.status.phase}{'\\n'}{end}"
    out = cluster.kubectl("get", "pods", "-n", "bench", "-l", "app=web", "-o", jsonpath)
    return sum(1 for line in out.splitlines() if line == f"{node} Running")


def cycle(inst: Install, cluster: KubeCluster) -> dict[str, float]:
    node = inst.node
    # Both pods on the real node first (the kwok node cordoned meanwhile), then room elsewhere.
    cluster.kubectl("label", "node", node.name, f"{WORKLOAD_LABEL}=yes", "--overwrite")
    cluster.kubectl("cordon", "bench-0")
    cluster.kubectl("delete", "deploy,pdb", "--all", "-n", "bench", "--wait=true")
    cluster.kubectl("apply", "-n", "bench", "-f", str(E2E_WORKLOAD))
    wait_for(lambda: _running_on(cluster, node.name) == 2, timeout=120, what="web pods on the node")
    cluster.kubectl("uncordon", "bench-0")
    t0 = time.monotonic()
    marks: dict[str, float] = {}
    inst.touch_sentinel()
    wait_for(lambda: inst.holders() == [node.name], timeout=120, what="slot", interval=0.05)
    marks["slot_taken"] = time.monotonic() - t0
    wait_for(inst.reboot_requests, timeout=300, what="reboot request", interval=0.05)
    marks["reboot_requested"] = time.monotonic() - t0
    inst.remove_sentinel()
    node.simulate_reboot()
    marks["booted"] = time.monotonic() - t0
    wait_for(lambda: inst.holders() == [], timeout=300, what="release", interval=0.05)
    marks["released"] = time.monotonic() - t0
    node.host_path(REQUESTS_FILE).unlink(missing_ok=True)
    return {k: round(v, 2) for k, v in marks.items()}


def measure(*, starts: int, cycles: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="realnode-bench-") as tmp:
        cluster = KubeCluster(Path(tmp) / "kube", testbin=Testbin.locate()).start()
        node = RealNode(cluster, Path(tmp) / "node")
        try:
            ready = []
            for i in range(starts):
                node.start()
                assert node.startup_seconds is not None
                ready.append(round(node.startup_seconds, 2))
                if i < starts - 1:
                    node.stop()
            result["node_ready_seconds"] = {**summarize(ready), "all": ready}
            subprocess.run(["make", "--no-print-directory", "image", f"IMAGE={IMAGE}"], check=True,
                           capture_output=True)  # fmt: skip
            result["image_import_seconds"] = round(node.import_image(IMAGE), 1)
            cluster.kubectl("create", "namespace", "bench")
            # Where the evicted pods go: a kwok node.
            cluster.create_nodes(1, prefix="bench", labels={WORKLOAD_LABEL: "yes"})
            values = cluster_values(node, IMAGE, REQUESTS_FILE)
            values_file = Path(tmp) / "values.yaml"
            import yaml

            values_file.write_text(yaml.safe_dump(values))
            inst = Install(cluster, node, REQUESTS_FILE)
            t0 = time.monotonic()
            subprocess.run(
                [str(cluster.testbin.path("helm")), "install", "rebootcoord", "charts/rebootcoord",
                 "-n", "rebootcoord", "--create-namespace", f"--kubeconfig={cluster.kubeconfig}",
                 "--values", str(values_file)],
                check=True, capture_output=True, cwd=Path(__file__).resolve().parents[1],
            )  # fmt: skip
            inst.wait_ready()
            result["install_to_ready_seconds"] = round(time.monotonic() - t0, 2)
            runs = [cycle(inst, cluster) for _ in range(cycles)]
            result["cycle"] = {
                "runs": runs,
                **{k: summarize([r[k] for r in runs]) for k in runs[0]},
            }
            uninstall(cluster, node)
        finally:
            node.stop()
            cluster.stop()
    return result


def plot(runs: list[dict[str, float]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    marks = list(runs[0])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for i, run in enumerate(runs):
        start = 0.0
        for j, mark in enumerate(marks):
            ax.barh(i, run[mark] - start, left=start, color=f"C{j}", label=mark if i == 0 else None)
            start = run[mark]
    ax.set_xlabel("seconds since the sentinel file was created")
    ax.set_ylabel("cycle")
    ax.set_title("A full cycle on the real kubelet node")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = str(Path(OUT) / "realnode_cycle.png")
    Path(OUT).mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=3, help="node starts to time")
    parser.add_argument("--cycles", type=int, default=5, help="full cycles to time")
    args = parser.parse_args()
    figures = measure(starts=args.starts, cycles=args.cycles)
    figures["plot"] = plot(figures["cycle"]["runs"])
    write_json("realnode", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
