"""The project's own packaging builds quietly: every `make install` (an editable install) and
`pip install` builds with setuptools' PEP 517 hooks, as done here, and any deprecation of
pyproject.toml's form (such as ``project.license`` as a TOML table), or an editable install
through a "meta path finder", prints a 10- to 14-line warning each time, even with --quiet."""

from __future__ import annotations

import email
import subprocess
import sys
from pathlib import Path

from tests.support.cluster import REPO_ROOT

BUILD_METADATA = """
import sys
from setuptools import build_meta
print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))
"""


def test_the_metadata_builds_without_a_warning_and_names_the_license(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-W", "always", "-c", BUILD_METADATA, str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert "Warning" not in output and "deprecat" not in output.lower(), output
    dist_info = tmp_path / done.stdout.strip().splitlines()[-1]
    metadata = email.message_from_string((dist_info / "METADATA").read_text(encoding="utf-8"))
    assert metadata["License-Expression"] == "Apache-2.0"
    assert "LICENSE" in metadata.get_all("License-File", [])
    text = (dist_info / "licenses" / "LICENSE").read_text(encoding="utf-8")
    assert text.lstrip().startswith("Apache License")


BUILD_EDITABLE = """
import sys
from setuptools import build_meta
print(build_meta.build_editable(sys.argv[1]))
"""


def test_the_editable_install_of_make_install_builds_without_a_warning(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-W", "always", "-c", BUILD_EDITABLE, str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    warned = [line for line in done.stderr.splitlines() if "Warning" in line or "!!" in line]
    assert not warned, done.stderr
    assert (tmp_path / done.stdout.strip().splitlines()[-1]).is_file()
