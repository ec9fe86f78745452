"""The alert gate fails closed on any answer it cannot read: a proxy's error page, a truncated
body, ``{"status":"success"}`` without data (it once raised KeyError and crashed the gate), a
hostile document. A loopback HTTP server stands in for what answers at the configured URL."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from rebootcoord.adapters.prometheus import FiringAlerts

ANSWERS = {
    "success without data": (b'{"status":"success"}', "no list of series"),
    "data without result": (b'{"status":"success","data":{}}', "no list of series"),
    "result not a list": (b'{"status":"success","data":{"result":7}}', "no list of series"),
    "series not objects": (b'{"status":"success","data":{"result":[1,2]}}', "no list of series"),
    "an error": (b'{"status":"error","error":"bad query"}', "status 'error': 'bad query'"),
    "html": (b"<html>502 Bad Gateway</html>", "not valid JSON"),
    "truncated": (b'{"status":"success","data":{"result":[', "not valid JSON"),
    "deep nesting": (b"[" * 100_000, "levels deep"),
    "a list": (b"[]", "expected a JSON object"),
}


@pytest.fixture
def answering() -> Iterator[tuple[str, dict[str, bytes]]]:
    body = {"now": b""}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body["now"])

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", body
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("case", sorted(ANSWERS))
def test_an_answer_not_understood_blocks_with_its_reason(
    answering: tuple[str, dict[str, bytes]], case: str
) -> None:
    url, body = answering
    body["now"], reason = ANSWERS[case]
    result = FiringAlerts(url, timeout=5).check()
    assert not result.ok
    assert reason in result.detail and len(result.detail) < 400


def test_a_good_answer_still_reads(answering: tuple[str, dict[str, bytes]]) -> None:
    url, body = answering
    body["now"] = b'{"status":"success","data":{"resultType":"vector","result":[]}}'
    assert FiringAlerts(url, timeout=5).check().ok
    body["now"] = (
        b'{"status":"success","data":{"result":[{"metric":{"alertname":"DiskFull"}},{"metric":{}}]}}'
    )
    result = FiringAlerts(url, timeout=5).check()
    assert not result.ok and result.detail == "firing alerts: ?, DiskFull"
