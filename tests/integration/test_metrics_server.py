"""The metrics server under a flood of idle connections: /healthz and /metrics still answer,
and the agent's memory and threads stay as they were (they doubled at 2,000 connections with
the standard library's thread-per-connection server)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from rebootcoord.sim.etcd_server import EtcdServer
from rebootcoord.sim.procs import free_port
from tests.conftest import wait_for

pytestmark = pytest.mark.etcd

FLOOD = 5000


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except OSError as exc:
        return 0, str(exc)


def test_five_thousand_idle_connections_change_nothing(etcd: EtcdServer, prefix: str, tmp_path: Path) -> None:
    port = free_port()
    boot = tmp_path / "boot_id"
    boot.write_text("b1\n")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "rebootcoord", "agent", "--node-name", "flooded",
            "--etcd-endpoints", etcd.endpoint, "--etcd-key-prefix", prefix, "--host-root", str(tmp_path),
            "--boot-id-file", str(boot), "--metrics-address", f"127.0.0.1:{port}", "--check-interval", "1s",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    idle: list[socket.socket] = []
    try:
        wait_for(lambda: _get(base + "/healthz")[0] == 200, timeout=60, what="the agent's /healthz")
        for _ in range(20):
            _get(base + "/metrics")  # warm: the figure to compare with is a serving agent's
        time.sleep(1)
        rss_idle, threads_idle = _status(proc.pid, "VmRSS"), _status(proc.pid, "Threads")
        for _ in range(FLOOD):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            idle.append(s)
        half = socket.create_connection(("127.0.0.1", port), timeout=10)
        half.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # a request that never ends
        idle.append(half)
        status, body = _get(base + "/healthz")
        assert status == 200 and body.strip() == "ok", body
        status, body = _get(base + "/metrics")
        assert status == 200 and "rebootcoord_phase" in body
        rss_flooded, threads_flooded = _status(proc.pid, "VmRSS"), _status(proc.pid, "Threads")
        assert rss_flooded <= rss_idle * 1.2, f"RSS {rss_idle} kB idle, {rss_flooded} kB flooded"
        assert threads_flooded <= threads_idle + 4, f"{threads_idle} threads idle, {threads_flooded} flooded"
        assert proc.poll() is None
    finally:
        for s in idle:
            s.close()
        proc.terminate()
        proc.wait(15)
    assert proc.returncode == 0


def test_answers_are_http() -> None:
    from prometheus_client import CollectorRegistry, Counter

    from rebootcoord.daemon.metrics import serve

    registry = CollectorRegistry()
    Counter("probe_total", "a probe", registry=registry).inc()
    stop, port = serve("127.0.0.1:0", registry, lambda: (False, "main loop stalled for 99s"))
    try:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert err.value.code == 503 and err.value.read() == b"main loop stalled for 99s\n"
        status, body = _get(f"http://127.0.0.1:{port}/metrics?name[]=probe_total")
        assert status == 200 and "probe_total 1.0" in body
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/nope", timeout=5)
        assert err.value.code == 404
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"X" * 20000)  # no request line end within the size limit: 431, dropped
            with contextlib.suppress(ConnectionResetError):  # closed with our bytes unread: a reset
                assert s.recv(100).startswith(b"HTTP/1.0 431 ")
    finally:
        stop()
