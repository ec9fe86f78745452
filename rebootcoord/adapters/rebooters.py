"""Reboot methods: a host command (``systemctl reboot`` by default) or a signal to PID 1.

SIGRTMIN+5 asks systemd for an orderly reboot; it needs only CAP_KILL and hostPID, which is why
the Helm chart offers it as the least-privileged method. There, the agent itself runs without any
capability and a relay sends the signal (``rebootcoord.adapters.relay``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

from rebootcoord.adapters.host import CommandFailed, Host
from rebootcoord.errors import RebootError
from rebootcoord.ports import Rebooter


@dataclass
class CommandRebooter:
    host: Host
    argv: tuple[str, ...]
    timeout: timedelta = timedelta(seconds=60)

    def reboot(self) -> None:
        try:
            result = self.host.run(self.argv, self.timeout)
        except CommandFailed as exc:
            raise RebootError(f"reboot command failed: {exc}") from exc
        if result.returncode != 0:
            detail = (result.stderr.strip() or result.stdout.strip())[:300]
            raise RebootError(f"reboot command {' '.join(self.argv)} exited {result.returncode}: {detail}")


@dataclass
class SignalRebooter:
    signal: int
    pid: int = 1

    def reboot(self) -> None:
        try:
            os.kill(self.pid, self.signal)
        except OSError as exc:
            raise RebootError(f"cannot send signal {self.signal} to PID {self.pid}: {exc}") from exc


def build_rebooter(
    method: str, host: Host, argv: tuple[str, ...], signal: int, relay: str | None = None
) -> Rebooter:
    if method == "signal":
        if relay:
            from rebootcoord.adapters.relay import RelayRebooter

            return RelayRebooter(relay)
        return SignalRebooter(signal)
    return CommandRebooter(host, argv)
