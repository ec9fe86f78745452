"""Figures of the Kubernetes test control plane, printed as JSON.

- ``startup_seconds``: from :meth:`KubeCluster.start` to every component healthy (etcd,
  kube-apiserver /readyz, kube-controller-manager, kube-scheduler, kwok), best and all of
  ``--starts`` cold starts (fresh etcd and certificates each time);
- ``nodes_ready_seconds``: creating N kwok nodes until all are Ready and untainted;
- ``rss_mib``: resident memory of each component and their sum, with 10 and with 100 kwok nodes
  (after ``--settle`` seconds of steady state, so kwok's Lease renewals and the node-lifecycle
  controller have run).

The build times are not measured here: ``/usr/bin/time -v make testbin`` (see
docs/test-control-plane.md). Run: ``.venv/bin/python benchmarks/controlplane.py [--out FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.cluster import KubeCluster, Testbin, wait_for

MIB = 1024 * 1024


def _rss(cluster: KubeCluster) -> dict[str, float]:
    per = {name: round(rss / MIB, 1) for name, rss in cluster.rss_bytes().items()}
    return {**per, "total": round(sum(per.values()), 1)}


def _grow(cluster: KubeCluster, total: int, have: int) -> float:
    t0 = time.monotonic()
    cluster.create_nodes(total - have, prefix="bench", start=have, timeout=180)
    return round(time.monotonic() - t0, 2)


def measure(*, starts: int, node_counts: list[int], settle: float) -> dict[str, Any]:
    testbin = Testbin.locate()
    startup: list[float] = []
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "nodes": {},
    }
    with tempfile.TemporaryDirectory(prefix="controlplane-bench-") as tmp:
        for i in range(starts):
            cluster = KubeCluster(Path(tmp) / f"start-{i}", testbin=testbin)
            try:
                cluster.start()
                assert cluster.startup_seconds is not None
                startup.append(round(cluster.startup_seconds, 2))
                if i < starts - 1:
                    continue
                result["rss_mib_no_nodes"] = _rss(cluster)
                have = 0
                for count in node_counts:
                    seconds = _grow(cluster, count, have)
                    have = count
                    # Steady state: wait, then check the cluster is still healthy before measuring.
                    deadline = time.monotonic() + settle
                    wait_for(lambda d=deadline: time.monotonic() >= d, timeout=settle + 5, what="settle")
                    cluster.check_alive()
                    result["nodes"][str(count)] = {
                        "nodes_ready_seconds": seconds,
                        "rss_mib": _rss(cluster),
                    }
            finally:
                cluster.stop()
    result["startup_seconds"] = {"best": min(startup), "all": startup}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=3, help="cold starts to time")
    parser.add_argument("--nodes", default="10,100", help="node counts to measure memory at")
    parser.add_argument("--settle", type=float, default=30.0, help="seconds before each reading")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    figures = measure(
        starts=args.starts,
        node_counts=[int(n) for n in args.nodes.split(",")],
        settle=args.settle,
    )
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
