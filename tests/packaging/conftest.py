"""Fixtures of the packaging tests: testbin's helm, and rendering the chart with given values."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cluster import REPO_ROOT, Testbin, TestbinMissing
from tests.support.rbac import CHART, KUBE_VERSION, render_chart

Render = Callable[..., list[dict[str, Any]]]


@pytest.fixture(scope="session")
def helm() -> Path:
    """testbin's helm. Pins are not checked: rendering needs helm alone, and the kube tests of the
    same run check them (kube_testbin)."""
    try:
        return Testbin.locate(check_pins=False).path("helm")
    except TestbinMissing as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def render(helm: Path) -> Render:
    """render(values=None, namespace="rebootcoord") -> the chart's objects (helm template)."""

    def run(
        values: Mapping[str, Any] | None = None, *, namespace: str = "rebootcoord"
    ) -> list[dict[str, Any]]:
        return render_chart(values, namespace=namespace, helm=helm)

    return run


@pytest.fixture(scope="session")
def render_error(helm: Path) -> Callable[[Mapping[str, Any]], str]:
    """render_error(values) -> helm's error output; fails the test if rendering succeeds."""

    def run(values: Mapping[str, Any]) -> str:
        proc = subprocess.run(
            [
                str(helm),
                "template",
                "rebootcoord",
                str(CHART),
                "--kube-version",
                KUBE_VERSION,
                "--values",
                "-",
            ],
            input=yaml.safe_dump(dict(values)),
            capture_output=True,
            text=True,
            check=False,
            cwd=REPO_ROOT,
        )
        assert proc.returncode != 0, f"helm template accepted {values}"
        return proc.stderr

    return run


def only(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def kinds(objects: list[dict[str, Any]]) -> list[str]:
    return [o["kind"] for o in objects]


def pytest_configure(config: pytest.Config) -> None:
    # Until pyproject.toml declares them (each takes minutes the first time).
    config.addinivalue_line("markers", "image: builds the container image with podman (make image)")
    config.addinivalue_line("markers", "checkov: runs checkov from its own venv (make checkov)")
