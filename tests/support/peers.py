"""The real FleetLock peers as processes on loopback: airlock (coreos/airlock, a FleetLock server
on an etcd v3 semaphore) and poseidon/fleetlock (a FleetLock server on a Kubernetes Lease, which
also cordons and drains the client's Node).

Where the binaries come from: ``TESTS_AIRLOCK_BIN`` / ``TESTS_POSEIDON_FLEETLOCK_BIN``, else
``testbin/airlock`` / ``testbin/poseidon-fleetlock``, else ``../shared/peers/<name>`` beside the
checkout (the workplace's copies, built from the peers' public source at the commits its README
names, for CI and every machine). hack/testbin/build.sh does not build them: the Go module proxy
this project builds from refuses both modules (403 "This module version is not available" for
github.com/coreos/airlock and github.com/poseidon/fleetlock, for the version list, @latest and an
exact release), so a test marked :func:`needs` is skipped when its peer is in none of those
places, naming them.

What each is told, from their sources:

- airlock: ``airlock --config FILE serve`` with a TOML file -- ``[service]`` address, port and
  ``tls = false`` (the default is true, which it refuses: "TLS mode not yet implemented"),
  ``[etcd3]`` endpoints and ``transaction_timeout_ms`` (default 3000), ``[lock]``
  ``default_group_name`` and ``default_slots`` (that group always exists) and ``[[lock.groups]]``.
  Its key prefix is not configurable: ``com.coreos.airlock/groups/<url.QueryEscape(group)>/v1/
  semaphore``. At start and every minute it creates each configured group's key if missing.
  It has no health endpoint: a request without the protocol header (400, no etcd call) tells
  that it listens.
- poseidon/fleetlock: ``fleetlock -address HOST:PORT`` with ``NAMESPACE`` (default "default")
  and ``KUBECONFIG`` (a path; without it, in-cluster config); its Lease is
  ``fleetlock-<group>`` in that namespace, one holder per group. ``GET /-/healthy`` answers ok
  (it does not reach the API server).
"""

from __future__ import annotations

import http.client
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rebootcoord.sim.procs import orphan_proof, stop_process
from tests.support.cluster import DEFAULT_TESTBIN, REPO_ROOT, free_port

AIRLOCK = ("TESTS_AIRLOCK_BIN", "airlock", "github.com/coreos/airlock")
POSEIDON = ("TESTS_POSEIDON_FLEETLOCK_BIN", "poseidon-fleetlock", "github.com/poseidon/fleetlock")
#: airlock's key prefix, fixed in its source (internal/lock/lock.go, keyTemplate).
AIRLOCK_PREFIX = "com.coreos.airlock"


#: The workplace's peer binaries, beside the checkout.
SHARED_PEERS = REPO_ROOT.parent / "shared" / "peers"


def peer_binary(peer: tuple[str, str, str]) -> Path | None:
    """The peer's binary: ``$TESTS_<PEER>_BIN`` if set, else testbin/<name>, else
    ../shared/peers/<name>; None when none is there."""
    env, name, _ = peer
    given = os.environ.get(env)
    places = [Path(given)] if given else [DEFAULT_TESTBIN / name, SHARED_PEERS / name]
    return next((path for path in places if os.access(path, os.X_OK)), None)


def needs(peer: tuple[str, str, str]) -> pytest.MarkDecorator:
    """Skip, before any fixture starts etcd or the control plane, when the peer is missing."""
    env, name, module = peer
    return pytest.mark.skipif(
        peer_binary(peer) is None,
        reason=f"no {name} binary (${env}, testbin/{name} or {SHARED_PEERS / name}): `make testbin` "
        f"cannot build it, the Go module proxy refuses {module}; set {env} to the path of one built "
        f"from {module}",
    )


def airlock_key(group: str) -> str:
    return f"{AIRLOCK_PREFIX}/groups/{group}/v1/semaphore"


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _Process:
    binary: Path
    run_dir: Path
    port: int
    process: subprocess.Popen[bytes] | None
    log_path: Path

    def _spawn(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.run_dir / f"{self.binary.name}-{self.port}.log"
        self.process = subprocess.Popen(
            orphan_proof([str(self.binary), *argv]),
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
            env=None if env is None else {**os.environ, **env},
        )

    def _wait(self, ready: str, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.binary.name} exited {self.process.returncode}: {self.log()[-3000:]}"
                )
            if self._probe(ready):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.binary.name} not listening after {timeout}s: {self.log()[-3000:]}")

    def _probe(self, ready: str) -> bool:
        method, _, path = ready.partition(" ")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            conn.request(method, path, body=b"")
            return conn.getresponse().status < 500
        except OSError:
            return False

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


@dataclass
class Airlock(_Process):
    """One airlock process on a loopback port, configured by a temp TOML file."""

    binary: Path
    run_dir: Path
    etcd_endpoints: Sequence[str]
    group: str
    slots: int
    txn_timeout_ms: int = 3000
    port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def config(self) -> str:
        endpoints = ", ".join(_toml_str(e) for e in self.etcd_endpoints)
        return "\n".join([
            "[service]",
            'address = "127.0.0.1"',
            f"port = {self.port}",
            "tls = false",
            "",
            "[status]",
            "enabled = false",
            "",
            "[etcd3]",
            f"endpoints = [{endpoints}]",
            f"transaction_timeout_ms = {self.txn_timeout_ms}",
            "",
            "[lock]",
            f"default_group_name = {_toml_str(self.group)}",
            f"default_slots = {self.slots}",
            "",
        ])  # fmt: skip

    def start(self, timeout: float = 30.0) -> Airlock:
        self.port = self.port or free_port()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / f"airlock-{self.port}.toml"
        path.write_text(self.config())
        self._spawn(["--config", str(path), "-vv", "serve"])
        self._wait("POST /v1/pre-reboot", timeout)  # 400 invalid_client_identity: no header
        return self


@dataclass
class PoseidonFleetlock(_Process):
    """One poseidon/fleetlock process on a loopback port, on a namespace through a kubeconfig."""

    binary: Path
    run_dir: Path
    namespace: str
    kubeconfig: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self, timeout: float = 30.0) -> PoseidonFleetlock:
        self.port = self.port or free_port()
        env = {"NAMESPACE": self.namespace, "KUBECONFIG": str(self.kubeconfig)}
        self._spawn(["-address", f"127.0.0.1:{self.port}", "-log-level", "debug"], env)
        self._wait("GET /-/healthy", timeout)
        return self
