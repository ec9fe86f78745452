"""Detectors: is a reboot pending, and why. One class per update engine; the rpm-ostree one is
also the Finalizer of a deployment whose finalization is locked (``RpmOstreeDetector.finalize``).

A detector that cannot answer raises DetectorError; the daemon reports it and never treats it as
"reboot needed". ``key`` in the answer identifies the update, so the post-reboot gate can tell
whether it was applied.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rebootcoord.adapters.host import CommandFailed, Host
from rebootcoord.core.config import DetectorSpec
from rebootcoord.core.types import PendingReboot
from rebootcoord.errors import DetectorError, RebootError, safe_repr
from rebootcoord.ports import Detector

log = logging.getLogger(__name__)


@dataclass
class SentinelDetector:
    """Debian/Ubuntu: ``/run/reboot-required`` exists; ``/run/reboot-required.pkgs`` lists why."""

    name: str
    host: Host
    path: str = "/run/reboot-required"

    def pending(self) -> PendingReboot | None:
        sentinel = self.host.path(self.path)
        try:
            os.stat(sentinel)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise DetectorError(f"{self.name}: cannot stat {sentinel}: {exc}") from exc
        pkgs = _read_lines(sentinel + ".pkgs")
        reason = f"{self.path} exists"
        if pkgs:
            shown = ", ".join(pkgs[:10]) + (f" and {len(pkgs) - 10} more" if len(pkgs) > 10 else "")
            reason += f" (packages: {shown})"
        key = "sentinel:" + _digest("\n".join(sorted(pkgs)) or _mtime(sentinel))
        return PendingReboot(self.name, reason, key)


def _read_lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return [line.strip() for line in fh if line.strip()]
    except OSError:
        return []


def _mtime(path: str) -> str:
    try:
        return str(os.stat(path).st_mtime_ns)
    except OSError:
        return ""


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class CommandDetector:
    """A command whose exit code says whether a reboot is needed (kured: 0; needs-restarting -r: 1)."""

    name: str
    host: Host
    spec: DetectorSpec

    def pending(self) -> PendingReboot | None:
        try:
            result = self.host.run(self.spec.argv, self.spec.timeout)
        except CommandFailed as exc:
            raise DetectorError(f"{self.name}: {exc}") from exc
        code = result.returncode
        if code in self.spec.reboot_exit_codes:
            out = (result.stdout.strip() or result.stderr.strip()).splitlines()
            detail = f": {out[0][:200]}" if out else ""
            reason = f"{' '.join(self.spec.argv)} exited {code}{detail}"
            return PendingReboot(self.name, reason, f"command:{_digest(result.stdout)}")
        if self.spec.no_reboot_exit_codes is None or code in self.spec.no_reboot_exit_codes:
            return None
        raise DetectorError(
            f"{self.name}: {' '.join(self.spec.argv)} exited {code}, which is neither a reboot code "
            f"{sorted(self.spec.reboot_exit_codes)} nor a no-reboot code "
            f"{sorted(self.spec.no_reboot_exit_codes)}"
        )


@dataclass
class _ParsedCommandDetector:
    """A host command (exit 0 expected) whose output says whether a reboot waits."""

    name: str
    host: Host
    spec: DetectorSpec

    def parse(self, text: str) -> PendingReboot | None:
        raise NotImplementedError

    def pending(self) -> PendingReboot | None:
        return self.parse(self.output())

    def output(self) -> str:
        try:
            result = self.host.run(self.spec.argv, self.spec.timeout)
        except CommandFailed as exc:
            raise DetectorError(f"{self.name}: {exc}") from exc
        if result.returncode != 0:
            raise DetectorError(f"{self.name}: exited {result.returncode}: {result.stderr.strip()[:200]}")
        return result.stdout


class RpmOstreeDetector(_ParsedCommandDetector):
    """Fedora CoreOS, RHCOS: ``rpm-ostree status --json``; a first deployment not booted waits.

    It is also the Finalizer of what it detects. A deployment staged with a finalization lock
    (``rpm-ostree upgrade --lock-finalization``, as Zincati stages them) is dropped, not applied,
    by a plain reboot; ``rpm-ostree finalize-deployment <checksum>`` unlocks it and reboots.
    ``finalize`` reads the status again right before the reboot and passes the checksum it read,
    so rpm-ostree refuses if another deployment was staged in between.
    """

    def parse(self, text: str) -> PendingReboot | None:
        return parse_rpm_ostree(text, self.name)

    def finalize(self) -> bool:
        try:
            checksum = locked_staged_checksum(self.output(), self.name)
        except DetectorError as exc:
            raise RebootError(f"cannot tell whether a staged deployment must be finalized: {exc}") from exc
        if checksum is None:
            return False  # nothing locked: a plain reboot applies what waits
        argv = (self.spec.argv[0], "finalize-deployment", checksum)
        log.info("finalizing the staged deployment %s: rpm-ostree reboots into it", checksum[:12])
        try:
            result = self.host.run(argv, self.spec.timeout)
        except CommandFailed as exc:
            raise RebootError(f"{self.name}: {exc}") from exc
        if result.returncode != 0:
            detail = (result.stderr.strip() or result.stdout.strip())[:300]
            raise RebootError(f"{' '.join(argv)} exited {result.returncode}: {detail}")
        return True


class UpdateEngineDetector(_ParsedCommandDetector):
    """Flatcar / CoreOS Container Linux: ``update_engine_client -status`` → NEED_REBOOT."""

    def parse(self, text: str) -> PendingReboot | None:
        return parse_update_engine(text, self.name)


def _deployments(text: str, name: str) -> Sequence[dict[str, Any]]:
    try:
        doc = json.loads(text)
        deployments: Sequence[dict[str, Any]] = doc["deployments"]
        if not isinstance(deployments, list) or not all(isinstance(d, dict) for d in deployments):
            raise TypeError("deployments is not a list of objects")
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DetectorError(f"{name}: unparsable `rpm-ostree status --json` output: {exc}") from None
    if not deployments:
        raise DetectorError(f"{name}: rpm-ostree lists no deployments")
    return deployments


def parse_rpm_ostree(text: str, name: str = "rpm-ostree") -> PendingReboot | None:
    first = _deployments(text, name)[0]
    if first.get("booted", False):
        return None
    checksum = str(first.get("checksum", ""))
    version = first.get("version") or checksum[:12]
    flags = []
    if first.get("staged"):
        flags.append("staged")
    if first.get("finalization-locked"):
        flags.append("finalization-locked: a plain reboot will not apply it")
    reason = f"new deployment {version} waits" + (f" ({', '.join(flags)})" if flags else "")
    return PendingReboot(name, reason, f"rpm-ostree:{checksum or version}")


# An OSTree commit checksum (SHA-256); anything else is refused before it becomes an argument.
_CHECKSUM = re.compile(r"^[0-9a-f]{64}$")


def locked_staged_checksum(text: str, name: str = "rpm-ostree") -> str | None:
    """The checksum ``rpm-ostree finalize-deployment`` expects for the staged deployment when it
    is finalization-locked -- its base checksum if packages are layered on it, as rpm-ostree
    compares that one -- or None when no staged deployment is locked."""
    staged = next((d for d in _deployments(text, name) if d.get("staged") is True), None)
    if staged is None or staged.get("finalization-locked") is not True:
        return None
    checksum = staged.get("base-checksum") or staged.get("checksum")
    if not isinstance(checksum, str) or not _CHECKSUM.match(checksum):
        raise DetectorError(
            f"{name}: the locked staged deployment has no valid checksum: {safe_repr(checksum, 80)}"
        )
    return checksum


_KV = re.compile(r"^([A-Z_]+)=(.*)$")


def parse_update_engine(text: str, name: str = "update-engine") -> PendingReboot | None:
    fields = {}
    for line in text.splitlines():
        match = _KV.match(line.strip())
        if match:
            fields[match.group(1)] = match.group(2).strip()
    op = fields.get("CURRENT_OP")
    if not op:
        raise DetectorError(f"{name}: no CURRENT_OP in `update_engine_client -status` output")
    if op != "UPDATE_STATUS_UPDATED_NEED_REBOOT":
        return None
    version = fields.get("NEW_VERSION", "")
    return PendingReboot(
        name,
        f"update_engine: {op} (new version {version or 'unknown'})",
        f"update-engine:{version}",
    )


def build_detectors(specs: Sequence[DetectorSpec], host: Host) -> list[Detector]:
    out: list[Detector] = []
    for spec in specs:
        match spec.type:
            case "sentinel":
                out.append(SentinelDetector(spec.name, host, spec.path))
            case "command":
                out.append(CommandDetector(spec.name, host, spec))
            case "rpm-ostree":
                out.append(RpmOstreeDetector(spec.name, host, spec))
            case "update-engine":
                out.append(UpdateEngineDetector(spec.name, host, spec))
            case other:
                raise ValueError(f"unknown detector type {other!r}")
    return out


def detect(detectors: Sequence[Detector]) -> tuple[PendingReboot | None, tuple[str, ...]]:
    """Ask every detector. Pending if any says so; errors are collected, never turned into a reboot."""
    pending: PendingReboot | None = None
    errors: list[str] = []
    for detector in detectors:
        try:
            answer = detector.pending()
        except DetectorError as exc:
            errors.append(str(exc))
            continue
        if answer is not None and pending is None:
            pending = answer
    return pending, tuple(errors)
