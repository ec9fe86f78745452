"""Scale: what one handoff costs the backend with N agents in line, for N up to 300 on etcd and
on the Lease, and that the holders never exceed the max on the way. (1,000 etcd agents do not fit
one Python process: their gRPC channels' keep-alive and watch threads starve each other.)

So many agent processes do not fit on two cores, so the agents here are threads in one process,
each with its own backend client (its own gRPC channel, or its own HTTP connection pool to the
API server), driving the same ``GroupClient`` the agent uses with the agent's own waiting rule:
read the group, take a slot when ``may_take`` says so, else wait on the watch its place calls for
(the head of the line on the slots, every other waiter on the waiter just ahead), and read again
only when that watch fires. A holder writes three phase records (draining, rebooting,
verifying), releases and joins the line again at its end, as a node with a new update does.

Each N: every slot is first held by hand (a ``lock``, as rebootctl does), all N agents join,
read and arm their watches; then the counters are read, the manual holds are given back, and
the run goes on for --handoffs takes. Per handoff: requests the backend served (etcd's gRPC
messages by method; the API server's requests on Leases by verb), watch events it sent, agents
woken. Afterwards the backend's own history (every revision of the group, replayed from etcd)
is checked: holders never above the max.

    python benchmarks/scale.py [--backend etcd kubernetes] [--etcd-agents 10 100 300]
                               [--lease-agents 10 100 300] [--handoffs 40] [--max 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import delta, etcd_counters, kube_counters, plot_cdf, summarize, write_json
from rebootcoord.core.semaphore import MANUAL, HolderRecord, Waiter
from rebootcoord.core.types import Group, HolderId, NodeName, Phase
from rebootcoord.daemon.group import GroupClient, etcd_group, lease_group
from rebootcoord.sim.checker import Version

GROUP = Group("default")
#: A waiter reads the group this often even when no watch woke it (the agent's VIEW_REFRESH).
REFRESH = 300.0
HOLD = 0.05  # between a holder's phase writes


class Run:
    """The shared counters of one N: takes, releases, wakes, latencies."""

    def __init__(self, handoffs: int) -> None:
        self.handoffs = handoffs
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.armed = 0
        self.all_armed = threading.Event()
        self.measuring = False
        self.takes = 0
        self.woken = 0
        self.conflicts = 0
        self.errors: list[str] = []
        self.freed: list[float] = []  # release times not yet followed by a take
        self.latencies: list[float] = []
        self.done = threading.Event()

    def took(self) -> None:
        now = time.perf_counter()
        with self.lock:
            if not self.measuring:
                return
            if self.freed:
                self.latencies.append(now - self.freed.pop(0))
            self.takes += 1
            if self.takes >= self.handoffs:
                self.done.set()

    def released(self) -> None:
        with self.lock:
            if self.measuring:
                self.freed.append(time.perf_counter())


def agent(name: str, client: GroupClient, run: Run, n: int) -> None:
    holder, node = HolderId(name), NodeName(name)
    armed = False
    try:
        while not run.stop.is_set():
            if not client.queue_joined(holder):
                client.join_queue(Waiter(holder, node, time.time(), 0))
            view = client.read()
            if view.may_take(holder):
                now = time.time()
                record = HolderRecord(holder, node, GROUP, Phase.LOCKED, "boot", now, now)
                if client.acquire(record) is not None:
                    run.took()
                    for phase in (Phase.DRAINING, Phase.REBOOTING, Phase.VERIFYING):
                        time.sleep(HOLD)
                        client.update(HolderRecord(holder, node, GROUP, phase, "boot", now, time.time()))
                    client.release(holder)
                    run.released()
                    continue
            position = view.queue_position(holder)
            role = "slots" if position == 0 or view.may_take(holder) else "ahead"
            woke = threading.Event()
            stop_watch = client.wake_on(view, holder, role, woke.set)
            if not armed:
                armed = True
                with run.lock:
                    run.armed += 1
                    if run.armed >= n:
                        run.all_armed.set()
            stopped = _wait_any(woke, run.stop, REFRESH)
            stop_watch()
            if woke.is_set() and not stopped:
                with run.lock:
                    run.woken += run.measuring
    except Exception as exc:  # noqa: BLE001 - reported in the JSON, the run goes on
        if not run.stop.is_set():
            with run.lock:
                run.errors.append(f"{name}: {type(exc).__name__}: {exc}")
    finally:
        with run.lock:
            run.conflicts += client.conflicts


def _wait_any(woke: threading.Event, stop: threading.Event, timeout: float) -> bool:
    """Wait for the watch or the end of the run; True when the run ended."""
    deadline = time.monotonic() + timeout
    while not woke.wait(min(1.0, max(0.0, deadline - time.monotonic()))):
        if stop.is_set():
            return True
        if time.monotonic() >= deadline:
            return False
    return stop.is_set()


def measure(
    n: int,
    handoffs: int,
    max_holders: int,
    make: Callable[[], GroupClient],
    counters: Callable[[], dict[str, float]],
    history: Callable[[int], list[Version]],
) -> dict[str, Any]:
    admin = make()
    admin.ensure(max_holders)
    now = time.time()
    by_hand = [HolderId(f"by-hand-{i}") for i in range(max_holders)]
    for h in by_hand:
        admin.lock(h, HolderRecord(h, NodeName(h), GROUP, Phase.LOCKED, "", now, now, kind=MANUAL))
    since = admin.read().revision
    run = Run(handoffs)
    t0 = time.monotonic()
    clients = [make() for _ in range(n)]
    connect_s = time.monotonic() - t0
    threads = [
        threading.Thread(target=agent, args=(f"a{i:04d}", c, run, n), daemon=True, name=f"a{i}")
        for i, c in enumerate(clients)
    ]
    for t in threads:
        t.start()
    if not run.all_armed.wait(1800):
        raise SystemExit(f"{n} agents: only {run.armed} armed their watches in 30 min: {run.errors[:3]}")
    armed_s = time.monotonic() - t0
    time.sleep(2)  # the last watches are established server-side
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    before = counters()
    with run.lock:
        run.measuring = True
        run.freed = [time.perf_counter() for _ in by_hand]
    for h in by_hand:
        admin.unlock(h)
    finished = run.done.wait(1800)
    with run.lock:
        after, takes, woken = counters(), run.takes, run.woken
        run.measuring = False
    run.stop.set()
    for t in threads:
        t.join(timeout=30)
    for c in clients:
        c.close()
    versions = history(since)
    admin.close()
    breaches = [v.rev for v in versions if v.total is not None and len(v.holders) > v.total]
    cost = delta(after, before)
    per = max(1, takes)
    watch_events = cost.pop("watch_events", 0.0) + cost.pop("lease_watch_events", 0.0)
    return {
        "agents": n,
        "handoffs": takes,
        "finished": finished,
        "requests_per_handoff": {k: round(v / per, 2) for k, v in sorted(cost.items())},
        "requests_total_per_handoff": round(sum(v for k, v in cost.items() if k != "keys_written") / per, 2),
        "watch_events_per_handoff": round(watch_events / per, 2),
        "woken_per_handoff": round(woken / per, 2),
        "conflicts_per_handoff": round(run.conflicts / per, 2),
        "latency_ms": {
            k: (round(v * 1000, 1) if isinstance(v, float) else v)
            for k, v in summarize(run.latencies).items()
        },
        "latencies_ms": [round(s * 1000, 2) for s in run.latencies],
        "revisions_checked": len(versions),
        "most_holders": max((len(v.holders) for v in versions), default=0),
        "max_holders_breaches": breaches,
        "errors": run.errors[:10],
        "connect_seconds": round(connect_s, 1),
        "start_seconds": round(armed_s, 1),
        "rss_mib": round(rss_mib),
        "threads": threading.active_count(),
    }


def on_etcd(agents: list[int], handoffs: int, max_holders: int) -> dict[str, Any]:
    from rebootcoord.sim.etcd_server import EtcdServer
    from rebootcoord.sim.history import etcd_group_history

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as data, EtcdServer(data_dir=data) as etcd:
        for n in agents:
            prefix = f"scale-{n}-{time.time_ns()}"

            def make(prefix: str = prefix) -> GroupClient:
                return etcd_group((etcd.endpoint,), prefix=prefix, group=GROUP, waiter_ttl=30.0, timeout=30.0)

            out[str(n)] = measure(
                n,
                handoffs,
                max_holders,
                make,
                lambda: etcd_counters(etcd.endpoint),
                lambda since, prefix=prefix: etcd_group_history(
                    etcd.endpoint, prefix=prefix, group=GROUP, since=since
                ),
            )
            print(f"etcd, {n} agents: {_brief(out[str(n)])}", file=sys.stderr, flush=True)
    return out


def on_lease(agents: list[int], handoffs: int, max_holders: int) -> dict[str, Any]:
    from rebootcoord.adapters.kube.api import Kube
    from rebootcoord.sim.history import kube_group_history
    from tests.support.cluster import KubeCluster, Testbin

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-scale-kube-") as tmp:
        cluster = KubeCluster(Path(tmp) / "cluster", testbin=Testbin.locate())
        cluster.start()
        try:
            for n in agents:
                namespace = f"scale-{n}"
                cluster.kubectl("create", "namespace", namespace)

                def make(namespace: str = namespace) -> GroupClient:
                    # waiter_ttl 900 s: renewals every 300 s, as a Pod-bound waiter's, out of the run
                    return lease_group(Kube(cluster.api_client()), namespace=namespace, group=GROUP,
                                       waiter_ttl=900.0)  # fmt: skip

                def history(since: int, namespace: str = namespace) -> list[Version]:
                    return kube_group_history(
                        cluster.endpoints.etcd, namespace=namespace, group=GROUP, since=since
                    )[0]

                def counters() -> dict[str, float]:
                    return kube_counters(cluster.kubectl("get", "--raw", "/metrics"))

                out[str(n)] = measure(n, handoffs, max_holders, make, counters, history)
                print(f"Lease, {n} agents: {_brief(out[str(n)])}", file=sys.stderr, flush=True)
        finally:
            cluster.stop()
    return out


def _brief(r: dict[str, Any]) -> str:
    return (
        f"{r['handoffs']} handoffs, {r['requests_total_per_handoff']} requests and "
        f"{r['watch_events_per_handoff']} watch events per handoff, woken {r['woken_per_handoff']}, "
        f"p99 {r['latency_ms'].get('p99')} ms, most holders {r['most_holders']}, "
        f"breaches {len(r['max_holders_breaches'])}, rss {r['rss_mib']} MiB"
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backend", nargs="+", choices=["etcd", "kubernetes"], default=["etcd", "kubernetes"])
    p.add_argument("--etcd-agents", type=int, nargs="+", default=[10, 100, 300])
    p.add_argument("--lease-agents", type=int, nargs="+", default=[10, 100, 300])
    p.add_argument("--handoffs", type=int, default=40)
    p.add_argument("--max", type=int, default=2, help="slots in the group")
    args = p.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a connection or two per agent
    doc: dict[str, Any] = {
        "benchmark": "scale: N agents (threads, one backend client each) in line for one group",
        "max_holders": args.max,
        "handoffs_per_n": args.handoffs,
        "goal": "requests and watch events per handoff flat in N; holders never above the max",
        "machine": {"cpus": os.cpu_count()},
    }
    series: dict[str, list[float]] = {}
    if "etcd" in args.backend:
        doc["etcd"] = on_etcd(args.etcd_agents, args.handoffs, args.max)
        series.update({f"etcd, {n} agents": r.pop("latencies_ms") for n, r in doc["etcd"].items()})
    if "kubernetes" in args.backend:
        doc["lease"] = on_lease(args.lease_agents, args.handoffs, args.max)
        series.update({f"Lease, {n} agents": r.pop("latencies_ms") for n, r in doc["lease"].items()})
    name = "scale" if len(args.backend) == 2 else f"scale_{args.backend[0]}"
    write_json(name, doc)
    plot_cdf(name, series, "handoff latency (ms)", "Slot released -> next agent holds it, N agents in line")
    breaches = sum(
        len(r["max_holders_breaches"]) for key in ("etcd", "lease") for r in doc.get(key, {}).values()
    )
    sys.exit(1 if breaches else 0)


if __name__ == "__main__":
    main()
