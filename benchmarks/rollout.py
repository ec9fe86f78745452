"""Rollout of a simulated fleet on etcd: the coordination's overhead, and what waves cost.

Overhead (``--part overhead``): total time against ceil(N/K) x the node cycle. The node cycle
(locked -> idle, from the event log) includes the simulated reboot and the agent's restart; the
overhead ratio says how much the coordination itself adds to a perfectly packed schedule (1.0 =
none). Two ratios: from the command's start (includes starting N agent processes and etcd's
first answers) and from the first slot taken to the last given back (the rollout).

Waves (``--part waves``): one fleet (``--wave-fleet``, 30:3) rolled out without waves and with
``--waves`` and a soak of ``--soak`` seconds. The rollout (first slot taken to last given back)
with waves includes a soak before each wave but the first; less those soaks, what is left is the
cost of the waves themselves: each wave ends with a round that may not fill every slot (ideal:
the sum over the waves of ceil(nodes of the wave / K) rounds, against ceil(N/K) without).

    python benchmarks/rollout.py [--part all|overhead|waves] [--fleets 8:2 16:4 30:3]
        [--reboot-seconds 2] [--repeat 3] [--wave-fleet 30:3] [--waves 1,10%,50%,100%] [--soak 5]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from typing import Any

from benchmarks.common import OUT, write_json
from rebootcoord.sim.etcd_server import EtcdServer


def run_one(
    nodes: int, slots: int, reboot_seconds: float, endpoint: str, *extra: str, group: str = ""
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp:
        summary = os.path.join(tmp, "summary.json")
        subprocess.run(
            [
                sys.executable, "-m", "rebootcoord", "simulate", "--nodes", str(nodes), "--max", str(slots),
                "--reboot-seconds", str(reboot_seconds), "--etcd", endpoint,
                "--group", group or f"g{nodes}-{slots}", "--summary-json", summary, "--quiet", *extra,
            ],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        with open(summary, encoding="utf-8") as fh:
            return json.load(fh)  # type: ignore[no-any-return]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--part", choices=["all", "overhead", "waves"], default="all")
    p.add_argument("--fleets", nargs="+", default=["8:2", "16:4", "30:3"])
    p.add_argument("--reboot-seconds", type=float, default=2.0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--wave-fleet", default="30:3", help="N:K of the waves comparison")
    p.add_argument("--waves", default="1,10%,50%,100%")
    p.add_argument("--soak", type=float, default=5.0, help="wave_soak, seconds")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-etcd-") as data, EtcdServer(data_dir=data) as etcd:
        if args.part in ("all", "overhead"):
            overhead(args, etcd.endpoint)
        if args.part in ("all", "waves"):
            waves(args, etcd.endpoint)


def overhead(args: argparse.Namespace, endpoint: str) -> None:
    results = []
    for fleet in args.fleets:
        nodes, slots = (int(x) for x in fleet.split(":"))
        runs = [run_one(nodes, slots, args.reboot_seconds, endpoint) for _ in range(args.repeat)]
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


def _plot(results: list[dict[str, Any]]) -> None:
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


def waves(args: argparse.Namespace, endpoint: str) -> None:
    """The same fleet without waves and with them: rollout times, and with waves less the soaks."""
    nodes, slots = (int(x) for x in args.wave_fleet.split(":"))
    plain, waved = [], []
    for i in range(args.repeat):
        plain.append(run_one(nodes, slots, args.reboot_seconds, endpoint, group=f"plain-{i}"))
        waved.append(
            run_one(
                nodes, slots, args.reboot_seconds, endpoint,
                "--waves", args.waves, "--wave-soak", f"{args.soak}s", group=f"waves-{i}",
            )
        )  # fmt: skip
    runs = []
    for p, w in zip(plain, waved, strict=True):
        soaks = w["soaks"]
        worked = w["rollout_seconds"] - soaks * args.soak
        runs.append(
            {
                "rollout_seconds_without_waves": p["rollout_seconds"],
                "rollout_seconds_with_waves": w["rollout_seconds"],
                "soaks": soaks,
                "rollout_seconds_with_waves_less_soaks": round(worked, 3),
                "ratio": round(worked / p["rollout_seconds"], 3),
                "node_cycle_seconds_median": [p["node_cycle_seconds_median"], w["node_cycle_seconds_median"]],
                "waves": [
                    {
                        "size": x["size"],
                        "quota": x["quota"],
                        "nodes": len(x["nodes"]),
                        "opened_at_seconds": x["opened_at_seconds"],
                    }
                    for x in w["waves"]
                ],
                "max_holders_seen": [p["max_holders_seen"], w["max_holders_seen"]],
                "violations": len(p["violations"]) + len(w["violations"]),
            }
        )
    ideal_plain = math.ceil(nodes / slots)
    ideal_waved = sum(math.ceil(x["nodes"] / slots) for x in runs[0]["waves"])

    def median(key: str) -> float:
        return round(statistics.median(float(r[key]) for r in runs), 3)

    doc = {
        "benchmark": "a rollout in waves against one without, etcd backend",
        "nodes": nodes,
        "max": slots,
        "reboot_seconds": args.reboot_seconds,
        "waves": args.waves,
        "soak_seconds": args.soak,
        "runs": args.repeat,
        "rollout_seconds_without_waves_median": median("rollout_seconds_without_waves"),
        "rollout_seconds_with_waves_median": median("rollout_seconds_with_waves"),
        "rollout_seconds_with_waves_less_soaks_median": median("rollout_seconds_with_waves_less_soaks"),
        "ratio_median": median("ratio"),
        # Rounds of K slots a perfectly packed schedule needs: without waves, and wave by wave.
        "ideal_rounds": {"without_waves": ideal_plain, "with_waves": ideal_waved},
        "ideal_ratio": round(ideal_waved / ideal_plain, 3),
        "per_run": runs,
    }
    write_json("rollout_waves", doc)
    _plot_waves(doc)


def _plot_waves(doc: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plain = doc["rollout_seconds_without_waves_median"]
    worked = doc["rollout_seconds_with_waves_less_soaks_median"]
    soaked = doc["rollout_seconds_with_waves_median"] - worked
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar([0], [plain], 0.5, label="rebooting")
    ax.bar([1], [worked], 0.5, color="C0")
    ax.bar([1], [soaked], 0.5, bottom=[worked], color="C1", label=f"soaks ({doc['soak_seconds']:g} s each)")
    for x, value in ((0, plain), (1, worked)):
        ax.text(x, value / 2, f"{value:.1f} s", ha="center", va="center", color="white")
    ax.text(1, worked + soaked, f"{worked + soaked:.1f} s", ha="center", va="bottom")
    ax.set_xticks([0, 1], ["no waves", f"waves {doc['waves']}"])
    ax.set_ylabel("rollout: first slot taken to last released (s, median)")
    ax.set_title(
        f"N={doc['nodes']} K={doc['max']}: waves less the soaks / no waves = {doc['ratio_median']:.2f} "
        f"(median of runs; ideal {doc['ideal_ratio']:.2f})",
        fontsize=10,
    )
    ax.legend()
    fig.tight_layout()
    os.makedirs(OUT, exist_ok=True)
    fig.savefig(os.path.join(OUT, "rollout_waves.png"), dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
