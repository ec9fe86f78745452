"""The exception tree of rebootcoord.

Adapters translate third-party errors at their edge (``raise BackendUnavailable(...) from exc``);
only the composition roots in ``rebootcoord.cli`` turn exceptions into exit codes.

::

    RebootcoordError
    ├── ConfigError                 invalid configuration (exit code 2); lists every problem
    ├── UsageError                  a command line that cannot be carried out (exit code 2)
    ├── CorruptDocument             a semaphore document that is not what it must be; never repaired
    ├── SemaphoreError              a refused semaphore operation (permanent, not retried)
    │   ├── NoSemaphore             the group's semaphore does not exist yet
    │   │   └── GroupAbsent         nothing of the group is stored at all
    │   ├── NoFreeSlot              every slot is held, or earlier waiters come first
    │   │   └── StoreFull           the group's stored documents would outgrow their store
    │   ├── GroupPaused             an operator paused the group
    │   ├── NotHolder               the id holds no slot (unlock of an unknown holder)
    │   ├── InvalidMax              a max that is < 1 or below the current number of holders
    │   ├── HoldsAgain              a record to drop belongs to a holder that holds a slot again
    │   ├── HolderBusy              unlock of an agent mid-cycle without --force
    │   ├── IdInUse                 an id whose record or place is another kind's (an agent's)
    │   └── SlotLost                our holder record vanished (an operator unlocked us)
    ├── Conflict                    a compare-and-swap lost a race (retryable: read again)
    ├── BackendUnavailable          the backend cannot be reached (retryable, with backoff)
    │   ├── AccessDenied            authentication failed or permission denied (exit 3, not retried)
    │   └── Interrupted             the process is stopping: a retry gave up at once
    ├── DetectorError               a detector could not answer; never causes a reboot
    ├── RebootError                 the reboot method failed
    ├── ApiError                    the Kubernetes API refused a request (not retryable)
    └── NodeOperationError          cordon, drain or uncordon failed (Kubernetes mode)
        ├── DrainTimeout            the drain did not finish in time
        └── DrainInterrupted        the agent is stopping; the drain resumes at the next start
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


class RebootcoordError(Exception):
    """Base of every error rebootcoord raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the configuration: which key, what value, what was expected."""

    key: str
    value: object
    expected: str
    source: str = ""

    def __str__(self) -> str:
        where = f" (from {self.source})" if self.source else ""
        return f"{self.key}{where}: got {mask_urls(safe_repr(self.value))}, expected {self.expected}"


def safe_repr(value: object, limit: int = 200) -> str:
    """``repr(value)``, cut to ``limit`` characters; an integer too long to print is described
    (repr itself refuses integers of more than 4,300 digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 640:
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    try:
        text = repr(value)
    except ValueError:  # a huge integer inside a list or mapping
        return f"a {type(value).__name__} holding an integer too long to print"
    return clipped(text, limit)


def clipped(text: str, limit: int = 120) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[: limit - 20]}... ({len(text)} characters)"


#: ``scheme://user:password@``: what a URL must not show of its credentials.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/@\s:'\"]*):[^/@\s'\"]*@")


def mask_urls(value: Any) -> Any:
    """``value`` (a text, or a list or tuple of texts) with the password of every URL in it
    masked: ``https://root:hunter2@etcd:2379`` is shown as ``https://root:********@etcd:2379``."""
    if isinstance(value, str):
        return _URL_PASSWORD.sub(r"\g<head>:********@", value)
    if isinstance(value, list | tuple):
        return type(value)(mask_urls(v) for v in value)
    return value


def masked_url(url: str) -> str:
    """A URL whose every part may be a secret (apprise's ``slack://TokenA/TokenB/TokenC``: the
    "host" is a token) shown by its scheme alone: ``slack://********``."""
    scheme, sep, _rest = url.partition("://")
    return f"{scheme}://********" if sep and scheme.isascii() and scheme.isalnum() else "********"


class ConfigError(RebootcoordError):
    """The configuration is invalid. Carries every problem found, not only the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid configuration:\n{lines}")


class UsageError(RebootcoordError):
    """A command line that cannot be carried out as written."""


class CorruptDocument(RebootcoordError):
    """A stored document is not what rebootcoord or airlock would have written.

    It is reported and left alone: guessing a repair could hand out a slot twice.
    """

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"corrupted document at {key}: {reason}")


class SemaphoreError(RebootcoordError):
    """A semaphore operation that was refused for a reason a retry will not change."""


class NoSemaphore(SemaphoreError):
    """The group's semaphore does not exist yet."""


class GroupAbsent(NoSemaphore):
    """Nothing of the group is stored at all (an operator's change refused: a typo in the group's
    name never creates one)."""


class NoFreeSlot(SemaphoreError):
    """Every slot of the group is held, or earlier waiters come first."""


class StoreFull(NoFreeSlot):
    """A slot refused because the group's stored documents would outgrow what its store holds
    (a Lease's annotations, an etcd request): nothing was written. Releases are never refused."""


class GroupPaused(SemaphoreError):
    """An operator paused the group: no new slot is given."""


class HoldsAgain(SemaphoreError):
    """A record to drop belongs to a holder that holds a slot again."""


class NotHolder(SemaphoreError):
    """The id does not hold a slot."""


class HolderBusy(SemaphoreError):
    """An unlock refused: the holder is in the middle of its cycle (its node may be down)."""

    def __init__(self, message: str, record: object) -> None:
        super().__init__(message)
        self.record = record


class IdInUse(SemaphoreError):
    """The id's holder record or place in line belongs to another kind of holder (an agent, an
    operator's lock): a FleetLock request never takes it over."""


class InvalidMax(SemaphoreError):
    """A max below 1, or below the number of current holders."""


class SlotLost(SemaphoreError):
    """Our holder record is gone: someone released our slot while we held it."""


class Conflict(RebootcoordError):
    """A compare-and-swap write lost a race; read the document again and retry."""


class BackendUnavailable(RebootcoordError):
    """The semaphore backend could not be reached or timed out (retryable)."""


class AccessDenied(BackendUnavailable):
    """The backend refused who we are (a wrong password, a missing right): retrying changes
    nothing, so it is not retried; the configuration or the backend's users must change."""


class Interrupted(BackendUnavailable):
    """The process is stopping: a retry loop gave up at once."""


class DetectorError(RebootcoordError):
    """A detector could not tell whether a reboot is pending. Never a reason to reboot."""


class RebootError(RebootcoordError):
    """The reboot method failed to start a reboot."""


class ApiError(RebootcoordError):
    """The Kubernetes API server refused a request for a reason a retry will not change."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        self.status = status
        self.reason = reason
        self.message = message
        super().__init__(f"{status} {reason}: {message}")


class NodeOperationError(RebootcoordError):
    """Cordon, drain or uncordon failed."""


class DrainTimeout(NodeOperationError):
    """The drain did not finish within its timeout."""


class DrainInterrupted(NodeOperationError):
    """The agent is stopping; the drain resumes when it starts again."""
