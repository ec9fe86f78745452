"""Kubernetes Lease backend, on the real control plane of tests/support (kwok nodes): handoff
latency, agents woken and watch events per handoff with W waiting agents; 409 conflicts per
handoff; what waiting costs the API server per agent and hour; the requests of an idle agent.

- handoff: W+1 agents on W+1 kwok nodes share one slot; each gets a new update after its reboot,
  so about W agents are always queued. A watch of the group's Lease in this process stamps each
  change: latency = (next holder appears) - (previous holder disappears). Every agent runs as the
  DaemonSet's would, with a Pod of its own (POD_NAME, POD_UID): its waiter Lease is owned by it.
- woken agents: the agents' "woken by the slots/ahead watch" lines; watch events and requests:
  the API server's own counters (/metrics); conflicts and writes by agent: its audit log (every
  request with user agent, verb and status code; agents say "rebootcoord/<v> (agent; <node>)").
- waiting: W agents queue behind a slot held by hand for --wait-seconds.

    python benchmarks/handoff_kube.py [--waiters 10 100] [--handoffs 60] [--wait-seconds 660]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import delta, kube_counters, plot_cdf, summarize, wakeups, write_json
from rebootcoord.adapters.kube.api import Kube
from rebootcoord.adapters.kube.lease import ANN_SLOTS, leases_path
from rebootcoord.core.semaphore import MANUAL, HolderRecord
from rebootcoord.core.types import Group, HolderId, NodeName, Phase
from rebootcoord.daemon.group import lease_group
from rebootcoord.sim.fleet import Fleet
from rebootcoord.sim.kwok import KwokRebootHooks
from tests.support.cluster import KubeCluster, Testbin

AGENT_UA = "rebootcoord/"


def audit_events(cluster: KubeCluster, since: float) -> list[dict[str, Any]]:
    """The agents' requests since ``since``: one event per request (a watch when it starts)."""
    assert cluster.audit_log is not None, "this benchmark needs KubeCluster(audit=True)"
    out = []
    with open(cluster.audit_log, encoding="utf-8") as fh:
        for line in fh:
            event = json.loads(line)
            agent = event.get("userAgent", "")
            if not agent.startswith(AGENT_UA) or "(agent;" not in agent:
                continue
            stamp = event.get("stageTimestamp") or event.get("requestReceivedTimestamp") or ""
            if datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() < since:
                continue
            wanted = "ResponseStarted" if event.get("verb") == "watch" else "ResponseComplete"
            if event.get("stage") == wanted:
                out.append(event)
    return out


def agent_pods(cluster: KubeCluster, namespace: str, nodes: list[str]) -> dict[str, dict[str, str]]:
    """The agents' DaemonSet, its Pods made by the DaemonSet controller on the given nodes (kwok
    runs them; drains leave them, as DaemonSet pods): the downward API env of each agent."""
    label = f"bench-{namespace}"
    for node in nodes:
        cluster.kubectl("label", "node", node, f"rebootcoord.bench/fleet={label}", "--overwrite")
    daemonset = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "agent", "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {
                "metadata": {"labels": {"app": "agent"}},
                "spec": {
                    "nodeSelector": {"rebootcoord.bench/fleet": label},
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [{"name": "agent", "image": "rebootcoord"}],
                },
            },
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(daemonset))
    deadline = time.monotonic() + 300
    while True:
        listed = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-l", "app=agent", "-o", "json"))
        pods = {item["spec"].get("nodeName"): item["metadata"] for item in listed["items"]}
        if all(node in pods for node in nodes) or time.monotonic() > deadline:
            break
        time.sleep(1)
    return {
        node: {"POD_NAME": pods[node]["name"], "POD_UID": pods[node]["uid"], "POD_NAMESPACE": namespace}
        for node in nodes
    }


def make_fleet(run: str, cluster: KubeCluster, nodes: list[str], namespace: str, **kw: Any) -> Fleet:
    api = Kube(cluster.api_client())
    return Fleet(
        run,
        nodes=len(nodes),
        node_names=nodes,
        max_holders=1,
        semaphore=lease_group(api, namespace=namespace, group=Group("default")),
        hooks=KwokRebootHooks(api),
        node_env=agent_pods(cluster, namespace, nodes),
        agent_config={
            "backend": "kubernetes",
            "kubeconfig": str(cluster.kubeconfig),
            "namespace": namespace,
            "log_level": "debug",  # the "woken by" lines
            "release_delay": "1s",
            "waiter_ttl": "30s",  # the product's default (the simulator's 5 s suits its crash tests)
        },
        **kw,
    )


def watch_holders(cluster: KubeCluster, namespace: str, on_holders: Any) -> Any:
    """Call ``on_holders(holders)`` at each change of the group Lease, from a thread of its own."""
    kube = Kube(cluster.api_client())
    stop = threading.Event()
    opened: list[Any] = []

    def loop() -> None:
        while not stop.is_set():
            try:
                listed = kube.list_objects(
                    leases_path(namespace), fieldSelector="metadata.name=rebootcoord-default"
                )
                version = listed["metadata"]["resourceVersion"]
                events = kube.watch(
                    leases_path(namespace),
                    resource_version=version,
                    timeout_seconds=60,
                    on_open=opened.append,
                    fieldSelector="metadata.name=rebootcoord-default",
                )
                for event in events:
                    if stop.is_set():
                        return
                    lease = event.get("object") or {}
                    raw = ((lease.get("metadata") or {}).get("annotations") or {}).get(ANN_SLOTS)
                    if event.get("type") in ("ADDED", "MODIFIED") and raw:
                        on_holders(tuple(json.loads(raw).get("holders") or ()))
            except Exception:  # noqa: BLE001 -- the benchmark's own watch: start it again
                time.sleep(0.2)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()

    def close() -> None:
        stop.set()
        for response in opened:
            with contextlib.suppress(Exception):
                response.shutdown()
        thread.join(timeout=5)

    return close


def measure_handoffs(cluster: KubeCluster, waiters: int, handoffs: int) -> tuple[list[float], dict[str, Any]]:
    namespace = f"bench-{waiters}"
    cluster.kubectl("create", "namespace", namespace)
    nodes = [n.name for n in cluster.create_nodes(waiters + 1, prefix=f"b{waiters}", timeout=300)]
    latencies: list[float] = []
    released_at: list[float | None] = [None]
    last: list[tuple[str, ...]] = [()]
    measuring = [False]
    lock = threading.Lock()

    def on_holders(holders: tuple[str, ...]) -> None:
        now = time.perf_counter()
        with lock:
            if holders == last[0]:
                return
            if not holders:
                released_at[0] = now
            elif released_at[0] is not None:
                if measuring[0]:
                    latencies.append(now - released_at[0])
                released_at[0] = None
            last[0] = holders

    stop_watch = watch_holders(cluster, namespace, on_holders)
    cycles = max(2, -(-handoffs // (waiters + 1)) + 1)
    before: dict[str, float] = {}
    since = until = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-kube-") as run:
        fleet = make_fleet(run, cluster, nodes, namespace, cycles=cycles, reboot_seconds=0.2)
        with fleet:
            deadline = time.monotonic() + 3600
            while not measuring[0] and time.monotonic() < deadline:
                time.sleep(0.5)
                if sum(1 for phase in fleet.phases().values() if phase == "waiting") >= waiters - 1:
                    with lock:
                        before, since = (
                            kube_counters(cluster.kubectl("get", "--raw", "/metrics")),
                            time.time(),
                        )
                        measuring[0] = True
            while len(latencies) < handoffs and time.monotonic() < deadline:
                time.sleep(0.5)
            with lock:
                after, until, done = (
                    kube_counters(cluster.kubectl("get", "--raw", "/metrics")),
                    time.time(),
                    len(latencies),
                )
            woken = wakeups([n.log_file for n in fleet.nodes.values()], since, until)
    stop_watch()
    events = [e for e in audit_events(cluster, since) if _stamp(e) <= until]
    lost = [e for e in events if (e.get("responseStatus") or {}).get("code") == 409]
    cost = delta(after, before)
    per = max(1, done)
    semaphore = "rebootcoord-default"
    stats = {
        "handoffs_counted": done,
        "woken_per_handoff": round(woken / per, 2),
        # to every watcher of Leases: the agents' and the garbage collector's informer (one per write)
        "lease_watch_events_per_handoff": round(cost.pop("lease_watch_events", 0.0) / per, 2),
        "requests_per_handoff": {k: round(v / per, 2) for k, v in sorted(cost.items())},
        "conflicts_per_handoff": round(len(lost) / per, 3),
        # which writes lost: on the group's semaphore Lease or on a waiter's Lease, by verb
        "conflicts_by_object_verb": dict(
            Counter(
                f"{'semaphore' if (e.get('objectRef') or {}).get('name') == semaphore else 'waiter'} "
                f"{e.get('verb')}"
                for e in lost
            )
        ),
    }
    return latencies[:handoffs], stats


def _stamp(event: dict[str, Any]) -> float:
    stamp = event.get("stageTimestamp") or event.get("requestReceivedTimestamp") or ""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


WRITE_VERBS = ("create", "update", "patch", "delete")


def measure_waiting(cluster: KubeCluster, waiters: int, seconds: float) -> dict[str, Any]:
    namespace = "bench-wait"
    cluster.kubectl("create", "namespace", namespace)
    nodes = [n.name for n in cluster.create_nodes(waiters, prefix="wait", timeout=300)]
    with tempfile.TemporaryDirectory(prefix="bench-wait-") as run:
        fleet = make_fleet(run, cluster, nodes, namespace, reboot_seconds=0.2)
        now = time.time()
        fleet.semaphore.ensure(1)
        fleet.semaphore.lock(HolderId("by-hand"), HolderRecord(HolderId("by-hand"), NodeName("by-hand"),
                             Group("default"), Phase.LOCKED, "", now, now, kind=MANUAL))  # fmt: skip
        with fleet:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                if sum(1 for phase in fleet.phases().values() if phase == "waiting") >= waiters:
                    break
                time.sleep(0.5)
            time.sleep(5)
            since = time.time()
            time.sleep(seconds)
            until = time.time()
    events = [e for e in audit_events(cluster, since) if _stamp(e) <= until]
    writes = [
        e
        for e in events
        if e.get("verb") in WRITE_VERBS and (e.get("objectRef") or {}).get("resource") == "leases"
    ]
    hour = 3600 / seconds / waiters
    return {
        "waiting_agents": waiters,
        "window_seconds": seconds,
        "writes_per_waiting_agent_per_hour": round(len(writes) * hour, 2),
        "requests_per_waiting_agent_per_hour": {
            verb: round(n * hour, 2)
            for verb, n in sorted(Counter(str(e.get("verb")) for e in events).items())
        },
        "note": "a waiter Lease owned by its agent's Pod is renewed every 300 s (12 writes/hour); it goes "
        "with the Pod (garbage collector) and the head of the line is passed over while its Node is "
        "not Ready",
    }


def measure_idle(cluster: KubeCluster, agents: int, seconds: float) -> dict[str, Any]:
    namespace = "bench-idle"
    cluster.kubectl("create", "namespace", namespace)
    nodes = [n.name for n in cluster.create_nodes(agents, prefix="idle", timeout=300)]
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as run:
        fleet = make_fleet(run, cluster, nodes, namespace, arm=False)
        with fleet:
            time.sleep(15)  # start-up: ensure, list, watch
            since = time.time()
            time.sleep(seconds)
            events = audit_events(cluster, since)
    per_agent: dict[str, Counter[str]] = defaultdict(Counter)
    for event in events:
        per_agent[event["userAgent"]][event["verb"]] += 1
    counts = [sum(c.values()) for c in per_agent.values()] or [0]
    verbs: Counter[str] = Counter()
    for c in per_agent.values():
        verbs.update(c)
    return {
        "agents": agents,
        "window_seconds": seconds,
        "requests_in_window_total": sum(counts),
        "requests_per_agent_per_hour_measured": round(sum(counts) / agents * 3600 / seconds, 2),
        "verbs_in_window": dict(verbs),
        "note": "an idle agent holds one watch, re-established every 900 s (4 watch requests/hour)",
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--waiters", type=int, nargs="*", default=[10, 100], help="none: skip handoffs")
    p.add_argument("--handoffs", type=int, default=60)
    p.add_argument(
        "--wait-seconds", type=float, default=660, help="0: skip (a bound waiter renews every 300 s)"
    )
    p.add_argument("--idle-agents", type=int, default=10)
    p.add_argument("--idle-seconds", type=float, default=960, help="0: skip (a watch lasts 900 s)")
    args = p.parse_args()
    results: dict[str, Any] = {
        "benchmark": "Lease backend (Kubernetes)",
        "unit": "milliseconds",
        "target": "100 waiters: p99 <= 250 ms, <= 1.5x p99 at 10, at most 2 agents woken per handoff; "
        "waiting: <= 12 writes per agent and hour",
    }
    series = {}
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        cluster = KubeCluster(Path(tmp) / "cluster", testbin=Testbin.locate(), audit=True)
        cluster.start()
        try:
            if args.idle_seconds > 0:
                results["idle"] = measure_idle(cluster, args.idle_agents, args.idle_seconds)
            if args.wait_seconds > 0 and args.waiters:
                results["waiting"] = measure_waiting(cluster, max(args.waiters), args.wait_seconds)
            for w in args.waiters:
                samples, stats = measure_handoffs(cluster, w, args.handoffs)
                results[f"{w}_waiters_ms"] = {
                    **{
                        k: (round(v * 1000, 1) if isinstance(v, float) else v)
                        for k, v in summarize(samples).items()
                    },
                    **stats,
                }
                series[f"{w} waiting agents"] = [s * 1000 for s in samples]
        finally:
            cluster.stop()
    low, high = (min(args.waiters), max(args.waiters)) if args.waiters else (0, 0)
    if low != high and results[f"{low}_waiters_ms"].get("p99"):
        results[f"p99_ratio_{high}_to_{low}"] = round(
            results[f"{high}_waiters_ms"]["p99"] / results[f"{low}_waiters_ms"]["p99"], 2
        )
    write_json("handoff_kube", results)
    if series:
        plot_cdf(
            "handoff_kube", series, "handoff latency (ms)", "Slot released -> next waiter holds it (Lease)"
        )


if __name__ == "__main__":
    main()
