"""Post-reboot checks (command, HTTP) and reboot methods (command, signal), on real processes and a
real HTTP server on loopback. The signal method is aimed at a child process standing in for PID 1."""

from __future__ import annotations

import http.server
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from rebootcoord.adapters.checks import CommandCheck, HttpCheck
from rebootcoord.adapters.host import Host
from rebootcoord.adapters.rebooters import CommandRebooter, SignalRebooter
from rebootcoord.core.config import CheckSpec
from rebootcoord.errors import RebootError
from tests.conftest import wait_for


@pytest.fixture
def http_server() -> Iterator[tuple[str, dict[str, int]]]:
    status = {"code": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status["code"])
            self.end_headers()
            self.wfile.write(b"ok\n")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/healthz", status
    server.shutdown()
    server.server_close()


def test_http_check(http_server: tuple[str, dict[str, int]]) -> None:
    url, status = http_server
    check = HttpCheck(
        "kubelet", CheckSpec(type="http", name="kubelet", url=url, expect_status=frozenset({200}))
    )
    assert check.check().ok
    status["code"] = 503
    result = check.check()
    assert not result.ok and "status 503" in result.detail
    refused = HttpCheck(
        "down", CheckSpec(type="http", name="down", url="http://127.0.0.1:1/", timeout=timedelta(seconds=1))
    )
    assert not refused.check().ok


def test_command_check(tmp_path: Path) -> None:
    host = Host()
    ok = CommandCheck("ok", host, CheckSpec(type="command", name="ok", argv=("true",)))
    assert ok.check().ok
    bad = CommandCheck(
        "bad", host, CheckSpec(type="command", name="bad", argv=("sh", "-c", "echo degraded >&2; exit 3"))
    )
    result = bad.check()
    assert not result.ok and "exited 3" in result.detail and "degraded" in result.detail
    missing = CommandCheck(
        "missing", host, CheckSpec(type="command", name="missing", argv=("/nonexistent/x",))
    )
    assert not missing.check().ok


def test_command_rebooter_runs_argv_and_reports_failure(tmp_path: Path) -> None:
    marker = tmp_path / "rebooted"
    CommandRebooter(Host(), ("touch", str(marker))).reboot()
    assert marker.exists()
    with pytest.raises(RebootError, match="exited 1"):
        CommandRebooter(Host(), ("false",)).reboot()
    with pytest.raises(RebootError, match="not found"):
        CommandRebooter(Host(), ("/nonexistent/systemctl", "reboot")).reboot()


def test_signal_rebooter_sends_sigrtmin_plus_5(tmp_path: Path) -> None:
    """systemd reboots on SIGRTMIN+5 to PID 1; a child stands in for PID 1 and records the signal."""
    got = tmp_path / "got"
    child = subprocess.Popen(
        [
            sys.executable, "-c",
            "import signal, sys, time\n"
            f"def on(*a):\n    open({str(got)!r}, 'w').write('reboot')\n    sys.exit(0)\n"
            "signal.signal(signal.SIGRTMIN + 5, on)\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        SignalRebooter(int(signal.SIGRTMIN) + 5, pid=child.pid).reboot()
        wait_for(got.exists, timeout=10, what="the signal to arrive")
        assert got.read_text() == "reboot"
    finally:
        child.kill()
        child.wait()
    with pytest.raises(RebootError, match="cannot send signal"):
        SignalRebooter(int(signal.SIGRTMIN) + 5, pid=child.pid).reboot()
