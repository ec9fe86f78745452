"""The fault runner itself (tests/support/faults.py, benchmarks/faults.py): a few seeded runs pass
with the agent as it is, and the same runs catch a deliberately broken one. The campaigns of
hundreds of runs are benchmarks (docs/faults.md), not tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.faults import EtcdEnvironment, make_plan, mutant_tree, run_once, run_seed

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdEnvironment]:
    environment = EtcdEnvironment(tmp_path_factory.mktemp("faults"))
    try:
        yield environment
    finally:
        environment.close()


def seeds_with(kind: str, count: int) -> list[int]:
    """The first run seeds of campaign 1 whose plan holds a fault of ``kind``."""
    found = []
    for i in range(500):
        seed = run_seed(1, i)
        names = [f"node-{n:02d}" for n in range(1, 6)]
        if any(f.kind == kind for f in make_plan(seed, backend="etcd", nodes=names, max_holders=2)):
            found.append(seed)
        if len(found) == count:
            return found
    raise AssertionError(f"no plan with {kind}")


def test_seeded_runs_hold_every_invariant(env: EtcdEnvironment, tmp_path: Path) -> None:
    for seed in (run_seed(1, 0), *seeds_with("kill_etcd", 1), *seeds_with("stop_agent", 1)):
        result = run_once(env, seed, nodes=5, max_holders=2, workdir=tmp_path, log=lambda _: None)
        assert result.ok, result.line()
        assert result.fired, result.line()


def test_a_broken_agent_makes_the_runner_fail(env: EtcdEnvironment, tmp_path: Path) -> None:
    """Agents that skip the post-reboot gate: a node whose update a reboot did not apply is
    released (and rebooted again) -- the checker names it."""
    (seed,) = seeds_with("broken_update", 1)
    mutant = mutant_tree("skip-health-gate", tmp_path)
    result = run_once(env, seed, nodes=5, max_holders=2, workdir=tmp_path, mutant=mutant, log=lambda _: None)
    assert not result.ok
    assert "release" in result.report.by_invariant(), result.line()
