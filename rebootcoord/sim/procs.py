"""Child processes that die with their parent, and free loopback ports."""

from __future__ import annotations

import socket
import subprocess
import sys


def orphan_proof(argv: list[str]) -> list[str]:
    """Wrap argv so the child gets SIGKILL when the thread that started it exits (see pdeath)."""
    return [sys.executable, "-m", "rebootcoord.sim.pdeath", *argv]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
