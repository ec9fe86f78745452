"""Detectors: is a reboot pending, and why. One class per update engine.

A detector that cannot answer raises DetectorError; the daemon reports it and never treats it as
"reboot needed". ``key`` in the answer identifies the update, so the post-reboot gate can tell
whether it was applied.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rebootcoord.adapters.host import CommandFailed, Host
from rebootcoord.core.config import DetectorSpec
from rebootcoord.core.types import PendingReboot
from rebootcoord.errors import DetectorError
from rebootcoord.ports import Detector


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
        try:
            result = self.host.run(self.spec.argv, self.spec.timeout)
        except CommandFailed as exc:
            raise DetectorError(f"{self.name}: {exc}") from exc
        if result.returncode != 0:
            raise DetectorError(f"{self.name}: exited {result.returncode}: {result.stderr.strip()[:200]}")
        return self.parse(result.stdout)


class RpmOstreeDetector(_ParsedCommandDetector):
    """Fedora CoreOS, RHCOS: ``rpm-ostree status --json``; a first deployment not booted waits."""

    def parse(self, text: str) -> PendingReboot | None:
        return parse_rpm_ostree(text, self.name)


class UpdateEngineDetector(_ParsedCommandDetector):
    """Flatcar / CoreOS Container Linux: ``update_engine_client -status`` → NEED_REBOOT."""

    def parse(self, text: str) -> PendingReboot | None:
        return parse_update_engine(text, self.name)


def parse_rpm_ostree(text: str, name: str = "rpm-ostree") -> PendingReboot | None:
    try:
        doc = json.loads(text)
        deployments: Sequence[dict[str, Any]] = doc["deployments"]
        if not isinstance(deployments, list) or not all(isinstance(d, dict) for d in deployments):
            raise TypeError("deployments is not a list of objects")
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DetectorError(f"{name}: unparsable `rpm-ostree status --json` output: {exc}") from None
    if not deployments:
        raise DetectorError(f"{name}: rpm-ostree lists no deployments")
    first = deployments[0]
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
