"""Shared fixtures: a real etcd on a loopback port with a temp data dir (session-scoped), and a
fresh key prefix per test so tests never see each other's groups."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator

import pytest

from rebootcoord.core.types import Group
from rebootcoord.daemon.group import GroupClient, etcd_group
from rebootcoord.sim.etcd_server import EtcdServer

# The real Kubernetes control plane (kube-apiserver, controller-manager, scheduler, kwok, etcd
# built into testbin/ by `make testbin`): fixtures kube_cluster, kube, kube_nodes, ...
pytest_plugins = [
    "tests.support.kubecluster",
    "tests.support.prometheus_plugin",
    "tests.support.image",
]

_counter = itertools.count()


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    server = EtcdServer(data_dir=str(tmp_path_factory.mktemp("etcd"))).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    name = request.node.name.replace("[", "-").replace("]", "").replace("/", "-")
    return f"test-{os.getpid()}-{next(_counter)}-{name[:40]}"


@pytest.fixture
def make_semaphore(etcd: EtcdServer, prefix: str) -> Iterator[Callable[..., GroupClient]]:
    made: list[GroupClient] = []

    def make(group: str = "default", *, endpoint: str | None = None, **options: object) -> GroupClient:
        sem = etcd_group((endpoint or etcd.endpoint,), prefix=prefix, group=Group(group), waiter_ttl=3,
                         timeout=5.0, **options)  # fmt: skip
        made.append(sem)
        return sem

    yield make
    for sem in made:
        sem.close()


def wait_for(
    condition: Callable[[], object], timeout: float = 30.0, interval: float = 0.02, what: str = ""
) -> object:
    """Poll a condition until it is truthy; fail with ``what`` after ``timeout``. Tests wait on
    conditions, never on fixed sleeps."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)
