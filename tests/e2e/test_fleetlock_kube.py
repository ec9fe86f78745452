"""The FleetLock server on Kubernetes: Zincati's id mapped to a kwok Node by its machine id, the
agent's PDB-aware drain before pre-reboot's 200, the Node's health before steady-state's release,
a drain that fails. The real API server, kwok nodes, the server as a process."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rebootcoord.adapters.kube.api import Kube
from rebootcoord.core.fleetlock import app_specific_id
from rebootcoord.core.types import Group, Phase
from rebootcoord.daemon.group import lease_group
from tests.conftest import wait_for
from tests.e2e.test_kube_fleet import deploy
from tests.support.fleetlock import FleetLockClient, FleetLockServer, fleetlock_servers
from tests.support.kubecluster import KubeTestEnv, wait_for_pdb

pytestmark = pytest.mark.kube

CORDONED = "rebootcoord.io/cordoned-by-rebootcoord"


@pytest.fixture
def server(kube: KubeTestEnv, tmp_path: Path) -> Iterator[FleetLockServer]:
    config = {
        "backend": "kubernetes",
        "namespace": kube.namespace,
        "kubeconfig": str(kube.cluster.endpoints.kubeconfig),
        "max_holders": 1,
        "drain_timeout": "20s",
        "drain_delete_emptydir_data": True,
        "fleetlock_waiter_ttl": "30s",
        # These tests drive the drain itself into PodDisruptionBudgets; the PDB pre-check, which
        # would hold the client back before its slot, has a test of its own.
        "pdb_precheck": False,
    }
    with fleetlock_servers(tmp_path, config) as (one,):
        yield one


def group_view(kube: KubeTestEnv) -> Any:
    group = lease_group(Kube(kube.cluster.api_client()), namespace=kube.namespace, group=Group("default"))
    try:
        return group.read(queue=False)
    finally:
        group.close()


def holders(kube: KubeTestEnv) -> tuple[str, ...]:
    group = lease_group(Kube(kube.cluster.api_client()), namespace=kube.namespace, group=Group("default"))
    try:
        view = group.read(queue=False)
        return view.slots.holders if view.slots else ()
    finally:
        group.close()


def node(kube: KubeTestEnv, name: str) -> Any:
    return kube.core.read_node(name)


def events(kube: KubeTestEnv, name: str) -> list[str]:
    found = kube.core.list_namespaced_event("default", field_selector=f"involvedObject.name={name}").items
    return [e.reason for e in found if e.source and e.source.component == "rebootcoord"]


def pods_on(kube: KubeTestEnv, name: str, app: str) -> set[str]:
    pods = kube.core.list_namespaced_pod(kube.namespace, label_selector=f"app={app}").items
    return {
        p.metadata.uid for p in pods if p.spec.node_name == name and p.metadata.deletion_timestamp is None
    }


def test_zincati_is_drained_before_its_grant_and_released_only_when_its_node_is_ready(
    kube: KubeTestEnv, server: FleetLockServer
) -> None:
    first, second = kube.create_nodes(2)
    deploy(kube, "web", 4, pdb={"maxUnavailable": 1})
    wait_for_pdb(kube.api, kube.namespace, "web", disruptions_allowed=1, timeout=60)
    before = pods_on(kube, first.name, "web")
    assert before
    client = FleetLockClient(server.base)
    zincati = app_specific_id(first.machine_id)  # what Zincati on that machine sends

    answer = client.pre_reboot(zincati)
    assert answer.status == 200, answer.body
    found = node(kube, first.name)
    assert found.spec.unschedulable and found.metadata.annotations[CORDONED] == "true"
    assert not before & pods_on(kube, first.name, "web")  # every pod it had was evicted
    assert holders(kube) == (zincati,)
    assert group_view(kube).record(zincati).zone == first.zone  # counted in its Node's zone
    assert {"Draining", "Rebooting"} <= set(events(kube, first.name))
    assert client.pre_reboot(zincati).status == 200  # recursive: no second drain needed
    other = client.pre_reboot(app_specific_id(second.machine_id))
    assert other.kind == "no_free_slot"

    # The node reboots: down, a new boot, Zincati's steady-state comes before the Node is Ready.
    kube.set_node_ready(first.name, False)
    kube.cluster.set_boot_id(first.name)
    answer = client.steady_state(zincati)
    assert (answer.status, answer.kind) == (503, "node_not_ready"), answer.body
    assert holders(kube) == (zincati,) and node(kube, first.name).spec.unschedulable
    kube.set_node_ready(first.name, True)
    assert client.steady_state(zincati).status == 200
    found = node(kube, first.name)
    assert not found.spec.unschedulable and CORDONED not in (found.metadata.annotations or {})
    assert holders(kube) == ()
    assert "SlotReleased" in events(kube, first.name)
    (cycle,) = group_view(kube).ledger.history
    assert (cycle.node, cycle.outcome, cycle.zone) == (first.name, "rebooted", first.zone)
    assert client.pre_reboot(app_specific_id(second.machine_id)).status == 200  # next in line


def test_a_failed_drain_is_never_granted_and_leaves_the_nodes_as_found(
    kube: KubeTestEnv, server: FleetLockServer
) -> None:
    free, precordoned = kube.create_nodes(2)
    for target in (free, precordoned):  # pods no PDB lets go
        deploy(kube, f"db-{target.name[-1]}", 1, pdb={"maxUnavailable": 0}, node=target.name)
    kube.core.patch_node(precordoned.name, {"spec": {"unschedulable": True}})  # an operator's cordon
    client = FleetLockClient(server.base)
    for target in (free, precordoned):
        answer = client.pre_reboot(app_specific_id(target.machine_id))
        assert (answer.status, answer.kind) == (500, "drain_failed"), answer.body
        assert holders(kube) == ()  # the slot was given back
    assert not node(kube, free.name).spec.unschedulable  # our cordon undone
    assert CORDONED not in (node(kube, free.name).metadata.annotations or {})
    assert node(kube, precordoned.name).spec.unschedulable  # the operator's kept
    assert "DrainFailed" in events(kube, free.name)


def test_an_id_that_maps_to_no_node_is_refused_unless_configured(
    kube: KubeTestEnv, tmp_path: Path, server: FleetLockServer
) -> None:
    answer = FleetLockClient(server.base).pre_reboot("0123456789abcdef0123456789abcdef")
    assert (answer.status, answer.kind) == (403, "unknown_node")
    assert holders(kube) == ()
    grant = {**_config_of(server), "fleetlock_unknown_id": "grant"}
    with fleetlock_servers(tmp_path / "grant", grant) as (granting,):
        assert FleetLockClient(granting.base).pre_reboot("bare-host-1").status == 200
        assert holders(kube) == ("bare-host-1",)
        assert FleetLockClient(granting.base).steady_state("bare-host-1").status == 200


def test_the_agents_pdb_precheck_holds_a_client_back_before_its_slot(
    kube: KubeTestEnv, tmp_path: Path, server: FleetLockServer
) -> None:
    """The agent's gates bind FleetLock clients: a PodDisruptionBudget that allows no
    disruption of a pod on the client's Node answers gate_blocked naming it; nothing is held,
    nothing cordoned, and the client is out of the line so that the others go on."""
    target, other = kube.create_nodes(2)
    deploy(kube, "db", 1, pdb={"maxUnavailable": 0}, node=target.name)
    config = {**_config_of(server), "pdb_precheck": True}
    with fleetlock_servers(tmp_path / "gated", config) as (gated,):
        client = FleetLockClient(gated.base)
        answer = client.pre_reboot(app_specific_id(target.machine_id))
        assert (answer.status, answer.kind) == (423, "gate_blocked"), answer.body
        assert "PDBBlocked" in answer.value and "PodDisruptionBudget" in answer.value
        assert holders(kube) == () and not node(kube, target.name).spec.unschedulable
        assert group_view(kube).waiters == ()
        assert client.pre_reboot(app_specific_id(other.machine_id)).status == 200  # the others go on
        assert client.steady_state(app_specific_id(other.machine_id)).status == 200


def test_a_node_name_is_no_id_unless_the_operator_says_so(
    kube: KubeTestEnv, tmp_path: Path, server: FleetLockServer
) -> None:
    """A Node's name is no secret: as an id it would let anyone cordon and drain any Node."""
    (target,) = kube.create_nodes(1)
    answer = FleetLockClient(server.base).pre_reboot(target.name)
    assert (answer.status, answer.kind) == (403, "unknown_node")
    assert not node(kube, target.name).spec.unschedulable and holders(kube) == ()
    by_name = {**_config_of(server), "fleetlock_ids_by_node_name": True}
    with fleetlock_servers(tmp_path / "by-name", by_name) as (named,):
        assert FleetLockClient(named.base).pre_reboot(target.name).status == 200
        assert node(kube, target.name).spec.unschedulable
        assert FleetLockClient(named.base).steady_state(target.name).status == 200
        assert not node(kube, target.name).spec.unschedulable


def _config_of(server: FleetLockServer) -> dict[str, Any]:
    return {k: v for k, v in server.config.items() if not k.startswith(("fleetlock_listen", "metrics_"))}


def test_a_server_killed_mid_drain_is_finished_by_the_retry_on_another_replica(
    kube: KubeTestEnv, tmp_path: Path, server: FleetLockServer
) -> None:
    target, _spare = kube.create_nodes(2)
    deploy(kube, "db", 2, pdb={"maxUnavailable": 0}, node=target.name)  # the drain cannot finish yet
    zincati = app_specific_id(target.machine_id)
    group = lease_group(Kube(kube.cluster.api_client()), namespace=kube.namespace, group=Group("default"))
    answers: list[int] = []
    pending = threading.Thread(
        target=lambda: answers.append(FleetLockClient(server.base).pre_reboot(zincati).status)
    )
    pending.start()
    try:

        def draining() -> bool:  # cordoned, evicting
            record = group.read(queue=False).record(zincati)
            return (
                record is not None
                and record.phase is Phase.DRAINING
                and bool(record.cordoned)
                and bool(node(kube, target.name).spec.unschedulable)
            )

        wait_for(draining, timeout=30, what="the drain under way")
        server.kill()  # kill -9 in the middle of the drain
        pending.join(30)
        assert answers == []  # Zincati saw no answer: it asks again later
        assert node(kube, target.name).spec.unschedulable and holders(kube) == (zincati,)
        kube.policy.patch_namespaced_pod_disruption_budget(
            "db", kube.namespace, {"spec": {"maxUnavailable": 1}}
        )
        wait_for_pdb(kube.api, kube.namespace, "db", disruptions_allowed=1, timeout=60)
        with fleetlock_servers(tmp_path / "other", _config_of(server)) as (other,):
            answer = FleetLockClient(other.base).pre_reboot(zincati)  # the retry, on another replica
            assert answer.status == 200, answer.body
            record = group.read(queue=False).record(zincati)
            assert record is not None and record.phase is Phase.REBOOTING and record.cordoned
            assert FleetLockClient(other.base).steady_state(zincati).status == 200
        assert not node(kube, target.name).spec.unschedulable and holders(kube) == ()
    finally:
        group.close()
