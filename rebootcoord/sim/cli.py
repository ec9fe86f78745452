"""``rebootcoord simulate``: a whole fleet on one machine, on a real etcd."""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import signal
import string
import sys
import tempfile
import time
from collections import Counter
from types import FrameType
from typing import TYPE_CHECKING, Any

from rebootcoord.core.config.parsers import Invalid, p_duration, p_endpoints, p_waves
from rebootcoord.core.semaphore import MAX_SLOTS
from rebootcoord.core.types import GROUP_RE
from rebootcoord.sim.args import FAIL_PAUSE_AFTER
from rebootcoord.sim.checker import Version, check_run
from rebootcoord.sim.watch import Watch, group_in_use, max_note

if TYPE_CHECKING:  # the fleet imports the backends: only `simulate` pays for them
    from rebootcoord.sim.fleet import Fleet

# Exit codes of `rebootcoord simulate`.
EXIT_OK = 0  # every node rebooted and released its slot; every invariant held
EXIT_FAILED = 1  # an invariant was violated, the run timed out or was interrupted, no backend
EXIT_USAGE = 2  # a bad argument
EXIT_PAUSED = 3  # the group was paused (stop the line, e.g. --fail-node); every invariant held

#: --zones Z: the nodes round-robin over zone-a, zone-b, ...
ZONE_LETTERS = string.ascii_lowercase
#: The most nodes a run simulates: each is a real agent process (tens of MiB each).
MAX_NODES = 500


def run_simulate(args: argparse.Namespace) -> int:
    problems = _problems(args)
    if problems:
        for problem in problems:
            print(f"rebootcoord simulate: {problem}", file=sys.stderr)
        return EXIT_USAGE

    run_dir = os.path.abspath(args.run_dir) if args.run_dir else tempfile.mkdtemp(prefix="rebootcoord-sim-")
    events = os.path.abspath(args.events) if args.events else os.path.join(run_dir, "events.jsonl")
    etcd = None
    stopped = False
    code = EXIT_FAILED  # until the run says otherwise: a crash keeps the run directory

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopped
        stopped = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    from rebootcoord.sim.etcd_server import EtcdNotFound, EtcdServer

    try:
        if args.backend == "kubernetes":
            code = _simulate_kubernetes(args, run_dir, events, lambda: stopped)
            return code
        endpoint = args.etcd
        if endpoint is None:
            try:
                etcd = EtcdServer(data_dir=os.path.join(run_dir, "etcd")).start()
            except EtcdNotFound as exc:
                print(f"rebootcoord simulate: {exc}", file=sys.stderr)
                return code
            endpoint = etcd.endpoint
        ctl = _rebootctl(["--etcd-endpoints", endpoint, "--group", args.group])
        header = [
            f"simulating {args.nodes} nodes, {args.max} slot(s), group {args.group}, etcd {endpoint}",
            _run_dir_line(args, run_dir, events),
            f"watch it: {ctl} status",
        ]
        code = _run_fleet(
            args, run_dir, events, lambda: stopped, start_up=60, per_node=6.0, ctl=ctl, header=header,
            endpoint=endpoint,
        )  # fmt: skip
        return code
    finally:
        if etcd is not None:
            etcd.stop()
        _leave_run_dir(args, run_dir, events, code)


def _problems(args: argparse.Namespace) -> list[str]:
    """Every wrong argument, one line each naming the option, what it got and what it expects
    (argparse has refused what it cannot parse already). Checks the files and directories the
    run writes, so that a run never fails at its end for a path it could have refused first."""
    problems = []
    if not 1 <= args.nodes <= MAX_NODES:
        problems.append(f"--nodes: got {args.nodes}, expected a whole number from 1 to {MAX_NODES}")
    if not 1 <= args.max <= MAX_SLOTS:
        problems.append(f"--max: got {args.max}, expected a whole number from 1 to {MAX_SLOTS}")
    if not GROUP_RE.match(args.group):
        problems.append(f"--group: got {args.group!r}, expected letters, digits, '.' and '-'")
    if args.reboot_seconds < 0:
        problems.append(f"--reboot-seconds: got {args.reboot_seconds:g}, expected a number of seconds >= 0")
    if args.timeout < 0:
        problems.append(f"--timeout: got {args.timeout:g}, expected a number of seconds > 0 (0: scaled)")
    if args.cycles < 1:
        problems.append(f"--cycles: got {args.cycles}, expected a whole number >= 1")
    if args.etcd is not None:
        if args.backend != "etcd":
            problems.append(f"--etcd: got it with --backend {args.backend}, expected --backend etcd")
        else:
            try:
                endpoints = p_endpoints(args.etcd)
            except Invalid as exc:
                problems.append(f"--etcd: got {args.etcd!r}, expected {exc.expected}")
            else:
                if len(endpoints) != 1:
                    problems.append(
                        f"--etcd: got {args.etcd!r}, expected one endpoint such as http://127.0.0.1:2379"
                    )
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
        problems.append("--max-per-zone: got a value without --zones, expected --zones as well")
    elif args.max_per_zone < 1:
        problems.append(f"--max-per-zone: got {args.max_per_zone}, expected a whole number >= 1")
    if args.fail_node is not None and args.backend == "etcd":
        from rebootcoord.sim.fleet import sim_node_names

        names = sim_node_names(args.nodes) if 1 <= args.nodes <= MAX_NODES else []
        if names and args.fail_node not in names:
            problems.append(
                f"--fail-node: got {args.fail_node!r}, expected one of the nodes: {names[0]} to {names[-1]}"
            )
    if args.run_dir is not None:
        problem = _writable_dir(args.run_dir)
        if problem:
            problems.append(
                f"--run-dir: got {args.run_dir!r}, expected a directory we can create and write ({problem})"
            )
    for option, path in (("--events", args.events), ("--summary-json", args.summary_json)):
        problem = _writable_file(path) if path is not None else ""
        if problem:
            problems.append(f"{option}: got {path!r}, expected a file we can write ({problem})")
    return problems


def _writable_dir(path: str) -> str:
    """Why ``path`` cannot be the run directory ("" : it can; it exists now)."""
    if os.path.exists(path) and not os.path.isdir(path):
        return "not a directory"
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        return exc.strerror or str(exc)
    if not os.access(path, os.W_OK | os.X_OK):
        return "not writable"
    return ""


def _writable_file(path: str) -> str:
    """Why the run could not write ``path`` ("" : it could)."""
    if os.path.isdir(path):
        return "a directory"
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        return f"no directory {parent}"
    if not os.access(parent, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        return "not writable"
    return ""


def _run_dir_line(args: argparse.Namespace, run_dir: str, events: str) -> str:
    """Where the run writes, and whether it stays: said before the run, true after it."""
    where = "node directories, agent logs" + (", events" if os.path.dirname(events) == run_dir else "")
    line = f"run directory: {run_dir} ({where})"
    if not (args.run_dir or args.keep_run_dir):
        line += "; deleted after a successful run unless --keep-run-dir, kept after a failed one"
    if os.path.dirname(events) != run_dir:
        line += f"; events: {events}"
    return line


def _leave_run_dir(args: argparse.Namespace, run_dir: str, events: str, code: int) -> None:
    """Keep the run directory after a failed run, or when asked (--run-dir, --keep-run-dir), and
    say where; delete a temp one after a successful run (the start line said it would)."""
    asked = bool(args.run_dir or args.keep_run_dir)
    ran = os.path.isdir(os.path.join(run_dir, "nodes"))  # not when the backend could not be read
    if not asked and (code in (EXIT_OK, EXIT_USAGE) or not ran):
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    if code == EXIT_USAGE:
        return
    logs = os.path.join(run_dir, "nodes", "NODE", "agent.log")
    if code != EXIT_OK:  # said even with --quiet: it is where the failure can be read
        print(f"rebootcoord simulate: run directory kept: {run_dir} (agent logs: {logs}; events: {events})",
              file=sys.stderr)  # fmt: skip
    else:
        _say(args, f"run directory kept: {run_dir}")


def _rebootctl(options: list[str]) -> str:
    """The rebootctl command line with ``options``, to paste as is: plain ``rebootctl`` when
    it is the one on $PATH, else the one installed beside this Python (relative to the current
    directory when under it: ``.venv/bin/rebootctl``)."""
    beside = os.path.join(os.path.dirname(sys.executable), "rebootctl")
    on_path = shutil.which("rebootctl")
    if on_path and (not os.path.exists(beside) or os.path.samefile(on_path, beside)):
        program = "rebootctl"
    elif os.path.exists(beside):
        relative = os.path.relpath(beside)
        program = relative if not relative.startswith(os.pardir) else beside
    else:
        return shlex.join([sys.executable, "-m", "rebootcoord.cli.rebootctl", *options])
    return shlex.join([program, *options])


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
    options = ["--backend", "kubernetes", "--namespace", args.namespace, "--group", args.group]
    if kubeconfig:
        options[:0] = ["--kubeconfig", kubeconfig]
    if args.context:
        options[:0] = ["--kube-context", args.context]
    ctl = _rebootctl(options)
    header = [
        f"simulating {args.nodes} kwok nodes ({', '.join(names)}), {args.max} slot(s), group {args.group}",
        f"Lease {args.namespace}/rebootcoord-{args.group}",
        _run_dir_line(args, run_dir, events),
        f"watch it: {ctl} status",
    ]
    return _run_fleet(
        args,
        run_dir,
        events,
        stopped,
        start_up=120,
        per_node=15.0,
        ctl=ctl,
        header=header,
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
    ctl: str,
    header: list[str],
    **backend: Any,
) -> int:
    """Run the fleet the arguments describe on ``backend`` (Fleet's backend arguments) until done,
    the line stopped or timeout, then check the event log and report; the exit code. The default
    timeout allows ``start_up`` seconds plus three times each round of reboots (``per_node``
    seconds beyond the reboot itself; a zone budget makes the rounds smaller, each wave adds one)
    and twice the waves' soaks; the time an operator keeps the group paused does not count.
    ``ctl``: the rebootctl command line of the group, for what the run tells the operator;
    ``header``: the lines that start the run, said once its arguments are found right."""
    from rebootcoord.errors import BackendUnavailable
    from rebootcoord.sim.fleet import Fleet

    concurrency = min(args.max, args.zones * args.max_per_zone) if args.zones else args.max
    waves = len(args.wave_plan) * args.cycles
    rounds = math.ceil(args.nodes * args.cycles / concurrency) + waves
    soaks = waves * args.soak_seconds
    timeout = args.timeout or start_up + rounds * (args.reboot_seconds + per_node) * 3 + soaks * 2
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
    try:
        before = fleet.semaphore.read()
    except BackendUnavailable as exc:
        fleet.stop()
        where = f"--etcd: cannot reach {args.etcd}, expected a running etcd" if args.etcd else "cannot reach"
        print(f"rebootcoord simulate: {where}: group {args.group}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    clash = sorted(set(before.slots.holders if before.slots else ()) & set(fleet.nodes))
    if clash:
        fleet.stop()
        print(
            f"rebootcoord simulate: --group: got {args.group!r}, expected a group where no holder is "
            f"named like this run's nodes, but {', '.join(clash)} hold(s) a slot (an earlier run's, "
            f"left holding?): another --group, or free it: {ctl} unlock --force {clash[0]}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.fail_node is not None and args.fail_node not in fleet.nodes:  # kwok's: known only now
        fleet.stop()
        print(
            f"rebootcoord simulate: --fail-node: got {args.fail_node!r}, expected one of the nodes: "
            + ", ".join(fleet.nodes),
            file=sys.stderr,
        )
        return EXIT_USAGE
    if before.slots is None:
        # The group exists before the line to paste is printed: pasted at once, it shows the group.
        fleet.semaphore.ensure(args.max)
    for line in header:
        _say(args, line)
    if before.slots is not None and before.slots.max != args.max:
        fleet.max_holders = before.slots.max  # the stored max rules; --max only creates a group
    in_use = group_in_use(before, set(fleet.nodes), time.time())
    if in_use:
        _say(args, in_use + max_note(before, args.max))
    zones = _zones(list(fleet.nodes), args.zones)
    fleet.node_config = {name: {"zone": zone} for name, zone in zones.items()}
    if args.fail_node is not None:
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
    started = time.time()
    watch = Watch(fleet, args, started=started, timeout=timeout, stopped=stopped, zones=zones, ctl=ctl)
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
    watch: Watch,
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
        "max": fleet.max_holders,
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
        # Operators' pauses that held the run (the timeout did not count them), and for how long.
        "pauses": watch.pauses,
        "paused_seconds": round(watch.paused_seconds, 3),
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
        f"median node cycle {_secs(summary['node_cycle_seconds_median'])}, "
        f"ideal ceil(N/K) x cycle = {_secs(summary['ideal_seconds'])}"
    )
    if summary["waves"]:
        opened = ", ".join(
            f"{w['wave']} ({w['size']}) at +{w['opened_at_seconds']:.1f}s: {len(w['nodes'])} node(s)"
            for w in summary["waves"]
        )
        print(
            f"waves: {opened}; rollout {_secs(summary['rollout_seconds'])} with {summary['soaks']} "
            f"soak(s) of {_secs(summary['wave_soak_seconds'])}"
        )
    if summary["max_per_zone"]:
        seen = " ".join(f"{z}={n}" for z, n in summary["max_zone_holders_seen"].items())
        print(f"zones: at most {summary['max_per_zone']} holding per zone; most seen: {seen or '-'}")
    for pause in summary["pauses"]:
        held = f"resumed after {pause['seconds']:.1f}s" if pause["seconds"] is not None else "not resumed"
        print(f"paused by {pause['by']} at +{pause['at_seconds']:.1f}s, {held}: {pause['reason']}")
    if summary["paused"]:
        paused = summary["paused"]
        print(f"paused by {paused['by']} at +{paused['at_seconds']:.1f}s: {paused['reason']}")
    print("invariants: " + ("OK" if ok else "VIOLATED: " + "; ".join(summary["violations"])))


def _secs(value: float | None) -> str:
    """``2.47s``, or ``-`` for a figure the run did not give (no node went through)."""
    return "-" if value is None else f"{value}s"


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(text, file=sys.stderr)
