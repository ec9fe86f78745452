"""``rebootcoord simulate``: a whole fleet on one machine, on a real etcd."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import string
import sys
import tempfile
import time
from collections import Counter
from types import FrameType
from typing import TYPE_CHECKING, Any

from rebootcoord.core.config.parsers import Invalid, p_duration, p_waves
from rebootcoord.core.types import GROUP_RE
from rebootcoord.sim.checker import Version, check_run

if TYPE_CHECKING:  # the fleet imports the backends: only `simulate` pays for them
    from rebootcoord.core.semaphore import GroupView
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

# Exit codes of `rebootcoord simulate`.
EXIT_OK = 0  # every node rebooted and released its slot; every invariant held
EXIT_FAILED = 1  # an invariant was violated, the run timed out or was interrupted, no backend
EXIT_USAGE = 2  # a bad argument
EXIT_PAUSED = 3  # the group was paused (stop the line, e.g. --fail-node); every invariant held

#: pause_group_after of the agents with --fail-node: the failing node stops the line this soon.
FAIL_PAUSE_AFTER = "3s"
#: --zones Z: the nodes round-robin over zone-a, zone-b, ...
ZONE_LETTERS = string.ascii_lowercase


def add_simulate_parser(sub: Any) -> None:
    p = sub.add_parser(
        "simulate",
        help="run a simulated fleet (agents as processes) on a real etcd",
        description="Every node needs a reboot; watch the fleet take turns. Exits 0 when every "
        "node has rebooted and released its slot and every invariant held; 1 when an invariant was "
        "violated or the run timed out; 2 on a bad argument; 3 when the group was paused (stop the "
        "line: a node's post-reboot checks kept failing, as with --fail-node), with the reason.",
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
        "--zones", type=int, default=0, help="spread the nodes round-robin over this many zones (zone-a, ...)"
    )
    r.add_argument(
        "--max-per-zone",
        type=int,
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
    args.wave_plan = ()
    if args.waves is not None:
        try:
            args.wave_plan = p_waves(args.waves)
        except Invalid as exc:
            problems.append(f"--waves: got {args.waves!r}, expected {exc.expected}")
        else:
            if not args.wave_plan:
                problems.append(f"--waves: got {args.waves!r}, expected at least one wave, such as 1,100%")
    try:
        args.soak_seconds = p_duration(args.wave_soak).total_seconds()
    except Invalid as exc:
        problems.append(f"--wave-soak: got {args.wave_soak!r}, expected {exc.expected}")
    if not 0 <= args.zones <= len(ZONE_LETTERS):
        problems.append(f"--zones: got {args.zones}, expected 1 to {len(ZONE_LETTERS)}")
    if args.max_per_zone is None:
        args.max_per_zone = 1 if args.zones else 0
    elif not args.zones:
        problems.append("--max-per-zone: needs --zones")
    elif args.max_per_zone < 1:
        problems.append(f"--max-per-zone: got {args.max_per_zone}, expected a whole number >= 1")
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
    """Run the fleet the arguments describe on ``backend`` (Fleet's backend arguments) until done,
    paused or timeout, then check the event log and report; the exit code. The default timeout
    allows ``start_up`` seconds plus three times each round of reboots (``per_node`` seconds
    beyond the reboot itself; a zone budget makes the rounds smaller, each wave adds one) and
    twice the waves' soaks."""
    from rebootcoord.sim.fleet import Fleet

    concurrency = min(args.max, args.zones * args.max_per_zone) if args.zones else args.max
    waves = len(args.wave_plan) * args.cycles
    rounds = math.ceil(args.nodes * args.cycles / concurrency) + waves
    soaks = waves * args.soak_seconds
    timeout = args.timeout or start_up + rounds * (args.reboot_seconds + per_node) * 3 + soaks * 2
    started = time.time()
    agent_config = {**backend.pop("agent_config", {}), **_agent_config(args)}
    fleet = Fleet(
        run_dir,
        nodes=args.nodes,
        group=args.group,
        max_holders=args.max,
        reboot_seconds=args.reboot_seconds,
        events_file=events,
        cycles=args.cycles,
        agent_config=agent_config,
        **backend,
    )
    zones = _zones(list(fleet.nodes), args.zones)
    fleet.node_config = {name: {"zone": zone} for name, zone in zones.items()}
    if args.fail_node is not None:
        if args.fail_node not in fleet.nodes:
            fleet.stop()
            print(
                f"rebootcoord simulate: --fail-node: got {args.fail_node!r}, expected one of the nodes: "
                + ", ".join(fleet.nodes),
                file=sys.stderr,
            )
            return EXIT_USAGE
        fleet.break_app(args.fail_node)
    if args.wave_plan:
        _say(args, f"waves {','.join(map(str, args.wave_plan))}, soak {args.wave_soak}")
    if args.zones:
        _say(args, f"{args.zones} zone(s), at most {args.max_per_zone} holder(s) per zone")
    if args.fail_node is not None:
        _say(
            args,
            f"{args.fail_node}: its post-reboot check fails; it pauses the group after {FAIL_PAUSE_AFTER}",
        )
    watch = _Watch(fleet, args, started=started, timeout=timeout, stopped=stopped, zones=zones)
    with fleet:
        outcome = watch.run()
        elapsed = time.time() - started
        watch.poll()  # the ledger as the run left it
    history = _history(fleet, backend.get("endpoint"))
    report = check_run(fleet.run_log(history=history, finished=outcome == "done"))
    summary = _summary(fleet, report, elapsed, args, watch=watch, history=history, outcome=outcome)
    if args.summary_json:
        with open(args.summary_json, "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=2)
    _print_summary(summary, args)
    if fleet.violations or not report.ok:
        return EXIT_FAILED
    return {"done": EXIT_OK, "paused": EXIT_PAUSED}.get(outcome, EXIT_FAILED)


def _zones(names: list[str], count: int) -> dict[str, str]:
    """Each node's zone, round-robin over ``count`` zones (zone-a, zone-b, ...); none without."""
    if not count:
        return {}
    return {name: f"zone-{ZONE_LETTERS[i % count]}" for i, name in enumerate(names)}


def _agent_config(args: argparse.Namespace) -> dict[str, Any]:
    """The agents' settings for --waves, --zones and --fail-node (the zone itself is per node)."""
    from rebootcoord.sim.fleet import app_check

    config: dict[str, Any] = {}
    if args.wave_plan:
        config["waves"] = [str(size) for size in args.wave_plan]
        config["wave_soak"] = args.wave_soak
    if args.zones:
        config["max_holders_per_zone"] = args.max_per_zone
    if args.fail_node is not None:
        # The same check on every node; it fails where the host's application is broken.
        config["health_checks"] = [app_check()]
        config["pause_group_after"] = FAIL_PAUSE_AFTER
    return config


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


class _Watch:
    """Watches the run: progress, the waves as they open and a pause, from the group as read."""

    def __init__(
        self,
        fleet: Fleet,
        args: argparse.Namespace,
        *,
        started: float,
        timeout: float,
        stopped: Any,
        zones: dict[str, str],
    ) -> None:
        self.fleet, self.args, self.started, self.timeout, self.stopped = (
            fleet,
            args,
            started,
            timeout,
            stopped,
        )
        self.zones = zones
        self.tty = sys.stderr.isatty() and not args.quiet
        self.view: GroupView | None = None
        self.waves: dict[tuple[str, int], dict[str, Any]] = {}  # (rollout, wave index) -> as seen
        self.members: dict[tuple[str, int], set[str]] = {}  # (rollout, wave index) -> holders seen
        self.paused: dict[str, Any] | None = None

    def run(self) -> str:
        """Until the fleet is done ("done"), the group paused ("paused"), "timeout" or
        "interrupted"."""
        last_line = ""
        last_print = 0.0
        while True:
            self.poll()
            if self.fleet.done():
                self._end_line()
                return "done"
            now = time.time()
            if self.view is not None and self.view.paused is not None:
                info = self.view.paused
                self.paused = {
                    "by": info.by,
                    "reason": info.reason,
                    "at_seconds": round(info.at - self.started, 3),
                }
                self._end_line()
                print(
                    f"rebootcoord simulate: the group is paused by {info.by} at "
                    f"+{info.at - self.started:.1f}s: {info.reason}; unfinished: {_unfinished(self.fleet)}",
                    file=sys.stderr,
                )
                return "paused"
            if self.stopped() or now - self.started > self.timeout:
                self._end_line()
                why = "interrupted" if self.stopped() else f"timed out after {self.timeout:.0f}s"
                print(f"rebootcoord simulate: {why}; unfinished: {_unfinished(self.fleet)}", file=sys.stderr)
                return "interrupted" if self.stopped() else "timeout"
            line = _progress(self.fleet, now - self.started, self.zones, self.view, now)
            if not self.args.quiet and (self.tty or (line != last_line and now - last_print >= 2)):
                if self.tty:
                    sys.stderr.write("\r\033[K" + line)
                    sys.stderr.flush()
                else:
                    print(line, file=sys.stderr)
                last_line, last_print = line, now
            time.sleep(0.25)

    def poll(self) -> None:
        """Read the group; note each wave the first time it is seen open."""
        try:
            view = self.fleet.semaphore.read(queue=False)
        except Exception:  # noqa: BLE001 - the backend may be down a moment: the next poll tells
            return
        self.view = view
        for record in view.records.values():
            if record.rollout and view.holds(record.id):
                self.members.setdefault((record.rollout, record.wave), set()).add(record.id)
        rollout = view.ledger.rollout
        if rollout is None:
            return
        for index, wave in enumerate(rollout.waves):
            key = (rollout.id, index)
            entry = {
                "rollout": rollout.id,
                "wave": index + 1,
                "of": len(rollout.plan.sizes),
                "size": str(rollout.plan.sizes[index]),
                "quota": wave.quota,
                "opened_at_seconds": round(wave.opened_at - self.started, 3),
                "through": wave.done,
                "drain_failures": wave.failures,
                "last_through_at_seconds": (
                    round(wave.last_done_at - self.started, 3) if wave.last_done_at is not None else None
                ),
            }
            if key not in self.waves:
                quota = (
                    f"{wave.quota} node(s) through in all" if wave.quota is not None else "every node left"
                )
                self._note(
                    f"{rollout.label(index)} opens at +{entry['opened_at_seconds']:.1f}s "
                    f"(rollout {rollout.id}): {quota}"
                )
            self.waves[key] = entry

    def _note(self, text: str) -> None:
        if self.args.quiet:
            return
        if self.tty:
            sys.stderr.write("\r\033[K")
        print(text, file=sys.stderr)

    def _end_line(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def _progress(fleet: Fleet, elapsed: float, zones: dict[str, str], view: GroupView | None, now: float) -> str:
    phases = fleet.phases()
    rebooted = sum(1 for n in fleet.nodes.values() if n.reboots >= fleet.cycles)
    # A node whose simulated host is down shows its last phase, marked: its agent is not running.
    booting = {n.name for n in fleet.nodes.values() if n.rebooting}
    holding = [
        name
        + (f"@{zones[name]}" if name in zones else "")
        + f":{phase}"
        + ("(host down)" if name in booting else "")
        for name, phase in sorted(phases.items())
        if phase in PHASE_ORDER[3:]
    ]
    counts = Counter(phases.get(name, "starting") for name in fleet.nodes)
    others = " ".join(f"{p}={counts[p]}" for p in ("pending", "waiting", "idle") if counts[p])
    held = " ".join(holding) or "-"
    rollout = view.rollout(now) if view is not None else None
    wave = f" | wave {rollout.current + 1}/{len(rollout.plan.sizes)}" if rollout is not None else ""
    return f"[{elapsed:6.1f}s] rebooted {rebooted}/{len(fleet.nodes)}{wave} | holding: {held} | {others}"


def _unfinished(fleet: Fleet) -> str:
    phases = fleet.phases()
    rest = [
        f"{n.name}({phases.get(n.name, '?')}, {n.reboots} reboots)"
        for n in fleet.nodes.values()
        if n.reboots < fleet.cycles
    ]
    return ", ".join(rest) or "all rebooted; slots not yet released"


def _wave_nodes(history: list[Version] | None) -> dict[tuple[str, int], list[str]]:
    """The nodes that took a slot in each (rollout, wave index), from their records in the
    backend's history (empty without one)."""
    out: dict[tuple[str, int], set[str]] = {}
    for v in history or ():
        for holder in v.holders:
            record = v.records.get(holder) or {}
            rollout, wave = record.get("rollout"), record.get("wave")
            if isinstance(rollout, str) and rollout and isinstance(wave, int):
                out.setdefault((rollout, wave), set()).add(holder)
    return {key: sorted(nodes) for key, nodes in out.items()}


def _summary(
    fleet: Fleet,
    report: Any,
    elapsed: float,
    args: argparse.Namespace,
    *,
    watch: _Watch,
    history: list[Version] | None,
    outcome: str,
) -> dict[str, Any]:
    spans = [span for node_spans in (report.cycles.values() if report else []) for span in node_spans]
    cycles = sorted(end - start for start, end in spans)
    median = cycles[len(cycles) // 2] if cycles else None
    rounds = math.ceil(args.nodes * args.cycles / args.max)
    # From the first slot taken to the last given back: the rollout without the fleet's start-up.
    rollout = max(end for _, end in spans) - min(start for start, _ in spans) if spans else None
    members = _wave_nodes(history)  # on etcd; else (and also) the holders the watch saw
    waves = [
        {**entry, "nodes": sorted(set(members.get(key, [])) | watch.members.get(key, set()))}
        for key, entry in sorted(watch.waves.items(), key=lambda kv: (kv[1]["opened_at_seconds"], kv[0]))
    ]
    rollouts = {key[0] for key in watch.waves}
    return {
        "nodes": args.nodes,
        "max": args.max,
        "cycles_per_node": args.cycles,
        "reboot_seconds": args.reboot_seconds,
        "outcome": outcome,
        "elapsed_seconds": round(elapsed, 3),
        "node_cycle_seconds_median": round(median, 3) if median else None,
        "ideal_seconds": round(rounds * median, 3) if median else None,
        "overhead_ratio": round(elapsed / (rounds * median), 3) if median else None,
        "rollout_seconds": round(rollout, 3) if rollout else None,
        "rollout_overhead_ratio": round(rollout / (rounds * median), 3) if rollout and median else None,
        "max_holders_seen": report.max_holders if report else None,
        "ordered_by_revision": report.by_revision if report else None,
        "waves_spec": [str(size) for size in args.wave_plan],
        "wave_soak_seconds": args.soak_seconds if args.wave_plan else None,
        "waves": waves,
        # Soaks waited between waves: each rollout's waves but its first opened after one.
        "soaks": len(waves) - len(rollouts),
        "zones": dict(sorted(Counter(watch.zones.values()).items())),
        "max_per_zone": args.max_per_zone or None,
        "max_zone_holders_seen": dict(sorted(report.max_zone_holders.items())) if report else {},
        "fail_node": args.fail_node,
        "paused": watch.paused,
        "violations_by_invariant": report.by_invariant() if report else {},
        "reboots": {n.name: n.reboots for n in fleet.nodes.values()},
        "violations": fleet.violations + (report.problems if report else []),
    }


def _print_summary(summary: dict[str, Any], args: argparse.Namespace) -> None:
    ok = not summary["violations"]
    ended = (
        f"done in {summary['elapsed_seconds']:.1f}s"
        if summary["outcome"] == "done"
        else f"{summary['outcome']} after {summary['elapsed_seconds']:.1f}s"
    )
    print(
        f"{ended}: {sum(summary['reboots'].values())} reboots on "
        f"{summary['nodes']} nodes, at most {summary['max_holders_seen']} holding at once "
        f"(max {summary['max']}); "
        f"median node cycle {summary['node_cycle_seconds_median']}s, "
        f"ideal ceil(N/K) x cycle = {summary['ideal_seconds']}s"
    )
    if summary["waves"]:
        opened = ", ".join(
            f"{w['wave']} ({w['size']}) at +{w['opened_at_seconds']:.1f}s: {len(w['nodes'])} node(s)"
            for w in summary["waves"]
        )
        print(
            f"waves: {opened}; rollout {summary['rollout_seconds']}s with {summary['soaks']} soak(s) "
            f"of {summary['wave_soak_seconds']}s"
        )
    if summary["max_per_zone"]:
        seen = " ".join(f"{z}={n}" for z, n in summary["max_zone_holders_seen"].items())
        print(f"zones: at most {summary['max_per_zone']} holding per zone; most seen: {seen or '-'}")
    if summary["paused"]:
        paused = summary["paused"]
        print(f"paused by {paused['by']} at +{paused['at_seconds']:.1f}s: {paused['reason']}")
    print("invariants: " + ("OK" if ok else "VIOLATED: " + "; ".join(summary["violations"])))


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(text, file=sys.stderr)
