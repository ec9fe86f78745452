"""The signal relay: the one privileged act of the signal method, in a process of its own.

In a Kubernetes pod the agent reads host directories (the sentinel file's). Run as root, it could
also connect to any Unix socket in them (the container runtime's, systemd's), because a read-only
mount does not stop ``connect()``. So in the chart's signal method the agent runs as a non-root
user without capabilities, and a relay container -- root with CAP_KILL alone, no host directory
mounted -- sends the reboot signal to PID 1 when the agent asks over a Unix socket in a volume
the two share. The relay can do nothing else: it sends its one configured signal to PID 1, only
for a peer whose uid it was told to trust.

Protocol (one request per connection): the client writes ``reboot\\n``; the relay answers
``ok\\n`` once the signal was sent, or ``error: <why>\\n``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import threading
from dataclasses import dataclass

from rebootcoord.errors import RebootError

log = logging.getLogger(__name__)

REQUEST = b"reboot\n"
_MAX_LINE = 64
_SO_PEERCRED_FORMAT = "3i"  # pid, uid, gid


@dataclass
class RelayRebooter:
    """Rebooter: asks the relay at ``socket_path`` to send the reboot signal."""

    socket_path: str
    timeout: float = 10.0

    def reboot(self) -> None:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(self.socket_path)
                sock.sendall(REQUEST)
                answer = _read_line(sock)
        except OSError as exc:
            raise RebootError(f"cannot reach the signal relay at {self.socket_path}: {exc}") from exc
        if answer != "ok":
            raise RebootError(f"the signal relay at {self.socket_path} refused: {answer or 'no answer'}")


def _read_line(sock: socket.socket) -> str:
    data = b""
    while b"\n" not in data and len(data) < _MAX_LINE:
        chunk = sock.recv(_MAX_LINE)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0].decode("utf-8", "replace").strip()


class SignalRelay:
    """The relay's server: one thread, one request at a time (a reboot is asked for rarely)."""

    def __init__(
        self,
        socket_path: str,
        *,
        signal: int,
        allow_uid: int | None,
        pid: int = 1,
        timeout: float = 5.0,
    ) -> None:
        self.socket_path = socket_path
        self.signal = signal
        self.allow_uid = allow_uid
        self.pid = pid
        self.timeout = timeout
        self.sent = 0
        self._sock: socket.socket | None = None

    def bind(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self.socket_path)
        # Owner and group: the chart runs the relay with the agent's group.
        os.chmod(self.socket_path, 0o660)
        sock.listen(4)
        self._sock = sock

    def serve(self, stop: threading.Event) -> None:
        assert self._sock is not None, "bind() first"
        self._sock.settimeout(0.5)
        while not stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if stop.is_set():
                    break
                raise
            with conn:
                conn.settimeout(self.timeout)
                try:
                    conn.sendall((self._handle(conn) + "\n").encode())
                except OSError as exc:
                    log.warning("relay connection failed: %s", exc)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)

    def _handle(self, conn: socket.socket) -> str:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize(_SO_PEERCRED_FORMAT))
        peer_pid, peer_uid, _gid = struct.unpack(_SO_PEERCRED_FORMAT, creds)
        try:
            line = _read_line(conn)  # read first: an answer before it would reset the client's write
        except OSError as exc:
            return f"error: {exc}"
        if self.allow_uid is not None and peer_uid != self.allow_uid:
            log.warning("refused a request from uid %d (pid %d): only uid %d may ask", peer_uid, peer_pid,
                        self.allow_uid)  # fmt: skip
            return f"error: uid {peer_uid} may not ask for a reboot"
        if (line + "\n").encode() != REQUEST:
            return "error: unknown request (expected 'reboot')"
        try:
            os.kill(self.pid, self.signal)
        except OSError as exc:
            log.error("cannot send signal %d to PID %d: %s", self.signal, self.pid, exc)
            return f"error: cannot send signal {self.signal} to PID {self.pid}: {exc}"
        self.sent += 1
        log.info("sent signal %d to PID %d for uid %d (pid %d)", self.signal, self.pid, peer_uid, peer_pid)
        return "ok"
