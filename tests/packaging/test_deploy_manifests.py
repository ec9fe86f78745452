"""deploy/ holds the chart rendered as plain manifests; this fails when they drift apart."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.cluster import REPO_ROOT

pytestmark = pytest.mark.kube  # helm from testbin/

DEPLOY = REPO_ROOT / "deploy"


def test_manifests_are_rendered_from_the_chart(helm: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(DEPLOY / "render.sh"), str(tmp_path)],
        env={**os.environ, "HELM": str(helm)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    fresh = {p.name: p.read_text() for p in tmp_path.glob("*.yaml")}
    committed = {p.name: p.read_text() for p in DEPLOY.glob("*.yaml")}
    assert sorted(fresh) == sorted(committed), "run `make deploy-manifests`"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"deploy/{', deploy/'.join(stale)} differ from the chart: run `make deploy-manifests`"


@pytest.mark.parametrize(
    ("name", "privileged"), [("rebootcoord.yaml", True), ("rebootcoord-signal.yaml", False)]
)
def test_each_manifest_is_complete(name: str, privileged: bool) -> None:
    docs = [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]
    assert docs[0]["kind"] == "Namespace"
    assert docs[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    kinds = {d["kind"] for d in docs}
    assert {"ServiceAccount", "Role", "ClusterRole", "DaemonSet", "ConfigMap", "Service"} <= kinds
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    assert ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"] is privileged
