"""The FleetLock server answers a waiting client's poll from the group as a watch keeps it (the
group's mirror, adapters.etcd.GroupMirror): such a refusal costs etcd no request, the client's
place is kept alive by refreshes sent in batches, and what another replica changes reaches the
answers. Grants stay the compare-and-swap's (test_fleetlock_etcd's racing replicas check the
bound). On a real etcd, counting the requests etcd itself reports (its gRPC server metrics)."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Iterator

import pytest

from rebootcoord.sim.etcd_server import EtcdServer
from tests.conftest import wait_for
from tests.support.etcdraw import raw_client
from tests.support.fleetlock import InProcessServers, ask

pytestmark = pytest.mark.etcd


@pytest.fixture
def serve(etcd: EtcdServer, prefix: str) -> Iterator[object]:
    servers = InProcessServers(
        {"backend": "etcd", "etcd_endpoints": [etcd.endpoint], "etcd_key_prefix": prefix, "max_holders": 1}
    )
    yield servers.make
    servers.close()


def unary_requests(etcd: EtcdServer) -> int:
    """The unary gRPC requests etcd has answered (reads, writes, lease grants and lookups): a
    keep-alive stream's or a watch's messages are not among them."""
    url = etcd._metrics_url.replace("/health", "/metrics")
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return sum(
        int(float(n))
        for n in re.findall(r'^grpc_server_handled_total\{[^}]*grpc_type="unary"[^}]*\} (\S+)', text, re.M)
    )


def place(etcd: EtcdServer, prefix: str, client_id: str) -> tuple[int, int] | None:
    """(create revision, lease) of a client's place in line (None: it has none)."""
    _, meta = raw_client(etcd).get(f"{prefix}/groups/default/v1/rebootcoord/waiters/{client_id}")
    return None if meta is None else (int(meta.create_revision), int(meta.lease_id))


def test_a_refused_poll_asks_etcd_nothing_and_its_place_lives_on(
    serve: object, etcd: EtcdServer, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rebootcoord.adapters.etcd import GroupMirror

    monkeypatch.setattr(GroupMirror, "CHECK_EVERY", 3600.0)  # its one read per 5 s: not counted here
    service = serve()  # type: ignore[operator]
    assert ask(service, "pre-reboot", "holder") == (200, "ok")
    assert ask(service, "pre-reboot", "waiter") == (423, "no_free_slot")  # joins the line
    assert ask(service, "pre-reboot", "waiter") == (423, "no_free_slot")  # its lease fits its polls

    def quiet() -> bool:  # the mirror is live: two polls in a row ask etcd nothing
        before = unary_requests(etcd)
        assert ask(service, "pre-reboot", "waiter") == (423, "no_free_slot")
        assert ask(service, "pre-reboot", "waiter") == (423, "no_free_slot")
        return unary_requests(etcd) == before

    wait_for(quiet, timeout=30, interval=0.2, what="polls answered from the group's mirror")
    kept = place(etcd, prefix, "waiter")
    assert kept is not None
    before = unary_requests(etcd)
    for _ in range(200):
        assert ask(service, "pre-reboot", "waiter") == (423, "no_free_slot")
    assert unary_requests(etcd) == before
    # Polled every second for twice its lease's TTL (5 s, fitted to the quick polls): alive on
    # the batches' refreshes alone, in the same place on the same lease.
    for _ in range(10):
        time.sleep(1)
        assert ask(service, "pre-reboot", "waiter") == (423, "no_free_slot")
    assert place(etcd, prefix, "waiter") == kept
    # What the HTTP server's socket thread asks first: answered there, and counted.
    body = b'{"client_params": {"id": "waiter", "group": "default"}}'
    at_once = service.handle_at_once("POST", "/v1/pre-reboot", {"fleet-lock-protocol": "true"}, body)
    assert at_once is not None and at_once[0] == 423
    assert (
        service.handle_at_once(
            "POST", "/v1/pre-reboot", {"fleet-lock-protocol": "true"}, body.replace(b"waiter", b"newcomer")
        )
        is None
    )  # a new place: a write
    counted = service.metrics.at_once.collect()[0].samples
    assert [s.value for s in counted if s.name.endswith("_total")] == [1.0]
    assert ask(service, "steady-state", "holder") == (200, "ok")
    assert ask(service, "pre-reboot", "waiter") == (200, "ok")  # its turn: taken by a write


def test_a_release_through_another_replica_reaches_the_waiters_answers(
    serve: object, etcd: EtcdServer, prefix: str
) -> None:
    one, other = serve(), serve()  # type: ignore[operator]
    assert ask(one, "pre-reboot", "holder") == (200, "ok")
    for _ in range(3):
        assert ask(one, "pre-reboot", "waiter") == (423, "no_free_slot")
    assert ask(other, "steady-state", "holder") == (200, "ok")
    wait_for(lambda: ask(one, "pre-reboot", "waiter") == (200, "ok"), timeout=10, what="the freed slot")
    assert ask(other, "pre-reboot", "holder") == (423, "no_free_slot")  # the waiter holds it now


def test_a_mirror_whose_watch_goes_silent_is_started_again(
    serve: object, etcd: EtcdServer, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rebootcoord.adapters.etcd import GroupMirror

    monkeypatch.setattr(GroupMirror, "CHECK_EVERY", 0.5)
    one, other = serve(), serve()  # type: ignore[operator]
    assert ask(one, "pre-reboot", "holder") == (200, "ok")
    for _ in range(3):
        assert ask(one, "pre-reboot", "waiter") == (423, "no_free_slot")
    mirror = one.group("default").store.mirror
    wait_for(lambda: mirror.latest(lambda revision, kvs: revision) is not None, what="a live mirror")
    silent = mirror._generation  # its watch delivers nothing from now on, and says nothing
    original = GroupMirror._on

    def deaf(self: GroupMirror, generation: int, response: object) -> None:
        if self is mirror and generation == silent:
            return
        original(self, generation, response)

    monkeypatch.setattr(GroupMirror, "_on", deaf)
    assert ask(other, "steady-state", "holder") == (200, "ok")  # the release the mirror never hears of
    wait_for(lambda: ask(one, "pre-reboot", "waiter") == (200, "ok"), timeout=20, what="the freed slot")


def test_the_head_of_the_line_keeps_its_place_once_per_poll(
    serve: object, etcd: EtcdServer, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A poll is answered at once or by a worker, each asking the mirror first; only the one that
    answers keeps the place. Kept twice, the second keep would measure the client's interval as
    nothing and fit its lease again (a LeaseTimeToLive, then perhaps a 5 s lease)."""
    from rebootcoord.adapters.etcd import GroupMirror

    monkeypatch.setattr(GroupMirror, "CHECK_EVERY", 3600.0)
    service = serve()  # type: ignore[operator]
    body = b'{"client_params": {"id": "waiter", "group": "default"}}'
    headers = {"fleet-lock-protocol": "true"}

    def poll() -> int:  # as the HTTP server asks: at once, else a worker
        reply = service.handle_at_once("POST", "/v1/pre-reboot", headers, body)
        return (reply or service.handle("POST", "/v1/pre-reboot", headers, body))[0]

    assert ask(service, "pre-reboot", "holder") == (200, "ok")
    assert poll() == 423  # joins
    time.sleep(9)
    assert poll() == 423  # its lease fitted to a 9 s interval (14 s)
    assert ask(service, "steady-state", "holder") == (200, "ok")
    time.sleep(9)
    before = lease_lookups(etcd)
    assert poll() == 200  # its turn, at the same pace: the place kept as it was, then taken
    assert lease_lookups(etcd) == before


def lease_lookups(etcd: EtcdServer) -> int:
    url = etcd._metrics_url.replace("/health", "/metrics")
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    pattern = r'^grpc_server_handled_total\{[^}]*grpc_method="LeaseTimeToLive"[^}]*\} (\S+)'
    found = re.findall(pattern, text, re.M)
    return sum(int(float(n)) for n in found)
