"""The ``simulate`` command's arguments: what ``rebootcoord``'s parser needs of the simulator.

Apart from ``rebootcoord.sim.cli`` because every agent builds that parser: the simulator (its
checker, its live view) stays out of the agent's memory. Never imports the rest of ``sim``.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

__all__ = ["FAIL_PAUSE_AFTER", "add_simulate_parser"]

#: pause_group_after of the agents with --fail-node: the failing node stops the line this soon.
FAIL_PAUSE_AFTER = "3s"


def _whole(text: str) -> int:
    """argparse type: a whole number, refused in one line that says what was expected."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"got {text!r}, expected a whole number") from None


def _seconds(text: str) -> float:
    """argparse type: a finite number of seconds (nan and inf are not durations)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"got {text!r}, expected a number of seconds")
    return value


def add_simulate_parser(sub: Any) -> None:
    p = sub.add_parser(
        "simulate",
        help="run a simulated fleet (agents as processes) on a real etcd",
        description="Every node needs a reboot; watch the fleet take turns (the line to paste to "
        "watch it with rebootctl is printed at start). An operator's `rebootctl pause` holds the "
        "run: the holders finish their cycle, nobody takes a slot, and `rebootctl resume` lets the "
        "run go on. Exits 0 when every node has rebooted and released its slot and every invariant "
        "held; 1 when an invariant was violated or the run timed out; 2 on a bad argument; 3 when "
        "a node stopped the line (its post-reboot checks kept failing, as with --fail-node: it "
        "paused the group), with the reason.",
    )
    p.add_argument("--nodes", type=_whole, default=6, help="number of simulated nodes (default 6)")
    p.add_argument("--max", type=_whole, default=2, help="slots of the group (default 2)")
    p.add_argument(
        "--group", default="default", help="the group the nodes share (default: default); see --etcd"
    )
    p.add_argument("--etcd", metavar="ENDPOINT", help="use this etcd instead of starting one")
    p.add_argument("--reboot-seconds", type=_seconds, default=2.0, help="how long a simulated reboot takes")
    p.add_argument("--events", metavar="FILE", help="append one JSON line per phase change")
    p.add_argument("--cycles", type=_whole, default=1, help="reboots per node (a new update after each)")
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=0,
        help="give up after this many seconds, not counting the time an operator kept the group "
        "paused (default: scaled)",
    )
    p.add_argument(
        "--run-dir",
        metavar="DIR",
        help="keep node directories, agent logs and events here (default: a temp dir, deleted "
        "after a successful run, kept after a failed one)",
    )
    p.add_argument(
        "--keep-run-dir", action="store_true", help="keep the temp run directory after a successful run"
    )
    p.add_argument("--summary-json", metavar="FILE", help="write timings and invariant checks as JSON")
    p.add_argument("--quiet", action="store_true", help="no live progress")
    r = p.add_argument_group("rollout in waves, zones, a failing node")
    r.add_argument(
        "--waves",
        metavar="SPEC",
        help="the agents' waves: cumulative sizes, counts or percentages, such as 1,10%%,50%%,100%%",
    )
    r.add_argument(
        "--wave-soak",
        metavar="DURATION",
        default="3s",
        help="the agents' wave_soak: a wave's last node stays healthy this long before the next "
        "wave opens (default 3s)",
    )
    r.add_argument(
        "--zones",
        type=_whole,
        default=0,
        help="spread the nodes round-robin over this many zones (zone-a, ...)",
    )
    r.add_argument(
        "--max-per-zone",
        type=_whole,
        metavar="K",
        help="the agents' max_holders_per_zone (default 1 with --zones)",
    )
    r.add_argument(
        "--fail-node",
        metavar="NODE",
        help="this node's application is broken: its post-reboot health check fails, it pauses the "
        f"group after {FAIL_PAUSE_AFTER} and the simulation ends (exit 3)",
    )
    k = p.add_argument_group("Kubernetes (--backend kubernetes): agents on existing kwok Nodes")
    k.add_argument(
        "--backend",
        choices=["etcd", "kubernetes"],
        default="etcd",
        help="where the group's semaphore lives: %(choices)s (default etcd; kubernetes: a Lease, "
        "the nodes as kwok Nodes)",
    )
    k.add_argument("--kubeconfig", help="kubeconfig of the cluster (default: $KUBECONFIG, ~/.kube/config)")
    k.add_argument("--context", help="kubeconfig context")
    k.add_argument("--namespace", default="default", help="namespace of the Leases (default: default)")
    k.add_argument(
        "--node-selector",
        default="kwok.rebootcoord.test/fake=true",
        help="label selector of the kwok Nodes to use (default: the nodes `make cluster` creates)",
    )
    k.add_argument(
        "--not-ready-annotation",
        default="kwok.rebootcoord.test/not-ready",
        help="annotation that makes your kwok stages report a Node NotReady while it reboots",
    )
