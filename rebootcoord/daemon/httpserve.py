"""A small HTTP/1.0 server that no client can exhaust: /metrics and /healthz, and FleetLock.

The standard library's threading server starts one thread per connection and waits on each
forever: 2,000 idle connections doubled the agent's memory, and a few thousand would reach the
chart's memory limit and get the agent OOM-killed mid-cycle. Here one thread owns every socket
(``selectors``), reading requests without blocking; a complete request goes to a pool of
``WORKERS`` threads that answer it and close the connection. Bounds:

- at most ``MAX_CONNECTIONS`` open: a new connection beyond it pushes out the oldest one that has
  not sent a whole request yet (so a flood of idle connections never keeps a scraper out);
- a request must arrive whole within ``READ_TIMEOUT`` and be at most ``MAX_REQUEST`` bytes;
- an answer must be sent within ``WRITE_TIMEOUT``;
- a body (``max_body`` above 0: FleetLock's POSTs) needs a Content-Length of at most ``max_body``;
- with ``tls``, the handshake is made by the same thread, without blocking, inside READ_TIMEOUT.

Slow clients cost a socket and a few bytes, never a worker: cheroot and the standard library read
a request in the thread that answers it, so as many half-sent requests as workers shut everyone
out (tests/integration/test_fleetlock_etcd.py sends 200).

Every answer closes its connection (``Connection: close``), which is what Prometheus expects of
a target that does not keep connections alive.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 128
WORKERS = 4
READ_TIMEOUT = 10.0
WRITE_TIMEOUT = 10.0
MAX_REQUEST = 8192


@dataclass(frozen=True)
class Peer:
    """Who sent a request: its address and, over TLS with client certificates, the names its
    certificate was issued to (the subject's CN, the DNS and URI SANs), verified by the CA."""

    address: str = ""
    subject: str = ""  # "CN=node-1, O=..." ("" : no certificate)
    names: tuple[str, ...] = ()

    @property
    def certified(self) -> bool:
        return bool(self.subject or self.names)

    @classmethod
    def of(cls, conn: socket.socket) -> Peer:
        try:
            host, port = conn.getpeername()[:2]
            address = f"{host}:{port}"
        except (OSError, ValueError):
            address = ""
        cert = conn.getpeercert() if isinstance(conn, ssl.SSLSocket) else None
        if not cert:
            return cls(address)
        return cls(address, _subject(cert), _names(cert))


def _subject(cert: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for rdn in cert.get("subject", ()) for k, v in rdn)[:300]


def _names(cert: dict[str, Any]) -> tuple[str, ...]:
    names = [v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
    names += [v for k, v in cert.get("subjectAltName", ()) if k in ("DNS", "URI")]
    return tuple(dict.fromkeys(names))


#: (status line, content type, body) for a request (method, path, headers, body, peer).
Handler = Callable[[str, str, dict[str, str], bytes, Peer], tuple[str, str, bytes]]
#: The same, or None when the answer needs waiting on something (then ``Handler`` answers).
QuickHandler = Callable[[str, str, dict[str, str], bytes, Peer], tuple[str, str, bytes] | None]


class BoundedHTTPServer:
    def __init__(
        self,
        host: str,
        port: int,
        handler: Handler,
        *,
        workers: int = WORKERS,
        max_body: int = 0,
        tls: ssl.SSLContext | None = None,
        name: str = "metrics",
        quick: QuickHandler | None = None,
    ) -> None:
        """``quick``: tried first, in the thread that reads the sockets, for answers that wait
        on nothing; a request it answers None goes to a worker (``handler``)."""
        self.handler = handler
        self.quick = quick
        self.max_body = max_body
        self.tls = tls
        self.name = name
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
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"{name}-accept", daemon=True)
        self.dropped = 0  # connections closed unanswered (limit, timeout, oversized request)

    def start(self) -> BoundedHTTPServer:
        self._thread.start()
        return self

    def alive(self) -> bool:
        return self._thread.is_alive()

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
                log.warning("%s server: cannot accept a connection: %s", self.name, exc)
                self._drop_oldest()
                return
            if len(self._pending) >= MAX_CONNECTIONS:
                self._drop_oldest()
            conn.setblocking(False)
            if self.tls is not None:
                try:
                    conn = self.tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
                except (ssl.SSLError, OSError):
                    conn.close()
                    continue
            self._pending[conn] = (time.monotonic(), bytearray())
            self._selector.register(conn, selectors.EVENT_READ)

    def _read(self, conn: socket.socket) -> None:
        entry = self._pending.get(conn)
        if entry is None:
            return
        try:
            if isinstance(conn, ssl.SSLSocket) and not getattr(conn, "_handshaken", False):
                conn.do_handshake()
                conn._handshaken = True  # type: ignore[attr-defined]
            chunk = conn.recv(4096)
            while isinstance(conn, ssl.SSLSocket) and conn.pending():  # decrypted, not signalled again
                chunk += conn.recv(conn.pending())
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except OSError:  # ssl.SSLError too: a client without the right certificate
            chunk = b""
        if not chunk:
            self._drop(conn, counted=False)  # the client went away
            return
        data = entry[1]
        data += chunk
        if not self._complete(data):
            if len(data) > MAX_REQUEST + self.max_body:
                with contextlib.suppress(OSError):  # best effort: the client may not read it
                    conn.send(b"HTTP/1.0 431 Request Header Fields Too Large\r\nConnection: close\r\n\r\n")
                self._drop(conn)
            return
        self._selector.unregister(conn)
        del self._pending[conn]
        if self.quick is None or not self._answer_at_once(conn, bytes(data)):
            self._pool.submit(self._answer, conn, bytes(data))

    def _complete(self, data: bytearray) -> bool:
        """The request is whole: its head, and the body its Content-Length announces (or the
        head alone, to be refused, when the length is missing, unreadable or above max_body)."""
        head, sep, body = _split(bytes(data))
        if not sep:
            return False
        if self.max_body <= 0:
            return True
        length = _content_length(head)
        return length is None or length > self.max_body or len(body) >= length

    def _answer(self, conn: socket.socket, raw: bytes) -> None:
        """(In a worker.) Answer the request and close the connection."""
        try:
            response = self._respond(conn, raw, self.handler)
            assert response is not None
        except Exception:
            log.debug("%s server: answering failed", self.name, exc_info=True)
            conn.close()
            return
        self._send_rest(conn, response)

    def _answer_at_once(self, conn: socket.socket, raw: bytes) -> bool:
        """(In the socket thread.) Answer with ``quick`` if it can, without blocking: the answer
        sent as far as the socket takes it, the rest by a worker. False: ``quick`` could not."""
        assert self.quick is not None
        try:
            response = self._respond(conn, raw, self.quick)
        except Exception:
            log.debug("%s server: answering at once failed", self.name, exc_info=True)
            return False
        if response is None:
            return False
        try:
            sent = conn.send(response)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            sent = 0
        except OSError:
            conn.close()
            return True
        if sent < len(response):
            self._pool.submit(self._send_rest, conn, response[sent:])
        else:
            conn.close()
        return True

    def _send_rest(self, conn: socket.socket, rest: bytes) -> None:
        """(In a worker.) Send ``rest`` of an answer, then close the connection."""
        try:
            conn.settimeout(WRITE_TIMEOUT)
            conn.sendall(rest)
        except OSError:
            log.debug("%s server: sending failed", self.name, exc_info=True)
        finally:
            conn.close()

    def _respond(self, conn: socket.socket, raw: bytes, handler: Handler | QuickHandler) -> bytes | None:
        """The whole HTTP answer to ``raw`` from ``handler`` (None: it gave none)."""
        head_bytes, _, rest = _split(raw)
        lines = head_bytes.decode("latin-1").replace("\r\n", "\n").split("\n")
        parts = lines[0].split()
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = _content_length(head_bytes)
        answer: tuple[str, str, bytes] | None
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            answer = "400 Bad Request", "text/plain", b"bad request\n"
        elif self.max_body > 0 and "transfer-encoding" in headers:
            answer = "411 Length Required", "text/plain", b"send a Content-Length\n"
        elif self.max_body > 0 and length is not None and length > self.max_body:
            answer = handler(parts[0], parts[1], headers, b" " * (self.max_body + 1), Peer.of(conn))
        else:
            answer = handler(parts[0], parts[1], headers, rest[: length or 0], Peer.of(conn))
        if answer is None:
            return None
        status, ctype, body = answer
        payload = b"" if parts[:1] == ["HEAD"] else body
        return (
            f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode("latin-1") + payload

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


def _split(data: bytes) -> tuple[bytes, bytes, bytes]:
    """(head, separator, rest) of a request; the separator is empty while the head is not whole."""
    crlf, lf = data.find(b"\r\n\r\n"), data.find(b"\n\n")
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return data[:crlf], b"\r\n\r\n", data[crlf + 4 :]
    if lf >= 0:
        return data[:lf], b"\n\n", data[lf + 2 :]
    return data, b"", b""


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            try:
                length = int(value.strip())
            except ValueError:
                return None
            return length if length >= 0 else None
    return 0
