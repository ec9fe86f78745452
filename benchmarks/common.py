"""Helpers shared by the benchmarks: statistics, JSON output, plots."""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Sequence
from typing import Any

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")


def summarize(samples: Sequence[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    if not ordered:
        return {"n": 0}

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]

    return {
        "n": len(ordered),
        "median": statistics.median(ordered),
        "p90": pct(90),
        "p99": pct(99),
        "max": ordered[-1],
        "min": ordered[0],
    }


def write_json(name: str, doc: dict[str, Any]) -> str:
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, name + ".json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2)
    print(json.dumps(doc, indent=2))
    return path


def plot_cdf(name: str, series: dict[str, Sequence[float]], xlabel: str, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(OUT, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, samples in series.items():
        ordered = sorted(samples)
        ys = [(i + 1) / len(ordered) for i in range(len(ordered))]
        ax.step(ordered, ys, where="post", label=f"{label} (n={len(ordered)})")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of handoffs")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    path = os.path.join(OUT, name + ".png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
