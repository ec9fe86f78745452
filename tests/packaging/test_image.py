"""The container image builds here, as CI builds it: `make image` (podman, chroot isolation, a base
image debootstrapped from Debian packages, since no registry is reachable), with its smoke stage.

The build itself is the session fixture ``agent_image`` (tests/support/image.py), shared with the
real-node tests that install it. `podman run` does not work in this sandbox, so
the built image is checked from its mounted file system, and its entry point is run by chroot.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rebootcoord import __version__

pytestmark = [pytest.mark.image, pytest.mark.timeout(1800)]

MAX_SIZE = 300 * 1024 * 1024  # measured 238 MB (python3 base 133 MB + the venv 105 MB)


@pytest.fixture(scope="module")
def image(agent_image: str) -> str:
    return agent_image


def _inspect(image: str) -> dict[str, Any]:
    out = subprocess.run(["podman", "image", "inspect", image], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)[0]


@pytest.fixture(scope="module")
def rootfs(image: str) -> Iterator[Path]:
    mount = subprocess.run(["podman", "image", "mount", image], capture_output=True, text=True, check=True)
    try:
        yield Path(mount.stdout.strip())
    finally:
        subprocess.run(["podman", "image", "unmount", image], capture_output=True, check=False)


def test_the_smoke_stage_ran(rootfs: Path) -> None:
    """The final image holds the smoke stage's output: no image without a passing smoke test."""
    smoke = (rootfs / "usr/share/rebootcoord/smoke-test.txt").read_text()
    assert smoke == f"rebootcoord {__version__}\nsmoke: ok\n"


def test_runs_as_non_root_with_the_agent_as_entry_point(image: str) -> None:
    config = _inspect(image)["Config"]
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["rebootcoord"]
    assert config["Cmd"] == ["agent", "--config", "/etc/rebootcoord/config.yaml"]
    assert "PYTHONUNBUFFERED=1" in config["Env"]


def test_entry_point_runs_in_the_image(rootfs: Path) -> None:
    """Run the image's own rebootcoord and rebootctl, as its user, in its file system."""
    chroot = shutil.which("chroot")
    assert chroot, "chroot (coreutils) is missing"
    env = {"PATH": "/opt/rebootcoord/bin:/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}
    for argv, expected in (
        (["rebootcoord", "--version"], f"rebootcoord {__version__}"),
        (["rebootctl", "--help"], "usage: rebootctl"),
    ):
        proc = subprocess.run(
            [chroot, "--userspec=65532:65532", str(rootfs), *argv],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert expected in proc.stdout


def test_small_and_without_build_tools(image: str, rootfs: Path) -> None:
    size = int(_inspect(image)["Size"])
    print(f"image size: {size / 1e6:.0f} MB")
    assert size < MAX_SIZE
    venv = rootfs / "opt/rebootcoord"
    site = next((venv / "lib").glob("python3*/site-packages"))
    assert (rootfs / "usr/bin/nsenter").exists(), "the nsenter reboot method needs util-linux's nsenter"
    assert (venv / "bin/rebootcoord").exists() and (venv / "bin/rebootctl").exists()
    assert not (venv / "bin/pip").exists(), "no pip in the runtime image"
    assert not (site / "kubernetes/aio").exists(), "the asyncio client is not used"
    assert not (rootfs / "wheels").exists() and not (rootfs / "src").exists(), "no build files"
