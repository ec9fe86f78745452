"""pytest plugin: a real Prometheus (``testbin/prometheus``, built by ``make testbin``) as fixtures.

Register it once, from the root conftest: ``pytest_plugins = [..., "tests.support.prometheus_plugin"]``.

Fixtures:
    prometheus_binary (session)  the path of testbin/prometheus; fails, saying to run ``make testbin``,
                                 when it is missing or stale (never skips)
    prometheus        (function) a :class:`~tests.support.prometheus.PrometheusServer` of the test's
                                 own, started in its tmp dir with no rules (rules evaluated every
                                 second), stopped at teardown; the test sets its rules with
                                 ``prometheus.set_alerts("A", "B")`` or ``prometheus.set_rules([...])``

One server per test: it starts in about 0.5 s and stops in 0.02 s, less than clearing the rules of a
shared one would take (the alerts of dropped rules end one or two evaluation intervals later), and a
test may freeze (SIGSTOP) or stop its server.

Every test that uses either fixture carries the marker ``prometheus`` (added at collection), so
that ``make unit`` (``-m 'not prometheus and ...'``) runs without testbin/.

Owns no process itself: :mod:`tests.support.prometheus` starts and stops it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import TestbinMissing
from tests.support.prometheus import PrometheusError, PrometheusServer, locate_prometheus


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if {"prometheus", "prometheus_binary"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.prometheus)


@pytest.fixture(scope="session")
def prometheus_binary() -> Path:
    try:
        return locate_prometheus()
    except TestbinMissing as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def prometheus(prometheus_binary: Path, tmp_path: Path) -> Iterator[PrometheusServer]:
    server = PrometheusServer(tmp_path / "prometheus", binary=prometheus_binary)
    try:
        server.start()
    except PrometheusError as exc:  # start() already stopped it
        pytest.fail(f"Prometheus did not start: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()
