"""Gate an agent's progress through its event log: the agent appends one JSON line per phase
change to its configured events_file; make that file a FIFO and reading it becomes a gate.
The agent has no test-only code path for this: it just writes to a file."""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import threading


class EventGate:
    """Reads one agent's event FIFO in a thread; ``hold_after(phase)`` stops reading after it."""

    def __init__(self, path: str) -> None:
        self.path = path
        os.mkfifo(path)
        self.events: list[dict] = []
        self._hold_after: str | None = None
        self.holding = threading.Event()
        self._resume = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def hold_after(self, phase: str) -> None:
        self._hold_after = phase

    def resume(self) -> None:
        self._hold_after = None
        self.holding.clear()
        self._resume.set()

    def phases(self) -> list[str]:
        return [e["phase"] for e in self.events]

    def _run(self) -> None:
        while not self._closed:
            if self.holding.is_set():
                self._resume.wait()
                self._resume.clear()
                continue
            with open(self.path, encoding="utf-8") as fh:  # blocks until the agent opens it to write
                for line in fh:
                    event = json.loads(line)
                    self.events.append(event)
                    if event["phase"] == self._hold_after:
                        self.holding.set()

    def close(self) -> None:
        self._closed = True
        self.resume()
        with contextlib.suppress(OSError):  # unblock a reader waiting for a writer
            fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)


def blocked_on_fifo(pid: int) -> bool:
    for wchan in glob.glob(f"/proc/{pid}/task/*/wchan"):
        with contextlib.suppress(OSError), open(wchan) as fh:
            if fh.read().strip() == "wait_for_partner":
                return True
    return False


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno != errno.ESRCH
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as fh:
        return fh.read().split()[2] != "Z"
    return False
