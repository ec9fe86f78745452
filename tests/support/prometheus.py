"""Launcher for a real Prometheus server, built into ``testbin/prometheus`` by ``make testbin``.

Owns: one ``prometheus`` process on a free loopback port with its own work directory (config,
rule files, TSDB, log), rule evaluation every second, and rule changes at run time (the rule
files are rewritten and ``POST /-/reload`` applies them before it answers), so a test can make
an alert start and stop firing. The pytest fixtures live in :mod:`tests.support.prometheus_plugin`.

Never: listens on or connects to anything but 127.0.0.1 (no scrape targets, no remote write, no
Alertmanager), writes outside its work directory, or leaves a process behind: the server runs in
its own process group with ``PR_SET_PDEATHSIG=SIGKILL`` (:class:`tests.support.cluster.Process`),
so it dies with the process that started it even when that one is SIGKILLed. PDEATHSIG follows
the *thread* that forked: start servers from a thread that outlives them (pytest's main thread).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import yaml

from tests.support.cluster import (
    BUILD_SCRIPT,
    DEFAULT_TESTBIN,
    ClusterError,
    ComponentFailed,
    Process,
    TestbinMissing,
    WaitTimeout,
    free_port,
    wait_for,
)

__all__ = [
    "FIRING_QUERY",
    "PrometheusError",
    "PrometheusServer",
    "alert_rule",
    "locate_prometheus",
]

#: The product's query (rebootcoord.adapters.prometheus.QUERY), kept here to check the harness.
FIRING_QUERY: Final = 'ALERTS{alertstate="firing"}'
#: Every alert rule the helpers write carries this label, so a test can tell its alerts apart.
TEST_LABEL: Final = "rebootcoord_test"


class PrometheusError(ClusterError):
    """Prometheus could not be started, reloaded or queried; the message says why."""


def locate_prometheus(directory: Path | None = None, *, check_pins: bool = True) -> Path:
    """``testbin/prometheus``, or :class:`TestbinMissing` saying to run ``make testbin``.

    With ``check_pins`` (and Go on PATH) ``build.sh --check`` must agree that testbin/ was built
    from the committed pins, as for the Kubernetes binaries.
    """
    directory = (directory or DEFAULT_TESTBIN).resolve()
    binary = directory / "prometheus"
    have_go = shutil.which("go") is not None
    if not os.access(binary, os.X_OK):
        hint = (
            "run `make testbin` (builds it from hack/testbin/prometheus; minutes the first time, then cached)"
            if have_go
            else "install Go 1.26 or newer (https://go.dev/dl, then put its bin/ on PATH), "
            "then run `make testbin`"
        )
        raise TestbinMissing(f"Prometheus is not built: {binary} is missing; {hint}")
    if check_pins and have_go and directory == DEFAULT_TESTBIN.resolve():
        check = subprocess.run(
            [str(BUILD_SCRIPT), "--check", str(directory)], capture_output=True, text=True, check=False
        )
        if check.returncode != 0:
            raise TestbinMissing(
                f"{directory} was built from other pins than hack/testbin/*/go.mod: run `make testbin` "
                f"({check.stdout.strip() or check.stderr.strip()})"
            )
    return binary


def alert_rule(
    name: str,
    expr: str = "vector(1)",
    *,
    for_: str = "0s",
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One alerting rule. The default ``vector(1)`` with ``for: 0s`` fires at the first evaluation;
    ``vector(0) > 1`` never fires; a long ``for_`` keeps it pending."""
    rule: dict[str, Any] = {
        "alert": name,
        "expr": expr,
        "for": for_,
        "labels": {TEST_LABEL: "true", **(labels or {})},
    }
    if annotations:
        rule["annotations"] = dict(annotations)
    return rule


class PrometheusServer:
    """A real Prometheus in ``workdir``: ``PrometheusServer(workdir).start()`` (or ``with``).

    Layout: ``workdir/prometheus.yml`` (global evaluation interval, ``rule_files: [rules/*.yml]``,
    nothing to scrape), ``workdir/rules/`` (one file per :meth:`set_rules` name), ``workdir/data``
    (``--storage.tsdb.path``), ``workdir/prometheus.log``. ``url`` is ``http://127.0.0.1:PORT``.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        binary: Path | None = None,
        evaluation_interval: str = "1s",
        ready_timeout: float = 60.0,
    ) -> None:
        self.workdir = workdir.resolve()
        self.binary = binary or locate_prometheus()
        self.evaluation_interval = evaluation_interval
        self.ready_timeout = ready_timeout
        self.rules_dir = self.workdir / "rules"
        self.config_file = self.workdir / "prometheus.yml"
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "prometheus.log"
        self.port: int | None = None
        self._process: Process | None = None
        self._scrape_targets: list[str] = []
        self._scrape_interval = "15s"
        #: Seconds from start() to ``/-/ready`` answering 200 (None before start()).
        self.startup_seconds: float | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self.port is None:
            raise PrometheusError("Prometheus was not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise PrometheusError("Prometheus was not started")
        return self._process.pid

    def alive(self) -> bool:
        return self._process is not None and self._process.alive()

    def log_tail(self, lines: int = 30) -> str:
        return self._process.log_tail(lines) if self._process else "(not started)"

    def start(self) -> PrometheusServer:
        self.rules_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        started = time.monotonic()
        # free_port() can race with another process binding the port: retry on a new one.
        for attempt in range(3):
            self.port = free_port()
            self._process = Process(
                "prometheus",
                [
                    str(self.binary),
                    f"--config.file={self.config_file}",
                    f"--storage.tsdb.path={self.data_dir}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--web.enable-lifecycle",  # POST /-/reload
                    "--log.level=info",
                ],
                log_path=self.log_path,
                cwd=self.workdir,
            )
            self._process.start()
            try:
                wait_for(self._ready, timeout=self.ready_timeout, what=f"Prometheus ready on {self.url}")
            except ComponentFailed as exc:
                self.stop()  # reaps it
                if attempt < 2 and "address already in use" in str(exc):
                    continue
                raise PrometheusError(f"Prometheus did not start: {exc}") from None
            except WaitTimeout as exc:
                self.stop()
                raise PrometheusError(f"{exc}\n{self.log_tail()}") from None
            break
        self.startup_seconds = time.monotonic() - started
        return self

    def _ready(self) -> bool:
        assert self._process is not None
        self._process.check_alive()  # raises ComponentFailed with the log tail
        status, _ = self._request("GET", "/-/ready")
        return status == 200

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``timeout``; no process is left behind."""
        if self._process is not None:
            self._process.terminate()
            self._process.wait_or_kill(timeout)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- rules ----------------------------------------------------------------------------------

    def _write_config(self) -> None:
        config: dict[str, Any] = {
            "global": {
                "evaluation_interval": self.evaluation_interval,
                "scrape_interval": "15s",
            },
            "rule_files": [str(self.rules_dir / "*.yml")],
            "scrape_configs": [],
        }
        if self._scrape_targets:
            config["scrape_configs"] = [
                {
                    "job_name": "targets",
                    "scrape_interval": self._scrape_interval,
                    "static_configs": [{"targets": list(self._scrape_targets)}],
                }
            ]
        self.config_file.write_text(yaml.safe_dump(config, sort_keys=False))

    def scrape(self, *targets: str, interval: str = "1s") -> None:
        """Scrape ``targets`` (``host:port``, path ``/metrics``) every ``interval`` from now on, as
        job ``targets``; the ``instance`` label of their series is the target. Reloads."""
        self._scrape_targets = list(targets)
        self._scrape_interval = interval
        self._write_config()
        self.reload()

    def set_rules(self, rules: Sequence[Mapping[str, Any]] | str, *, name: str = "test") -> Path:
        """Write the rule file ``rules/<name>.yml`` and reload. ``rules`` is a list of rules (one
        group named ``name``, e.g. from :func:`alert_rule`) or the file's YAML text. Returns once
        Prometheus has loaded it (a rule file it refuses raises :class:`PrometheusError`)."""
        path = self.rules_dir / f"{name}.yml"
        if isinstance(rules, str):
            text = rules
        else:
            group = {"name": name, "rules": [dict(r) for r in rules]}
            text = yaml.safe_dump({"groups": [group]}, sort_keys=False)
        tmp = path.with_suffix(".yml.tmp")  # not matched by rules/*.yml while half-written
        tmp.write_text(text)
        tmp.replace(path)
        self.reload()
        return path

    def set_alerts(self, *names: str, name: str = "test", **rule_options: Any) -> Path:
        """Rule file ``name`` holds one rule per alert name (``vector(1)``, ``for: 0s``: fires at the
        next evaluation); the alerts of rules it held before and no longer holds end at the next
        evaluation too. ``rule_options`` go to :func:`alert_rule` (``labels=``, ``for_=``...)."""
        return self.set_rules([alert_rule(n, **rule_options) for n in names], name=name)

    def clear_rules(self) -> None:
        """Empty every rule group and reload. The groups stay (with no rules), so the series of the
        dropped rules end with stale markers at the group's next evaluation (within an interval);
        a removed group's would end two intervals after the reload. Wait for it."""
        for path in sorted(self.rules_dir.glob("*.yml")):
            doc = yaml.safe_load(path.read_text()) or {}
            groups = [{"name": g["name"], "rules": []} for g in doc.get("groups") or ()]
            path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
        self.reload()

    def reload(self) -> None:
        """``POST /-/reload``: Prometheus answers once config and rule files are applied."""
        status, body = self._request("POST", "/-/reload", timeout=30)
        if status != 200:
            raise PrometheusError(f"reload failed ({status}): {body.strip()}\n{self.log_tail()}")

    # -- queries --------------------------------------------------------------------------------

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The result vector of an instant query at the current time."""
        status, body = self._request("GET", "/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        if status != 200:
            raise PrometheusError(f"query {promql!r} answered {status}: {body.strip()}")
        doc = json.loads(body)
        if doc.get("status") != "success":
            raise PrometheusError(f"query {promql!r} answered {doc}")
        result: list[dict[str, Any]] = doc["data"]["result"]
        return result

    def alerts(self, state: str = "firing") -> set[str]:
        """Names of the alerts in ``state`` (firing or pending) according to the ALERTS series."""
        return {r["metric"]["alertname"] for r in self.query(f'ALERTS{{alertstate="{state}"}}')}

    def wait_alerts(self, *names: str, state: str = "firing", timeout: float = 30.0) -> set[str]:
        """Wait until exactly ``names`` are in ``state`` (none: until no alert is)."""
        want = set(names)
        wait_for(
            lambda: self.alerts(state) == want,
            timeout=timeout,
            what=f"{state} alerts to be {sorted(want)} on {self.url}",
            ignore=(PrometheusError, OSError),
        )
        return want

    def rule_groups(self) -> list[dict[str, Any]]:
        """``/api/v1/rules``: the groups Prometheus has loaded."""
        status, body = self._request("GET", "/api/v1/rules")
        if status != 200:
            raise PrometheusError(f"/api/v1/rules answered {status}: {body.strip()}")
        groups: list[dict[str, Any]] = json.loads(body)["data"]["groups"]
        return groups

    def _request(self, method: str, path: str, *, timeout: float = 5.0) -> tuple[int, str]:
        """(status, body) of one request; status 0 when nothing answered."""
        request = urllib.request.Request(self.url + path, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return int(response.status), response.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        except (urllib.error.URLError, OSError):
            return 0, ""
