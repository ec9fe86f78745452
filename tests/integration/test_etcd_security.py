"""TLS with client certificates, and user/password authentication, against real etcd servers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rebootcoord.core.semaphore import Waiter
from rebootcoord.core.types import Group, HolderId, NodeName
from rebootcoord.daemon.group import GroupClient, etcd_group
from rebootcoord.errors import AccessDenied, BackendUnavailable
from rebootcoord.sim.etcd_server import EtcdServer, find_etcd
from tests.support.certs import make_pki

pytestmark = pytest.mark.etcd


def etcdctl() -> str:
    return os.path.join(os.path.dirname(find_etcd()), "etcdctl")


def test_tls_with_client_certificate(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    server = EtcdServer(
        data_dir=str(tmp_path / "etcd"),
        scheme="https",
        extra_args=(
            "--cert-file", str(pki.server_cert), "--key-file", str(pki.server_key),
            "--trusted-ca-file", str(pki.ca), "--client-cert-auth",
        ),
    ).start()  # fmt: skip
    try:
        good = etcd_group(
            (server.endpoint,),
            prefix="tls",
            group=Group("g"),
            ca_file=str(pki.ca),
            cert_file=str(pki.client_cert),
            key_file=str(pki.client_key),
        )
        good.ensure(1)
        good.join_queue(Waiter(HolderId("a"), NodeName("a"), time.time(), 0))
        assert good.read().queue_position(HolderId("a")) == 0
        good.close()
        # Without the client certificate the server refuses us: an error, not a hang.
        anonymous = etcd_group(
            (server.endpoint,), prefix="tls", group=Group("g"), ca_file=str(pki.ca), timeout=2, retry_for=1
        )
        with pytest.raises(BackendUnavailable):
            anonymous.read()
        anonymous.close()
    finally:
        server.cleanup()


def test_user_and_password(tmp_path: Path) -> None:
    server = EtcdServer(data_dir=str(tmp_path / "etcd")).start()
    try:
        ctl = [etcdctl(), "--endpoints", server.endpoint]
        for args in (
            ["user", "add", "root:rootpw"],
            ["user", "add", "agent:agentpw"],
            ["role", "add", "reboots"],
        ):
            subprocess.run([*ctl, *args], check=True, capture_output=True)
        subprocess.run(
            [*ctl, "role", "grant-permission", "reboots", "--prefix=true", "readwrite", "auth/"],
            check=True,
            capture_output=True,
        )
        subprocess.run([*ctl, "user", "grant-role", "agent", "reboots"], check=True, capture_output=True)
        subprocess.run([*ctl, "auth", "enable"], check=True, capture_output=True)

        def sem(user: str | None, password: str | None) -> GroupClient:
            return etcd_group(
                (server.endpoint,),
                prefix="auth",
                group=Group("g"),
                username=user,
                password=password,
                retry_for=1,
            )

        agent = sem("agent", "agentpw")
        agent.ensure(1)
        agent.join_queue(Waiter(HolderId("a"), NodeName("a"), time.time(), 0))
        assert agent.read().slots is not None
        agent.close()
        for user, password in (("agent", "wrong"), (None, None)):
            intruder = sem(user, password)
            with pytest.raises(BackendUnavailable):
                intruder.read()
            intruder.close()
        with pytest.raises(AccessDenied, match="authentication failed"):
            sem("agent", "wrong").read()

        # A wrong password is not an outage: rebootctl and the agent say so and exit 3 at once
        # (they retried it for 30 s, and SIGTERM then waited).
        common = ["--etcd-endpoints", server.endpoint, "--etcd-key-prefix", "auth", "--group", "g",
                  "--etcd-username", "agent", "--etcd-password", "wrong",
                  "--etcd-allow-plaintext-password", "true"]  # fmt: skip
        ctl = subprocess.run([sys.executable, "-m", "rebootcoord.cli.rebootctl", *common, "status"],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert ctl.returncode == 3, ctl.stderr
        assert ctl.stderr.startswith("rebootctl: etcd authentication failed"), ctl.stderr
        assert "wrong" not in ctl.stderr
        boot = tmp_path / "boot_id"
        boot.write_text("b1\n")
        agent = subprocess.run(
            [sys.executable, "-m", "rebootcoord", "agent", "--node-name", "a", "--host-root", str(tmp_path),
             "--boot-id-file", str(boot), "--metrics-address", "", *common],
            capture_output=True, text=True, timeout=60,  # retried as an outage, it never ended
        )  # fmt: skip
        assert agent.returncode == 3 and "authentication failed" in agent.stderr, agent.stderr
        assert "Traceback" not in agent.stderr + ctl.stderr
    finally:
        server.cleanup()


def test_rebootctl_uses_tls_settings(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    server = EtcdServer(
        data_dir=str(tmp_path / "etcd"),
        scheme="https",
        extra_args=(
            "--cert-file", str(pki.server_cert), "--key-file", str(pki.server_key),
            "--trusted-ca-file", str(pki.ca), "--client-cert-auth",
        ),
    ).start()  # fmt: skip
    try:
        config = tmp_path / "agent.yaml"
        config.write_text(
            f"etcd_endpoints: [{server.endpoint}]\netcd_ca_file: {pki.ca}\n"
            f"etcd_cert_file: {pki.client_cert}\netcd_key_file: {pki.client_key}\n"
        )
        run = [sys.executable, "-m", "rebootcoord.cli.rebootctl", "--config", str(config)]
        done = subprocess.run([*run, "set-max", "3"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        status = subprocess.run([*run, "status"], capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and "default  3" in status.stdout
    finally:
        server.cleanup()
