"""The event log: one JSON line per phase change, appended atomically (one write per line)."""

from __future__ import annotations

import json
import os
from typing import Any


class EventLog:
    """Appends to ``path``; several agents may share one file (O_APPEND, one write() per line)."""

    def __init__(self, path: str | None) -> None:
        self.path = path

    def emit(self, **fields: Any) -> None:
        if not self.path:
            return
        line = (json.dumps(fields, sort_keys=False, separators=(",", ":")) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
