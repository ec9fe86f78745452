"""No component outlives its cluster: after a failing test, after its parent is SIGKILLed, after
``make cluster-down``; and a missing testbin/ fails loudly with what to do."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.cluster import (
    REPO_ROOT,
    Testbin,
    TestbinMissing,
    pid_alive,
    wait_for,
)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.pop("TESTS_KUBE_CLUSTER", None)
    return {**env, **extra}


def _assert_all_gone(pids: dict[str, int]) -> None:
    assert len(pids) == 5, pids
    wait_for(
        lambda: not [p for p in pids.values() if pid_alive(p)],
        timeout=30,
        what=f"components {pids} to exit",
    )


def test_missing_testbin_fails_with_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(TestbinMissing, match="make testbin"):
        Testbin.locate(tmp_path)


def test_missing_go_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no `go` on it
    with pytest.raises(TestbinMissing, match=r"install Go 1\.26"):
        Testbin.locate(tmp_path)
    script = REPO_ROOT / "hack" / "testbin" / "build.sh"
    proc = subprocess.run(
        ["/bin/bash", str(script), str(tmp_path / "out")],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "needs Go 1.26 or newer" in proc.stderr


@pytest.mark.kube
def test_failing_test_still_tears_the_cluster_down(tmp_path: Path, kube_testbin: Testbin) -> None:
    pids_file = tmp_path / "pids.json"
    (tmp_path / "test_inner.py").write_text(
        textwrap.dedent(
            f"""
            import json

            def test_fails(kube_cluster):
                with open({str(pids_file)!r}, "w") as f:
                    json.dump(kube_cluster.processes(), f)
                assert False, "deliberate failure"
            """
        )
    )
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-p", "tests.support.kubecluster"),
            *("-p", "no:cacheprovider", "-q", "--rootdir", str(tmp_path), str(tmp_path / "test_inner.py")),
        ],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "deliberate failure" in proc.stdout
    _assert_all_gone(json.loads(pids_file.read_text()))


@pytest.mark.kube
def test_components_die_with_a_killed_parent(tmp_path: Path, kube_testbin: Testbin) -> None:
    script = textwrap.dedent(
        f"""
        import json, sys, time
        from pathlib import Path
        from tests.support.cluster import KubeCluster
        cluster = KubeCluster(Path({str(tmp_path / "cluster")!r})).start()
        print(json.dumps(cluster.processes()), flush=True)
        time.sleep(600)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script],
        env=_env(),
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert parent.stdout is not None
        pids = json.loads(parent.stdout.readline())
        assert all(pid_alive(p) for p in pids.values())
    finally:
        parent.send_signal(signal.SIGKILL)  # no cleanup code runs: only PDEATHSIG
        parent.wait()
    _assert_all_gone(pids)


@pytest.mark.kube
def test_cluster_cli_up_and_down(tmp_path: Path, kube_testbin: Testbin) -> None:
    workdir = tmp_path / "cluster"
    cli = [sys.executable, "-m", "tests.support.cluster"]
    up = subprocess.run(
        [*cli, "up", "--nodes", "2", "--dir", str(workdir)],
        cwd=REPO_ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        state = json.loads((workdir / "state.json").read_text())
        kubectl = [str(kube_testbin.path("kubectl")), f"--kubeconfig={workdir / 'kubeconfig'}"]
        nodes = subprocess.run(
            [*kubectl, "get", "nodes", "-o", "name"], capture_output=True, text=True, check=True
        )
        assert nodes.stdout.split() == ["node/node-0", "node/node-1"]
    finally:
        down = subprocess.run(
            [*cli, "down", "--dir", str(workdir)],
            cwd=REPO_ROOT,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert down.returncode == 0, down.stdout + down.stderr
    assert "no component left running" in down.stdout
    _assert_all_gone({k: int(v) for k, v in state["pids"].items()})
