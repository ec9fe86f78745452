"""rebootctl on the Lease backend works exactly as on etcd, and finds the cluster like kubectl."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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
