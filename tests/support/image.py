"""pytest plugin: the container image, built once per session as users build it (`make image`).

Fixture:
    agent_image (session)  the tag of the image `make image` built (podman, chroot isolation, a
                           base debootstrapped from Debian packages: no registry is reachable)

The first build takes a few minutes (debootstrap, then the dependencies' wheels from PyPI); later
ones reuse the base image and podman's layer cache.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from tests.support.cluster import REPO_ROOT

#: What `make image` builds by default (hack/packaging.mk's IMAGE).
IMAGE = "localhost/rebootcoord:dev"


@pytest.fixture(scope="session")
def agent_image() -> str:
    if shutil.which("podman") is None or shutil.which("debootstrap") is None:
        message = (
            "the image build needs podman and debootstrap: "
            "run hack/ci-deps.sh (apt-get install podman debootstrap)"
        )
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)  # CI builds the image: never skip there
        pytest.skip(message)
    t0 = time.monotonic()
    proc = subprocess.run(
        ["make", "--no-print-directory", "image", f"IMAGE={IMAGE}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    print(f"make image: {time.monotonic() - t0:.1f}s")
    return IMAGE
