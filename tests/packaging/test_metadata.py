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

BUILD = """
import sys
from setuptools import build_meta
print(getattr(build_meta, sys.argv[1])(sys.argv[2]))
"""


def build(hook: str, out: Path) -> tuple[Path, str]:
    """Run setuptools' PEP 517 ``hook`` as pip does, every warning shown: what it built, and
    everything it printed."""
    done = subprocess.run(
        [sys.executable, "-W", "always", "-c", BUILD, hook, str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return out / done.stdout.strip().splitlines()[-1], done.stdout + done.stderr


def test_the_metadata_builds_without_a_warning_and_names_the_license(tmp_path: Path) -> None:
    dist_info, output = build("prepare_metadata_for_build_wheel", tmp_path)
    assert "Warning" not in output and "deprecat" not in output.lower(), output
    metadata = email.message_from_string((dist_info / "METADATA").read_text(encoding="utf-8"))
    assert metadata["License-Expression"] == "Apache-2.0"
    assert "LICENSE" in metadata.get_all("License-File", [])
    text = (dist_info / "licenses" / "LICENSE").read_text(encoding="utf-8")
    assert text.lstrip().startswith("Apache License")


def test_the_editable_install_of_make_install_builds_without_a_warning(tmp_path: Path) -> None:
    wheel, output = build("build_editable", tmp_path)
    warned = [line for line in output.splitlines() if "Warning" in line or "!!" in line]
    assert not warned, output
    assert wheel.is_file()
