"""``backend: fleetlock``: the agent's semaphore is a FleetLock server -- ours, airlock, or
poseidon/fleetlock -- spoken to as Zincati does (rebootcoord.core.fleetlock).

FleetLock has two calls and no reads: ``pre-reboot`` takes a slot (recursive), ``steady-state``
gives it back. So this adapter shows the agent a group it can only partly see:

- *holding* means the agent's own holder record exists in ``fleetlock_state_dir``. It is written
  only after pre-reboot answered 200 and removed only after steady-state answered 200, so that it
  never claims a slot the server did not grant; it outlives the reboot, as the record in etcd or
  a Lease does. A kill -9 between the 200 and the write leaves the slot held on the server with
  no record: the agent, still pending, asks again (200, recursive) -- or, no longer pending, it
  finds itself "in line" and leaves it with a steady-state (which also frees that slot);
- *waiting* is polling: a refused pre-reboot (any 4xx; 423 from ours and poseidon's, 500
  ``failed_lock`` from airlock) shows the slots full until the next poll, ``fleetlock_poll_
  interval`` later with +-20 % jitter; a 5xx or no answer is BackendUnavailable (the agent backs
  off). On our server a refused client keeps its place in line meanwhile;
- the number of slots is the server's: the view shows ``max_holders``, the agent's own.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import ssl
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from rebootcoord.core.group import Ending
from rebootcoord.core.semaphore import (
    NO_LIMITS,
    GroupView,
    HolderRecord,
    Limits,
    PauseInfo,
    SemaphoreState,
    Waiter,
)
from rebootcoord.core.types import Group, HolderId, NodeName
from rebootcoord.errors import BackendUnavailable, SlotLost, clipped

log = logging.getLogger(__name__)

TIMEOUT = 900.0  # a server may drain the node before it answers pre-reboot (Zincati waits 30 min)
#: Who holds the slots while the server refuses us: FleetLock does not say.
OTHERS = HolderId("(held: the FleetLock server refused)")


class FleetLockSemaphore:
    """The Semaphore port over a FleetLock server. Thread-safe."""

    def __init__(
        self,
        base_url: str,
        *,
        group: Group,
        holder: HolderId,
        max_holders: int,
        state_dir: str,
        poll_interval: float = 30.0,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        timeout: float = TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``cert_file``/``key_file``: a client certificate, for a server that binds ids to
        certificates (raises OSError when they cannot be loaded)."""
        self.base = base_url.rstrip("/")
        self.group = group
        self.holder = holder
        self.max_holders = max_holders
        self.state = Path(state_dir) / f"fleetlock-{group}.json"
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.clock = clock
        self.context = ssl.create_default_context(cafile=ca_file) if self.base.startswith("https") else None
        if self.context is not None and cert_file:
            self.context.load_cert_chain(cert_file, key_file)
        self._refused_until = 0.0
        self._joined = False
        self._maybe_in_line = not self.state.exists()  # an earlier process may have left a place
        self._revision = 0
        self._rng = random.Random()  # noqa: S311 - jitter, not crypto
        self._lock = threading.Lock()
        self.requests = 0

    # -- the protocol ---------------------------------------------------------------------------

    def _post(self, operation: str) -> tuple[int, str, str]:
        """(status, kind, value) of one call; BackendUnavailable when there is no answer."""
        body = json.dumps({"client_params": {"id": self.holder, "group": self.group}}).encode()
        request = urllib.request.Request(  # noqa: S310 - fleetlock_url is http(s) only (p_opt_url)
            f"{self.base}/v1/{operation}",
            data=body,
            method="POST",
            headers={"fleet-lock-protocol": "true", "content-type": "application/json"},
        )
        self.requests += 1
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self.context) as response:  # noqa: S310
                return response.status, "ok", ""
        except urllib.error.HTTPError as exc:
            raw = exc.read(4096)
            try:
                doc = json.loads(raw)
                kind, value = str(doc.get("kind", "")), str(doc.get("value", ""))
            except (ValueError, AttributeError):
                kind, value = f"generic_http_{exc.code}", raw.decode("utf-8", "replace")
            return exc.code, clipped(kind, 60), clipped(value, 300)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise BackendUnavailable(f"FleetLock server {self.base}: {exc}") from exc

    # -- the Semaphore port -----------------------------------------------------------------------

    def ensure(self, max_holders: int, *, member: HolderId | None = None, now: float = 0.0) -> None:
        """Nothing to create: the server owns its groups."""

    def read(self, *, queue: bool = True, recent: bool = False) -> GroupView:
        record = self._record()
        with self._lock:
            refused = self.clock() < self._refused_until
            in_line = self._joined or self._maybe_in_line
        records = {self.holder: record} if record is not None else {}
        if record is not None:
            slots = SemaphoreState(self.max_holders, (self.holder,))
        elif refused:  # full until the next poll is due
            slots = SemaphoreState(self.max_holders, tuple(_others(self.max_holders)))
        else:
            slots = SemaphoreState(self.max_holders)
        node = record.node if record is not None else NodeName(self.holder)
        waiters = (Waiter(self.holder, node, 0.0, 0),) if in_line else ()
        return GroupView(self.group, slots, records, waiters if queue else (), revision=self._revision)

    def _record(self) -> HolderRecord | None:
        try:
            raw = self.state.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BackendUnavailable(f"cannot read the holder record {self.state}: {exc}") from exc
        return HolderRecord.decode(raw, key=str(self.state))  # CorruptDocument for anything malformed

    def _write(self, record: HolderRecord) -> None:
        self.state.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.state.parent, prefix=".fleetlock-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(record.encode())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.state)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def join_queue(self, waiter: Waiter) -> None:
        with self._lock:
            self._joined = True
            self._maybe_in_line = False

    def queue_joined(self, holder: HolderId) -> bool:
        return self._joined

    def leave_queue(self, holder: HolderId) -> None:
        """No longer waiting: steady-state, which takes our place out of our server's line (and
        frees a slot an earlier process of ours was granted but could not record)."""
        if self._record() is not None:
            return
        status, kind, value = self._post("steady-state")
        if status >= 500:
            raise BackendUnavailable(f"FleetLock steady-state answered {status} {kind}: {value}")
        if status != 200:  # poseidon answers a non-holder 423 lock_held: nothing of ours to give back
            log.debug("FleetLock steady-state, holding nothing, answered %d %s: %s", status, kind, value)
        with self._lock:
            self._joined = self._maybe_in_line = False

    def wake_on(
        self, view: GroupView, holder: HolderId, role: str, on_wake: Callable[[], None]
    ) -> Callable[[], None]:
        """FleetLock has no watch: wake when the next poll is due."""
        with self._lock:
            due = max(0.0, self._refused_until - self.clock())
        timer = threading.Timer(due, on_wake)
        timer.daemon = True
        timer.start()
        return timer.cancel

    def acquire(
        self, record: HolderRecord, *, limits: Limits = NO_LIMITS, line: tuple[Waiter, ...] | None = None
    ) -> int | None:
        """pre-reboot. ``limits`` and ``line`` are not FleetLock's: the server decides (ours by
        its own)."""
        status, kind, value = self._post("pre-reboot")
        if status == 200:
            self._write(record)
            with self._lock:
                self._joined = self._maybe_in_line = False
                self._refused_until = 0.0
                self._revision += 1
            log.info("FleetLock server %s granted a slot of group %s", self.base, self.group)
            return self._revision
        if status >= 500 and kind != "failed_lock":  # airlock answers a full group with 500 failed_lock
            raise BackendUnavailable(f"FleetLock pre-reboot answered {status} {kind}: {value}")
        jitter = self._rng.uniform(0.8, 1.2)
        with self._lock:
            self._refused_until = self.clock() + self.poll_interval * jitter
        log.info("FleetLock pre-reboot refused (%d %s): %s", status, kind, value)
        return None

    def update(self, record: HolderRecord) -> None:
        if self._record() is None:
            raise SlotLost(f"{record.id} has no holder record in {self.state}")
        self._write(record)

    def release(self, holder: HolderId, ending: Ending | None = None) -> int | None:
        """steady-state (the server writes its history)."""
        if self._record() is None:
            return None
        status, kind, value = self._post("steady-state")
        if status != 200:
            raise BackendUnavailable(f"FleetLock steady-state answered {status} {kind}: {value}")
        self.drop_record(holder)
        with self._lock:
            self._revision += 1
            return self._revision

    def drop_record(self, holder: HolderId) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.state.unlink()

    def reclaim(self, holder: HolderId, expect: HolderRecord, ending: Ending | None = None) -> bool:
        return False  # only the server knows its holders

    def pause(self, info: PauseInfo) -> None:
        """FleetLock cannot pause a group: say so; the slot this node holds stays held."""
        log.error("cannot pause group %s through FleetLock (%s): pause it on the server's store with "
                  "rebootctl pause", self.group, info.reason)  # fmt: skip

    def close(self) -> None:
        pass


def _others(n: int) -> list[HolderId]:
    return [HolderId(f"{OTHERS} {i + 1}") for i in range(n)]
