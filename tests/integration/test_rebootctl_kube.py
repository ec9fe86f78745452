"""rebootctl on the Lease backend works exactly as on etcd, and finds the cluster like kubectl."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.kubecluster import KubeTestEnv

pytestmark = pytest.mark.kube


def ctl(kube: KubeTestEnv, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("REBOOTCOORD_", "KUBECONFIG"))}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "rebootcoord.cli.rebootctl", "--backend", "kubernetes", *args],
        capture_output=True, text=True, timeout=120, env=full_env,
    )  # fmt: skip


def test_rebootctl_commands_on_the_lease(kube: KubeTestEnv) -> None:
    where = ["--kubeconfig", str(kube.cluster.kubeconfig), "-n", kube.namespace]
    assert ctl(kube, *where, "set-max", "2").returncode == 0
    locked = ctl(kube, *where, "lock", "maint-1", "--reason", "disk swap")
    assert locked.returncode == 0, locked.stderr
    doc = json.loads(ctl(kube, *where, "-o", "json", "status").stdout)
    assert doc["max"] == 2 and doc["held"] == 1 and doc["holders"][0]["kind"] == "manual"
    lease = kube.cluster.kubectl("get", "lease", "-n", kube.namespace)
    assert "maint-1" in lease  # holderIdentity, as kubectl shows it
    refused = ctl(kube, *where, "unlock", "ghost")
    assert refused.returncode == 1 and "'ghost' holds no slot" in refused.stderr
    assert ctl(kube, *where, "set-max", "0").returncode == 1
    assert ctl(kube, *where, "pause", "--reason", "freeze").returncode == 0
    assert json.loads(ctl(kube, *where, "-o", "json", "status").stdout)["paused"]["reason"] == "freeze"
    assert ctl(kube, *where, "resume").returncode == 0
    assert ctl(kube, *where, "unlock", "maint-1").returncode == 0
    assert json.loads(ctl(kube, *where, "-o", "json", "status").stdout)["held"] == 0


def test_rebootctl_finds_the_cluster_like_kubectl(kube: KubeTestEnv) -> None:
    """$KUBECONFIG and --context, as kubectl: the kubeconfig's context names the cluster."""
    contexts = kube.cluster.kubectl("config", "get-contexts", "-o", "name").split()
    env = {"KUBECONFIG": str(kube.cluster.kubeconfig)}
    assert ctl(kube, "--context", contexts[0], "-n", kube.namespace, "set-max", "3", env=env).returncode == 0
    status = ctl(kube, "-n", kube.namespace, "status", env=env)
    assert status.returncode == 0 and "default  3" in status.stdout
    wrong = ctl(kube, "--context", "no-such-context", "-n", kube.namespace, "status", env=env)
    assert wrong.returncode == 2 and "kube_context" in wrong.stderr and "no-such-context" in wrong.stderr


def lease_names(kube: KubeTestEnv) -> list[str]:
    return kube.cluster.kubectl("get", "lease", "-n", kube.namespace, "-o", "name").split()


def test_rebootctl_refuses_a_group_without_a_lease_naming_the_groups_leases(kube: KubeTestEnv) -> None:
    where = ["--kubeconfig", str(kube.cluster.kubeconfig), "-n", kube.namespace]
    none_yet = ctl(kube, *where, "--group", "nosuch", "status")
    assert none_yet.returncode == 1 and "no group exists there" in none_yet.stderr, none_yet.stderr
    for group in ("green", "blue"):
        assert ctl(kube, *where, "--group", group, "set-max", "1").returncode == 0
    leases = lease_names(kube)
    for argv in (["status"], ["lock", "ops-1"], ["unlock", "ops-1"], ["pause"], ["resume"], ["history"]):
        done = ctl(kube, *where, *argv, "--group", "nosuch")
        assert done.returncode == 1 and len(done.stderr.splitlines()) == 1, (argv, done.stderr)
        assert done.stderr == (
            f"rebootctl: group nosuch does not exist (no Lease rebootcoord-nosuch in namespace "
            f"{kube.namespace}); groups there: blue, green (set-max creates a group)\n"
        ), argv
    assert lease_names(kube) == leases, "no Lease made"


def test_kubectl_rebootctl_is_a_kubectl_plugin_on_the_lease_backend(kube: KubeTestEnv) -> None:
    """`kubectl rebootctl ...` runs the kubectl-rebootctl entry point found on PATH, with the
    arguments after the plugin's name: kubectl's own spellings (-n, --context, --kubeconfig, before
    or after the command) find the cluster, and the backend is kubernetes without --backend."""
    bindir = Path(sys.executable).parent
    assert (bindir / "kubectl-rebootctl").exists(), "run `.venv/bin/pip install -e .` (pyproject's scripts)"
    kubectl = str(kube.cluster.testbin.path("kubectl"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REBOOTCOORD_", "KUBECONFIG"))}
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"

    def plugin(*args: str, **more: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([kubectl, "rebootctl", *args], capture_output=True, text=True, timeout=120,
                              env={**env, **more})  # fmt: skip

    listed = subprocess.run([kubectl, "plugin", "list"], capture_output=True, text=True, env=env, timeout=60)
    assert str(bindir / "kubectl-rebootctl") in listed.stdout, listed.stdout + listed.stderr
    version = plugin("--version")
    assert version.returncode == 0 and version.stdout.startswith("rebootctl "), version.stderr
    kubeconfig = str(kube.cluster.kubeconfig)
    created = plugin("--kubeconfig", kubeconfig, "-n", kube.namespace, "set-max", "2")
    assert created.returncode == 0, created.stderr
    assert "rebootcoord-default" in kube.cluster.kubectl("get", "lease", "-n", kube.namespace)
    table = plugin("status", "-n", kube.namespace, f"--kubeconfig={kubeconfig}")
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[1].split() == ["default", "2", "0", "0", "no"]
    context = kube.cluster.kubectl("config", "get-contexts", "-o", "name").split()[0]
    as_json = plugin(
        "--context", context, "status", "--namespace", kube.namespace, "-o", "json", KUBECONFIG=kubeconfig
    )
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["max"] == 2
    wrong = plugin("status", "--context", "no-such-context", "-n", kube.namespace, KUBECONFIG=kubeconfig)
    assert wrong.returncode == 2 and "no-such-context" in wrong.stderr and "Traceback" not in wrong.stderr
    help_text = " ".join(plugin("--help").stdout.split())
    assert help_text.startswith("usage: kubectl rebootctl") and "the backend is kubernetes" in help_text
    # The same program as plain rebootctl keeps etcd as its default backend.
    plain = subprocess.run(
        [str(bindir / "rebootctl"), "--kubeconfig", kubeconfig, "-n", kube.namespace,
         "--etcd-endpoints", "http://127.0.0.1:1", "--etcd-timeout", "0.3s", "status"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert plain.returncode == 3 and "etcd" in plain.stderr, plain.stderr
