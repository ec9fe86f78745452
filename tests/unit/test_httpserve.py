"""The bounded HTTP server's two ways of answering: at once, in the thread that reads the
sockets (``quick``), or by a worker. A request the quick handler answers never waits for a
worker, so refusals keep flowing while every worker is busy with a slow request."""

from __future__ import annotations

import socket
import threading

from rebootcoord.daemon.httpserve import BoundedHTTPServer, Peer


def get(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_quick_answers_do_not_wait_for_a_busy_worker() -> None:
    release = threading.Event()
    slow_started = threading.Event()

    def handler(
        method: str, path: str, headers: dict[str, str], body: bytes, peer: Peer
    ) -> tuple[str, str, bytes]:
        slow_started.set()
        release.wait(30)
        return "200 OK", "text/plain", b"slow " + path.encode()

    def quick(
        method: str, path: str, headers: dict[str, str], body: bytes, peer: Peer
    ) -> tuple[str, str, bytes] | None:
        if path == "/quick":
            return "423 Locked", "text/plain", b"x" * 3000
        return None

    server = BoundedHTTPServer("127.0.0.1", 0, handler, workers=1, quick=quick, name="test").start()
    try:
        slow: list[bytes] = []
        waiting = threading.Thread(target=lambda: slow.append(get(server.port, "/slow")))
        waiting.start()
        assert slow_started.wait(10)  # the only worker is busy now
        answers = [get(server.port, "/quick") for _ in range(3)]
        assert all(a.startswith(b"HTTP/1.0 423 Locked\r\n") and a.endswith(b"x" * 3000) for a in answers)
        assert not slow  # still waiting for its worker
        release.set()
        waiting.join(10)
        assert slow[0].startswith(b"HTTP/1.0 200 OK\r\n") and slow[0].endswith(b"slow /slow")
    finally:
        release.set()
        server.stop()
