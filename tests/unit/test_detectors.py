"""Detectors on a host root of files and real commands; failures never mean "reboot"."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest

from rebootcoord.adapters.detectors import (
    CommandDetector,
    RpmOstreeDetector,
    SentinelDetector,
    UpdateEngineDetector,
    detect,
    parse_rpm_ostree,
    parse_update_engine,
)
from rebootcoord.adapters.host import Host
from rebootcoord.core.config import DetectorSpec
from rebootcoord.errors import DetectorError


def script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_sentinel_absent_present_and_pkgs(tmp_path: Path) -> None:
    host = Host(root=str(tmp_path))
    detector = SentinelDetector("sentinel", host)
    assert detector.pending() is None
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "reboot-required").write_text("*** System restart required ***\n")
    plain = detector.pending()
    assert plain is not None and plain.reason == "/run/reboot-required exists"
    (tmp_path / "run" / "reboot-required.pkgs").write_text("linux-image-6.1\nlibc6\n")
    with_pkgs = detector.pending()
    assert with_pkgs is not None
    assert "linux-image-6.1, libc6" in with_pkgs.reason
    assert with_pkgs.key != plain.key  # the package list identifies the update


@pytest.mark.parametrize(
    ("exit_code", "reboot_codes", "no_reboot_codes", "outcome"),
    [
        (0, {0}, None, "pending"),  # kured's convention
        (1, {0}, None, "none"),
        (1, {1}, None, "pending"),  # needs-restarting -r
        (0, {1}, None, "none"),
        (3, {1}, {0}, "error"),  # neither: an error, never a reboot
    ],
)
def test_command_exit_codes(tmp_path: Path, exit_code, reboot_codes, no_reboot_codes, outcome) -> None:
    spec = DetectorSpec(
        type="command",
        name="cmd",
        argv=("sh", "-c", f"echo checking; exit {exit_code}"),
        reboot_exit_codes=frozenset(reboot_codes),
        no_reboot_exit_codes=frozenset(no_reboot_codes) if no_reboot_codes else None,
    )
    detector = CommandDetector("cmd", Host(root=str(tmp_path)), spec)
    if outcome == "error":
        with pytest.raises(DetectorError, match="exited 3"):
            detector.pending()
    else:
        assert (detector.pending() is not None) is (outcome == "pending")


def test_command_timeout_and_missing_binary_are_errors(tmp_path: Path) -> None:
    slow = DetectorSpec(type="command", name="slow", argv=("sleep", "5"), timeout=timedelta(seconds=0.2))
    started = time.monotonic()
    with pytest.raises(DetectorError, match="timed out"):
        CommandDetector("slow", Host(), slow).pending()
    assert time.monotonic() - started < 4
    missing = DetectorSpec(type="command", name="missing", argv=("/nonexistent/needs-restarting", "-r"))
    with pytest.raises(DetectorError, match="not found"):
        CommandDetector("missing", Host(), missing).pending()


def rpm_ostree_json(booted_first: bool, **first: object) -> str:
    return json.dumps(
        {
            "deployments": [
                {"booted": booted_first, "checksum": "abc123", "version": "41.20261101", **first},
                {"booted": not booted_first, "checksum": "old999", "version": "41.20261001"},
            ]
        }
    )


def test_rpm_ostree_parser() -> None:
    assert parse_rpm_ostree(rpm_ostree_json(True)) is None
    staged = parse_rpm_ostree(rpm_ostree_json(False, staged=True, **{"finalization-locked": True}))
    assert staged is not None
    assert staged.key == "rpm-ostree:abc123"
    assert "staged" in staged.reason and "finalization-locked" in staged.reason
    for bad in ("not json", "{}", '{"deployments": "x"}', '{"deployments": []}'):
        with pytest.raises(DetectorError):
            parse_rpm_ostree(bad)


def test_update_engine_parser() -> None:
    idle = "LAST_CHECKED_TIME=0\nPROGRESS=0.0\nCURRENT_OP=UPDATE_STATUS_IDLE\nNEW_VERSION=0.0.0\n"
    need = "CURRENT_OP=UPDATE_STATUS_UPDATED_NEED_REBOOT\nNEW_VERSION=4152.2.0\nNEW_SIZE=1234\n"
    assert parse_update_engine(idle) is None
    pending = parse_update_engine(need)
    assert pending is not None and pending.key == "update-engine:4152.2.0"
    with pytest.raises(DetectorError, match="CURRENT_OP"):
        parse_update_engine("garbage")


def test_rpm_ostree_and_update_engine_run_their_commands(tmp_path: Path) -> None:
    fake_rpm = script(tmp_path / "rpm-ostree", f"cat <<'EOF'\n{rpm_ostree_json(False)}\nEOF")
    rpm = RpmOstreeDetector(
        "rpm", Host(), DetectorSpec(type="rpm-ostree", name="rpm", argv=(fake_rpm, "status", "--json"))
    )
    assert rpm.pending() is not None
    fake_ue = script(
        tmp_path / "uec", "echo CURRENT_OP=UPDATE_STATUS_UPDATED_NEED_REBOOT; echo NEW_VERSION=1.2.3"
    )
    ue = UpdateEngineDetector(
        "ue", Host(), DetectorSpec(type="update-engine", name="ue", argv=(fake_ue, "-status"))
    )
    assert ue.pending() is not None
    broken = script(tmp_path / "broken", "echo oops >&2; exit 1")
    with pytest.raises(DetectorError, match="exited 1"):
        RpmOstreeDetector(
            "rpm", Host(), DetectorSpec(type="rpm-ostree", name="rpm", argv=(broken,))
        ).pending()


def test_combined_detectors_pending_if_any_and_errors_collected(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    failing = CommandDetector(
        "broken", Host(), DetectorSpec(type="command", name="broken", argv=("/nonexistent/x",))
    )
    sentinel = SentinelDetector("sentinel", Host(root=str(tmp_path)))
    pending, errors = detect([failing, sentinel])
    assert pending is None and len(errors) == 1  # an error alone never means "reboot"
    (tmp_path / "run" / "reboot-required").touch()
    pending, errors = detect([failing, sentinel])
    assert pending is not None and pending.detector == "sentinel" and len(errors) == 1


@pytest.mark.skipif(
    shutil.which("unshare") is None or shutil.which("nsenter") is None, reason="needs util-linux"
)
def test_host_commands_run_in_another_mount_namespace_via_nsenter(tmp_path: Path) -> None:
    """The nsenter prefix really enters the target's mount namespace: a binary that exists only
    there is found. (A DaemonSet targets PID 1; here we target a namespace we made.)"""
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    # A private mount namespace with a tmpfs over `hidden` holding an update_engine_client.
    holder = subprocess.Popen(
        [
            "unshare", "--mount", "--propagation", "private", "--fork", "sh", "-c",
            f"mount -t tmpfs none {hidden}"
            " && printf '#!/bin/sh\\necho CURRENT_OP=UPDATE_STATUS_UPDATED_NEED_REBOOT\\n'"
            f" > {hidden}/update_engine_client && chmod +x {hidden}/update_engine_client"
            f" && touch {hidden}/ready"
            " && exec sleep 60",
        ]
    )  # fmt: skip
    try:
        target = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and target is None:
            children = Path(f"/proc/{holder.pid}/task/{holder.pid}/children").read_text().split()
            for child in children:
                if os.path.exists(f"/proc/{child}/root{hidden}/ready"):
                    target = child
            time.sleep(0.05)
        if target is None:
            pytest.skip("cannot create a mount namespace here")
        spec = DetectorSpec(
            type="update-engine", name="ue", argv=(f"{hidden}/update_engine_client", "-status")
        )
        direct = UpdateEngineDetector("ue", Host(), spec)
        with pytest.raises(DetectorError, match="not found"):
            direct.pending()  # not visible in our namespace
        entered = UpdateEngineDetector(
            "ue", Host(exec_prefix=("nsenter", "--target", target, "--mount", "--")), spec
        )
        assert entered.pending() is not None
    finally:
        holder.kill()
        holder.wait()
