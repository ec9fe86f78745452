"""rpm-ostree's finalization lock: a deployment staged with ``--lock-finalization`` is dropped by a
plain reboot, so the agent has ``rpm-ostree finalize-deployment <checksum>`` reboot into it.

rpm-ostree is a fake executable given as the detector's argv, as a host's configuration would
name it: ``status --json`` prints a file, ``finalize-deployment`` refuses any checksum but the
staged deployment's base checksum, as rpm-ostree does, and records what it was asked.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from rebootcoord.adapters.detectors import RpmOstreeDetector, build_detectors, locked_staged_checksum
from rebootcoord.adapters.host import Host
from rebootcoord.core.config import DetectorSpec, load_settings
from rebootcoord.core.types import Phase
from rebootcoord.errors import DetectorError, RebootError
from rebootcoord.ports import Finalizer
from tests.unit.fakes import FakeFinalizer
from tests.unit.test_agent import UPDATE, Rig, to_reboot

NEW = "a" * 64  # the staged deployment
BASE = "b" * 64  # its base, when packages are layered on it
BOOTED = "c" * 64

FAKE_RPM_OSTREE = """#!/bin/sh
dir=$(dirname "$0")
case "$1" in
  status) cat "$dir/status.json" ;;
  finalize-deployment)
    found=$(cat "$dir/staged")
    if [ "$2" != "$found" ]; then
      echo "error: Expected staged base checksum $2, but found $found" >&2
      exit 1
    fi
    echo "$2" >>"$dir/finalized" ;;
  *) echo "unknown command $1" >&2; exit 64 ;;
esac
"""


def status(*, locked: bool | None, staged: bool = True, layered: bool = False) -> dict[str, Any]:
    """rpm-ostree status --json: a new deployment first, or only the booted one (locked=None)."""
    booted = {"booted": True, "checksum": BOOTED, "version": "41.20261001"}
    if locked is None:
        return {"deployments": [booted]}
    new: dict[str, Any] = {"booted": False, "checksum": NEW, "version": "41.20261101", "staged": staged}
    if locked:
        new["finalization-locked"] = True
    if layered:
        new["base-checksum"] = BASE
    return {"deployments": [new, booted]}


class FakeRpmOstree:
    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.path = root / "rpm-ostree"
        self.path.write_text(FAKE_RPM_OSTREE)
        self.path.chmod(self.path.stat().st_mode | stat.S_IEXEC)
        self.show(status(locked=True))

    def show(self, doc: dict[str, Any]) -> None:
        (self.root / "status.json").write_text(json.dumps(doc))
        staged = next((d for d in doc["deployments"] if d.get("staged")), {})
        (self.root / "staged").write_text(staged.get("base-checksum") or staged.get("checksum") or "none")

    def finalized(self) -> list[str]:
        path = self.root / "finalized"
        return path.read_text().split() if path.exists() else []

    def detector(self) -> RpmOstreeDetector:
        spec = DetectorSpec(type="rpm-ostree", name="rpm-ostree", argv=(str(self.path), "status", "--json"))
        return RpmOstreeDetector("rpm-ostree", Host(), spec)


@pytest.fixture
def rpm_ostree(tmp_path: Path) -> FakeRpmOstree:
    return FakeRpmOstree(tmp_path / "bin")


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (status(locked=True), NEW),
        (status(locked=True, layered=True), BASE),  # rpm-ostree compares the base checksum
        (status(locked=False), None),  # a plain reboot applies it
        (status(locked=False, staged=False), None),  # deployed, not staged: a reboot applies it
        (status(locked=None), None),  # nothing waits
    ],
    ids=["locked", "locked-layered", "unlocked", "not-staged", "nothing-pending"],
)
def test_the_checksum_to_finalize(doc: dict[str, Any], expected: str | None) -> None:
    assert locked_staged_checksum(json.dumps(doc)) == expected


@pytest.mark.parametrize("checksum", ["", "abc123", "--allow-missing-checksum", "A" * 64, 42], ids=str)
def test_a_locked_deployment_without_a_valid_checksum_is_an_error(checksum: object) -> None:
    doc = status(locked=True)
    doc["deployments"][0]["checksum"] = checksum
    with pytest.raises(DetectorError, match="no valid checksum"):
        locked_staged_checksum(json.dumps(doc))


def test_a_locked_staged_deployment_is_finalized_with_its_checksum(rpm_ostree: FakeRpmOstree) -> None:
    detector = rpm_ostree.detector()
    pending = detector.pending()
    assert pending is not None and "finalization-locked" in pending.reason
    assert detector.finalize() is True
    assert rpm_ostree.finalized() == [NEW]
    rpm_ostree.show(status(locked=True, layered=True))
    assert detector.finalize() is True
    assert rpm_ostree.finalized() == [NEW, BASE]


@pytest.mark.parametrize(
    "doc",
    [status(locked=False), status(locked=False, staged=False), status(locked=None)],
    ids=["unlocked", "not-staged", "nothing-pending"],
)
def test_without_a_lock_the_reboot_is_left_to_the_rebooter(
    rpm_ostree: FakeRpmOstree, doc: dict[str, Any]
) -> None:
    rpm_ostree.show(doc)
    assert rpm_ostree.detector().finalize() is False
    assert rpm_ostree.finalized() == []


def test_a_deployment_staged_between_the_read_and_the_finalize_is_refused(
    rpm_ostree: FakeRpmOstree,
) -> None:
    """The checksum read right before is what rpm-ostree checks: if it staged another deployment
    in between, nothing is finalized and the agent hears of it."""
    (rpm_ostree.root / "staged").write_text("d" * 64)  # staged after `status` was read
    with pytest.raises(RebootError, match="Expected staged base checksum"):
        rpm_ostree.detector().finalize()
    assert rpm_ostree.finalized() == []


def test_a_status_that_cannot_be_read_is_a_reboot_error_not_a_plain_reboot(
    rpm_ostree: FakeRpmOstree,
) -> None:
    """A plain reboot would drop a locked deployment: when the status cannot be read, no reboot."""
    (rpm_ostree.root / "status.json").write_text("not json")
    with pytest.raises(RebootError, match="cannot tell whether a staged deployment must be finalized"):
        rpm_ostree.detector().finalize()
    missing = DetectorSpec(type="rpm-ostree", name="rpm-ostree", argv=("/nonexistent/rpm-ostree", "status"))
    with pytest.raises(RebootError, match="not found"):
        RpmOstreeDetector("rpm-ostree", Host(), missing).finalize()


def test_only_the_rpm_ostree_detector_finalizes(rpm_ostree: FakeRpmOstree) -> None:
    """The configuration a host uses builds it: an rpm-ostree detector is a Finalizer, the others
    are not."""
    settings = load_settings(
        file_data={
            "detectors": [
                "sentinel",
                {"type": "rpm-ostree", "argv": [str(rpm_ostree.path), "status", "--json"]},
                {"type": "command", "argv": ["true"]},
                "update-engine",
            ]
        },
        fallbacks={"node_name": "n1"},
    )
    detectors = build_detectors(settings.detection.detectors, Host())
    assert [isinstance(d, Finalizer) for d in detectors] == [False, True, False, False]


def test_the_agent_finalizes_instead_of_rebooting_and_releases_after_the_boot(
    rpm_ostree: FakeRpmOstree,
) -> None:
    """The whole cycle on an rpm-ostree host with a locked deployment: the slot is taken,
    finalize-deployment runs (the Rebooter is not asked), the node boots into the deployment, the
    update is no longer pending and the slot is given back."""
    rig = Rig(detector=rpm_ostree.detector())  # type: ignore[arg-type]
    rig.until(rpm_ostree.finalized, what="finalize-deployment")
    assert rig.phase() is Phase.REBOOTING and rig.holds()
    assert rpm_ostree.finalized() == [NEW] and rig.rebooter.requests == []
    rpm_ostree.show(status(locked=None))  # booted into it
    rig.host.boot = "boot-2"
    rig.restart()
    rig.until(lambda: not rig.holds() and rig.record() is None, what="the slot given back")
    assert rpm_ostree.finalized() == [NEW]


def test_the_agent_asks_the_finalizer_only_with_the_slot_and_else_the_rebooter() -> None:
    finalizer = FakeFinalizer(answer=UPDATE, finalizes=False)
    rig = Rig(detector=finalizer)
    finalizer.host, finalizer.holds = rig.host, rig.holds
    to_reboot(rig)  # nothing to finalize: the Rebooter reboots
    assert rig.rebooter.requests == ["boot-1"] and finalizer.requests == []
    finalizer.finalizes = True
    rig.turn(601)  # past the reboot timeout the reboot is asked for again: now finalized
    rig.turn()
    assert finalizer.requests == ["boot-1"] and rig.rebooter.requests == ["boot-1"]
    assert finalizer.without_slot == []


def test_a_failed_finalize_is_a_failed_reboot() -> None:
    finalizer = FakeFinalizer(answer=UPDATE, fail="rpm-ostree finalize-deployment exited 1: busy")
    rig = Rig(detector=finalizer)
    rig.until(lambda: rig.failures("reboot_failed"), what="the failed reboot")
    record = rig.record()
    assert record is not None and record.phase is Phase.REBOOTING and "busy" in record.note
    assert rig.rebooter.requests == [], "a failed finalize is not followed by a plain reboot"
