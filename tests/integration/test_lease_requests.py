"""What a waiting agent asks the API server: its pre-acquire gates (pods on its node, the
cluster's PodDisruptionBudgets) run only when its turn is near -- first in line, or a place the
free slots cover -- never at every check interval far back in line (issue 22). Counted from the
API server's audit log (agents say "rebootcoord/<v> (agent; <node>)"), against the head's own
gate checks as the clock: no wall-clock assertion."""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from rebootcoord.adapters.kube.api import Kube
from rebootcoord.adapters.kube.gates import NodeReady
from rebootcoord.adapters.kube.nodes import ANN_PHASE, KubeNodeOps
from rebootcoord.core.semaphore import MANUAL, HolderRecord, Waiter
from rebootcoord.core.types import Group, HolderId, NodeName, Phase
from rebootcoord.daemon.group import lease_group
from rebootcoord.sim.fleet import Fleet
from rebootcoord.sim.kwok import KwokRebootHooks
from tests.support.cluster import wait_for
from tests.support.kubecluster import KubeTestEnv

pytestmark = pytest.mark.kube

GATE_LISTS = ("pods", "poddisruptionbudgets")


def gate_lists(audit_log: Path, since: float) -> Counter[tuple[str, str]]:
    """(node, resource) -> LISTs of pods and budgets by each agent since ``since``."""
    counts: Counter[tuple[str, str]] = Counter()
    with open(audit_log, encoding="utf-8") as fh:
        for line in fh:
            event: dict[str, Any] = json.loads(line)
            agent = event.get("userAgent", "")
            if "(agent;" not in agent or event.get("stage") != "ResponseComplete":
                continue
            stamp = str(event.get("requestReceivedTimestamp", "")).replace("Z", "+00:00")
            if datetime.fromisoformat(stamp).timestamp() < since:
                continue
            resource = (event.get("objectRef") or {}).get("resource")
            if event.get("verb") == "list" and resource in GATE_LISTS:
                counts[(agent.rpartition(";")[2].strip(" )"), resource)] += 1
    return counts


def test_waiters_far_from_the_head_do_not_run_their_gates(kube: KubeTestEnv, tmp_path: Path) -> None:
    audit = kube.cluster.audit_log
    assert audit is not None
    nodes = [n.name for n in kube.create_nodes(3)]
    api = Kube(kube.cluster.api_client())
    fleet = Fleet(
        str(tmp_path / "run"),
        nodes=len(nodes),
        node_names=nodes,
        max_holders=1,
        semaphore=lease_group(api, namespace=kube.namespace, group=Group("default")),
        hooks=KwokRebootHooks(api),
        agent_config={
            "backend": "kubernetes",
            "kubeconfig": str(kube.cluster.kubeconfig),
            "namespace": kube.namespace,
            "check_interval": "1s",  # the head looks at its gates every turn of a second
        },
    )
    now = time.time()
    fleet.semaphore.ensure(1)
    fleet.semaphore.lock(HolderId("by-hand"), HolderRecord(HolderId("by-hand"), NodeName("by-hand"),
                         Group("default"), Phase.LOCKED, "", now, now, kind=MANUAL))  # fmt: skip
    with fleet:
        wait_for(
            lambda: len(fleet.semaphore.read().waiters) == 3 or None,
            timeout=120,
            what="three agents in line behind the slot held by hand",
        )
        line = [str(w.node) for w in fleet.semaphore.read().waiters]
        since = time.time()
        # The head's own gate checks are the clock: five of them.
        wait_for(
            lambda: gate_lists(audit, since)[(line[0], "pods")] >= 5 or None,
            timeout=120,
            what="five gate checks by the head of the line",
        )
        counts = gate_lists(audit, since)
    assert counts[(line[0], "pods")] >= 5
    for far in line[1:]:
        assert counts[(far, "pods")] == 0, f"{far} (behind the head, no free slot) listed pods: {counts}"
        assert counts[(far, "poddisruptionbudgets")] == 0, counts


class Counting(Kube):
    """A Kube that notes every request it sends: (method, last segment of the path)."""

    def __init__(self, api_client: Any) -> None:
        super().__init__(api_client)
        self.asked: list[tuple[str, str]] = []

    def request(self, method: str, path: str, **kw: Any) -> Any:
        self.asked.append((method, path.split("?", maxsplit=1)[0].rsplit("/", 1)[-1]))
        return super().request(method, path, **kw)


def test_an_agent_joins_the_line_with_no_read_and_leaves_it_once(kube: KubeTestEnv) -> None:
    """Joining creates the waiter Lease directly (a 409 only when it exists); the take deletes
    it, and the release, knowing it is gone, sends no second DELETE (issue 22)."""
    api = Counting(kube.cluster.api_client())
    sem = lease_group(api, namespace=kube.namespace, group=Group("default"))
    try:
        sem.ensure(1)
        me, place = HolderId("n1"), "rebootcoord-default.w.n1"
        api.asked.clear()
        sem.join_queue(Waiter(me, NodeName("n1"), time.time(), 0))
        assert api.asked == [("POST", "leases")]
        assert [w.id for w in sem.read().waiters] == [me]
        now = time.time()
        record = HolderRecord(me, NodeName("n1"), Group("default"), Phase.LOCKED, "b0", now, now)
        assert sem.acquire(record) is not None
        api.asked.clear()
        sem.release(me)
        assert ("DELETE", place) not in api.asked, api.asked
        assert sem.read().waiters == ()
    finally:
        sem.close()


def test_a_restarted_agent_keeps_its_place_after_one_refused_create(kube: KubeTestEnv) -> None:
    first = lease_group(Kube(kube.cluster.api_client()), namespace=kube.namespace, group=Group("default"))
    api = Counting(kube.cluster.api_client())
    again = lease_group(api, namespace=kube.namespace, group=Group("default"))
    try:
        first.ensure(1)
        first.join_queue(Waiter(HolderId("n1"), NodeName("n1"), time.time(), 0))
        first.join_queue(Waiter(HolderId("n2"), NodeName("n2"), time.time(), 0))
        api.asked.clear()
        again.join_queue(Waiter(HolderId("n1"), NodeName("n1"), time.time(), 0))  # n1's next process
        place = "rebootcoord-default.w.n1"
        assert api.asked == [("POST", "leases"), ("GET", place), ("PATCH", place)]
        assert [w.id for w in again.read().waiters] == ["n1", "n2"]  # its place, not the end of the line
        again.leave_queue(HolderId("n1"))
        assert [w.id for w in again.read().waiters] == ["n2"]
    finally:
        first.close()
        again.close()


def test_a_phase_on_the_node_is_one_patch_and_its_event_no_read(kube: KubeTestEnv) -> None:
    """The Event names the Node's uid: the patch's answer carries it, no GET of the Node."""
    node = kube.create_nodes(1)[0].name
    api = Counting(kube.cluster.api_client())
    ops = KubeNodeOps(api, NodeName(node))
    ops.announce(Phase.WAITING, "waiting for a slot")
    assert api.asked == [("PATCH", node), ("POST", "events")]
    listed = json.loads(kube.cluster.kubectl("get", "events", "-n", "default", "-o", "json"))["items"]
    assert any(e["involvedObject"].get("name") == node and e["involvedObject"].get("uid") for e in listed)


def test_the_draining_phase_rides_on_the_cordon_and_releasing_on_the_uncordon(kube: KubeTestEnv) -> None:
    node = kube.create_nodes(1)[0].name
    api = Counting(kube.cluster.api_client())
    ops = KubeNodeOps(api, NodeName(node))
    ops.announce(Phase.LOCKED, "took a slot")
    api.asked.clear()
    ops.announce(Phase.DRAINING, "draining", defer=True)
    ops.cordon()
    assert api.asked == [("POST", "events"), ("PATCH", node)]
    found = json.loads(kube.cluster.kubectl("get", "node", node, "-o", "json"))
    assert found["spec"].get("unschedulable") is True
    assert found["metadata"]["annotations"][ANN_PHASE] == "draining"
    api.asked.clear()
    ops.announce(Phase.RELEASING, "healthy", defer=True)
    ops.uncordon()
    assert api.asked == [("POST", "events"), ("PATCH", node)]
    found = json.loads(kube.cluster.kubectl("get", "node", node, "-o", "json"))
    assert not found["spec"].get("unschedulable")
    assert found["metadata"]["annotations"][ANN_PHASE] == "releasing"


def test_start_up_and_the_ready_check_after_a_reboot_read_the_node_once(kube: KubeTestEnv) -> None:
    """The zone read at start-up answers the look for a stale cordon; the VERIFYING phase's
    patch answers the first Ready check. The next check reads the Node again."""
    node = kube.create_nodes(1)[0].name
    api = Counting(kube.cluster.api_client())
    ops = KubeNodeOps(api, NodeName(node))
    ops.zone()
    assert not ops.cordoned_by_us()
    assert api.asked == [("GET", node)]
    found = json.loads(kube.cluster.kubectl("get", "node", node, "-o", "json"))
    boot = str(found["status"].get("nodeInfo", {}).get("bootID", ""))
    ready = NodeReady(api, NodeName(node), lambda: boot, seen=ops.fresh)
    api.asked.clear()
    ops.announce(Phase.VERIFYING, "rebooted")
    assert ready.check().ok
    assert api.asked == [("PATCH", node), ("POST", "events")]
    assert ready.check().ok
    assert api.asked[-1] == ("GET", node)
