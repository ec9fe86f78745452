"""FleetLock against the real peers: airlock (an etcd v3 semaphore) and poseidon/fleetlock (a
Kubernetes Lease), each a process on loopback (tests.support.peers), spoken to by the agent's
``backend: fleetlock`` adapter and by a Zincati-like client; airlock beside our own server on one
etcd group. What the peers store is read back raw: airlock's etcd key (tests.support.etcdraw),
poseidon's Lease and Nodes through the API.

Each test skips when its peer's binary is missing (tests.support.peers.needs says why: the Go
module proxy refuses both modules, so `make testbin` cannot build them).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from rebootcoord.adapters.fleetlock import FleetLockSemaphore
from rebootcoord.core.fleetlock import app_specific_id
from rebootcoord.core.semaphore import SemaphoreState, Waiter
from rebootcoord.core.types import Group, HolderId, NodeName
from rebootcoord.errors import BackendUnavailable
from rebootcoord.sim.etcd_server import EtcdServer
from tests.conftest import wait_for
from tests.contract.test_semaphore import record
from tests.support.cluster import free_port, write_kubeconfig
from tests.support.etcdraw import raw_client, slot_history
from tests.support.fleetlock import FleetLockClient, fleetlock_servers
from tests.support.kubecluster import KubeTestEnv, wait_for_pdb, wait_for_pods
from tests.support.peers import (
    AIRLOCK,
    AIRLOCK_PREFIX,
    POSEIDON,
    Airlock,
    PoseidonFleetlock,
    airlock_key,
    needs,
    peer_binary,
)

_groups = itertools.count()


@pytest.fixture
def group() -> str:
    """airlock's prefix is fixed: a group of the test's own keeps tests apart on the shared etcd."""
    return f"peers-{os.getpid()}-{next(_groups)}"


@pytest.fixture
def start_airlock(etcd: EtcdServer, tmp_path: Path, group: str) -> Iterator[Callable[..., Airlock]]:
    binary = peer_binary(AIRLOCK)
    assert binary is not None  # tests that start it are marked needs(AIRLOCK)
    started: list[Airlock] = []

    def start(*, slots: int = 1, endpoints: list[str] | None = None, txn_timeout_ms: int = 3000) -> Airlock:
        peer = Airlock(binary, tmp_path / "airlock", endpoints or [etcd.endpoint], group, slots,
                       txn_timeout_ms=txn_timeout_ms)  # fmt: skip
        started.append(peer)
        peer.start()
        if endpoints is None:  # at start airlock creates the key of each group it serves
            wait_for(lambda: airlock_slots(etcd, group), what=f"airlock's key of group {group}")
        return peer

    try:
        yield start
    finally:
        for peer in started:
            peer.stop()


@pytest.fixture
def start_poseidon(kube: KubeTestEnv, tmp_path: Path) -> Iterator[Callable[..., PoseidonFleetlock]]:
    binary = peer_binary(POSEIDON)
    assert binary is not None  # tests that start it are marked needs(POSEIDON)
    started: list[PoseidonFleetlock] = []

    def start(kubeconfig: Path | None = None) -> PoseidonFleetlock:
        peer = PoseidonFleetlock(binary, tmp_path / "poseidon", kube.namespace,
                                 kubeconfig or kube.cluster.endpoints.kubeconfig)  # fmt: skip
        started.append(peer)
        return peer.start()

    try:
        yield start
    finally:
        for peer in started:
            peer.stop()


@pytest.fixture
def poseidon(start_poseidon: Callable[..., PoseidonFleetlock]) -> PoseidonFleetlock:
    """poseidon/fleetlock on the test's namespace, with the admin kubeconfig."""
    return start_poseidon()


def adapter(base: str, group: str, holder: str, slots: int, state_root: Path) -> FleetLockSemaphore:
    return FleetLockSemaphore(
        base, group=Group(group), holder=HolderId(holder), max_holders=slots,
        state_dir=str(state_root / holder), poll_interval=0.2, timeout=30,
    )  # fmt: skip


def take(sem: FleetLockSemaphore) -> int | None:
    """What the agent does when it wants a slot: join the line, ask."""
    sem.join_queue(Waiter(sem.holder, NodeName(sem.holder), time.time(), 0))
    return sem.acquire(replace(record(sem.holder), group=sem.group))


def etcd_get(etcd: EtcdServer, key: str) -> bytes | None:
    with contextlib.closing(raw_client(etcd)) as client:
        value, _ = client.get(key)
        return value  # type: ignore[no-any-return]


def airlock_slots(etcd: EtcdServer, group: str) -> SemaphoreState | None:
    """airlock's key as we decode it (None: absent)."""
    value = etcd_get(etcd, airlock_key(group))
    return None if value is None else SemaphoreState.decode(value, key=airlock_key(group))


# -- the agent's adapter against airlock ------------------------------------------------------------


@pytest.mark.etcd
@needs(AIRLOCK)
@pytest.mark.parametrize("slots", [1, 2])
def test_the_adapter_takes_is_refused_while_full_and_hands_over_on_airlock(
    start_airlock: Callable[..., Airlock], etcd: EtcdServer, group: str, tmp_path: Path, slots: int
) -> None:
    """``slots`` clients take a slot (a revision each); the next is refused -- airlock's 500
    ``failed_lock`` is a refusal, not an error -- and sees the group full; a release gives the slot
    back and the refused client gets it. airlock's etcd key holds exactly our ids throughout."""
    peer = start_airlock(slots=slots)
    clients = [adapter(peer.base, group, f"node-{i}", slots, tmp_path) for i in range(slots + 1)]
    *first, last = clients
    for sem in first:
        assert isinstance(take(sem), int)
        assert sem.read().holds(sem.holder)
    assert airlock_slots(etcd, group) == SemaphoreState(slots, tuple(s.holder for s in first))

    assert take(last) is None  # no exception: the group is full
    view = last.read()
    assert view.slots is not None and view.slots.free == 0 and not view.holds(last.holder)
    answer = FleetLockClient(peer.base).pre_reboot(last.holder, group)
    assert (answer.status, answer.kind) == (500, "failed_lock"), answer.body
    assert airlock_slots(etcd, group) == SemaphoreState(slots, tuple(s.holder for s in first))

    assert isinstance(first[0].release(first[0].holder), int)
    assert not first[0].read().holds(first[0].holder)
    assert airlock_slots(etcd, group) == SemaphoreState(slots, tuple(s.holder for s in first[1:]))
    assert isinstance(take(last), int)
    assert airlock_slots(etcd, group) == SemaphoreState(slots, tuple(s.holder for s in clients[1:]))

    for sem in clients[1:]:
        assert isinstance(sem.release(sem.holder), int)
    assert airlock_slots(etcd, group) == SemaphoreState(slots)


# What airlock answers, beside the row of docs/fleetlock.md's table each request belongs to. Rows
# marked DIFFERS are where the table's airlock column says something else (noted after the id).
BODY = '{{"client_params": {{"id": {id}, "group": {group}}}}}'


@pytest.mark.etcd
@needs(AIRLOCK)
@pytest.mark.parametrize(
    ("method", "path", "header", "client_id", "client_group", "status", "kind"),
    [
        pytest.param("POST", "/v1/pre-reboot", False, '"n"', None, 400, "invalid_client_identity",
                     id="missing_header-DIFFERS(table: none)"),
        pytest.param("POST", "/v1/pre-reboot", True, "", None, 400, "invalid_client_identity",
                     id="decode_error"),
        pytest.param("POST", "/v1/pre-reboot", True, '""', None, 400, "invalid_client_identity",
                     id="invalid_client_identity-empty"),
        pytest.param("POST", "/v1/pre-reboot", True, "7", None, 400, "invalid_client_identity",
                     id="invalid_client_identity-not-text"),
        pytest.param("POST", "/v1/pre-reboot", True, json.dumps("n" * 300), None, 200, "",
                     id="invalid_client_identity-300-chars-DIFFERS(table: 400 invalid_client_identity)"),
        pytest.param("POST", "/v1/pre-reboot", True, '"n"', '"a/b"', 400, "unknown_group",
                     id="invalid_group-DIFFERS(table: 400 invalid_client_identity)"),
        pytest.param("POST", "/v1/pre-reboot", True, '"n"', '"other"', 400, "unknown_group",
                     id="unknown_group"),
        pytest.param("GET", "/v1/pre-reboot", True, '"n"', None, 200, "",
                     id="method_not_allowed-DIFFERS(table: none; a GET takes the slot)"),
        pytest.param("POST", "/v1/reboot", True, '"n"', None, 404, "", id="not_found-plain-text"),
    ],
)  # fmt: skip
def test_what_airlock_answers(
    start_airlock: Callable[..., Airlock],
    etcd: EtcdServer,
    group: str,
    method: str,
    path: str,
    header: bool,
    client_id: str,
    client_group: str | None,
    status: int,
    kind: str,
) -> None:
    peer = start_airlock(slots=1)
    body = BODY.format(id=client_id, group=client_group or json.dumps(group)) if client_id else "nope"
    headers = {"fleet-lock-protocol": "true"} if header else {}
    answer = FleetLockClient(peer.base).raw(method, path, body.encode(), headers)
    assert (answer.status, answer.kind) == (status, kind), answer.body
    expect = (json.loads(client_id),) if status == 200 else ()
    assert airlock_slots(etcd, group) == SemaphoreState(1, expect)


@pytest.mark.etcd
@needs(AIRLOCK)
def test_a_corrupt_key_is_a_refusal_to_the_adapter_through_airlock(
    start_airlock: Callable[..., Airlock], etcd: EtcdServer, group: str, tmp_path: Path
) -> None:
    """airlock answers a key it cannot decode with 500 ``failed_lock`` -- the answer of a full
    group (the table says ``failed_sem_init``) -- so the adapter cannot tell it from "full": it
    polls on, where the etcd backend would report the corrupt document. The key is untouched."""
    peer = start_airlock(slots=1)
    with contextlib.closing(raw_client(etcd)) as client:
        client.put(airlock_key(group), b"not json")
    answer = FleetLockClient(peer.base).pre_reboot("node-a", group)
    assert (answer.status, answer.kind) == (500, "failed_lock"), answer.body
    assert take(adapter(peer.base, group, "node-a", 1, tmp_path)) is None
    assert FleetLockClient(peer.base).steady_state("node-a", group).kind == "failed_lock"
    assert etcd_get(etcd, airlock_key(group)) == b"not json"


@pytest.mark.etcd
@needs(AIRLOCK)
def test_an_unreachable_etcd_is_backend_unavailable_through_airlock(
    start_airlock: Callable[..., Airlock], group: str, tmp_path: Path
) -> None:
    """With etcd out of reach airlock answers 500 ``failed_sem_init`` (its semaphore manager
    cannot create the key), after its transaction timeout -- not ``failed_lock`` as the table
    says -- and the adapter reports BackendUnavailable: it backs off instead of polling a "full"
    group."""
    peer = start_airlock(slots=1, endpoints=[f"http://127.0.0.1:{free_port()}"], txn_timeout_ms=500)
    for operation in ("pre-reboot", "steady-state"):
        answer = FleetLockClient(peer.base).call(operation, "node-a", group)
        assert (answer.status, answer.kind) == (500, "failed_sem_init"), answer.body
    with pytest.raises(BackendUnavailable, match="failed_sem_init"):
        take(adapter(peer.base, group, "node-a", 1, tmp_path))


# -- our server and airlock on one etcd group ---------------------------------------------------------


@pytest.fixture
def ours(etcd: EtcdServer, tmp_path: Path, group: str) -> Iterator[FleetLockClient]:
    """``rebootcoord fleetlock-server`` on airlock's prefix: the same semaphore key, serving the
    test's group (the group key: fleetlock_groups' default)."""
    config = {
        "backend": "etcd", "etcd_endpoints": [etcd.endpoint], "etcd_key_prefix": AIRLOCK_PREFIX,
        "max_holders": 2, "fleetlock_waiter_ttl": "10s", "group": group,
    }  # fmt: skip
    with fleetlock_servers(tmp_path / "ours", config) as (server,):
        yield FleetLockClient(server.base)


def our_record(etcd: EtcdServer, group: str, holder: str) -> bytes | None:
    return etcd_get(etcd, f"{AIRLOCK_PREFIX}/groups/{group}/v1/rebootcoord/holders/{holder}")


@pytest.mark.etcd
@needs(AIRLOCK)
def test_a_slot_taken_through_one_server_is_released_through_the_other(
    start_airlock: Callable[..., Airlock], ours: FleetLockClient, etcd: EtcdServer, group: str
) -> None:
    airlock = FleetLockClient(start_airlock(slots=2).base)

    assert airlock.pre_reboot("x", group).status == 200
    assert airlock_slots(etcd, group) == SemaphoreState(2, ("x",))
    assert ours.steady_state("x", group).status == 200  # airlock's grant, released by ours
    assert airlock_slots(etcd, group) == SemaphoreState(2)

    assert ours.pre_reboot("y", group).status == 200
    assert airlock_slots(etcd, group) == SemaphoreState(2, ("y",))
    assert our_record(etcd, group, "y") is not None
    assert airlock.steady_state("y", group).status == 200  # ours, released by airlock
    assert airlock_slots(etcd, group) == SemaphoreState(2)
    # airlock knows only the semaphore key: our record of y stays until y asks us again.
    assert our_record(etcd, group, "y") is not None
    assert ours.pre_reboot("y", group).status == 200
    assert ours.steady_state("y", group).status == 200
    assert airlock_slots(etcd, group) == SemaphoreState(2)
    assert our_record(etcd, group, "y") is None

    # One budget: full through either, each refuses in its own words.
    assert airlock.pre_reboot("p", group).status == 200
    assert ours.pre_reboot("q", group).status == 200
    refused = [airlock.pre_reboot("r", group), ours.pre_reboot("r", group)]
    assert [(a.status, a.kind) for a in refused] == [(500, "failed_lock"), (423, "no_free_slot")]
    assert airlock_slots(etcd, group) == SemaphoreState(2, ("p", "q"))
    assert ours.steady_state("p", group).status == 200
    assert airlock.pre_reboot("r", group).status == 200
    assert airlock.steady_state("q", group).status == 200
    assert ours.steady_state("r", group).status == 200
    assert airlock_slots(etcd, group) == SemaphoreState(2)


@pytest.mark.etcd
@needs(AIRLOCK)
def test_clients_alternating_between_ours_and_airlock_never_exceed_the_slots(
    start_airlock: Callable[..., Airlock], ours: FleetLockClient, etcd: EtcdServer, group: str
) -> None:
    """Six clients, two rounds each: ask one server then the other until granted, release
    through the server that did not grant. Every value the key ever had (its etcd history) has at
    most 2 holders; both servers granted; in the end nobody holds a slot."""
    slots, clients, rounds = 2, 6, 2
    airlock = FleetLockClient(start_airlock(slots=slots).base)
    servers = {"airlock": airlock, "ours": ours}
    names = list(servers)
    grants: list[tuple[str, str]] = []
    refusals: set[tuple[str, int, str]] = set()
    stop = threading.Event()
    deadline = time.monotonic() + 120

    def ask(client_id: str, operation: str, first: int) -> str:
        for attempt in itertools.count(first):
            name = names[attempt % 2]
            answer = servers[name].call(operation, client_id, group)
            if answer.status == 200:
                return name
            refusals.add((name, answer.status, answer.kind))
            assert time.monotonic() < deadline, f"{client_id} {operation}: still refused"
            stop.wait(0.02)  # a client's poll interval (Zincati: ~5 minutes)
        raise AssertionError("unreachable")

    def run(i: int) -> None:
        client_id = f"client-{i}"
        for r in range(rounds):
            granted = ask(client_id, "pre-reboot", i + r)
            grants.append((client_id, granted))
            ask(client_id, "steady-state", names.index(granted) + 1)  # the other one first

    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(run, i) for i in range(clients)]:
            future.result()

    history = slot_history(etcd, airlock_key(group))
    assert history and all(len(v["holders"]) <= slots and v["total_slots"] == slots for v in history)
    assert max(len(v["holders"]) for v in history) == slots  # contended: the group was full
    held = {h for v in history for h in v["holders"]}
    assert held == {f"client-{i}" for i in range(clients)}
    assert len(grants) == clients * rounds
    assert {name for _, name in grants} == {"airlock", "ours"}, grants
    assert {(s, k) for _, s, k in refusals} <= {(500, "failed_lock"), (423, "no_free_slot")}, refusals
    assert airlock_slots(etcd, group) == SemaphoreState(slots)


# -- the agent's adapter against poseidon/fleetlock -------------------------------------------------


def lease_holder(kube: KubeTestEnv, group: str = "default") -> str:
    """poseidon's Lease ``fleetlock-<group>``: its holderIdentity ("" when free)."""
    lease = kube.coordination.read_namespaced_lease(f"fleetlock-{group}", kube.namespace)
    return str(lease.spec.holder_identity or "")


def unschedulable(kube: KubeTestEnv, node: str) -> bool:
    return bool(kube.core.read_node(node).spec.unschedulable)


@pytest.mark.kube
@needs(POSEIDON)
def test_the_adapter_takes_is_refused_while_held_and_releases_on_poseidon(
    kube: KubeTestEnv, poseidon: PoseidonFleetlock, tmp_path: Path
) -> None:
    """With Zincati's ids (the app-specific id of each Node's machine id): a takes the one slot
    of the group and poseidon cordons a's Node before it answers; b is refused (423
    ``lock_held``, no exception) while a holds; a's release uncordons its Node and frees the
    Lease; then b gets it."""
    node_a, node_b = kube.create_nodes(2)
    a = adapter(poseidon.base, "default", app_specific_id(node_a.machine_id), 1, tmp_path)
    b = adapter(poseidon.base, "default", app_specific_id(node_b.machine_id), 1, tmp_path)

    assert isinstance(take(a), int)
    assert lease_holder(kube) == a.holder
    assert unschedulable(kube, node_a.name)  # drained before the 200

    assert take(b) is None
    view = b.read()
    assert view.slots is not None and view.slots.free == 0
    answer = FleetLockClient(poseidon.base).pre_reboot(b.holder)
    assert (answer.status, answer.kind) == (423, "lock_held"), answer.body
    assert lease_holder(kube) == a.holder

    assert isinstance(a.release(a.holder), int)
    assert lease_holder(kube) == ""
    assert not unschedulable(kube, node_a.name)

    assert isinstance(take(b), int)
    assert lease_holder(kube) == b.holder and unschedulable(kube, node_b.name)
    assert isinstance(b.release(b.holder), int)
    assert lease_holder(kube) == "" and not unschedulable(kube, node_b.name)


@pytest.mark.kube
@needs(POSEIDON)
def test_poseidon_keeps_the_slot_of_an_id_that_is_no_nodes_zincati_id(
    kube: KubeTestEnv, poseidon: PoseidonFleetlock, tmp_path: Path
) -> None:
    """The agent's default holder id is its node name. poseidon grants it (its drain finds no
    Node and is skipped), but its steady-state uncordons first and fails the release when the id
    matches no Node: 500 ``internal_error``, the Lease stays held. The adapter reports
    BackendUnavailable and keeps its record; only Zincati's id releases."""
    (node,) = kube.create_nodes(1)
    sem = adapter(poseidon.base, "default", node.name, 1, tmp_path)
    assert isinstance(take(sem), int)
    assert lease_holder(kube) == node.name
    with pytest.raises(BackendUnavailable, match="internal_error"):
        sem.release(sem.holder)
    assert lease_holder(kube) == node.name
    assert sem.read().holds(sem.holder)
    answer = FleetLockClient(poseidon.base).steady_state(node.name)
    assert (answer.status, answer.kind) == (500, "internal_error"), answer.body


@pytest.mark.kube
@needs(POSEIDON)
def test_poseidon_refuses_a_steady_state_from_a_client_that_holds_nothing(
    kube: KubeTestEnv, poseidon: PoseidonFleetlock, tmp_path: Path
) -> None:
    """steady-state from a non-holder while another client holds the Lease: poseidon answers 423
    ``lock_held`` (ours answers 200); the adapter takes it as "nothing of ours to give back", so an
    agent that no longer needs its reboot leaves the line at once, and the holder keeps its slot."""
    node_a, node_b = kube.create_nodes(2)
    a = adapter(poseidon.base, "default", app_specific_id(node_a.machine_id), 1, tmp_path)
    b = adapter(poseidon.base, "default", app_specific_id(node_b.machine_id), 1, tmp_path)
    assert isinstance(take(a), int)
    assert take(b) is None
    b.leave_queue(b.holder)  # 423 lock_held: nothing of b's to give back
    assert lease_holder(kube) == a.holder  # a still holds it
    assert isinstance(a.release(a.holder), int)
    b.leave_queue(b.holder)  # free: "reboot lease already unlocked", 200
    assert lease_holder(kube) == ""
    assert not unschedulable(kube, node_a.name)


@pytest.mark.kube
@needs(POSEIDON)
@pytest.mark.parametrize(
    ("method", "path", "header", "client_id", "client_group", "status", "kind"),
    [
        pytest.param("POST", "/v1/pre-reboot", False, '"n"', '"default"', 400, "missing_header",
                     id="missing_header"),
        pytest.param("POST", "/v1/pre-reboot", True, "", "", 400, "decode_error", id="decode_error"),
        pytest.param("POST", "/v1/pre-reboot", True, '""', '"default"', 400, "decode_error",
                     id="invalid_client_identity-empty"),
        pytest.param("POST", "/v1/pre-reboot", True, "7", '"default"', 400, "decode_error",
                     id="invalid_client_identity-not-text"),
        pytest.param("POST", "/v1/pre-reboot", True, json.dumps("n" * 300), '"default"', 200, "",
                     id="invalid_client_identity-300-chars-DIFFERS(table: 400 decode_error)"),
        pytest.param("POST", "/v1/pre-reboot", True, '"n"', '"a/b"', 500, "internal_error",
                     id="invalid_group-DIFFERS(table: 400 decode_error)"),
        pytest.param("POST", "/v1/pre-reboot", True, '"n"', '"Workers"', 500, "internal_error",
                     id="valid-upper-case-group-no-Lease-name"),
        pytest.param("GET", "/v1/pre-reboot", True, '"n"', '"default"', 405, "method_not_allowed",
                     id="method_not_allowed"),
        pytest.param("POST", "/v1/reboot", True, '"n"', '"default"', 404, "", id="not_found-plain-text"),
    ],
)  # fmt: skip
def test_what_poseidon_answers(
    kube: KubeTestEnv,
    poseidon: PoseidonFleetlock,
    method: str,
    path: str,
    header: bool,
    client_id: str,
    client_group: str,
    status: int,
    kind: str,
) -> None:
    body = BODY.format(id=client_id, group=client_group) if client_id else "nope"
    headers = {"fleet-lock-protocol": "true"} if header else {}
    answer = FleetLockClient(poseidon.base).raw(method, path, body.encode(), headers)
    assert (answer.status, answer.kind) == (status, kind), answer.body
    leases = {item.metadata.name: item.spec.holder_identity
              for item in kube.coordination.list_namespaced_lease(kube.namespace).items}  # fmt: skip
    assert leases == ({"fleetlock-default": json.loads(client_id)} if status == 200 else {})


@pytest.mark.kube
@needs(POSEIDON)
def test_poseidon_grants_although_a_pdb_blocks_the_drain(
    kube: KubeTestEnv, poseidon: PoseidonFleetlock, tmp_path: Path
) -> None:
    """The drain is best effort (fleetlock#51): a PodDisruptionBudget refuses the eviction, and
    poseidon answers 200 all the same -- the Node cordoned, the pod still on it. (Without a PDB
    it does evict: see the policy/v1beta1 Eviction it sends, which this API server accepts.)"""
    (node,) = kube.create_nodes(1)
    labels = {"app": "guarded"}
    for name, guarded in (("guarded", True), ("free", False)):
        kube.core.create_namespaced_pod(kube.namespace, {
            "metadata": {"name": name, "labels": labels if guarded else {}},
            "spec": {"nodeName": node.name, "containers": [{"name": "c", "image": "registry.invalid/c:1"}]},
        })  # fmt: skip
    kube.policy.create_namespaced_pod_disruption_budget(kube.namespace, {
        "metadata": {"name": "guarded"}, "spec": {"minAvailable": 1, "selector": {"matchLabels": labels}},
    })  # fmt: skip
    wait_for_pods(kube.api, kube.namespace, "app=guarded", count=1)
    wait_for_pdb(kube.api, kube.namespace, "guarded", disruptions_allowed=0)

    sem = adapter(poseidon.base, "default", app_specific_id(node.machine_id), 1, tmp_path)
    assert isinstance(take(sem), int)
    assert lease_holder(kube) == sem.holder and unschedulable(kube, node.name)
    pods = {p.metadata.name for p in kube.core.list_namespaced_pod(kube.namespace).items
            if p.metadata.deletion_timestamp is None}  # fmt: skip
    assert pods == {"guarded"}, pods  # "free" evicted; the drain stopped at "guarded"
    assert "error evicting pod" in poseidon.log()


@pytest.mark.kube
@needs(POSEIDON)
def test_an_unreachable_api_server_is_backend_unavailable_through_poseidon(
    kube: KubeTestEnv, start_poseidon: Callable[..., PoseidonFleetlock], tmp_path: Path
) -> None:
    """poseidon answers 500 ``internal_error`` when it cannot read its Lease; the adapter reports
    BackendUnavailable."""
    kubeconfig = write_kubeconfig(
        tmp_path / "unreachable.kubeconfig", server=f"https://127.0.0.1:{free_port()}",
        ca_file=kube.cluster.endpoints.ca_file, token="none", user="nobody",
    )  # fmt: skip
    peer = start_poseidon(kubeconfig)
    answer = FleetLockClient(peer.base).pre_reboot("node-a")
    assert (answer.status, answer.kind) == (500, "internal_error"), answer.body
    with pytest.raises(BackendUnavailable, match="internal_error"):
        take(adapter(peer.base, "default", "node-a", 1, tmp_path))
