"""checkov finds nothing in the chart, the manifests and the Dockerfile; every skip says why.

`make checkov` runs it from its own virtualenv (.venv-checkov, made on first use: about a minute)
without any network access of its own (--skip-download, no update check).
"""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from tests.support.cluster import REPO_ROOT

pytestmark = [pytest.mark.checkov, pytest.mark.timeout(900)]

SUMMARY = re.compile(r"Passed checks: (\d+), Failed checks: (\d+), Skipped checks: (\d+)")


def test_checkov_passes_on_chart_manifests_and_dockerfile() -> None:
    proc = subprocess.run(
        ["make", "--no-print-directory", "checkov"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    summaries = SUMMARY.findall(output)
    assert len(summaries) == 3, output  # helm, kubernetes, dockerfile
    for passed, failed, _skipped in summaries:
        assert int(passed) > 0 and int(failed) == 0, output


def test_every_inline_skip_gives_its_reason() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    skips = re.findall(r"#\s*checkov:skip=(CKV\w+):(.*)", dockerfile)
    assert skips, "the Dockerfile's skips are inline"
    assert all(len(reason.strip()) > 20 for _, reason in skips), skips
    # DaemonSet (command method: 12, signal: 7) or the FleetLock server's Deployment (3), and the
    # events Role and RoleBinding of each (1 each).
    expected = {"rebootcoord.yaml": 14, "rebootcoord-signal.yaml": 9, "rebootcoord-fleetlock.yaml": 5}
    for name, count in expected.items():
        docs = [d for d in yaml.safe_load_all((REPO_ROOT / "deploy" / name).read_text()) if d]
        skips = [
            value
            for doc in docs
            for key, value in (doc["metadata"].get("annotations") or {}).items()
            if key.startswith("checkov.io/skip")
        ]
        assert len(skips) == count, name
        for value in skips:
            check, _, reason = value.partition("=")
            assert re.fullmatch(r"CKV2?_K8S_\d+", check) and len(reason) > 20, value
