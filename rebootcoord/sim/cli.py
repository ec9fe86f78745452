"""``rebootcoord simulate``: a whole fleet on one machine, on a real etcd."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from types import FrameType
from typing import TYPE_CHECKING, Any

from rebootcoord.core.types import GROUP_RE
from rebootcoord.sim.checker import Version, check_run

if TYPE_CHECKING:  # the fleet imports the backends: only `simulate` pays for them
    from rebootcoord.sim.fleet import Fleet

PHASE_ORDER = [
    "idle",
    "pending",
    "waiting",
    "locked",
    "draining",
    "rebooting",
    "verifying",
    "releasing",
]


def add_simulate_parser(sub: Any) -> None:
    p = sub.add_parser(
        "simulate",
        help="run a simulated fleet (agents as processes) on a real etcd",
        description="Every node needs a reboot; watch the fleet take turns. Exits 0 when every "
        "node has rebooted and released its slot.",
    )
    p.add_argument("--nodes", type=int, default=6, help="number of simulated nodes (default 6)")
    p.add_argument("--max", type=int, default=2, help="slots of the group (default 2)")
    p.add_argument("--group", default="default")
    p.add_argument("--etcd", metavar="ENDPOINT", help="use this etcd instead of starting one")
    p.add_argument("--reboot-seconds", type=float, default=2.0, help="how long a simulated reboot takes")
    p.add_argument("--events", metavar="FILE", help="append one JSON line per phase change")
    p.add_argument("--cycles", type=int, default=1, help="reboots per node (a new update after each)")
    p.add_argument(
        "--timeout", type=float, default=0, help="give up after this many seconds (default: scaled)"
    )
    p.add_argument("--run-dir", help="keep node directories and logs here (default: a temp dir)")
    p.add_argument("--summary-json", metavar="FILE", help="write timings and invariant checks as JSON")
    p.add_argument("--quiet", action="store_true", help="no live progress")
    k = p.add_argument_group("Kubernetes (--backend kubernetes): agents on existing kwok Nodes")
    k.add_argument("--backend", choices=["etcd", "kubernetes"], default="etcd")
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


def run_simulate(args: argparse.Namespace) -> int:
    problems = []
    if args.nodes < 1:
        problems.append(f"--nodes: got {args.nodes}, expected a whole number >= 1")
    if args.max < 1:
        problems.append(f"--max: got {args.max}, expected a whole number >= 1")
    if not GROUP_RE.match(args.group):
        problems.append(f"--group: got {args.group!r}, expected letters, digits, '.' and '-'")
    if args.reboot_seconds < 0:
        problems.append(f"--reboot-seconds: got {args.reboot_seconds}, expected >= 0")
    if args.cycles < 1:
        problems.append(f"--cycles: got {args.cycles}, expected >= 1")
    if problems:
        for problem in problems:
            print(f"rebootcoord simulate: {problem}", file=sys.stderr)
        return 2

    run_dir = args.run_dir or tempfile.mkdtemp(prefix="rebootcoord-sim-")
    keep = bool(args.run_dir)
    events = os.path.abspath(args.events) if args.events else os.path.join(run_dir, "events.jsonl")
    etcd = None
    stopped = False

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopped
        stopped = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    from rebootcoord.sim.etcd_server import EtcdNotFound, EtcdServer

    try:
        if args.backend == "kubernetes":
            return _simulate_kubernetes(args, run_dir, events, lambda: stopped)
        endpoint = args.etcd
        if endpoint is None:
            try:
                etcd = EtcdServer(data_dir=os.path.join(run_dir, "etcd")).start()
            except EtcdNotFound as exc:
                print(f"rebootcoord simulate: {exc}", file=sys.stderr)
                return 1
            endpoint = etcd.endpoint
        _say(
            args,
            f"simulating {args.nodes} nodes, {args.max} slot(s), group {args.group}, etcd {endpoint}",
        )
        _say(args, f"node directories and logs: {run_dir}; events: {events}")
        return _run_fleet(
            args, run_dir, events, lambda: stopped, start_up=60, per_node=6.0, endpoint=endpoint
        )
    finally:
        if etcd is not None:
            etcd.stop()
        if not keep:
            shutil.rmtree(run_dir, ignore_errors=True)


def _simulate_kubernetes(args: argparse.Namespace, run_dir: str, events: str, stopped: Any) -> int:
    from rebootcoord.adapters.kube.api import Kube, KubeOptions
    from rebootcoord.core.types import Group
    from rebootcoord.daemon.group import lease_group
    from rebootcoord.errors import BackendUnavailable
    from rebootcoord.sim.kwok import KwokRebootHooks, kwok_nodes

    kubeconfig = os.path.abspath(args.kubeconfig) if args.kubeconfig else None
    try:
        kube = Kube.connect(KubeOptions(kubeconfig=kubeconfig, context=args.context))
        names = kwok_nodes(kube, args.node_selector, args.nodes)
    except (BackendUnavailable, ValueError) as exc:
        print(f"rebootcoord simulate: {exc}", file=sys.stderr)
        return 1
    agent_config: dict[str, Any] = {
        "backend": "kubernetes",
        "namespace": args.namespace,
        "drain_timeout": "2m",
        "drain_delete_emptydir_data": True,
    }
    if kubeconfig:
        agent_config["kubeconfig"] = kubeconfig
    if args.context:
        agent_config["kube_context"] = args.context
    _say(
        args,
        f"simulating {args.nodes} kwok nodes ({', '.join(names)}), {args.max} slot(s), group {args.group}",
    )
    _say(args, f"Lease {args.namespace}/rebootcoord-{args.group}; logs: {run_dir}; events: {events}")
    return _run_fleet(
        args,
        run_dir,
        events,
        stopped,
        start_up=120,
        per_node=15.0,
        node_names=names,
        semaphore=lease_group(kube, namespace=args.namespace, group=Group(args.group)),
        hooks=KwokRebootHooks(kube, args.not_ready_annotation),
        agent_config=agent_config,
    )


def _run_fleet(
    args: argparse.Namespace,
    run_dir: str,
    events: str,
    stopped: Any,
    *,
    start_up: float,
    per_node: float,
    **backend: Any,
) -> int:
    """Run the fleet the arguments describe on ``backend`` (Fleet's backend arguments) until done
    or timeout, then check the event log and report; the exit code. The default timeout allows
    ``start_up`` seconds plus three times each round of reboots (``per_node`` seconds beyond the
    reboot itself)."""
    from rebootcoord.sim.fleet import Fleet

    rounds = math.ceil(args.nodes * args.cycles / args.max)
    timeout = args.timeout or start_up + rounds * (args.reboot_seconds + per_node) * 3
    started = time.time()
    fleet = Fleet(
        run_dir,
        nodes=args.nodes,
        group=args.group,
        max_holders=args.max,
        reboot_seconds=args.reboot_seconds,
        events_file=events,
        cycles=args.cycles,
        **backend,
    )
    with fleet:
        ok = _watch(fleet, args, started, timeout, stopped)
        elapsed = time.time() - started
    report = check_run(fleet.run_log(history=_history(fleet, backend.get("endpoint")), finished=ok))
    summary = _summary(fleet, report, elapsed, args)
    if args.summary_json:
        with open(args.summary_json, "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=2)
    _print_summary(summary, args)
    if fleet.violations or not report.ok:
        return 1
    return 0 if ok else 1


def _history(fleet: Fleet, endpoint: str | None) -> list[Version] | None:
    """The group's history in etcd, replayed for the checker (None without an etcd to ask: on
    Kubernetes the checker then judges from the event and host logs alone)."""
    if endpoint is None:
        return None
    from rebootcoord.errors import BackendUnavailable
    from rebootcoord.sim.history import etcd_group_history

    prefix = str(fleet.agent_config.get("etcd_key_prefix", "com.coreos.airlock"))
    try:
        return etcd_group_history(endpoint, prefix=prefix, group=fleet.group, since=fleet.start_revision)
    except BackendUnavailable as exc:
        print(f"rebootcoord simulate: cannot replay the group's history: {exc}", file=sys.stderr)
        return None


def _watch(fleet: Fleet, args: argparse.Namespace, started: float, timeout: float, stopped: Any) -> bool:
    tty = sys.stderr.isatty() and not args.quiet
    last_line = ""
    last_print = 0.0
    while True:
        if fleet.done():
            if tty:
                sys.stderr.write("\n")
            return True
        now = time.time()
        if stopped() or now - started > timeout:
            if tty:
                sys.stderr.write("\n")
            why = "interrupted" if stopped() else f"timed out after {timeout:.0f}s"
            print(f"rebootcoord simulate: {why}; unfinished: {_unfinished(fleet)}", file=sys.stderr)
            return False
        line = _progress(fleet, now - started)
        if not args.quiet and (tty or (line != last_line and now - last_print >= 2)):
            if tty:
                sys.stderr.write("\r\033[K" + line)
                sys.stderr.flush()
            else:
                print(line, file=sys.stderr)
            last_line, last_print = line, now
        time.sleep(0.25)


def _progress(fleet: Fleet, elapsed: float) -> str:
    phases = fleet.phases()
    rebooted = sum(1 for n in fleet.nodes.values() if n.reboots >= fleet.cycles)
    # A node whose simulated host is down shows its last phase, marked: its agent is not running.
    booting = {n.name for n in fleet.nodes.values() if n.rebooting}
    holding = [
        f"{name}:{phase}" + ("(host down)" if name in booting else "")
        for name, phase in sorted(phases.items())
        if phase in PHASE_ORDER[3:]
    ]
    counts = Counter(phases.get(name, "starting") for name in fleet.nodes)
    others = " ".join(f"{p}={counts[p]}" for p in ("pending", "waiting", "idle") if counts[p])
    held = " ".join(holding) or "-"
    return f"[{elapsed:6.1f}s] rebooted {rebooted}/{len(fleet.nodes)} | holding: {held} | {others}"


def _unfinished(fleet: Fleet) -> str:
    phases = fleet.phases()
    rest = [
        f"{n.name}({phases.get(n.name, '?')}, {n.reboots} reboots)"
        for n in fleet.nodes.values()
        if n.reboots < fleet.cycles
    ]
    return ", ".join(rest) or "all rebooted; slots not yet released"


def _summary(fleet: Fleet, report: Any, elapsed: float, args: argparse.Namespace) -> dict[str, Any]:
    spans = [span for node_spans in (report.cycles.values() if report else []) for span in node_spans]
    cycles = sorted(end - start for start, end in spans)
    median = cycles[len(cycles) // 2] if cycles else None
    rounds = math.ceil(args.nodes * args.cycles / args.max)
    # From the first slot taken to the last given back: the rollout without the fleet's start-up.
    rollout = max(end for _, end in spans) - min(start for start, _ in spans) if spans else None
    return {
        "nodes": args.nodes,
        "max": args.max,
        "cycles_per_node": args.cycles,
        "reboot_seconds": args.reboot_seconds,
        "elapsed_seconds": round(elapsed, 3),
        "node_cycle_seconds_median": round(median, 3) if median else None,
        "ideal_seconds": round(rounds * median, 3) if median else None,
        "overhead_ratio": round(elapsed / (rounds * median), 3) if median else None,
        "rollout_seconds": round(rollout, 3) if rollout else None,
        "rollout_overhead_ratio": round(rollout / (rounds * median), 3) if rollout and median else None,
        "max_holders_seen": report.max_holders if report else None,
        "ordered_by_revision": report.by_revision if report else None,
        "violations_by_invariant": report.by_invariant() if report else {},
        "reboots": {n.name: n.reboots for n in fleet.nodes.values()},
        "violations": fleet.violations + (report.problems if report else []),
    }


def _print_summary(summary: dict[str, Any], args: argparse.Namespace) -> None:
    ok = not summary["violations"]
    print(
        f"done in {summary['elapsed_seconds']:.1f}s: {sum(summary['reboots'].values())} reboots on "
        f"{summary['nodes']} nodes, at most {summary['max_holders_seen']} holding at once "
        f"(max {summary['max']}); "
        f"median node cycle {summary['node_cycle_seconds_median']}s, "
        f"ideal ceil(N/K) x cycle = {summary['ideal_seconds']}s"
    )
    print("invariants: " + ("OK" if ok else "VIOLATED: " + "; ".join(summary["violations"])))


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(text, file=sys.stderr)
