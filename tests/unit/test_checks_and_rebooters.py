"""Post-reboot checks (command, HTTP) and reboot methods (command, signal), on real processes and a
real HTTP server on loopback. The signal method is aimed at a child process standing in for PID 1."""

from __future__ import annotations

import http.server
import os
import signal
import socket
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
from rebootcoord.adapters.relay import RelayRebooter, SignalRelay
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


def _pid1_stand_in(got: Path) -> subprocess.Popen[str]:
    """A child that stands in for PID 1: records SIGRTMIN+5 in ``got`` and exits."""
    child = subprocess.Popen(
        [
            sys.executable, "-c",
            "import os, signal, sys, time\n"
            # written whole, then renamed: the test sees the file only with its content
            f"def on(*a):\n    open({str(got)!r} + '.tmp', 'w').write('reboot')\n"
            f"    os.rename({str(got)!r} + '.tmp', {str(got)!r})\n    sys.exit(0)\n"
            "signal.signal(signal.SIGRTMIN + 5, on)\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    return child


def test_signal_rebooter_sends_sigrtmin_plus_5(tmp_path: Path) -> None:
    """systemd reboots on SIGRTMIN+5 to PID 1; a child stands in for PID 1 and records the signal."""
    got = tmp_path / "got"
    child = _pid1_stand_in(got)
    try:
        SignalRebooter(int(signal.SIGRTMIN) + 5, pid=child.pid).reboot()
        wait_for(got.exists, timeout=10, what="the signal to arrive")
        assert got.read_text() == "reboot"
    finally:
        child.kill()
        child.wait()
    with pytest.raises(RebootError, match="cannot send signal"):
        SignalRebooter(int(signal.SIGRTMIN) + 5, pid=child.pid).reboot()


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[tuple[SignalRelay, Path, subprocess.Popen[str]]]:
    got = tmp_path / "got"
    child = _pid1_stand_in(got)
    server = SignalRelay(str(tmp_path / "relay.sock"), signal=int(signal.SIGRTMIN) + 5, allow_uid=os.getuid(),
                         pid=child.pid)  # fmt: skip
    server.bind()
    stop = threading.Event()
    thread = threading.Thread(target=server.serve, args=(stop,), daemon=True)
    thread.start()
    try:
        yield server, got, child
    finally:
        stop.set()
        thread.join(5)
        server.close()
        child.kill()
        child.wait()


def test_the_relay_sends_the_signal_for_the_agent(
    relay: tuple[SignalRelay, Path, subprocess.Popen[str]],
) -> None:
    server, got, _child = relay
    assert oct(os.stat(server.socket_path).st_mode & 0o777) == "0o660"
    RelayRebooter(server.socket_path).reboot()
    wait_for(got.exists, timeout=10, what="the relayed signal to arrive")
    assert got.read_text() == "reboot" and server.sent == 1


def test_the_relay_refuses_other_uids_and_other_requests(
    relay: tuple[SignalRelay, Path, subprocess.Popen[str]],
) -> None:
    server, got, _child = relay
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(server.socket_path)
        sock.sendall(b"poweroff\n")
        assert sock.recv(100).startswith(b"error: unknown request")
    server.allow_uid = os.getuid() + 1
    with pytest.raises(RebootError, match=f"uid {os.getuid()} may not ask"):
        RelayRebooter(server.socket_path).reboot()
    assert server.sent == 0 and not got.exists()


def test_a_relay_that_is_not_there_is_a_reboot_error(tmp_path: Path) -> None:
    with pytest.raises(RebootError, match="cannot reach the signal relay"):
        RelayRebooter(str(tmp_path / "absent.sock")).reboot()
