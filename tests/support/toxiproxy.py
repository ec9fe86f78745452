"""Toxiproxy (testbin/toxiproxy-server, Shopify's TCP proxy) as a process, and its HTTP API.

The fault runner routes one agent's backend connection through a proxy here and, at a moment of
its plan, delays it (``latency``), holds it without passing data (``timeout``), resets it
(``reset_peer``) or refuses new connections (the proxy disabled). Loopback only.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.cluster import ClusterError, Process, Testbin, free_port, wait_for


class Toxiproxy:
    def __init__(self, workdir: Path, *, testbin: Testbin | None = None) -> None:
        self.workdir = workdir
        self.testbin = testbin or Testbin.locate(check_pins=False)
        self.port = 0
        self._process: Process | None = None

    def start(self) -> Toxiproxy:
        self.port = free_port()
        self._process = Process(
            "toxiproxy",
            [str(self.testbin.path("toxiproxy-server")), "-host", "127.0.0.1", "-port", str(self.port)],
            log_path=self.workdir / "toxiproxy.log",
            cwd=self.workdir,
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._process.start()
        wait_for(lambda: self._get("/version") is not None, timeout=30, what="toxiproxy", ignore=(OSError,))
        return self

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait_or_kill(10)
            self._process = None

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                text = response.read()
        except urllib.error.HTTPError as exc:
            raise ClusterError(f"toxiproxy {method} {path}: {exc.code} {exc.read()[:300]!r}") from None
        return json.loads(text) if text.strip() else None

    def _get(self, path: str) -> Any:
        try:
            return self._request("GET", path)
        except (OSError, ClusterError):
            return None

    def proxy(self, name: str, upstream: str) -> int:
        """A proxy to ``upstream`` (host:port) on a free loopback port; the port."""
        port = free_port()
        self._request("POST", "/proxies", {"name": name, "listen": f"127.0.0.1:{port}", "upstream": upstream})
        return port

    def delete(self, name: str) -> None:
        with contextlib.suppress(ClusterError):
            self._request("DELETE", f"/proxies/{name}")

    def toxic(self, proxy: str, kind: str, **attributes: Any) -> str:
        """Add a toxic in both directions (two toxics); returns the base name to remove them."""
        base = f"{kind}-{time.monotonic_ns()}"
        for stream in ("downstream", "upstream"):
            self._request(
                "POST",
                f"/proxies/{proxy}/toxics",
                {"name": f"{base}-{stream}", "type": kind, "stream": stream, "attributes": attributes},
            )
        return base

    def untoxic(self, proxy: str, base: str) -> None:
        for stream in ("downstream", "upstream"):
            with contextlib.suppress(ClusterError):
                self._request("DELETE", f"/proxies/{proxy}/toxics/{base}-{stream}")

    def enable(self, proxy: str, enabled: bool) -> None:
        self._request("POST", f"/proxies/{proxy}", {"enabled": enabled})


def version(testbin: Testbin) -> str:
    out = subprocess.run([str(testbin.path("toxiproxy-server")), "--version"], capture_output=True, text=True)
    return (out.stdout or out.stderr).strip()
