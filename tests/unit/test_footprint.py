"""What an agent on etcd holds in memory is mostly what it imports: the modules of an agent built
the way ``rebootcoord agent`` builds it, in a fresh interpreter. Never the Kubernetes client; apprise
only with notify_urls, and then only the plugins of the configured schemes (apprise's own look-up
imports all of its ~190 plugins and their libraries, some 25 MiB); never the simulator."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BUILD = """
import json, sys, threading
from prometheus_client import CollectorRegistry
from rebootcoord.cli.common import settings_from_args
from rebootcoord.cli.main import parser
from rebootcoord.cli.wiring import build_agent
args = parser().parse_args(sys.argv[1:])
build_agent(settings_from_args(args), threading.Event(), CollectorRegistry())
print(json.dumps(sorted(sys.modules)))
"""
JSON_URL = "json://localhost:1/hook"
SLACK_URL = "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ/#general"


def agent_modules(tmp_path: Path, *flags: str) -> set[str]:
    """The modules loaded once an etcd agent is built (the endpoint is never dialled: grpc
    connects on the first request)."""
    boot_id = tmp_path / "boot_id"
    boot_id.write_text("boot-0\n")
    argv = ["agent", "--node-name", "n0", "--etcd-endpoints", "http://127.0.0.1:1"]
    argv += ["--host-root", str(tmp_path), "--boot-id-file", str(boot_id), *flags]
    out = subprocess.run(
        [sys.executable, "-c", BUILD, *argv], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return set(json.loads(out))


def packages(modules: set[str], prefix: str) -> set[str]:
    return {m for m in modules if m == prefix or m.startswith(prefix + ".")}


def plugins(modules: set[str]) -> set[str]:
    """The apprise plugin modules loaded, by their name in apprise.plugins (base is every plugin's)."""
    return {m.split(".")[2] for m in packages(modules, "apprise.plugins") if m.count(".") >= 2} - {"base"}


def test_an_idle_etcd_agent_loads_no_kubernetes_apprise_simulator_or_fleetlock_server(
    tmp_path: Path,
) -> None:
    modules = agent_modules(tmp_path)
    assert "rebootcoord.adapters.etcd" in modules  # the agent built is the etcd one
    for heavy in ("kubernetes", "apprise", "requests", "cryptography"):
        assert not packages(modules, heavy), f"{heavy} loaded: {sorted(packages(modules, heavy))[:5]}"
    # The simulate command's arguments (sim.args) are in every parser; the simulator is not.
    assert packages(modules, "rebootcoord.sim") == {"rebootcoord.sim", "rebootcoord.sim.args"}
    assert not {"rebootcoord.daemon.fleetlock", "rebootcoord.core.fleetlock"} & modules


@pytest.mark.parametrize(
    ("urls", "expected"),
    [
        pytest.param([JSON_URL], {"custom_json"}, id="json"),
        pytest.param([SLACK_URL], {"slack"}, id="slack"),
        pytest.param([JSON_URL, SLACK_URL], {"custom_json", "slack"}, id="both"),
    ],
)
def test_notify_urls_load_only_the_plugins_of_their_schemes(
    tmp_path: Path, urls: list[str], expected: set[str]
) -> None:
    modules = agent_modules(tmp_path, "--notify-urls", " ".join(urls))
    assert plugins(modules) == expected
    assert not packages(modules, "kubernetes")


def test_each_scheme_finds_the_plugin_apprise_finds_or_apprise_looks_it_up() -> None:
    """The sources are read for a candidate only: where that finds no plugin (dbus, whose schemes
    are computed), apprise's own look-up answers, so no scheme apprise knows is lost."""
    code = """
import json
import apprise
from apprise.apprise import N_MGR
from rebootcoord.adapters.notify import _plugin
differ, fallback = [], []
for scheme in sorted(N_MGR.schemas()):
    found = _plugin(scheme)
    if found is None:
        fallback.append(scheme)
    elif found is not N_MGR[scheme]:
        differ.append(scheme)
print(json.dumps({"differ": differ, "fallback": fallback, "known": len(N_MGR.schemas())}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    result = json.loads(out.stdout)
    assert result["differ"] == []
    assert len(result["fallback"]) <= 5, result["fallback"]  # today: dbus's kde, qt, dbus
    assert result["known"] > 100
