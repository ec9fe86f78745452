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


def test_the_fleetlock_manifest_holds_the_server_alone() -> None:
    """deploy/rebootcoord-fleetlock.yaml: the FleetLock server's objects, to apply beside either
    agent manifest (or alone). Its Namespace is theirs, label for label, so that applying one file
    after another never changes it."""
    docs = [d for d in yaml.safe_load_all((DEPLOY / "rebootcoord-fleetlock.yaml").read_text()) if d]
    agents = [d for d in yaml.safe_load_all((DEPLOY / "rebootcoord.yaml").read_text()) if d]
    assert docs[0] == agents[0]
    components = {(d["metadata"].get("labels") or {}).get("app.kubernetes.io/component") for d in docs[1:]}
    assert components == {"fleetlock-server"}
    kinds = {d["kind"] for d in docs}
    assert "DaemonSet" not in kinds
    assert {"ServiceAccount", "Role", "ClusterRole", "Deployment", "ConfigMap", "Service"} <= kinds
    names = {(d["kind"], d["metadata"]["name"]) for d in docs} & {
        (d["kind"], d["metadata"]["name"]) for d in agents
    }
    assert names == {("Namespace", "rebootcoord")}, "no object of the agents' manifest is replaced"
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["securityContext"]["privileged"] is False
    assert container["args"][0] == "fleetlock-server"
