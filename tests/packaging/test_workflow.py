"""The kind workflow cannot run here; what it asks of the chart and of checkov is checked here."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cluster import REPO_ROOT
from tests.support.rbac import CHART, KUBE_VERSION

WORKFLOW = REPO_ROOT / ".github" / "workflows" / "e2e-kind.yaml"


def _workflow() -> dict[str, Any]:
    return yaml.safe_load(WORKFLOW.read_text())


def _step(job: str, prefix: str) -> dict[str, Any]:
    return next(s for s in _workflow()["jobs"][job]["steps"] if s.get("name", "").startswith(prefix))


def test_kind_cluster_has_the_workers_the_workflow_counts() -> None:
    job = _workflow()["jobs"]["rolling-reboot"]
    config = yaml.safe_load((REPO_ROOT / ".github" / "kind-config.yaml").read_text())
    workers = [n for n in config["nodes"] if n["role"] == "worker"]
    assert len(workers) == job["env"]["WORKERS"] > job["env"]["MAX_HOLDERS"]
    assert job["strategy"]["matrix"]["method"] == ["command", "signal"]


#: The steps of the real-node e2e (tests/realnode/test_user_install.py), which the kind workflow
#: repeats in this order.
E2E_STEPS = (
    "Build the image",
    "Load the image into the nodes",
    "Install the chart",
    "The agents are Ready, with no restart",
    "A workload behind a PodDisruptionBudget",
    "Ask the node for a reboot",
    "The cycle",
    "What users see",
)


def test_the_workflow_mirrors_the_real_node_e2e() -> None:
    names = [s.get("name", "") for s in _workflow()["jobs"]["rolling-reboot"]["steps"]]
    positions = [names.index(step) for step in E2E_STEPS]
    assert positions == sorted(positions), names
    steps = _workflow()["jobs"]["rolling-reboot"]["steps"]
    script = "\n".join(s.get("run", "") for s in steps)
    # The same values, workload and image as the real-node test; the README's install command.
    assert (
        "--values hack/e2e/values.yaml" in script
        and "kubectl apply -n default -f hack/e2e/workload.yaml" in script
    )
    from tests.realnode.conftest import E2E_VALUES, E2E_WORKLOAD
    from tests.support.image import IMAGE

    assert E2E_VALUES.name == "values.yaml" and E2E_WORKLOAD.name == "workload.yaml"
    assert _workflow()["jobs"]["rolling-reboot"]["env"]["IMAGE"] == IMAGE
    readme = (REPO_ROOT / "README.md").read_text()
    install = _helm_install_argv("command")
    assert " ".join(install[:7]) in readme, install[:7]


def _helm_install_argv(method: str) -> list[str]:
    script = _step("rolling-reboot", "Install the chart")["run"].replace("${{ matrix.method }}", method)
    install = re.search(r"helm install .*?(?<!\\)\n", script, re.S)
    assert install, script
    return shlex.split(install.group(0).replace("\\\n", " ").replace("$MAX_HOLDERS", "1"))


@pytest.mark.kube  # helm from testbin/
@pytest.mark.parametrize("method", ["command", "signal"])
def test_the_workflows_helm_install_renders(helm: Path, method: str) -> None:
    argv = _helm_install_argv(method)
    assert argv[:7] == [
        "helm",
        "install",
        "rebootcoord",
        "charts/rebootcoord",
        "-n",
        "rebootcoord",
        "--create-namespace",
    ]
    args = argv[7:]
    proc = subprocess.run(
        [str(helm), "template", "rebootcoord", str(CHART), "--kube-version", KUBE_VERSION, *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    config = yaml.safe_load(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["config.yaml"])
    assert config["reboot_method"] == method
    assert config["group"] == "e2e"
    assert config["boot_id_file"] == "/host/run/rebootcoord-boot-id"  # under the mounted /run
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    assert ds["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] == "Never"


def test_the_workflows_checkov_runs_are_the_makefiles() -> None:
    makefile = (REPO_ROOT / "hack" / "packaging.mk").read_text()
    script = _step("checks", "checkov")["run"]
    for line in (ln.strip() for ln in script.splitlines() if ln.strip().startswith("checkov ")):
        flags = line.removeprefix("checkov --skip-download --compact --quiet ")
        assert f"$(CHECKOV) {flags}" in makefile, line
    version = re.search(r"CHECKOV_VERSION \?= (\S+)", makefile)
    assert version and f"checkov=={version.group(1)}" in script
