"""The FleetLock commands' usage errors: exit 2, one line naming the key, the value and what was
expected, no traceback, nothing started."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SERVER = ("rebootcoord", "fleetlock-server")
AGENT = ("rebootcoord", "agent")


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *argv], capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "NODE_NAME": "n1"},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        ((*SERVER, "--backend", "fleetlock"), "backend: got 'fleetlock', expected etcd"),
        ((*SERVER, "--listen", ""), "fleetlock_listen: got ''"),
        ((*SERVER, "--listen", "nowhere"), "fleetlock_listen"),
        ((*SERVER, "--fleetlock-tls-cert-file", "/x.pem"), "give both or neither"),
        ((*SERVER, "--fleetlock-tls-client-ca-file", "/ca.pem"), "need TLS"),
        ((*SERVER, "--fleetlock-tls-cert-file", "/no/cert.pem",
          "--fleetlock-tls-key-file", "/no/key.pem"), "fleetlock_tls_cert_file '/no/cert.pem'"),
        ((*SERVER, "--fleetlock-waiter-ttl", "2s"), "from 10s to 6h"),
        ((*SERVER, "--fleetlock-groups", "a,b/c"), "group names"),
        ((*SERVER, "--fleetlock-unknown-id", "maybe"), "fleetlock_unknown_id"),
        ((*SERVER, "--fleetlock-max-waiters", "5000"), "fleetlock_max_waiters"),
        ((*SERVER, "--fleetlock-client-ids", "[a]"), "fleetlock_client_ids"),
        ((*SERVER, "--fleetlock-client-ids", "{host: ['']}"), "FleetLock ids of 1 to 253 bytes"),
        ((*SERVER, "--fleetlock-groups", "a" * 64), "at most 63"),
        ((*AGENT, "--backend", "fleetlock", "--fleetlock-url", "https://x", "--fleetlock-cert-file", "/c.pem",
          "--metrics-address", ""), "fleetlock_cert_file and fleetlock_key_file: give both or neither"),
        ((*AGENT, "--backend", "fleetlock", "--metrics-address", ""), "fleetlock_url: got ''"),
        ((*AGENT, "--backend", "fleetlock", "--fleetlock-url", "ftp://x"), "http:// or https://"),
        (("rebootcoord.cli.rebootctl", "--backend", "fleetlock", "status"), "which only the agent speaks"),
    ],
)  # fmt: skip
def test_usage_errors_exit_2_with_one_clear_line(argv: tuple[str, ...], says: str, tmp_path: Path) -> None:
    done = run(*argv)
    assert done.returncode == 2, done.stdout + done.stderr
    assert says in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("command", [AGENT, SERVER])
def test_help_lists_every_key_without_a_traceback(command: tuple[str, ...]) -> None:
    """A key's help with a % in it (waves: "10%") once made argparse fail on --help."""
    done = run(*command, "--help")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "--waves" in done.stdout and "--fleetlock-max-waiters" in done.stdout
