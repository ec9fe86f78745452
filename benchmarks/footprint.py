"""Agent footprint: resident memory after start-up and CPU while idle (etcd backend), without
notify_urls and with one json:// or one slack:// URL (apprise and that service's plugin loaded).

python benchmarks/footprint.py [--agents 5] [--idle-seconds 60]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import write_json
from rebootcoord.sim.etcd_server import EtcdServer

#: notify_urls of each measured configuration: none, a generic JSON webhook, Slack (never sent
#: to: an idle agent has nothing to say).
CONFIGS = {
    "none": "",
    "json": "json://127.0.0.1:9/hook",
    "slack": "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ/#general",
}
TARGET_RSS_MIB = 35


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--agents", type=int, default=5)
    p.add_argument("--idle-seconds", type=float, default=60)
    args = p.parse_args()
    runs = {name: measure(args.agents, args.idle_seconds, urls) for name, urls in CONFIGS.items()}
    base = runs["none"]
    write_json(
        "footprint_etcd",
        {
            "benchmark": "agent footprint, etcd backend, idle (no reboot pending, check_interval 60s)",
            "agents": args.agents,
            "rss_mib_median": base["rss_mib_median"],
            "rss_mib_max": base["rss_mib_max"],
            "target_rss_mib": TARGET_RSS_MIB,
            "idle_cpu_percent_median": base["idle_cpu_percent_median"],
            "idle_cpu_percent_max": base["idle_cpu_percent_max"],
            "idle_seconds": args.idle_seconds,
            "notify_urls": {
                name: {"notify_urls": CONFIGS[name].split("://")[0] + "://...", **run}
                for name, run in runs.items()
                if name != "none"
            },
        },
    )


def measure(agents: int, idle_seconds: float, notify_urls: str) -> dict[str, float]:
    """``agents`` idle agents on one etcd, each with ``notify_urls``: their RSS after start-up,
    then their CPU over ``idle_seconds``."""
    notify = ["--notify-urls", notify_urls] if notify_urls else []
    with (
        tempfile.TemporaryDirectory(prefix="bench-fp-") as tmp,
        EtcdServer(data_dir=os.path.join(tmp, "etcd")) as etcd,
    ):
        procs = []
        for i in range(agents):
            root = os.path.join(tmp, f"n{i}")
            os.makedirs(root)
            with open(os.path.join(root, "boot_id"), "w") as fh:
                fh.write(f"boot-{i}\n")
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "rebootcoord",
                        "agent",
                        "--node-name",
                        f"n{i}",
                        "--etcd-endpoints",
                        etcd.endpoint,
                        "--host-root",
                        root,
                        "--boot-id-file",
                        os.path.join(root, "boot_id"),
                        "--metrics-address",
                        "127.0.0.1:0",
                        "--log-level",
                        "warning",
                        *notify,
                    ],
                    stdout=subprocess.DEVNULL,
                )
            )
        time.sleep(5)  # start-up: imports, first detection, watch established
        ps = [psutil.Process(pr.pid) for pr in procs]
        rss = [x.memory_info().rss / 2**20 for x in ps]
        before = [x.cpu_times() for x in ps]
        time.sleep(idle_seconds)
        after = [x.cpu_times() for x in ps]
        cpu = [
            100 * ((a.user + a.system) - (b.user + b.system)) / idle_seconds
            for a, b in zip(after, before, strict=True)
        ]
        for pr in procs:
            pr.terminate()
        for pr in procs:
            pr.wait(10)
    return {
        "rss_mib_median": round(statistics.median(rss), 1),
        "rss_mib_max": round(max(rss), 1),
        "idle_cpu_percent_median": round(statistics.median(cpu), 3),
        "idle_cpu_percent_max": round(max(cpu), 3),
    }


if __name__ == "__main__":
    main()
