"""Health checks run after the reboot: a host command or an HTTP GET. Failures say why."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

from rebootcoord.adapters.host import CommandFailed, Host
from rebootcoord.core.config import CheckSpec
from rebootcoord.ports import Check, CheckResult


@dataclass
class CommandCheck:
    name: str
    host: Host
    spec: CheckSpec

    def check(self) -> CheckResult:
        try:
            result = self.host.run(self.spec.argv, self.spec.timeout)
        except CommandFailed as exc:
            return CheckResult(False, self.name, str(exc))
        if result.returncode == 0:
            return CheckResult(True, self.name)
        detail = (result.stderr.strip() or result.stdout.strip())[:200]
        return CheckResult(
            False, self.name, f"exited {result.returncode}" + (f": {detail}" if detail else "")
        )


@dataclass
class HttpCheck:
    name: str
    spec: CheckSpec

    def check(self) -> CheckResult:
        # The configuration accepts only http:// and https:// URLs (p_checks).
        request = urllib.request.Request(self.spec.url, method="GET")  # noqa: S310
        timeout = self.spec.timeout.total_seconds()
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310
                status = int(resp.status)
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            return CheckResult(False, self.name, f"GET {self.spec.url}: {exc}")
        if status in self.spec.expect_status:
            return CheckResult(True, self.name)
        return CheckResult(False, self.name, f"GET {self.spec.url}: status {status}")


def build_checks(specs: Sequence[CheckSpec], host: Host) -> list[Check]:
    out: list[Check] = []
    for spec in specs:
        out.append(
            CommandCheck(spec.name, host, spec) if spec.type == "command" else HttpCheck(spec.name, spec)
        )
    return out
