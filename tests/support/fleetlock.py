"""The FleetLock server as a user runs it (``rebootcoord fleetlock-server``, a process on loopback
ports) and a FleetLock client that speaks the protocol as Zincati does."""

from __future__ import annotations

import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.cluster import free_port

ZINCATI_HEADERS = {"fleet-lock-protocol": "true", "content-type": "application/json"}


@dataclass
class Answer:
    status: int
    body: bytes

    @property
    def kind(self) -> str:
        try:
            return str(json.loads(self.body).get("kind", ""))
        except (ValueError, AttributeError):
            return ""

    @property
    def value(self) -> str:
        try:
            return str(json.loads(self.body).get("value", ""))
        except (ValueError, AttributeError):
            return ""


@dataclass
class FleetLockServer:
    """One replica: its config file, ports and process. ``config``: keys of the YAML file."""

    run_dir: Path
    config: Mapping[str, Any]
    env: Mapping[str, str] = field(default_factory=dict)
    port: int = 0
    metrics_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    scheme: str = "http"
    cwd: str | None = None  # `python -m` puts it first on sys.path: the source tree that runs

    def start(self, timeout: float = 30.0) -> FleetLockServer:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.metrics_port = self.metrics_port or free_port()
        config = {  # the ports are this fixture's, whatever the configuration says
            "log_format": "json",
            **self.config,
            "fleetlock_listen": f"127.0.0.1:{self.port}",
            "metrics_address": f"127.0.0.1:{self.metrics_port}",
        }
        if config.get("fleetlock_tls_cert_file"):
            self.scheme = "https"
        path = self.run_dir / "fleetlock.yaml"
        path.write_text(yaml.safe_dump(config))
        self.log_path = self.run_dir / f"server-{self.port}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("REBOOTCOORD_")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rebootcoord", "fleetlock-server", "--config", str(path)],
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
            env={**env, **self.env},
            cwd=self.cwd,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"fleetlock-server exited {self.process.returncode}: {self.log()[-3000:]}")
            if self.healthy():
                return self
            time.sleep(0.05)
        self.kill()  # not left running behind a failed test
        raise RuntimeError(f"fleetlock-server not healthy after {timeout}s: {self.log()[-3000:]}")

    def healthy(self) -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.metrics_port, timeout=2)
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        except OSError:
            return False

    def metrics(self) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", self.metrics_port, timeout=5)
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def base(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(10)

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


class FleetLockClient:
    """A FleetLock client as Zincati is: POST with the protocol header and client_params."""

    def __init__(self, base: str, *, context: ssl.SSLContext | None = None, timeout: float = 120.0) -> None:
        scheme, _, rest = base.partition("://")
        host, _, port = rest.rstrip("/").partition(":")
        self.scheme, self.host, self.port = scheme, host, int(port)
        self.context, self.timeout = context, timeout

    def _conn(self) -> http.client.HTTPConnection:
        if self.scheme == "https":
            return http.client.HTTPSConnection(
                self.host, self.port, timeout=self.timeout, context=self.context
            )
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def raw(
        self, method: str, path: str, body: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> Answer:
        conn = self._conn()
        try:
            conn.request(
                method, path, body=body, headers=dict(ZINCATI_HEADERS if headers is None else headers)
            )
            response = conn.getresponse()
            return Answer(response.status, response.read())
        finally:
            conn.close()

    def call(self, operation: str, client_id: str, group: str = "default") -> Answer:
        body = json.dumps({"client_params": {"id": client_id, "group": group}}).encode()
        return self.raw("POST", f"/v1/{operation}", body)

    def pre_reboot(self, client_id: str, group: str = "default") -> Answer:
        return self.call("pre-reboot", client_id, group)

    def steady_state(self, client_id: str, group: str = "default") -> Answer:
        return self.call("steady-state", client_id, group)


@contextmanager
def fleetlock_servers(
    run_dir: Path, config: Mapping[str, Any], replicas: int = 1
) -> Iterator[list[FleetLockServer]]:
    servers = [FleetLockServer(run_dir / f"replica-{i}", config) for i in range(replicas)]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


class InProcessServers:
    """FleetLock servers as ``rebootcoord fleetlock-server`` builds them (its composition root,
    ``build_fleetlock_service``), answering in-process: for tests that send thousands of
    requests. ``base``: the configuration every server gets; ``make(**keys)`` adds to it."""

    def __init__(self, base: Mapping[str, Any]) -> None:
        self.base = dict(base)
        self.made: list[tuple[Any, threading.Event]] = []

    def make(self, **config: object) -> Any:
        from prometheus_client import CollectorRegistry

        from rebootcoord.cli.wiring import build_fleetlock_service
        from rebootcoord.core.config import load_settings

        settings = load_settings(file_data={"node_name": "fleetlock-server", **self.base, **config}, env={})
        stop = threading.Event()
        service = build_fleetlock_service(settings, stop, CollectorRegistry())
        self.made.append((service, stop))
        return service

    def close(self) -> None:
        for service, stop in self.made:
            stop.set()
            service.close()


def ask(service: Any, operation: str, client_id: str, group: str = "default") -> tuple[int, str]:
    """One request to an in-process server, as Zincati sends it: (status, kind)."""
    body = json.dumps({"client_params": {"id": client_id, "group": group}}).encode()
    status, answer = service.handle("POST", f"/v1/{operation}", ZINCATI_HEADERS, body)
    return status, json.loads(answer)["kind"]
