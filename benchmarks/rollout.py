"""Rollout overhead of a simulated fleet on etcd: total time against ceil(N/K) x the node cycle.

The node cycle (locked -> idle, from the event log) includes the simulated reboot and the agent's
restart; the overhead ratio says how much the coordination itself adds to a perfectly packed
schedule (1.0 = none). Two ratios: from the command's start (includes starting N agent processes
and etcd's first answers) and from the first slot taken to the last given back (the rollout).

    python benchmarks/rollout.py [--fleets 8:2 16:4 30:3] [--reboot-seconds 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import OUT, write_json
from rebootcoord.sim.etcd_server import EtcdServer


def run_one(nodes: int, slots: int, reboot_seconds: float, endpoint: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp:
        summary = os.path.join(tmp, "summary.json")
        subprocess.run(
            [
                sys.executable, "-m", "rebootcoord", "simulate", "--nodes", str(nodes), "--max", str(slots),
                "--reboot-seconds", str(reboot_seconds), "--etcd", endpoint, "--group", f"g{nodes}-{slots}",
                "--summary-json", summary, "--quiet",
            ],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        with open(summary, encoding="utf-8") as fh:
            return json.load(fh)  # type: ignore[no-any-return]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--fleets", nargs="+", default=["8:2", "16:4", "30:3"])
    p.add_argument("--reboot-seconds", type=float, default=2.0)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-etcd-") as data, EtcdServer(data_dir=data) as etcd:
        for fleet in args.fleets:
            nodes, slots = (int(x) for x in fleet.split(":"))
            runs = [run_one(nodes, slots, args.reboot_seconds, etcd.endpoint) for _ in range(args.repeat)]
            results.append(
                {
                    "nodes": nodes,
                    "max": slots,
                    "reboot_seconds": args.reboot_seconds,
                    "runs": args.repeat,
                    "elapsed_seconds_median": round(statistics.median(r["elapsed_seconds"] for r in runs), 2),
                    "node_cycle_seconds_median": round(
                        statistics.median(r["node_cycle_seconds_median"] for r in runs), 2
                    ),
                    "ideal_seconds_median": round(statistics.median(r["ideal_seconds"] for r in runs), 2),
                    "overhead_ratio_median": round(statistics.median(r["overhead_ratio"] for r in runs), 3),
                    "rollout_seconds_median": round(statistics.median(r["rollout_seconds"] for r in runs), 2),
                    "rollout_overhead_ratio_median": round(
                        statistics.median(r["rollout_overhead_ratio"] for r in runs), 3
                    ),
                    "max_holders_seen": max(r["max_holders_seen"] for r in runs),
                    "violations": sum(len(r["violations"]) for r in runs),
                }
            )
    write_json("rollout_etcd", {"benchmark": "rollout overhead, etcd backend", "fleets": results})
    _plot(results)


def _plot(results: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"N={r['nodes']} K={r['max']}" for r in results]
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = range(len(results))
    ax.bar(
        [x - 0.2 for x in xs],
        [r["ideal_seconds_median"] for r in results],
        0.4,
        label="ceil(N/K) x node cycle",
    )
    ax.bar(
        [x + 0.2 for x in xs], [r["elapsed_seconds_median"] for r in results], 0.4, label="measured rollout"
    )
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("seconds (median of runs)")
    ax.set_title("Rollout time of a simulated fleet (etcd)")
    ax.legend()
    fig.tight_layout()
    os.makedirs(OUT, exist_ok=True)
    fig.savefig(os.path.join(OUT, "rollout_etcd.png"), dpi=110)


if __name__ == "__main__":
    main()
