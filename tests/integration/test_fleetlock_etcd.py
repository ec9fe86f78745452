"""FleetLock conformance, written from the protocol: the server as a process on a real etcd,
spoken to over HTTP as Zincati speaks. The slots' history is read back from etcd by a raw client
(tests.support.etcdraw), independent of the server."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rebootcoord.adapters.etcd import EtcdConnection, EtcdGroupStore, EtcdOptions
from rebootcoord.core.fleetlock import KINDS
from rebootcoord.core.types import Group
from rebootcoord.sim.etcd_server import EtcdServer
from tests.conftest import wait_for
from tests.support.certs import Pki, issue_client, make_pki
from tests.support.etcdraw import raw_client, slot_history
from tests.support.fleetlock import FleetLockClient, FleetLockServer, fleetlock_servers

pytestmark = pytest.mark.etcd

WAITERS = "{prefix}/groups/default/v1/rebootcoord/waiters/"
BODY = b'{"client_params": {"id": "node-a", "group": "default"}}'


def semaphore_key(prefix: str, group: str = "default") -> str:
    return f"{prefix}/groups/{group}/v1/semaphore"


@pytest.fixture
def config(etcd: EtcdServer, prefix: str) -> dict[str, object]:
    return {
        "backend": "etcd",
        "etcd_endpoints": [etcd.endpoint],
        "etcd_key_prefix": prefix,
        "max_holders": 1,
        "fleetlock_waiter_ttl": "20s",
    }


@pytest.fixture
def server(tmp_path: Path, config: dict[str, object]) -> Iterator[FleetLockServer]:
    with fleetlock_servers(tmp_path, config) as servers:
        yield servers[0]


@pytest.fixture
def client(server: FleetLockServer) -> FleetLockClient:
    return FleetLockClient(server.base)


def snapshot(etcd: EtcdServer, prefix: str) -> list[tuple[bytes, bytes, int]]:
    """Every key under the test's prefix with its value and mod revision."""
    return [(m.key, v, m.mod_revision) for v, m in raw_client(etcd).get_prefix(prefix)]


def holders(etcd: EtcdServer, prefix: str, group: str = "default") -> list[str]:
    value, _ = raw_client(etcd).get(semaphore_key(prefix, group))
    return list(json.loads(value)["holders"]) if value else []


# -- the protocol's answers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status", "kind"),
    [
        ("GET", "/v1/pre-reboot", None, BODY, 405, "method_not_allowed"),
        ("PUT", "/v1/steady-state", None, BODY, 405, "method_not_allowed"),
        ("POST", "/v1/reboot", None, BODY, 404, "not_found"),
        ("POST", "/", None, BODY, 404, "not_found"),
        ("POST", "/v1/pre-reboot", {}, BODY, 400, "missing_header"),
        ("POST", "/v1/pre-reboot", {"fleet-lock-protocol": "false"}, BODY, 400, "missing_header"),
        ("POST", "/v1/pre-reboot", None, b"", 400, "decode_error"),
        ("POST", "/v1/pre-reboot", None, b"{", 400, "decode_error"),
        ("POST", "/v1/pre-reboot", None, b"[]", 400, "decode_error"),
        ("POST", "/v1/pre-reboot", None, b'{"client_params": "x"}', 400, "decode_error"),
        ("POST", "/v1/pre-reboot", None, b"[" * 100 + b"]" * 100, 400, "decode_error"),
        ("POST", "/v1/pre-reboot", None, b'{"client_params": {"group": "default"}}', 400, "invalid_client_identity"),  # noqa: E501
        ("POST", "/v1/pre-reboot", None, b'{"client_params": {"id": "", "group": "default"}}', 400,
         "invalid_client_identity"),
        ("POST", "/v1/pre-reboot", None, b'{"client_params": {"id": 7, "group": "default"}}', 400,
         "invalid_client_identity"),
        ("POST", "/v1/pre-reboot", None, b'{"client_params": {"id": "a", "group": "no/slash"}}', 400, "invalid_group"),  # noqa: E501
        ("POST", "/v1/pre-reboot", None, b'{"client_params": {"id": "a", "group": ""}}', 400, "invalid_group"),  # noqa: E501
        ("POST", "/v1/pre-reboot", None, b'{"client_params": {"id": "a"}}', 400, "invalid_group"),
        ("POST", "/v1/pre-reboot", None, b" " * 20_000, 413, "request_too_large"),
    ],
)  # fmt: skip
def test_requests_that_are_not_fleetlock_get_their_kind_and_change_nothing(
    client: FleetLockClient, etcd: EtcdServer, prefix: str, method: str, path: str,
    headers: dict[str, str] | None, body: bytes, status: int, kind: str,
) -> None:  # fmt: skip
    if headers is not None:
        headers = {"content-type": "application/json", **headers}
    assert client.pre_reboot("holder").status == 200  # a group with a holder, its record, a queue
    assert client.pre_reboot("waiter").kind == "no_free_slot"
    before = snapshot(etcd, prefix)
    answer = client.raw(method, path, body, headers)
    assert (answer.status, answer.kind) == (status, kind), answer.body
    assert answer.value  # a readable reason
    assert snapshot(etcd, prefix) == before


def test_pre_reboot_is_recursive_and_steady_state_idempotent(
    client: FleetLockClient, etcd: EtcdServer, prefix: str
) -> None:
    for _ in range(3):
        assert client.pre_reboot("node-a").status == 200
    assert holders(etcd, prefix) == ["node-a"]
    for _ in range(3):
        assert client.steady_state("node-a").status == 200
    assert holders(etcd, prefix) == []
    assert client.steady_state("never-held").status == 200  # holds nothing: nothing to give back


def test_a_full_group_answers_423_no_free_slot_and_keeps_the_clients_place(
    client: FleetLockClient, etcd: EtcdServer, prefix: str
) -> None:
    assert client.pre_reboot("node-a").status == 200
    answer = client.pre_reboot("node-b")
    assert (answer.status, answer.kind) == (423, "no_free_slot")
    assert "1 of 1 slots held" in answer.value and "place 1 of 1" in answer.value
    assert (client.pre_reboot("node-c").status, "place 2 of 2" in client.pre_reboot("node-c").value) == (
        423,
        True,
    )
    assert client.steady_state("node-a").status == 200
    # node-c asks first, but node-b is ahead in line: the slot waits for node-b.
    assert client.pre_reboot("node-c").kind == "no_free_slot"
    assert client.pre_reboot("node-b").status == 200
    assert holders(etcd, prefix) == ["node-b"]
    history = slot_history(etcd, semaphore_key(prefix))
    assert all(len(v["holders"]) <= v["total_slots"] == 1 for v in history)


def test_a_poller_that_stops_asking_loses_its_place_after_the_waiter_ttl(
    tmp_path: Path, config: dict[str, object], etcd: EtcdServer, prefix: str
) -> None:
    with fleetlock_servers(tmp_path, {**config, "fleetlock_waiter_ttl": "10s"}) as (server,):
        client = FleetLockClient(server.base)
        assert client.pre_reboot("node-a").status == 200
        assert client.pre_reboot("node-b").kind == "no_free_slot"  # place 1, then silence
        assert "place 2 of 2" in client.pre_reboot("node-c").value
        assert client.steady_state("node-a").status == 200
        # node-c keeps asking; node-b does not: after its place expires, node-c's turn comes.
        wait_for(lambda: client.pre_reboot("node-c").status == 200, timeout=30, interval=1,
                 what="node-b's place to expire")  # fmt: skip
        assert holders(etcd, prefix) == ["node-c"]


def test_a_free_slot_is_not_held_for_pollers_that_stopped_asking(
    tmp_path: Path, config: dict[str, object], etcd: EtcdServer, prefix: str
) -> None:
    """M clients that polled every second and then stopped asking, M slots freed: their places
    live 1.5 of their own intervals (core.fleetlock.place_ttl, at least 5 s), not the waiter TTL
    (here 10 minutes), so a client that keeps asking gets a slot once they are gone."""
    config = {**config, "max_holders": 2, "fleetlock_waiter_ttl": "10m"}
    with fleetlock_servers(tmp_path, config) as (server,):
        client = FleetLockClient(server.base)
        assert client.pre_reboot("holder-1").status == 200
        assert client.pre_reboot("holder-2").status == 200
        for _ in range(2):  # two polls a second apart: an interval of one second
            for gone in ("gone-1", "gone-2"):
                assert client.pre_reboot(gone).kind == "no_free_slot"
            time.sleep(1.0)
        assert "place 3 of 3" in client.pre_reboot("late").value
        assert client.steady_state("holder-1").status == 200
        assert client.steady_state("holder-2").status == 200
        wait_for(lambda: client.pre_reboot("late").status == 200, timeout=60, interval=1,
                 what="the places of the clients that stopped asking to pass")  # fmt: skip
        assert holders(etcd, prefix) == ["late"]
        # Their places passed, the late one took its slot. Waited for: one slot frees once one of
        # the two places has passed, and the other's lease may end a moment later (its poll came
        # that much later on a busy machine).
        wait_for(lambda: waiter_keys(etcd, prefix) == [], timeout=30, what="both places passed")


def waiter_keys(etcd: EtcdServer, prefix: str) -> list[bytes]:
    return [m.key for _, m in raw_client(etcd).get_prefix(WAITERS.format(prefix=prefix))]


def test_unknown_groups_are_refused_when_the_server_serves_a_list(
    tmp_path: Path, config: dict[str, object], etcd: EtcdServer, prefix: str
) -> None:
    with fleetlock_servers(tmp_path, {**config, "fleetlock_groups": ["workers", "default"]}) as (server,):
        client = FleetLockClient(server.base)
        answer = client.pre_reboot("node-a", "masters")
        assert (answer.status, answer.kind) == (400, "unknown_group")
        assert client.pre_reboot("node-a", "workers").status == 200
        assert holders(etcd, prefix, "workers") == ["node-a"]
        assert holders(etcd, prefix, "masters") == []


def test_an_unreachable_etcd_is_503_backend_unavailable_not_a_full_group(
    tmp_path: Path, config: dict[str, object]
) -> None:
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connection refused
    port = dead.getsockname()[1]
    try:
        with fleetlock_servers(tmp_path, {**config, "etcd_endpoints": [f"http://127.0.0.1:{port}"]}) as (
            server,
        ):
            answer = FleetLockClient(server.base).pre_reboot("node-a")
            assert (answer.status, answer.kind) == (503, "backend_unavailable")
            assert server.healthy()  # an outage is answered, not a reason to restart the server
    finally:
        dead.close()


def test_a_corrupt_semaphore_is_500_corrupt_document_and_left_alone(
    client: FleetLockClient, etcd: EtcdServer, prefix: str
) -> None:
    raw_client(etcd).put(semaphore_key(prefix), b'{"total_slots": "many"}')
    answer = client.pre_reboot("node-a")
    assert (answer.status, answer.kind) == (500, "corrupt_document")
    assert raw_client(etcd).get(semaphore_key(prefix))[0] == b'{"total_slots": "many"}'


def test_an_airlock_holder_is_honoured_and_its_steady_state_releases_it(
    client: FleetLockClient, etcd: EtcdServer, prefix: str
) -> None:
    raw_client(etcd).put(semaphore_key(prefix), b'{"total_slots": 1, "holders": ["zincati-1"]}')
    assert client.pre_reboot("node-a").kind == "no_free_slot"
    assert client.pre_reboot("zincati-1").status == 200  # recursive for airlock's holders too
    assert client.steady_state("zincati-1").status == 200
    assert client.pre_reboot("node-a").status == 200
    assert json.loads(raw_client(etcd).get(semaphore_key(prefix))[0]) == {
        "total_slots": 1,
        "holders": ["node-a"],
    }


def test_fuzzed_requests_get_4xx_and_change_nothing(
    client: FleetLockClient, etcd: EtcdServer, prefix: str
) -> None:
    assert client.pre_reboot("holder").status == 200
    before = snapshot(etcd, prefix)
    valid = json.dumps({"client_params": {"id": "holder", "group": "default"}}).encode()

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        method=st.sampled_from(["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "POST"]),
        path=st.sampled_from(["/v1/pre-reboot", "/v1/steady-state", "/v1/x", "/%00", "/" + "a" * 3000]),
        header=st.sampled_from([{}, {"fleet-lock-protocol": "false"}, {"fleet-lock-protocol": "true"}]),
        raw=st.binary(max_size=400) | st.just(valid) | st.just(b"x" * 17_000),
    )
    def one(method: str, path: str, header: dict[str, str], raw: bytes) -> None:
        if method == "POST" and header and header["fleet-lock-protocol"] == "true" and raw == valid:
            raw = valid[:-1]  # every valid request is mutated: this test asks for refusals only
        answer = client.raw(method, path, raw, {"content-type": "application/json", **header})
        assert 400 <= answer.status < 500, (method, path, header, raw[:80], answer.body)
        assert answer.kind in KINDS

    one()
    assert snapshot(etcd, prefix) == before


# -- many clients, two replicas --------------------------------------------------------------------


def test_50_clients_racing_through_two_replicas_never_exceed_the_slots(
    tmp_path: Path, config: dict[str, object], etcd: EtcdServer, prefix: str
) -> None:
    with fleetlock_servers(tmp_path, {**config, "max_holders": 3}, replicas=2) as servers:
        clients = [FleetLockClient(s.base) for s in servers]
        granted: list[str] = []
        lock = threading.Lock()

        def one(i: int) -> None:
            name = f"node-{i:02d}"
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                answer = clients[i % 2].pre_reboot(name)  # each client polls one replica...
                if answer.status == 200:
                    break
                assert answer.kind == "no_free_slot", answer.body
                time.sleep(0.05)
            else:
                pytest.fail(f"{name} never got a slot")
            with lock:
                granted.append(name)
            time.sleep(0.05)
            assert clients[(i + 1) % 2].pre_reboot(name).status == 200  # ...recursive on the other
            assert clients[(i + 1) % 2].steady_state(name).status == 200

        with ThreadPoolExecutor(50) as pool:
            list(pool.map(one, range(50)))
        assert sorted(granted) == [f"node-{i:02d}" for i in range(50)]
    history = slot_history(etcd, semaphore_key(prefix))
    peak = max(len(v["holders"]) for v in history)
    assert all(v["total_slots"] == 3 and len(v["holders"]) <= 3 for v in history)
    assert peak == 3  # the budget was used
    assert history[-1]["holders"] == []
    assert list(raw_client(etcd).get_prefix(WAITERS.format(prefix=prefix))) == []  # every place gone


def test_a_killed_replica_loses_nothing_the_other_answers_the_retry(
    tmp_path: Path, config: dict[str, object], etcd: EtcdServer, prefix: str
) -> None:
    with fleetlock_servers(tmp_path, config, replicas=2) as (one, two):
        assert FleetLockClient(one.base).pre_reboot("node-a").status == 200
        assert FleetLockClient(one.base).pre_reboot("node-b").kind == "no_free_slot"
        one.kill()
        other = FleetLockClient(two.base)
        assert other.pre_reboot("node-a").status == 200  # still held: recursive
        assert other.pre_reboot("node-c").kind == "no_free_slot"
        assert other.steady_state("node-a").status == 200
        assert other.pre_reboot("node-c").kind == "no_free_slot"  # node-b's place outlived its replica
        assert other.pre_reboot("node-b").status == 200


# -- TLS and limits ----------------------------------------------------------------------------------


def test_tls_with_a_client_ca_refuses_clients_without_a_certificate(
    tmp_path: Path, config: dict[str, object], etcd: EtcdServer, prefix: str
) -> None:
    (tmp_path / "pki").mkdir()
    pki = make_pki(tmp_path / "pki")
    tls = {
        "fleetlock_tls_cert_file": str(pki.server_cert),
        "fleetlock_tls_key_file": str(pki.server_key),
        "fleetlock_tls_client_ca_file": str(pki.ca),
    }
    with fleetlock_servers(tmp_path, {**config, **tls}) as (server,):
        anonymous = ssl.create_default_context(cafile=str(pki.ca))
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            FleetLockClient(server.base, context=anonymous).pre_reboot("node-a")
        plain = FleetLockClient(server.base.replace("https", "http"))
        with pytest.raises((ConnectionError, OSError)):
            plain.pre_reboot("node-a")
        assert holders(etcd, prefix) == []
        signed = ssl.create_default_context(cafile=str(pki.ca))
        signed.load_cert_chain(str(pki.client_cert), str(pki.client_key))  # CN=root
        assert FleetLockClient(server.base, context=signed).pre_reboot("root").status == 200


def _client_context(pki: Pki, cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(str(cert), str(key))
    return context


def test_a_client_certificate_binds_the_ids_it_may_act_as(
    tmp_path: Path, config: dict[str, object], etcd: EtcdServer, prefix: str
) -> None:
    """With a client CA, the id must be the certificate's CN, one of its DNS/URI SANs, or one
    fleetlock_client_ids gives it: client A's certificate never acts as client B."""
    (tmp_path / "pki").mkdir()
    pki = make_pki(tmp_path / "pki")
    a = _client_context(pki, *issue_client(pki, tmp_path / "pki", "client-a", dns=("a.example",)))
    b = _client_context(pki, *issue_client(pki, tmp_path / "pki", "client-b", uris=("spiffe://x/b",)))
    zincati = "e3b0c44298fc1c149afbf4c8996fb924"
    tls = {
        "fleetlock_tls_cert_file": str(pki.server_cert),
        "fleetlock_tls_key_file": str(pki.server_key),
        "fleetlock_tls_client_ca_file": str(pki.ca),
        "fleetlock_client_ids": {"a.example": [zincati]},
        "max_holders": 3,
    }
    with fleetlock_servers(tmp_path, {**config, **tls}) as (server,):
        as_a, as_b = FleetLockClient(server.base, context=a), FleetLockClient(server.base, context=b)
        assert as_b.pre_reboot("client-b").status == 200  # CN
        before = snapshot(etcd, prefix)
        for call in (as_a.pre_reboot, as_a.steady_state):
            answer = call("client-b")
            assert (answer.status, answer.kind) == (403, "invalid_client_identity"), answer.body
            assert "client-a" in answer.value and "'client-b'" in answer.value
        assert snapshot(etcd, prefix) == before  # nothing changed
        assert as_a.pre_reboot("client-a").status == 200  # CN
        assert as_a.pre_reboot(zincati).status == 200  # given by fleetlock_client_ids to a SAN
        assert as_b.steady_state("client-b").status == 200
        assert as_b.pre_reboot("spiffe://x/b").status == 200  # a URI SAN
        assert sorted(holders(etcd, prefix)) == sorted(["client-a", zincati, "spiffe://x/b"])
        log = server.log()
    # Every state change names the certificate it came with.
    took = [line for line in log.splitlines() if "took a slot" in line]
    assert len(took) == 4 and all("certificate commonName=" in line for line in took), took
    assert any("commonName=client-b" in line and "gave its slot" in line for line in log.splitlines())


def test_idle_and_slow_connections_do_not_keep_clients_out(server: FleetLockServer) -> None:
    idle = []
    for _ in range(200):
        s = socket.create_connection(("127.0.0.1", server.port))
        s.sendall(b"POST /v1/pre-reboot HTTP/1.1\r\nHost: x\r\n")  # never finished
        idle.append(s)
    try:
        client = FleetLockClient(server.base, timeout=20)
        assert client.pre_reboot("node-a").status == 200
        big = {"fleet-lock-protocol": "true", "x-big": "y" * 40_000}
        try:  # a head larger than any FleetLock request: 431, or closed before the client reads it
            status = client.raw("POST", "/v1/pre-reboot", BODY, big).status
        except ConnectionError:
            status = 431
        assert status == 431
        assert client.steady_state("node-a").status == 200  # and the server goes on
    finally:
        for s in idle:
            s.close()


def test_zincati_clients_follow_the_rollouts_waves_and_land_in_its_history(
    tmp_path: Path, config: dict[str, object], etcd: EtcdServer, prefix: str
) -> None:
    """The server starts a rollout in waves like an agent: the canary first; no one else until
    it is back (steady-state) and soaked; each cycle written into the group's history."""
    waves = {"max_holders": 3, "waves": [1, "100%"], "wave_soak": "2s"}
    with fleetlock_servers(tmp_path, {**config, **waves}) as (server,):
        client = FleetLockClient(server.base)
        assert client.pre_reboot("canary").status == 200
        refused = client.pre_reboot("node-b")
        assert refused.kind == "no_free_slot" and "wave 2 of 2 opens when the 1 node(s)" in refused.value
        assert client.steady_state("canary").status == 200
        soaking = client.pre_reboot("node-b")
        assert soaking.kind == "no_free_slot" and "soaks" in soaking.value
        wait_for(lambda: client.pre_reboot("node-b").status == 200, timeout=20, interval=0.3,
                 what="wave 2 open after the soak")  # fmt: skip
        assert client.pre_reboot("node-c").status == 200  # the last wave: side by side
        for node in ("node-b", "node-c"):
            assert client.steady_state(node).status == 200
    conn = EtcdConnection(EtcdOptions(endpoints=(etcd.endpoint,)))
    try:
        state, _ = EtcdGroupStore(conn, prefix=prefix, group=Group("default")).read()
    finally:
        conn.close()
    cycles = state.ledger.history
    assert [(c.id, c.kind, c.outcome, c.wave.split("/")[-1]) for c in cycles] == [
        ("canary", "fleetlock", "rebooted", "1"),
        ("node-b", "fleetlock", "rebooted", "2"),
        ("node-c", "fleetlock", "rebooted", "2"),
    ]
    assert cycles[1].started_at >= cycles[0].ended_at + 2.0
