"""Identities, phases and the small values every layer shares. Pure: no I/O."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import NewType

NodeName = NewType("NodeName", str)
HolderId = NewType("HolderId", str)
Group = NewType("Group", str)

# FleetLock's rule for groups; it also keeps airlock's url.QueryEscape(group) an identity.
GROUP_RE = re.compile(r"^[a-zA-Z0-9.-]+$")
# Holder ids become etcd key segments and Lease annotation keys: no slashes, no spaces.
HOLDER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,252}$")
# A Kubernetes object name such as a Lease's: a DNS subdomain (RFC 1123), at most 253 characters.
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def lease_name_ok(name: str) -> bool:
    """``name`` is a valid Lease name."""
    return len(name) <= 253 and _SUBDOMAIN.fullmatch(name) is not None


class Phase(enum.StrEnum):
    """The cycle, in order. DESIGN.md draws it; the names are part of the event log format."""

    IDLE = "idle"
    PENDING = "pending"
    WAITING = "waiting"
    LOCKED = "locked"
    DRAINING = "draining"
    REBOOTING = "rebooting"
    VERIFYING = "verifying"
    RELEASING = "releasing"

    @property
    def holds_slot(self) -> bool:
        return self in HOLDING_PHASES


HOLDING_PHASES = frozenset({Phase.LOCKED, Phase.DRAINING, Phase.REBOOTING, Phase.VERIFYING, Phase.RELEASING})


@dataclass(frozen=True)
class PendingReboot:
    """A detector's answer that the host needs a reboot.

    ``key`` identifies the update (a deployment checksum, a version, the package list), so that after
    the reboot the health gate can tell whether *that* update was applied.
    """

    detector: str
    reason: str
    key: str
