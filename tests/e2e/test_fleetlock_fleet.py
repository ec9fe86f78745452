"""Agents and FleetLock clients in one budget: real agent processes (watch-driven) and polling
FleetLock clients through the server, on one etcd group. The order of grants is read back from
the semaphore key's history in etcd, independent of the server and the agents."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from rebootcoord.sim.etcd_server import EtcdServer
from rebootcoord.sim.fleet import Fleet
from tests.conftest import wait_for
from tests.support.checks import etcd_report
from tests.support.etcdraw import slot_history
from tests.support.fleetlock import FleetLockClient, fleetlock_servers

pytestmark = pytest.mark.e2e


def grant_order(history: list[dict[str, object]]) -> list[str]:
    """Each holder in the order it first appears in the key's history."""
    order: list[str] = []
    held: set[str] = set()
    for value in history:
        now = set(value["holders"])  # type: ignore[call-overload]
        order += sorted(now - held)
        held = now
    return order


def test_polling_clients_and_agents_are_granted_in_request_order(
    tmp_path: Path, etcd: EtcdServer, prefix: str
) -> None:
    config = {
        "backend": "etcd",
        "etcd_endpoints": [etcd.endpoint],
        "etcd_key_prefix": prefix,
        "max_holders": 1,
        "fleetlock_waiter_ttl": "60s",  # pollers ask every 2 s here; Zincati every ~5 min
    }
    fleet = Fleet(
        str(tmp_path / "fleet"), nodes=2, endpoint=etcd.endpoint, max_holders=1, reboot_seconds=0.5,
        agent_config={"etcd_key_prefix": prefix}, arm=False, node_names=["agent-1", "agent-2"],
    )  # fmt: skip
    with fleetlock_servers(tmp_path / "server", config, replicas=2) as servers, fleet:
        clients = [FleetLockClient(s.base) for s in servers]
        waiters = lambda: [w.id for w in fleet.semaphore.read().waiters]  # noqa: E731
        assert clients[0].pre_reboot("zincati-0").status == 200  # holds the only slot

        assert clients[0].pre_reboot("zincati-1").kind == "no_free_slot"
        fleet.arm_sentinel("agent-1", "update-1")
        wait_for(lambda: waiters() == ["zincati-1", "agent-1"], timeout=60, what="agent-1 in line")
        assert clients[1].pre_reboot("zincati-2").kind == "no_free_slot"
        fleet.arm_sentinel("agent-2", "update-1")
        wait_for(lambda: waiters() == ["zincati-1", "agent-1", "zincati-2", "agent-2"], timeout=60,
                 what="agent-2 in line")  # fmt: skip

        errors: list[str] = []

        def poll(name: str, replica: int) -> None:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                answer = clients[replica].pre_reboot(name)
                if answer.status == 200:
                    time.sleep(1.0)  # "reboots"
                    if clients[1 - replica].steady_state(name).status != 200:
                        errors.append(f"{name}: steady-state refused")
                    return
                if answer.kind != "no_free_slot":
                    errors.append(f"{name}: {answer.status} {answer.body!r}")
                    return
                time.sleep(2.0)  # a poller: much slower than an agent's watch
            errors.append(f"{name}: never granted")

        pollers = [
            threading.Thread(target=poll, args=(n, i % 2)) for i, n in enumerate(["zincati-1", "zincati-2"])
        ]
        for t in pollers:
            t.start()
        assert clients[1].steady_state("zincati-0").status == 200
        for t in pollers:
            t.join(300)
        wait_for(fleet.done, timeout=240, what="both agents through their cycle")
        assert errors == []
        report = etcd_report(fleet, etcd.endpoint, prefix)
    history = slot_history(etcd, f"{prefix}/groups/default/v1/semaphore")
    assert all(len(v["holders"]) <= 1 for v in history)
    assert grant_order(history) == ["zincati-0", "zincati-1", "agent-1", "zincati-2", "agent-2"]
    assert report.violations == [], report.violations


def test_agents_on_the_fleetlock_backend_share_the_budget_with_agents_on_etcd(
    tmp_path: Path, etcd: EtcdServer, prefix: str
) -> None:
    """Four agents whose semaphore is the FleetLock server (two replicas), two on etcd directly,
    one budget of 2: every reboot happened while its node held a slot in etcd (the fleet checks
    at each reboot), no revision of the key had more than 2 holders, each node rebooted once."""
    server_config = {
        "backend": "etcd", "etcd_endpoints": [etcd.endpoint], "etcd_key_prefix": prefix,
        "max_holders": 2, "fleetlock_waiter_ttl": "30s",
    }  # fmt: skip
    with fleetlock_servers(tmp_path / "server", server_config, replicas=2) as servers:
        names = [f"fl-{i}" for i in range(4)] + ["etcd-0", "etcd-1"]
        via = {
            name: {
                "backend": "fleetlock",
                "fleetlock_url": servers[i % 2].base,
                "fleetlock_state_dir": "{node_dir}/state",
                "fleetlock_poll_interval": "1s",
            }
            for i, name in enumerate(names[:4])
        }
        fleet = Fleet(
            str(tmp_path / "fleet"), nodes=6, endpoint=etcd.endpoint, max_holders=2, reboot_seconds=0.5,
            agent_config={"etcd_key_prefix": prefix}, node_names=names, node_config=via,
        )  # fmt: skip
        with fleet:
            wait_for(fleet.done, timeout=300, interval=0.5, what="every node rebooted and released")
            report = etcd_report(fleet, etcd.endpoint, prefix)
        assert not fleet.violations, fleet.violations
        assert report.violations == [], report.violations
        assert all(n.reboots == 1 for n in fleet.nodes.values())
    history = slot_history(etcd, f"{prefix}/groups/default/v1/semaphore")
    assert max(len(v["holders"]) for v in history) == 2
    assert set(grant_order(history)) == set(names)
    assert history[-1]["holders"] == []
