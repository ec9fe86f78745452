"""Kubernetes API requests per node over one rollout (issue 22, item 5: fewer than kured's 24 per
node at 6 nodes), from the API server's audit log.

N kwok nodes (default 6), K slots (default 2), agents on the Lease backend, each with a Pod of its
own (the DaemonSet's), a Deployment with two replicas per node under a PodDisruptionBudget (so the
drains evict and the PDB gate has something to look at). Every node reboots once. The agents'
requests (user agent "rebootcoord/<v> (agent; <node>)") from the start of the fleet until every
node is idle again, by verb and resource; the Events the agents emit by design are counted apart.

    python benchmarks/requests_kube.py [--nodes 6] [--slots 2] [--check-interval 60s] [--out NAME]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write_json
from benchmarks.handoff_kube import _stamp, agent_pods, audit_events
from rebootcoord.adapters.kube.api import Kube
from rebootcoord.core.types import Group
from rebootcoord.daemon.group import lease_group
from rebootcoord.sim.fleet import Fleet
from rebootcoord.sim.kwok import KwokRebootHooks
from tests.support.cluster import KubeCluster, Testbin

NAMESPACE = "bench-requests"


def kind_of(event: dict[str, Any]) -> str:
    """``verb resource[/subresource]`` of one audited request."""
    ref = event.get("objectRef") or {}
    resource = str(ref.get("resource") or event.get("requestURI", "?"))
    if ref.get("subresource"):
        resource += "/" + str(ref["subresource"])
    return f"{event.get('verb')} {resource}"


def workload(cluster: KubeCluster, replicas: int) -> None:
    """A Deployment spread over the nodes, under a budget that allows two disruptions."""
    labels = {"app": "web"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": NAMESPACE},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [{"name": "web", "image": "web"}],
                },
            },
        },
    }
    budget = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "web", "namespace": NAMESPACE},
        "spec": {"maxUnavailable": 2, "selector": {"matchLabels": labels}},
    }
    for doc in (deployment, budget):
        cluster.kubectl("apply", "-f", "-", input=json.dumps(doc))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        listed = json.loads(cluster.kubectl("get", "pods", "-n", NAMESPACE, "-l", "app=web", "-o", "json"))
        ready = [
            p
            for p in listed["items"]
            if any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in (p.get("status") or {}).get("conditions") or []
            )
        ]
        if len(ready) >= replicas:
            return
        time.sleep(1)
    raise TimeoutError("the workload's pods are not Ready")


def measure(
    cluster: KubeCluster, *, nodes: int, slots: int, check_interval: str, trace: str = ""
) -> dict[str, Any]:
    cluster.kubectl("create", "namespace", NAMESPACE)
    names = [n.name for n in cluster.create_nodes(nodes, prefix="req", timeout=300)]
    env = agent_pods(cluster, NAMESPACE, names)
    workload(cluster, 2 * nodes)
    api = Kube(cluster.api_client())
    with tempfile.TemporaryDirectory(prefix="bench-requests-") as run:
        fleet = Fleet(
            run,
            nodes=nodes,
            node_names=names,
            max_holders=slots,
            semaphore=lease_group(api, namespace=NAMESPACE, group=Group("default")),
            hooks=KwokRebootHooks(api),
            node_env=env,
            reboot_seconds=0.5,
            agent_config={
                "backend": "kubernetes",
                "kubeconfig": str(cluster.kubeconfig),
                "namespace": NAMESPACE,
                "check_interval": check_interval,
                "release_delay": "1s",
                "waiter_ttl": "30s",  # the product's default
            },
        )
        since = time.time()
        started = time.monotonic()
        with fleet:
            deadline = time.monotonic() + 1800
            while not fleet.done():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the rollout did not finish: {fleet.phases()}")
                time.sleep(1)
            until = time.time()
            seconds = time.monotonic() - started
    time.sleep(2)  # the audit log's last lines
    requests = [e for e in audit_events(cluster, since) if _stamp(e) <= until]
    if trace:
        with open(trace, "w", encoding="utf-8") as fh:
            for e in requests:
                ref = e.get("objectRef") or {}
                code = (e.get("responseStatus") or {}).get("code")
                fh.write(f"{_stamp(e) - since:8.3f} {e['userAgent'].split(';')[-1].strip(' )')} "
                         f"{kind_of(e)} {ref.get('name', '')} {code}\n")  # fmt: skip
    counts = Counter(kind_of(e) for e in requests)
    events = {k: v for k, v in counts.items() if k.endswith(" events")}
    others = {k: v for k, v in counts.items() if k not in events}
    total = sum(others.values())
    return {
        "nodes": nodes,
        "slots": slots,
        "check_interval": check_interval,
        "rollout_seconds": round(seconds, 1),
        "requests_per_node_excluding_events": round(total / nodes, 2),
        "events_per_node": round(sum(events.values()) / nodes, 2),
        "requests_total_by_verb_resource": dict(sorted(others.items(), key=lambda kv: (-kv[1], kv[0]))),
        "events_total": dict(sorted(events.items())),
        "requests_per_node_by_verb_resource": {
            k: round(v / nodes, 2) for k, v in sorted(others.items(), key=lambda kv: (-kv[1], kv[0]))
        },
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--nodes", type=int, default=6)
    p.add_argument("--slots", type=int, default=2)
    p.add_argument("--check-interval", default="60s", help="the agents' check_interval")
    p.add_argument("--out", default="requests_kube", help="name of the JSON in benchmarks/out")
    p.add_argument("--trace", default="", help="a file: every request of the agents, one a line")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        cluster = KubeCluster(Path(tmp) / "cluster", testbin=Testbin.locate(), audit=True)
        cluster.start()
        try:
            result = measure(
                cluster,
                nodes=args.nodes,
                slots=args.slots,
                check_interval=args.check_interval,
                trace=args.trace,
            )
        finally:
            cluster.stop()
    write_json(
        args.out,
        {
            "benchmark": "Kubernetes API requests per node over a rollout (Lease backend)",
            "target": "<= 24 requests per node excluding Events (kured, 6 nodes)",
            **result,
        },
    )


if __name__ == "__main__":
    main()
