"""The FleetLock server: requests per second of one replica at 100 concurrent clients, and the
pre-reboot latency with and without a drain.

    .venv/bin/python benchmarks/fleetlock.py [--clients 100] [--seconds 20] [--max 10]
                                             [--drain-runs 10] [--pods 5] [--no-kube]

Throughput: one server process on its own etcd; the clients are processes (4, threads in each,
so their GIL is not the server's), each client polls pre-reboot until granted, holds 50 ms, then
steady-state, over and over, as a fleet of Zincatis with a short poll interval would. Every
answer is counted by kind; refusals (423 no_free_slot) are answers too.

Pre-reboot latency: one client, alone (no queue): on etcd with no node operations; and on the
Kubernetes test control plane (needs `make testbin`) for a kwok Node mapped by machine id, empty,
and carrying ``--pods`` pods that the drain evicts (PDB-aware eviction, then wait until gone).
JSON and a CDF plot in benchmarks/out/.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import plot_cdf, summarize, write_json
from rebootcoord.sim.etcd_server import EtcdServer
from tests.support.fleetlock import FleetLockClient, FleetLockServer

PROCESSES = 4


def _client_process(base: str, first: int, count: int, seconds: float, out: Any) -> None:
    kinds: Counter[str] = Counter()
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def one(i: int) -> None:
        client, name = FleetLockClient(base, timeout=60), f"client-{i:04d}"
        while time.monotonic() < deadline:
            started = time.monotonic()
            answer = client.pre_reboot(name)
            took = time.monotonic() - started
            with lock:
                kinds[answer.kind or str(answer.status)] += 1
                latencies.append(took)
            if answer.status == 200:
                time.sleep(0.05)
                started = time.monotonic()
                answer = client.steady_state(name)
                with lock:
                    kinds["steady:" + (answer.kind or str(answer.status))] += 1
                    latencies.append(time.monotonic() - started)

    threads = [threading.Thread(target=one, args=(first + i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put((dict(kinds), latencies))


def throughput(run: Path, clients: int, seconds: float, max_holders: int) -> dict[str, Any]:
    etcd = EtcdServer(data_dir=str(run / "etcd")).start()
    server = FleetLockServer(
        run / "server",
        {"backend": "etcd", "etcd_endpoints": [etcd.endpoint], "max_holders": max_holders,
         "fleetlock_waiter_ttl": "60s", "log_level": "warning"},
    )  # fmt: skip
    try:
        server.start()
        queue: mp.Queue[Any] = mp.Queue()
        per = [clients // PROCESSES + (1 if i < clients % PROCESSES else 0) for i in range(PROCESSES)]
        starts = [sum(per[:i]) for i in range(PROCESSES)]
        procs = [
            mp.Process(target=_client_process, args=(server.base, starts[i], per[i], seconds, queue))
            for i in range(PROCESSES)
        ]
        started = time.monotonic()
        for p in procs:
            p.start()
        results = [queue.get(timeout=seconds + 300) for _ in procs]
        for p in procs:
            p.join()
        elapsed = time.monotonic() - started
    finally:
        server.stop()
        etcd.stop()
    kinds: Counter[str] = Counter()
    latencies: list[float] = []
    for k, lat in results:
        kinds.update(k)
        latencies += lat
    total = sum(kinds.values())
    return {
        "clients": clients,
        "seconds": round(elapsed, 2),
        "requests": total,
        "requests_per_second": round(total / elapsed, 1),
        "grants_per_second": round(kinds.get("ok", 0) / elapsed, 1),
        "answers_by_kind": dict(kinds),
        "latency_seconds": summarize(latencies),
        "_samples": latencies,
    }


def latency_etcd(run: Path, runs: int) -> list[float]:
    etcd = EtcdServer(data_dir=str(run / "etcd-lat")).start()
    server = FleetLockServer(run / "server-lat", {"backend": "etcd", "etcd_endpoints": [etcd.endpoint]})
    try:
        server.start()
        client = FleetLockClient(server.base)
        samples = []
        for _ in range(runs):
            started = time.monotonic()
            assert client.pre_reboot("node-a").status == 200
            samples.append(time.monotonic() - started)
            assert client.steady_state("node-a").status == 200
        return samples
    finally:
        server.stop()
        etcd.stop()


def latency_kube(run: Path, runs: int, pods: int) -> dict[str, list[float]]:
    from kubernetes import client as k8s

    from rebootcoord.core.fleetlock import app_specific_id
    from tests.support.cluster import KubeCluster, Testbin

    cluster = KubeCluster(run / "cluster", testbin=Testbin.locate())
    cluster.start()
    try:
        namespace = "fleetlock-bench"
        cluster.kubectl("create", "namespace", namespace)
        node = cluster.create_nodes(1, prefix="fl", timeout=300)[0]
        core = k8s.CoreV1Api(cluster.api_client())
        wait_sa = time.monotonic() + 60
        while time.monotonic() < wait_sa:
            try:
                core.read_namespaced_service_account("default", namespace)
                break
            except k8s.ApiException:
                time.sleep(0.2)
        server = FleetLockServer(
            run / "server-kube",
            {"backend": "kubernetes", "namespace": namespace, "kubeconfig": str(cluster.kubeconfig),
             "drain_force": True, "drain_timeout": "120s", "log_level": "warning"},
        )  # fmt: skip
        server.start()
        client, zincati = FleetLockClient(server.base), app_specific_id(node.machine_id)
        out: dict[str, list[float]] = {"no pods": [], f"{pods} pods": []}
        try:
            for label, count in (("no pods", 0), (f"{pods} pods", pods)):
                for r in range(runs):
                    names = [f"p{r}-{i}" for i in range(count)]
                    for name in names:
                        core.create_namespaced_pod(namespace, {
                            "metadata": {"name": name, "labels": {"app": "bench"}},
                            "spec": {"nodeName": node.name, "containers": [{"name": "c", "image": "x/y:1"}],
                                     "tolerations": [{"operator": "Exists"}]},
                        })  # fmt: skip
                    deadline = time.monotonic() + 60
                    while time.monotonic() < deadline:
                        listed = core.list_namespaced_pod(namespace, label_selector="app=bench").items
                        if sum(1 for p in listed if p.status.phase == "Running") >= count:
                            break
                        time.sleep(0.1)
                    started = time.monotonic()
                    answer = client.pre_reboot(zincati)
                    assert answer.status == 200, answer.body
                    out[label].append(time.monotonic() - started)
                    assert client.steady_state(zincati).status == 200
        finally:
            server.stop()
        return out
    finally:
        cluster.stop()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--max", type=int, default=10)
    p.add_argument("--drain-runs", type=int, default=10)
    p.add_argument("--pods", type=int, default=5)
    p.add_argument("--no-kube", action="store_true", help="skip the Kubernetes latencies (no testbin)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp)
        tp = throughput(run, args.clients, args.seconds, args.max)
        series = {"etcd, no node operations": latency_etcd(run, args.drain_runs * 3)}
        if not args.no_kube:
            for label, samples in latency_kube(run, args.drain_runs, args.pods).items():
                series[f"Kubernetes, drain of {label}"] = samples
    doc = {
        "benchmark": "fleetlock",
        "throughput": {k: v for k, v in tp.items() if not k.startswith("_")},
        "pre_reboot_latency_seconds": {label: summarize(s) for label, s in series.items()},
    }
    write_json("fleetlock", doc)
    plot_cdf("fleetlock", {**series, f"all answers, {args.clients} clients": tp["_samples"]},
             "seconds", "FleetLock: pre-reboot latency")  # fmt: skip


if __name__ == "__main__":
    main()
