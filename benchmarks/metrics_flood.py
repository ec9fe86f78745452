"""The agent's metrics server under N idle connections: RSS and threads before and after, and
/healthz latency with the connections open (idle agent on etcd).

    python benchmarks/metrics_flood.py [--connections 5000] [--probes 20]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import write_json
from rebootcoord.sim.etcd_server import EtcdServer
from rebootcoord.sim.procs import free_port


def status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def probe(url: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(url, timeout=30) as resp:
                resp.read()
            out.append((time.perf_counter() - t0) * 1000)
        except OSError:
            out.append(float("inf"))
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--connections", type=int, default=5000)
    p.add_argument("--probes", type=int, default=20)
    args = p.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="bench-flood-") as tmp,
        EtcdServer(data_dir=f"{tmp}/etcd") as etcd,
    ):
        port = free_port()
        Path(tmp, "boot_id").write_text("b1\n")
        proc = subprocess.Popen(
            [sys.executable, "-m", "rebootcoord", "agent", "--node-name", "flood", "--etcd-endpoints",
             etcd.endpoint, "--host-root", tmp, "--boot-id-file", f"{tmp}/boot_id",
             "--metrics-address", f"127.0.0.1:{port}", "--log-level", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}/healthz"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and probe(url, 1)[0] == float("inf"):
            time.sleep(0.2)
        probe(f"http://127.0.0.1:{port}/metrics", 10)
        time.sleep(1)
        before = {"rss_kib": status(proc.pid, "VmRSS"), "threads": status(proc.pid, "Threads"),
                  "healthz_ms": statistics.median(probe(url, args.probes))}  # fmt: skip
        idle = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(args.connections)]
        time.sleep(2)
        lat = probe(url, args.probes)
        after = {
            "rss_kib": status(proc.pid, "VmRSS"),
            "threads": status(proc.pid, "Threads"),
            "healthz_ms": statistics.median(lat),
            "healthz_answered": sum(x != float("inf") for x in lat),
        }
        for s in idle:
            s.close()
        proc.terminate()
        proc.wait(30)
    doc = {
        "benchmark": "metrics server under idle connections",
        "connections": args.connections,
        "probes": args.probes,
        "before": before,
        "with_connections_open": after,
        "rss_ratio": round(after["rss_kib"] / max(1, before["rss_kib"]), 2),
    }
    write_json("metrics_flood", doc)


if __name__ == "__main__":
    main()
