"""A small HTTP/1.0 server for /metrics and /healthz that no client can exhaust.

The standard library's threading server starts one thread per connection and waits on each
forever: 2,000 idle connections doubled the agent's memory, and a few thousand would reach the
chart's memory limit and get the agent OOM-killed mid-cycle. Here one thread owns every socket
(``selectors``), reading requests without blocking; a complete request goes to a pool of
``WORKERS`` threads that answer it and close the connection. Bounds:

- at most ``MAX_CONNECTIONS`` open: a new connection beyond it pushes out the oldest one that has
  not sent a whole request yet (so a flood of idle connections never keeps a scraper out);
- a request must arrive whole within ``READ_TIMEOUT`` and be at most ``MAX_REQUEST`` bytes;
- an answer must be sent within ``WRITE_TIMEOUT``.

Every answer closes its connection (``Connection: close``), which is what Prometheus expects of
a target that does not keep connections alive.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 128
WORKERS = 4
READ_TIMEOUT = 10.0
WRITE_TIMEOUT = 10.0
MAX_REQUEST = 8192

#: (status line, content type, body) for a request (method, path, headers).
Handler = Callable[[str, str, dict[str, str]], tuple[str, str, bytes]]


class BoundedHTTPServer:
    def __init__(self, host: str, port: int, handler: Handler) -> None:
        self.handler = handler
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, port))
        self._listener.listen(128)
        self._listener.setblocking(False)
        self.port = int(self._listener.getsockname()[1])
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        # connection -> (accepted at, bytes so far), oldest first
        self._pending: OrderedDict[socket.socket, tuple[float, bytearray]] = OrderedDict()
        self._pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="metrics")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="metrics-accept", daemon=True)
        self.dropped = 0  # connections closed unanswered (limit, timeout, oversized request)

    def start(self) -> BoundedHTTPServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        for conn in list(self._pending):
            self._drop(conn, counted=False)
        self._selector.close()
        self._listener.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.5):
                if key.fileobj is self._listener:
                    self._accept()
                else:
                    self._read(key.fileobj)  # type: ignore[arg-type]
            self._expire(time.monotonic())

    def _accept(self) -> None:
        for _ in range(64):  # a burst, then the others get a turn
            try:
                conn, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE: out of descriptors; the oldest go first
                log.warning("metrics server: cannot accept a connection: %s", exc)
                self._drop_oldest()
                return
            if len(self._pending) >= MAX_CONNECTIONS:
                self._drop_oldest()
            conn.setblocking(False)
            self._pending[conn] = (time.monotonic(), bytearray())
            self._selector.register(conn, selectors.EVENT_READ)

    def _read(self, conn: socket.socket) -> None:
        entry = self._pending.get(conn)
        if entry is None:
            return
        try:
            chunk = conn.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._drop(conn, counted=False)  # the client went away
            return
        data = entry[1]
        data += chunk
        if b"\r\n\r\n" not in data and b"\n\n" not in data:
            if len(data) > MAX_REQUEST:
                self._drop(conn)
            return
        self._selector.unregister(conn)
        del self._pending[conn]
        self._pool.submit(self._answer, conn, bytes(data))

    def _answer(self, conn: socket.socket, raw: bytes) -> None:
        try:
            head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0].decode("latin-1")
            lines = head.replace("\r\n", "\n").split("\n")
            parts = lines[0].split()
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                status, ctype, body = "400 Bad Request", "text/plain", b"bad request\n"
            else:
                status, ctype, body = self.handler(parts[0], parts[1], headers)
            payload = b"" if parts[:1] == ["HEAD"] else body
            response = (
                f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            ).encode("latin-1") + payload
            conn.settimeout(WRITE_TIMEOUT)
            conn.sendall(response)
        except Exception:
            log.debug("metrics server: answering failed", exc_info=True)
        finally:
            conn.close()

    def _expire(self, now: float) -> None:
        while self._pending:
            conn, (accepted, _) = next(iter(self._pending.items()))
            if now - accepted < READ_TIMEOUT:
                return
            self._drop(conn)

    def _drop_oldest(self) -> None:
        if self._pending:
            self._drop(next(iter(self._pending)))

    def _drop(self, conn: socket.socket, *, counted: bool = True) -> None:
        self._pending.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn)
        conn.close()
        self.dropped += counted
