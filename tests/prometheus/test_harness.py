"""The Prometheus harness itself: it never outlives its test run (a failing test, a parent killed with
SIGKILL), it refuses a rule file Prometheus refuses, and a missing binary fails loudly with what to do."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.cluster import REPO_ROOT, TestbinMissing, pid_alive, wait_for
from tests.support.prometheus import PrometheusError, PrometheusServer, locate_prometheus


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return {**env, "PYTHONPATH": str(REPO_ROOT)}


def _assert_gone(pid: int) -> None:
    wait_for(lambda: not pid_alive(pid), timeout=30, what=f"prometheus (pid {pid}) to exit")


def test_missing_binary_fails_with_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(TestbinMissing, match=r"prometheus is missing; run `make testbin`"):
        locate_prometheus(tmp_path)


def test_fixture_fails_never_skips_without_the_binary(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(
        textwrap.dedent(
            f"""
            from pathlib import Path
            import tests.support.prometheus
            tests.support.prometheus.DEFAULT_TESTBIN = Path({str(tmp_path / "testbin")!r})
            """
        )
    )
    (tmp_path / "test_inner.py").write_text("def test_needs_it(prometheus):\n    pass\n")
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-p", "tests.support.prometheus_plugin", "-rA"),
            *("-p", "no:cacheprovider", "-q", "--rootdir", str(tmp_path), str(tmp_path / "test_inner.py")),
        ],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 error" in proc.stdout and "skipped" not in proc.stdout, proc.stdout
    assert "run `make testbin`" in proc.stdout, proc.stdout


def test_a_rule_file_prometheus_refuses_is_an_error(prometheus: PrometheusServer) -> None:
    with pytest.raises(PrometheusError, match="reload failed"):
        prometheus.set_rules([{"alert": "Broken", "expr": "vector(1) +"}])
    assert prometheus.alive()  # it keeps the rules it had


def test_failing_test_still_stops_prometheus(tmp_path: Path, prometheus_binary: Path) -> None:
    pid_file = tmp_path / "pid"
    (tmp_path / "test_inner.py").write_text(
        textwrap.dedent(
            f"""
            def test_fails(prometheus):
                open({str(pid_file)!r}, "w").write(str(prometheus.pid))
                assert False, "deliberate failure"
            """
        )
    )
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-p", "tests.support.prometheus_plugin"),
            *("-p", "no:cacheprovider", "-q", "--rootdir", str(tmp_path), str(tmp_path / "test_inner.py")),
        ],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "deliberate failure" in proc.stdout
    _assert_gone(int(pid_file.read_text()))


def test_prometheus_dies_with_a_killed_parent(tmp_path: Path, prometheus_binary: Path) -> None:
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from tests.support.prometheus import PrometheusServer
        server = PrometheusServer(Path({str(tmp_path / "prometheus")!r})).start()
        print(server.pid, flush=True)
        time.sleep(600)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], env=_env(), stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        assert pid_alive(pid)
    finally:
        parent.send_signal(signal.SIGKILL)  # no cleanup code runs: only PDEATHSIG
        parent.wait()
    _assert_gone(pid)
