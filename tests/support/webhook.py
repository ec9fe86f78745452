"""A webhook receiver on loopback for the notification tests: every request's path,
Authorization header and decoded body (JSON or form), as it came; a port that takes connections
and never answers (a receiver stuck); one that nobody listens on (a receiver down)."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Receiver:
    server: http.server.ThreadingHTTPServer
    got: list[dict[str, Any]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def wait(self, count: int, timeout: float = 30) -> list[dict[str, Any]]:
        """The first ``count`` requests, once they came (a condition, not a sleep)."""
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.got) >= count, timeout=timeout), self.got
            return list(self.got)


@contextmanager
def receiving() -> Iterator[Receiver]:
    holder: list[Receiver] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
            kind = self.headers.get("Content-Type", "")
            data = json.loads(body) if "json" in kind else dict(urllib.parse.parse_qsl(body))
            entry = {"path": self.path, "auth": self.headers.get("Authorization"), "data": data}
            self.send_response(200)
            self.end_headers()
            with holder[0].cond:
                holder[0].got.append(entry)
                holder[0].cond.notify_all()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    holder.append(Receiver(server))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield holder[0]
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Stuck:
    """A receiver that takes each connection and never answers: ``connections`` counts them."""

    port: int
    connections: int = 0


@contextmanager
def hanging() -> Iterator[Stuck]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    stuck = Stuck(int(sock.getsockname()[1]))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return  # closed
            held.append(conn)  # kept open, never read nor answered
            stuck.connections += 1

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield stuck
    finally:
        sock.close()
        for conn in held:
            conn.close()


def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()
    return port
