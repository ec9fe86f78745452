"""Topology budgets: at most ``max_holders_per_zone`` holders in one zone, checked in the same
compare-and-swap as the slot. Real agent processes on etcd (zones configured, as on bare hosts)
and on the Lease (kwok nodes in three zones, the zone read from the Node's label); every stored
revision of the group is replayed from etcd and checked, independent of the agents."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from rebootcoord.sim.checker import Version
from rebootcoord.sim.etcd_server import EtcdServer
from rebootcoord.sim.fleet import Fleet
from rebootcoord.sim.history import etcd_group_history, kube_group_history
from tests.conftest import wait_for
from tests.support.kubecluster import KubeTestEnv

pytestmark = pytest.mark.e2e


def zone_peaks(history: list[Version], zone_of: dict[str, str]) -> tuple[int, int]:
    """(most holders at once, most holders of one zone at once) over every revision."""
    most = most_in_zone = 0
    for version in history:
        most = max(most, len(version.holders))
        per_zone = Counter(zone_of[h] for h in version.holders if h in zone_of)
        most_in_zone = max([most_in_zone, *per_zone.values()])
    return most, most_in_zone


def test_one_holder_per_zone_on_etcd(tmp_path: Path, etcd: EtcdServer, prefix: str) -> None:
    names = [f"node-{i}" for i in range(6)]
    zone_of = {name: "abc"[i % 3] for i, name in enumerate(names)}
    fleet = Fleet(
        str(tmp_path / "fleet"), nodes=6, endpoint=etcd.endpoint, max_holders=3, reboot_seconds=1.0,
        node_names=names, agent_config={"etcd_key_prefix": prefix, "max_holders_per_zone": 1},
        node_config={name: {"zone": zone} for name, zone in zone_of.items()},
    )  # fmt: skip
    with fleet:
        wait_for(fleet.done, timeout=300, interval=0.5, what="every node rebooted and released")
    assert not fleet.violations, fleet.violations
    history = etcd_group_history(etcd.endpoint, prefix=prefix, group="default", since=fleet.start_revision)
    most, most_in_zone = zone_peaks(history, zone_of)
    assert most_in_zone == 1  # never two of one zone
    assert most >= 2  # and the zones went in parallel


@pytest.mark.kube
def test_one_holder_per_zone_on_the_lease(kube: KubeTestEnv, kube_fleet: Callable[..., Fleet]) -> None:
    nodes = kube.create_nodes(6)  # zone-a, zone-b, zone-c, zone-a, ...
    zone_of = {n.name: n.zone for n in nodes}
    assert len(set(zone_of.values())) == 3
    fleet = kube_fleet(list(zone_of), max_holders=3, agent_config={"max_holders_per_zone": 1})
    with fleet:
        wait_for(fleet.done, timeout=400, interval=0.5, what="every node rebooted and released")
    assert not fleet.violations, fleet.violations
    history, _nodes = kube_group_history(
        kube.cluster.endpoints.etcd, namespace=kube.namespace, group="default", since=fleet.start_revision
    )
    most, most_in_zone = zone_peaks(history, zone_of)
    assert most_in_zone == 1
    assert most >= 2


def test_max_unavailable_percent_on_etcd(tmp_path: Path, etcd: EtcdServer, prefix: str) -> None:
    """Six agents in a group of six slots, max_unavailable_percent 34: two at a time (34 % of the
    six members the agents registered when they started), never three."""
    fleet = Fleet(
        str(tmp_path / "fleet"), nodes=6, endpoint=etcd.endpoint, max_holders=6, reboot_seconds=1.0,
        agent_config={"etcd_key_prefix": prefix, "max_unavailable_percent": 34},
    )  # fmt: skip
    with fleet:
        wait_for(fleet.done, timeout=300, interval=0.5, what="every node rebooted and released")
        members = fleet.semaphore.read(queue=False).ledger.members
    assert not fleet.violations, fleet.violations
    assert sorted(members) == sorted(fleet.nodes)
    history = etcd_group_history(etcd.endpoint, prefix=prefix, group="default", since=fleet.start_revision)
    most = max(len(v.holders) for v in history)
    assert most == 2
