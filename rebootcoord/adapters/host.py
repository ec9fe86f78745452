"""The host seen from the agent: its file system root, its boot ID, how to run its commands.

A DaemonSet pod mounts the host at ``host_root`` and runs host commands through nsenter into
PID 1's namespaces; a systemd unit uses ``/`` and runs them directly; a simulated host is a
directory with a boot ID file. The agent cannot tell these apart, on purpose. A bare host has
no cluster around it: ``NoNodeOps`` is its NodeOps.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from rebootcoord.core.types import NodeName, Phase
from rebootcoord.errors import DetectorError


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class CommandFailed(Exception):
    """The command could not run to completion: missing binary, timeout, permission."""


@dataclass(frozen=True)
class Host:
    root: str = "/"
    boot_id_file: str = "/proc/sys/kernel/random/boot_id"
    exec_prefix: tuple[str, ...] = ()  # e.g. nsenter --target 1 --mount ... --

    def path(self, host_path: str) -> str:
        """A host path as seen from here (under ``root``)."""
        return os.path.join(self.root, host_path.lstrip("/"))

    def boot_id(self) -> str:
        try:
            with open(self.boot_id_file, encoding="ascii") as fh:
                value = fh.read().strip()
        except OSError as exc:
            raise DetectorError(f"cannot read the boot ID from {self.boot_id_file}: {exc}") from exc
        if not value:
            raise DetectorError(f"the boot ID file {self.boot_id_file} is empty")
        return value

    def run(self, argv: tuple[str, ...], timeout: timedelta) -> CommandResult:
        """Run a host command (argv, never a shell). Raises CommandFailed if it cannot complete."""
        full = (*self.exec_prefix, *argv)
        try:
            proc = subprocess.run(
                full,
                capture_output=True,
                text=True,
                timeout=timeout.total_seconds(),
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except FileNotFoundError as exc:
            raise CommandFailed(f"{full[0]}: not found") from exc
        except PermissionError as exc:
            raise CommandFailed(f"{full[0]}: permission denied") from exc
        except subprocess.TimeoutExpired as exc:
            raise CommandFailed(f"{' '.join(full)}: timed out after {timeout.total_seconds():g}s") from exc
        except OSError as exc:
            raise CommandFailed(f"{full[0]}: {exc}") from exc
        return CommandResult(full, proc.returncode, proc.stdout, proc.stderr)


class NoNodeOps:
    """Bare etcd mode: there is no cluster to cordon, drain or tell."""

    def is_unschedulable(self) -> bool:
        return True  # no scheduler: never record that we cordoned, never uncordon

    def cordon(self) -> None:
        return None

    def drain(self, stop: threading.Event) -> None:
        return None

    def uncordon(self) -> None:
        return None

    def cordoned_by_us(self) -> bool:
        return False

    def node_exists(self, node: NodeName) -> bool | None:
        return None

    def announce(
        self, phase: Phase, reason: str, *, warning: bool = False, event_reason: str = "", defer: bool = False
    ) -> None:
        return None

    def set_labels(self, labels: Sequence[tuple[str, str]]) -> None:
        return None

    def set_waiting_taint(self, present: bool) -> None:
        return None
