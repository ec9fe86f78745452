"""Kubernetes mode end to end: one agent process per kwok node, configured as the DaemonSet
configures it (NODE_NAME, namespace, a host root, a reboot command), coordinating through a Lease
and draining through the Eviction API, on the real control plane of tests/support. A simulated
reboot restarts the agent with a new boot ID and turns its Node NotReady, then Ready with the new
bootID."""

from __future__ import annotations

import os
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rebootcoord.core.semaphore import HolderRecord, Waiter
from rebootcoord.core.types import Group, HolderId, NodeName, Phase
from rebootcoord.sim.checker import check
from rebootcoord.sim.fleet import Fleet
from tests.conftest import wait_for
from tests.e2e.conftest import agent_log
from tests.support.checks import kube_report
from tests.support.cluster import free_port
from tests.support.eventgate import EventGate
from tests.support.kubecluster import KubeTestEnv, wait_for_deployment, wait_for_pdb
from tests.support.rbac import ChartIdentity

pytestmark = [pytest.mark.kube, pytest.mark.e2e]


class ClusterWatch:
    """Samples the cluster while a fleet runs: cordoned nodes, Ready pods of a Deployment."""

    def __init__(self, kube: KubeTestEnv, nodes: list[str], *, app: str | None = None,
                 pre_cordoned: set[str] | None = None) -> None:  # fmt: skip
        self.kube = kube
        self.nodes = set(nodes)
        self.app = app
        self.pre_cordoned = pre_cordoned or set()
        self.max_cordoned = 0
        self.min_ready: int | None = None
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ClusterWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        core = self.kube.core
        while not self._stop.is_set():
            cordoned = {
                n.metadata.name
                for n in core.list_node().items
                if n.spec.unschedulable and n.metadata.name in self.nodes
            }
            self.max_cordoned = max(self.max_cordoned, len(cordoned - self.pre_cordoned))
            if self.app:
                pods = core.list_namespaced_pod(self.kube.namespace, label_selector=f"app={self.app}").items
                ready = sum(1 for p in pods if p.metadata.deletion_timestamp is None and _ready(p))
                self.min_ready = ready if self.min_ready is None else min(self.min_ready, ready)
            self.samples += 1
            self._stop.wait(0.1)


def _ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))


def deploy(kube: KubeTestEnv, name: str, replicas: int, *, pdb: dict[str, Any] | None,
           node: str | None = None, labels: dict[str, str] | None = None) -> None:  # fmt: skip
    """A Deployment spread over the nodes (or pinned to ``node``), with an optional PDB."""
    spec: dict[str, Any] = {
        "containers": [{"name": name, "image": "registry.invalid/app:1"}],
        "tolerations": [{"operator": "Exists", "effect": "NoSchedule"}],
    }
    if node:
        spec["nodeName"] = node
    else:
        spec["topologySpreadConstraints"] = [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": {"matchLabels": {"app": name}},
            }
        ]
    kube.apps.create_namespaced_deployment(
        kube.namespace,
        {
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name, **(labels or {})}}, "spec": spec},
            },
        },
    )
    wait_for_deployment(kube.api, kube.namespace, name, timeout=120)
    if pdb is not None:
        kube.policy.create_namespaced_pod_disruption_budget(
            kube.namespace,
            {"metadata": {"name": name}, "spec": {**pdb, "selector": {"matchLabels": {"app": name}}}},
        )


def test_rolling_reboot_respects_the_pdb_and_the_budget(
    kube: KubeTestEnv, kube_fleet: Callable[..., Fleet]
) -> None:
    nodes = [n.name for n in kube.create_nodes(6)]
    # three pods per node, evicted in parallel: beyond the budget of 1, drains meet 429s
    deploy(kube, "web", 18, pdb={"maxUnavailable": 1})
    wait_for_pdb(kube.api, kube.namespace, "web", disruptions_allowed=1, timeout=60)
    kube.core.patch_node(nodes[0], {"spec": {"unschedulable": True}})  # cordoned by someone else
    # waiter_ttl 6s: waiters renew their Lease every 2 s, so that right is exercised too.
    fleet = kube_fleet(nodes, max_holders=2, agent_config={"waiter_ttl": "6s"})
    with ClusterWatch(kube, nodes, app="web", pre_cordoned={nodes[0]}) as watch, fleet:
        wait_for(fleet.done, timeout=600, interval=0.5, what="every node to reboot and release")
    assert not fleet.violations, fleet.violations
    assert {n.reboots for n in fleet.nodes.values()} == {1}  # every node rebooted exactly once
    report = kube_report(fleet, kube.cluster, kube.namespace, precordoned=frozenset({nodes[0]}))
    assert report.ok and report.by_revision, report.problems
    assert report.max_holders == 2
    assert watch.max_cordoned <= 2  # never more than max nodes cordoned or rebooting
    assert watch.min_ready is not None and watch.min_ready >= 17, watch.min_ready  # the PDB held
    refused = sum(agent_log(fleet, n).count("refused for now") for n in nodes)
    assert refused > 0  # and it was put to the test: evictions beyond the budget got 429
    final = {n.metadata.name: n for n in kube.core.list_node().items}
    assert final[nodes[0]].spec.unschedulable  # pre-cordoned: still cordoned
    for name in nodes[1:]:
        assert not final[name].spec.unschedulable, name  # found schedulable: left schedulable
    for name in nodes:
        annotations = final[name].metadata.annotations or {}
        assert annotations.get("rebootcoord.io/phase") == "idle", name
        assert "rebootcoord.io/last-reboot" in annotations
    described = kube.cluster.kubectl("describe", "node", nodes[1])
    for reason in ("SlotAcquired", "Draining", "Rebooting", "Rebooted", "SlotReleased"):
        assert reason in described, reason  # `kubectl describe node` tells the story
    lease = kube.cluster.kubectl("get", "lease", "-n", kube.namespace, "rebootcoord-default")
    assert "rebootcoord-default" in lease
    # Every call was made as the chart's ServiceAccount, and every right the chart grants was used.
    identity: ChartIdentity = fleet.identity  # type: ignore[attr-defined]
    assert identity.denied_requests() == []
    assert identity.unused_grants() == [], identity.unused_grants()


def test_unsatisfiable_pdb_times_out_the_drain_and_aborts_cleanly(
    kube: KubeTestEnv, kube_fleet: Callable[..., Fleet]
) -> None:
    (node,) = [n.name for n in kube.create_nodes(1)]
    deploy(kube, "stuck", 2, pdb={"minAvailable": 2}, node=node)  # no disruption is ever allowed
    wait_for_pdb(kube.api, kube.namespace, "stuck", disruptions_allowed=0, timeout=60)
    # Without the pre-check, which would keep the node from ever starting this drain.
    fleet = kube_fleet([node], agent_config={"drain_timeout": "8s", "pdb_precheck": False})
    sem = fleet.semaphore
    with fleet:
        wait_for(lambda: "drain failed" in agent_log(fleet, node), timeout=120, what="the drain to fail")
        wait_for(
            lambda: (v := sem.read()).slots is not None and not v.holds(HolderId(node)) and not v.records,
            timeout=60,
            what="the slot to be given back",
        )
        wait_for(lambda: not kube.core.read_node(node).spec.unschedulable, timeout=30, what="the uncordon")
        assert fleet.nodes[node].reboots == 0  # no reboot without a drained node
        pods = kube.core.list_namespaced_pod(kube.namespace, label_selector="app=stuck").items
        assert len(pods) == 2 and all(p.spec.node_name == node for p in pods)  # workload untouched
        events = kube.cluster.kubectl("get", "events", "-n", "default", "--field-selector",
                                      f"involvedObject.name={node},reason=DrainFailed")  # fmt: skip
        assert "DrainFailed" in events
    assert "queuing again after" in agent_log(fleet, node)


def test_drains_failing_in_a_wave_pause_the_group(
    kube: KubeTestEnv, kube_fleet: Callable[..., Fleet]
) -> None:
    """Stop the line on failed drains: the canary's wave sees two drains fail (a budget that
    never allows a disruption), and the second failure pauses the group in the same write that
    gives the slot back; GroupPaused is told on the node; no node rebooted, none left cordoned."""
    nodes = [n.name for n in kube.create_nodes(2)]
    for node in nodes:
        deploy(kube, f"stuck-{node}", 1, pdb={"minAvailable": 1}, node=node)
        wait_for_pdb(kube.api, kube.namespace, f"stuck-{node}", disruptions_allowed=0, timeout=60)
    fleet = kube_fleet(nodes, agent_config={
        "drain_timeout": "4s", "pdb_precheck": False, "waves": [1, "100%"], "wave_drain_failures": 2,
    })  # fmt: skip
    sem = fleet.semaphore
    with fleet:
        wait_for(lambda: sem.read(queue=False).paused is not None, timeout=180, interval=0.5,
                 what="the group paused by the second failed drain")  # fmt: skip
        paused = sem.read(queue=False).paused
        assert paused is not None and "2 drains failed in wave 1 of 2 (1)" in paused.reason
        view = sem.read(queue=False)
        assert [c.outcome for c in view.ledger.history] == ["drain_failed", "drain_failed"]
        culprit = view.ledger.history[-1].node
        assert f"node {culprit}" in paused.reason
        events = kube.cluster.kubectl("get", "events", "-n", "default", "--field-selector",
                                      f"involvedObject.name={culprit},reason=GroupPaused")  # fmt: skip
        assert "GroupPaused" in events
        time.sleep(3)
        assert not sem.read(queue=False).slots.holders  # type: ignore[union-attr]
        assert all(fleet.nodes[n].reboots == 0 for n in nodes)
        assert not any(kube.core.read_node(n).spec.unschedulable for n in nodes)


def test_pdb_precheck_leaves_a_blocked_node_uncordoned_until_its_budget_allows(
    kube: KubeTestEnv, kube_fleet: Callable[..., Fleet]
) -> None:
    """A node whose pods a PodDisruptionBudget allowing no disruption covers takes no slot and is
    never cordoned; it says PDBBlocked (phase reason, annotation, Event, metric) while a node whose
    pod no budget covers reboots. When the budget allows one again, the blocked node goes through."""
    guarded, free = (n.name for n in kube.create_nodes(2))
    deploy(kube, "guarded", 2, pdb={"minAvailable": 2}, node=guarded)
    deploy(kube, "loose", 1, pdb=None, node=free)  # evicted too, but no budget covers it
    wait_for_pdb(kube.api, kube.namespace, "guarded", disruptions_allowed=0, timeout=60)
    fleet = kube_fleet([guarded, free], max_holders=2)  # a free slot for each: only the PDB stops it
    port = free_port()
    fleet.node_config[guarded] = {"metrics_address": f"127.0.0.1:{port}"}

    def blocked_metric() -> float | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith('rebootcoord_blocked{reason="PDBBlocked"}'):
                return float(line.rsplit(" ", 1)[1])
        return None

    identity: ChartIdentity = fleet.identity  # type: ignore[attr-defined]

    def pdb_lists() -> int:
        return sum(1 for r in identity.requests(settle=False) if r.resource == "poddisruptionbudgets")

    def pdb_events() -> str:
        return kube.cluster.kubectl("get", "events", "-n", "default", "--field-selector",
                                    f"involvedObject.name={guarded},reason=PDBBlocked")  # fmt: skip

    with fleet:
        with ClusterWatch(kube, [guarded]) as watch:
            wait_for(lambda: fleet.nodes[free].reboots == 1, timeout=120, what="the free node to reboot")
            wait_for(lambda: not fleet.semaphore.read().holds(HolderId(free)), timeout=60, what="its release")
            wait_for(lambda: blocked_metric() == 1, timeout=30, what="rebootcoord_blocked PDBBlocked 1")
            wait_for(lambda: "PDBBlocked" in pdb_events(), timeout=30, what="a PDBBlocked Event")
            # Still held back over more looks at the budgets (check_interval 1s), a slot free:
            # the free node is idle now, so each list of the budgets is the guarded node's.
            looks = pdb_lists()
            wait_for(
                lambda: pdb_lists() >= looks + 3 or watch.max_cordoned > 0,
                timeout=60,
                interval=1.0,
                what="more looks at the budgets",
            )
        assert watch.samples > 0 and watch.max_cordoned == 0  # never cordoned while the budget says no
        assert fleet.nodes[guarded].reboots == 0
        assert not fleet.semaphore.read().holds(HolderId(guarded))
        annotations = kube.core.read_node(guarded).metadata.annotations or {}
        assert annotations.get("rebootcoord.io/phase") == "pending", annotations
        reason = annotations.get("rebootcoord.io/reason", "")
        assert "PDBBlocked" in reason and f"{kube.namespace}/guarded allows 0 disruptions" in reason
        pods = kube.core.list_namespaced_pod(kube.namespace, label_selector="app=guarded").items
        assert len(pods) == 2 and all(p.spec.node_name == guarded for p in pods)  # untouched
        # The budget allows one again: the blocked node drains (evict one, 429 for the other until
        # its replacement is Ready) and reboots.
        kube.policy.patch_namespaced_pod_disruption_budget(
            "guarded", kube.namespace, {"spec": {"minAvailable": 1}}
        )
        wait_for(fleet.done, timeout=240, interval=0.5, what="the blocked node to reboot")
    assert {n.reboots for n in fleet.nodes.values()} == {1}
    assert not fleet.violations, fleet.violations
    assert not kube.core.read_node(guarded).spec.unschedulable
    report = kube_report(fleet, kube.cluster, kube.namespace)
    assert report.ok, report.problems
    listed = [r for r in identity.requests() if r.resource == "poddisruptionbudgets"]
    assert listed and all(r.verb == "list" and r.namespace is None and not r.denied for r in listed)


def test_blocking_pod_holds_its_node_back(kube: KubeTestEnv, kube_fleet: Callable[..., Fleet]) -> None:
    nodes = [n.name for n in kube.create_nodes(3)]
    blocked = nodes[1]
    deploy(kube, "batch", 1, pdb=None, node=blocked, labels={"rebootcoord-test/blocker": "yes"})
    fleet = kube_fleet(
        nodes, max_holders=1, agent_config={"blocking_pod_selector": "rebootcoord-test/blocker=yes"}
    )
    with fleet:
        wait_for(
            lambda: all(fleet.nodes[n].reboots == 1 for n in nodes if n != blocked),
            timeout=300,
            what="the unblocked nodes to reboot",
        )
        assert fleet.nodes[blocked].reboots == 0
        assert "blocking-pods" in agent_log(fleet, blocked)
        kube.apps.delete_namespaced_deployment("batch", kube.namespace)  # the job is done
        wait_for(fleet.done, timeout=300, interval=0.5, what="the blocked node to reboot")
    assert not fleet.violations


def test_slot_of_a_deleted_node_is_reclaimed(kube: KubeTestEnv, kube_fleet: Callable[..., Fleet]) -> None:
    """A node took the only slot, then died for good (its Node object deleted). The first waiter
    notices and takes the slot back; without that the group would stay blocked forever."""
    doomed, survivor = (n.name for n in kube.create_nodes(2))
    fleet = kube_fleet([survivor], max_holders=1)
    sem = fleet.semaphore
    sem.ensure(1)
    now = time.time()
    record = HolderRecord(
        id=HolderId(doomed), node=NodeName(doomed), group=Group("default"), phase=Phase.DRAINING,
        boot_id="old-boot", acquired_at=now, phase_since=now, cordoned=True, update_key="k",
    )  # fmt: skip
    sem.join_queue(Waiter(HolderId(doomed), NodeName(doomed), now, 0))
    assert sem.acquire(record) is not None
    sem.leave_queue(HolderId(doomed))
    kube.delete_node(doomed)
    with fleet:
        wait_for(fleet.done, timeout=240, interval=0.5, what="the survivor to reboot")
    assert "reclaimed the slot of" in agent_log(fleet, survivor)
    assert not sem.read().holds(HolderId(doomed))
    assert not fleet.violations


def test_agent_killed_mid_drain_resumes(kube: KubeTestEnv, kube_fleet: Callable[..., Fleet]) -> None:
    """SIGKILL while draining (a PDB refuses the eviction for now), then start again: the drain
    resumes, the node reboots once, nobody is left cordoned."""
    (target,) = [n.name for n in kube.create_nodes(1)]
    deploy(kube, "pair", 2, pdb={"minAvailable": 2}, node=target)
    wait_for_pdb(kube.api, kube.namespace, "pair", disruptions_allowed=0, timeout=60)
    # No pre-check: the drain must start while the budget says no, to be killed mid-way.
    fleet = kube_fleet(
        [target], agent_config={"events_file": "{node_dir}/events.fifo", "pdb_precheck": False}
    )
    node_dir = fleet.nodes[target].dir
    os.makedirs(node_dir, exist_ok=True)
    gate = EventGate(os.path.join(node_dir, "events.fifo"))
    try:
        with fleet:
            wait_for(
                lambda: "refused for now" in agent_log(fleet, target), timeout=120, what="the drain to wait"
            )
            fleet.kill_agent(target)  # SIGKILL, mid-drain
            record = fleet.semaphore.read().record(HolderId(target))
            assert record is not None and record.phase is Phase.DRAINING and record.cordoned
            assert kube.core.read_node(target).spec.unschedulable
            starts = agent_log(fleet, target).count("agent starting")
            fleet.start_agent(target)
            wait_for(
                lambda: (
                    agent_log(fleet, target).count("agent starting") > starts
                    and agent_log(fleet, target).rsplit("agent starting", 1)[1].count("refused for now") > 0
                ),
                timeout=120,
                what="the restarted agent to resume the drain",
            )
            # The budget opens: the resumed drain finishes, the node reboots and comes back.
            kube.policy.patch_namespaced_pod_disruption_budget(
                "pair", kube.namespace, {"spec": {"minAvailable": 1}}
            )
            wait_for(fleet.done, timeout=240, interval=0.5, what="the resumed cycle to finish")
            wait_for(lambda: gate.phases()[-1] == "idle", what="idle")
    finally:
        gate.close()
    assert fleet.nodes[target].reboots == 1
    assert not kube.core.read_node(target).spec.unschedulable
    assert not fleet.violations
    assert gate.phases().count("locked") == 1  # one acquisition: the restart continued the cycle
    report = kube_report(fleet, kube.cluster, kube.namespace)
    assert report.ok, report.problems


def test_simulate_command_on_kwok_nodes(kube: KubeTestEnv, tmp_path: Path) -> None:
    """`rebootcoord simulate --backend kubernetes --kubeconfig FILE`: the same event log as on etcd."""
    import json
    import subprocess
    import sys

    label = f"sim-{kube.namespace}"
    kube.create_nodes(3, labels={"rebootcoord-test/sim": label})
    events = tmp_path / "events.jsonl"
    done = subprocess.run(
        [
            sys.executable, "-m", "rebootcoord", "simulate", "--backend", "kubernetes",
            "--kubeconfig", str(kube.cluster.kubeconfig), "--namespace", kube.namespace,
            "--node-selector", f"rebootcoord-test/sim={label}", "--nodes", "3", "--max", "1",
            "--reboot-seconds", "1", "--events", str(events),
        ],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "invariants: OK" in done.stdout
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert {"ts", "node", "pid", "phase", "boot_id", "group"} <= set(lines[0])
    report = check(lines, max_holders=1)
    assert report.ok, report.problems
    boots = {n: {e["boot_id"] for e in lines if e["node"] == n} for n in {e["node"] for e in lines}}
    assert len(boots) == 3 and all(len(ids) == 2 for ids in boots.values()), boots  # one reboot each


def test_labels_taint_node_boot_id_pods_ready_and_the_node_budget(
    kube: KubeTestEnv, kube_fleet: Callable[..., Fleet]
) -> None:
    """The optional node signals and gates: pre/post-reboot labels, a PreferNoSchedule taint while
    waiting, the boot ID read from the Node, pods Ready after the reboot, and the cluster budget
    (no slot while more than 0 other nodes of the group are NotReady)."""
    nodes = [n.name for n in kube.create_nodes(3, labels={"pool": kube.namespace})]
    outsider = kube.create_nodes(1, labels={"pool": kube.namespace}, prefix=f"{kube.namespace}-out")[0].name
    kube.set_node_ready(outsider, False)  # a node of the group that is down for its own reasons
    fleet = kube_fleet(
        nodes,
        agent_config={
            "pre_reboot_labels": ["rebootcoord.io/rebooting=true"],
            "post_reboot_labels": ["rebootcoord.io/rebooting=false"],
            "taint_while_waiting": True,
            "boot_id_source": "node",
            "verify_pods_ready": True,
            "max_unavailable_nodes": 0,
            "group_node_selector": f"pool={kube.namespace}",
        },
    )
    tainted: set[str] = set()
    with fleet:
        # Blocked by the budget: nobody takes the slot while the outsider is NotReady.
        wait_for(
            lambda: all("node-budget" in agent_log(fleet, n) for n in nodes), timeout=60, what="the budget"
        )
        assert not fleet.semaphore.read().slots.holders  # type: ignore[union-attr]
        assert sum(n.reboots for n in fleet.nodes.values()) == 0
        kube.set_node_ready(outsider, True)

        def sample() -> bool:
            for node in kube.core.list_node().items:
                if any(t.key == "rebootcoord.io/reboot-pending" for t in node.spec.taints or []):
                    tainted.add(node.metadata.name)
            return fleet.done()

        wait_for(sample, timeout=300, interval=0.2, what="the rollout")
    assert tainted & set(nodes)  # waiting nodes were marked PreferNoSchedule
    for node in kube.core.list_node().items:
        if node.metadata.name in nodes:
            assert not any(t.key == "rebootcoord.io/reboot-pending" for t in node.spec.taints or [])
            assert node.metadata.labels.get("rebootcoord.io/rebooting") == "false"
            assert not node.spec.unschedulable
    assert {n.reboots for n in fleet.nodes.values()} == {1}
    assert not fleet.violations


def test_failed_health_gate_keeps_the_slot_with_an_event(
    kube: KubeTestEnv, kube_fleet: Callable[..., Fleet]
) -> None:
    (node,) = [n.name for n in kube.create_nodes(1)]
    fleet = kube_fleet(
        [node],
        agent_config={
            "health_checks": [
                {"type": "command", "name": "app", "argv": ["test", "-f", "{node_dir}/healthy"]}
            ]
        },
    )
    with fleet:
        wait_for(lambda: fleet.nodes[node].reboots == 1, timeout=120, what="the reboot")
        wait_for(
            lambda: "HealthCheckFailed" in kube.cluster.kubectl("describe", "node", node),
            timeout=60,
            what="a HealthCheckFailed event on the Node",
        )
        record = fleet.semaphore.read().record(HolderId(node))
        assert record is not None and record.phase is Phase.VERIFYING and "app" in record.note
        assert kube.core.read_node(node).spec.unschedulable  # held: still cordoned, slot kept
        Path(fleet.nodes[node].dir, "healthy").touch()
        wait_for(fleet.done, timeout=120, what="the release once healthy")
    assert not kube.core.read_node(node).spec.unschedulable
