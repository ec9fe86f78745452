"""Everything a FleetLock client can make the server store is bounded, refused before the write
with a clear answer, and never wedges the group: driven past each bound on a real etcd, with the
server as its composition root builds it (``build_fleetlock_service``), answering in-process.

After each flood: the group reads (``rebootctl status`` exits 0), a holder releases, ``rebootctl
unlock --force`` works, and what etcd holds stays small. Figures of the same runs against a
server process, before and after: benchmarks/fleetlock_bounds.py.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from rebootcoord.core.bounds import HISTORY_BYTES
from rebootcoord.sim.etcd_server import EtcdServer
from tests.support.etcdraw import raw_client
from tests.support.fleetlock import InProcessServers, ask

pytestmark = pytest.mark.etcd


def long_id(i: int) -> str:
    """253 bytes in UTF-8 (a 5-digit number and 62 four-byte emoji): the longest id allowed."""
    text = f"{i:05d}" + "\U0001f600" * 62
    assert len(text.encode()) == 253
    return text


@pytest.fixture
def serve(etcd: EtcdServer, prefix: str) -> Iterator[object]:
    servers = InProcessServers(
        {
            "backend": "etcd",
            "etcd_endpoints": [etcd.endpoint],
            "etcd_key_prefix": prefix,
            "max_holders": 1,
        }
    )
    yield servers.make
    servers.close()


def ctl(etcd: EtcdServer, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rebootcoord.cli.rebootctl", "--etcd-endpoints", etcd.endpoint,
         "--etcd-key-prefix", prefix, *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def stored(etcd: EtcdServer, prefix: str) -> dict[str, int]:
    """Every key under the test's prefix and the bytes of its value."""
    return {m.key.decode(): len(v) for v, m in raw_client(etcd).get_prefix(prefix)}


def db_size(etcd: EtcdServer) -> int:
    return int(raw_client(etcd).status().db_size)


def test_ten_thousand_long_ids_fill_the_line_to_its_bound_and_no_further(
    serve: object, etcd: EtcdServer, prefix: str
) -> None:
    service = serve(fleetlock_max_waiters=100)  # type: ignore[operator]
    assert ask(service, "pre-reboot", long_id(99_999)) == (200, "ok")
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: ask(service, "pre-reboot", long_id(i)), range(10_000)))
    kinds = [kind for _, kind in answers]
    assert kinds.count("no_free_slot") == 100
    assert kinds.count("line_full") == 9_900
    assert {status for status, kind in answers if kind == "line_full"} == {429}
    waiters = {k: n for k, n in stored(etcd, prefix).items() if "/waiters/" in k}
    assert len(waiters) == 100
    assert sum(len(k) + n for k, n in waiters.items()) < 128 * 1024  # every read of the line: small
    status = ctl(etcd, prefix, "status")
    assert status.returncode == 0, status.stderr
    assert ask(service, "steady-state", long_id(99_999)) == (200, "ok")
    line = sorted(raw_client(etcd).get_prefix(f"{prefix}/groups/default/v1/rebootcoord/waiters/"),
                  key=lambda kv: kv[1].create_revision)  # fmt: skip
    first = line[0][1].key.decode().rsplit("/", 1)[1]
    assert ask(service, "pre-reboot", first) == (200, "ok")  # the first in line: its turn
    forced = ctl(etcd, prefix, "unlock", "--force", first)
    assert forced.returncode == 0, forced.stderr


def test_ten_thousand_groups_end_at_the_bound_and_the_others_go_on(
    serve: object, etcd: EtcdServer, prefix: str
) -> None:
    service = serve(fleetlock_any_group=True, fleetlock_max_groups=16)  # type: ignore[operator]
    assert ask(service, "pre-reboot", "node-a") == (200, "ok")  # "default" exists
    assert ask(service, "steady-state", "node-a") == (200, "ok")
    stop = threading.Event()
    steady: list[tuple[int, str]] = []

    def cycles() -> None:  # a client of the configured group, all along
        while not stop.is_set():
            steady.append(ask(service, "pre-reboot", "node-a"))
            steady.append(ask(service, "steady-state", "node-a"))

    worker = threading.Thread(target=cycles)
    worker.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: ask(service, "pre-reboot", "x", f"g{i}"), range(10_000)))
    finally:
        stop.set()
        worker.join(60)
    assert answers.count((200, "ok")) == 15  # 16 groups: "default" and 15 new ones
    assert answers.count((400, "unknown_group")) == 10_000 - 15
    assert steady and set(steady) == {(200, "ok")}, set(steady)  # no cancelled call, no reset
    groups = {k[len(prefix) :].split("/")[2] for k in stored(etcd, prefix)}
    assert len(groups) == 16
    assert len(service._groups) <= 1 + 16
    assert ctl(etcd, prefix, "status").returncode == 0


def test_a_thousand_cycles_with_long_ids_keep_every_document_and_etcd_small(
    serve: object, etcd: EtcdServer, prefix: str
) -> None:
    service = serve()  # type: ignore[operator]
    before = db_size(etcd)
    for i in range(1000):
        assert ask(service, "pre-reboot", long_id(i)) == (200, "ok")
        assert ask(service, "steady-state", long_id(i)) == (200, "ok")
    keys = stored(etcd, prefix)
    history = {k: n for k, n in keys.items() if "/rebootcoord/history/" in k}
    assert 0 < len(history) <= 100 and sum(history.values()) <= HISTORY_BYTES
    assert max(keys.values()) < 4096, max(keys.items(), key=lambda kv: kv[1])
    assert not any(k.endswith("/members") for k in keys)  # ids nobody vouches for are no members
    grown = db_size(etcd) - before
    assert grown < 1000 * 64 * 1024, f"etcd's database grew {grown} bytes in 1,000 cycles"
    # The group still works as it did: a holder releases, an operator unlocks.
    assert ask(service, "pre-reboot", "node-a") == (200, "ok")
    assert ask(service, "steady-state", "node-a") == (200, "ok")
    assert ask(service, "pre-reboot", "node-b") == (200, "ok")
    forced = ctl(etcd, prefix, "unlock", "--force", "node-b")
    assert forced.returncode == 0, forced.stderr
    history_out = ctl(etcd, prefix, "history", "--limit", "3")
    assert history_out.returncode == 0 and "node-b" in history_out.stdout
