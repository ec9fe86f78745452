"""Helpers shared by the benchmarks: statistics, JSON output, plots."""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Mapping, Sequence
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


def plot_cdf(name: str, series: Mapping[str, Sequence[float]], xlabel: str, title: str) -> str:
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


# ----------------------------------------------------------------------------------------------
# Counting what a run cost: the servers' own counters, and the agents' wake-ups


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text -> {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def etcd_counters(endpoint: str) -> dict[str, float]:
    """etcd's requests by gRPC method (messages received: a keep-alive is one each; a Txn may be
    a read), the keys it wrote (puts and deletes applied) and the watch events it sent."""
    import urllib.request

    with urllib.request.urlopen(endpoint.rstrip("/") + "/metrics", timeout=10) as response:
        samples = parse_metrics(response.read().decode())
    out: dict[str, float] = {"watch_events": 0.0}
    for (name, labels), value in samples.items():
        if name == "grpc_server_msg_received_total":
            method = dict(labels)["grpc_method"]
            out[method] = out.get(method, 0.0) + value
        elif name == "etcd_debugging_mvcc_events_total":
            out["watch_events"] += value
        elif name in ("etcd_mvcc_put_total", "etcd_mvcc_delete_total"):  # keys written, in raft
            out["keys_written"] = out.get("keys_written", 0.0) + value
    return out


def kube_counters(metrics_text: str) -> dict[str, float]:
    """The API server's requests on Leases and Nodes by verb, and the Lease watch events it sent."""
    out: dict[str, float] = {"lease_watch_events": 0.0}
    for (name, labels), value in parse_metrics(metrics_text).items():
        label = dict(labels)
        if name == "apiserver_request_total" and label.get("resource") in ("leases", "nodes"):
            key = f"{label['resource']} {label['verb']}"
            out[key] = out.get(key, 0.0) + value
        elif name == "apiserver_watch_events_total" and "lease" in " ".join(label.values()).lower():
            out["lease_watch_events"] += value
    return out


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


def wakeups(log_paths: Sequence[str], since: float, until: float) -> int:
    """Agents' waits ended by a watch between two times: the agents' "woken by" lines (json logs
    at debug level; a process's metric would die with the process at each simulated reboot)."""
    count = 0
    for path in log_paths:
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    if '"woken by the' not in line:
                        continue
                    try:
                        ts = float(json.loads(line)["ts"])
                    except (ValueError, KeyError, TypeError):
                        continue
                    count += since <= ts <= until
        except OSError:
            continue
    return count
