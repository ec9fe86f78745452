"""Hosts without Kubernetes: the bundle `make systemd-bundle` builds, installed by its install.sh
into a temp root as a host would install it, the units checked by systemd's own tools, the
example configs loaded by the installed copy, and the installed FleetLock server answering.

Nothing touches this machine's /etc or systemd: every install has a root of its own (DESTDIR),
and systemd-analyze reads that root (``verify --root``) or the unit files (``security
--offline``). The bundle is built once per session; its dependencies' wheels come from PyPI (or
pip's cache), so the tests that need it are marked ``bundle`` (`make unit` leaves them out).
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from rebootcoord import __version__
from rebootcoord.core.config import KEYS
from tests.conftest import wait_for
from tests.support.cluster import REPO_ROOT, free_port

SYSTEMD = REPO_ROOT / "deploy" / "systemd"
INSTALL = SYSTEMD / "install.sh"
AGENT_UNIT = SYSTEMD / "rebootcoord-agent.service"
SERVER_UNIT = SYSTEMD / "rebootcoord-fleetlock.service"
PREFIX = "/opt/rebootcoord"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
HOST_UNITS = Path("/usr/lib/systemd/system")

# The highest exposure `systemd-analyze security` may give (0 best, 10 worst); measured 1.0 for
# the server and 2.0 for the agent (root, D-Bus, host commands) with systemd 252.
EXPOSURE_LIMIT = {"rebootcoord-fleetlock.service": 1.5, "rebootcoord-agent.service": 2.5}

bundle_test = pytest.mark.bundle


def unit_settings(path: Path) -> dict[str, list[str]]:
    """A unit file's assignments, every value of each key in order (systemd's keys repeat)."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def install(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("DESTDIR", "PREFIX", "BINDIR", "WHEELS")}
    return subprocess.run(
        ["sh", str(INSTALL), *args], capture_output=True, text=True, check=False, env={**clean, **(env or {})}
    )


# ------------------------------------------------------------------------------------------------
# the units and configs as written


@pytest.mark.parametrize(
    ("unit", "key", "value"),
    [
        (AGENT_UNIT, "ExecStart", f"{PREFIX}/bin/rebootcoord agent --config /etc/rebootcoord/agent.yaml"),
        (AGENT_UNIT, "After", "network-online.target"),
        (AGENT_UNIT, "Wants", "network-online.target"),
        (AGENT_UNIT, "Restart", "on-failure"),
        (AGENT_UNIT, "StateDirectory", "rebootcoord"),
        (AGENT_UNIT, "NoNewPrivileges", "yes"),
        (AGENT_UNIT, "ProtectSystem", "strict"),
        (AGENT_UNIT, "ProtectHome", "yes"),
        (AGENT_UNIT, "CapabilityBoundingSet", "CAP_SYS_BOOT CAP_KILL"),
        (
            SERVER_UNIT,
            "ExecStart",
            f"{PREFIX}/bin/rebootcoord fleetlock-server --config /etc/rebootcoord/fleetlock.yaml",
        ),
        (SERVER_UNIT, "After", "network-online.target"),
        (SERVER_UNIT, "Restart", "on-failure"),
        (SERVER_UNIT, "DynamicUser", "yes"),
        (SERVER_UNIT, "CapabilityBoundingSet", ""),
        (SERVER_UNIT, "NoNewPrivileges", "yes"),
        (SERVER_UNIT, "ProtectSystem", "strict"),
        (SERVER_UNIT, "ProtectHome", "yes"),
        (SERVER_UNIT, "PrivateTmp", "yes"),
        (SERVER_UNIT, "PrivateDevices", "yes"),
        (SERVER_UNIT, "RestrictAddressFamilies", "AF_INET AF_INET6"),
        (SERVER_UNIT, "SystemCallFilter", "@system-service"),
    ],
    ids=lambda v: v.name if isinstance(v, Path) else None,
)
def test_the_units_say_what_the_hosts_rely_on(unit: Path, key: str, value: str) -> None:
    assert value in unit_settings(unit).get(key, []), f"{unit.name}: {key}={value}"


def test_the_agent_writes_only_into_its_state_directory() -> None:
    """ProtectSystem=strict leaves only /var/lib/<StateDirectory> writable: the events file and the
    FleetLock backend's holder record (its default) go there."""
    state = Path("/var/lib") / unit_settings(AGENT_UNIT)["StateDirectory"][0]
    events = yaml.safe_load((SYSTEMD / "agent.yaml").read_text())["events_file"]
    assert Path(events).parent == state
    assert Path(KEYS["fleetlock_state_dir"].default) == state


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("unit", [SERVER_UNIT, AGENT_UNIT], ids=lambda p: p.name)
def test_exposure_is_below_the_limit(unit: Path) -> None:
    proc = subprocess.run(
        [str(SYSTEMD_ANALYZE), "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout)
    assert found, proc.stdout[-2000:] + proc.stderr
    exposure = float(found.group(1))
    print(f"{unit.name}: exposure {exposure}")
    assert exposure <= EXPOSURE_LIMIT[unit.name], proc.stdout


CONFIG_KEY = re.compile(r"^#?\s*(?:-\s*)?([a-z][a-z0-9_]*):\s")


@pytest.mark.parametrize("name", ["agent.yaml", "fleetlock.yaml"])
def test_every_key_an_example_names_exists_even_in_comments(name: str) -> None:
    named = {
        m.group(1) for line in (SYSTEMD / name).read_text().splitlines() if (m := CONFIG_KEY.match(line))
    }
    assert named, name
    assert named <= set(KEYS), f"unknown keys in {name}: {sorted(named - set(KEYS))}"


def _print_config(rebootcoord: list[str], config: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("REBOOTCOORD_")}
    proc = subprocess.run(
        [*rebootcoord, "agent", "--config", str(config), "--print-config"],
        capture_output=True,
        text=True,
        check=False,
        env={**clean, **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr
    return dict(yaml.safe_load(proc.stdout))


def test_the_agent_examples_fleetlock_alternative_loads(tmp_path: Path) -> None:
    """The commented block 'Or through a FleetLock server' is a valid replacement of the backend
    and etcd keys."""
    text = (SYSTEMD / "agent.yaml").read_text()
    block = text.split("# Or through a FleetLock server", 1)[1].split("\n\n", 1)[0]
    alternative = yaml.safe_load(
        "\n".join(line[4:] for line in block.splitlines() if line.startswith("#   "))
    )
    data = {k: v for k, v in yaml.safe_load(text).items() if not k.startswith("etcd_")}
    data.update(alternative)
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump(data))
    effective = _print_config([sys.executable, "-m", "rebootcoord"], config)
    assert effective["backend"] == "fleetlock"
    assert effective["fleetlock_url"] == "http://fleetlock.example.internal:9729/"


DOCS = REPO_ROOT / "docs" / "hosts.md"


def docs_block(language: str, first_line: str) -> str:
    """The fenced block of docs/hosts.md in ``language`` whose first line is ``first_line``."""
    for found in re.finditer(rf"```{language}\n(.*?)```", DOCS.read_text(), re.S):
        if found.group(1).startswith(first_line + "\n"):
            return found.group(1)
    raise AssertionError(f"no {language} block starting {first_line!r} in {DOCS}")


def test_the_zincati_drop_in_points_at_the_servers_port() -> None:
    zincati = tomllib.loads(docs_block("toml", "# /etc/zincati/config.d/55-updates-strategy.toml"))
    assert zincati["updates"]["strategy"] == "fleet_lock"
    base_url = zincati["updates"]["fleet_lock"]["base_url"]
    port = str(KEYS["fleetlock_listen"].default).rsplit(":", 1)[1]
    assert re.fullmatch(rf"http://[^/]+:{port}/", base_url), base_url
    server = yaml.safe_load((SYSTEMD / "fleetlock.yaml").read_text())
    assert server["fleetlock_listen"].endswith(f":{port}") and "default" in server["fleetlock_groups"]


def test_the_flatcar_snippets_leave_the_reboot_to_the_agent() -> None:
    assert "REBOOT_STRATEGY=off" in docs_block(
        "ini", "# /etc/flatcar/update.conf (keep GROUP= and SERVER= lines if you have them)"
    )
    butane = yaml.safe_load(docs_block("yaml", "variant: flatcar"))
    (conf,) = butane["storage"]["files"]
    assert (
        conf["path"] == "/etc/flatcar/update.conf" and conf["contents"]["inline"] == "REBOOT_STRATEGY=off\n"
    )
    assert butane["systemd"]["units"] == [{"name": "locksmithd.service", "mask": True}]
    assert "locksmithd.service" in unit_settings(AGENT_UNIT)["Conflicts"]


def test_install_without_a_bundle_says_what_is_missing(tmp_path: Path) -> None:
    proc = install("--root", str(tmp_path / "root"))
    assert proc.returncode == 2
    assert "no rebootcoord wheel" in proc.stderr and "make systemd-bundle" in proc.stderr
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "rebootcoord-0-py3-none-any.whl").touch()
    old = install("--root", str(tmp_path / "root"), "--wheels", str(wheels), "--python", "false")
    assert old.returncode == 2 and "Python >= 3.11 with its venv module is needed" in old.stderr
    (tmp_path / "PYTHON_TAG").write_text("cp27-vax\n")  # the bundle's wheels are for another Python
    other = install("--root", str(tmp_path / "root"), "--wheels", str(wheels), "--python", sys.executable)
    assert other.returncode == 2 and "the bundle is for cp27-vax" in other.stderr
    assert not (tmp_path / "root").exists(), "nothing is written before the checks pass"


def test_units_and_configs_only_with_another_prefix(tmp_path: Path) -> None:
    root = tmp_path / "root"
    proc = install("--no-venv", "--prefix", "/usr/lib/rebootcoord", env={"DESTDIR": str(root)})
    assert proc.returncode == 0, proc.stderr
    for unit in ("rebootcoord-agent.service", "rebootcoord-fleetlock.service"):
        installed = unit_settings(root / "etc/systemd/system" / unit)
        assert installed["ExecStart"][0].startswith("/usr/lib/rebootcoord/bin/rebootcoord "), installed
        assert (root / "etc/systemd/system" / unit).stat().st_mode & 0o777 == 0o644
    assert (root / "etc/rebootcoord/agent.yaml").stat().st_mode & 0o777 == 0o600
    assert (root / "etc/rebootcoord/fleetlock.yaml").stat().st_mode & 0o777 == 0o644
    assert not (root / "usr/lib/rebootcoord").exists()


# ------------------------------------------------------------------------------------------------
# the bundle, installed


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make systemd-bundle` into a temp dir, once per session (about 10 s with pip's cache)."""
    out = tmp_path_factory.mktemp("dist")
    t0 = time.monotonic()
    proc = subprocess.run(
        # -o: never reinstall the venv this session runs from (a pyproject.toml newer than it)
        ["make", "--no-print-directory", "-o", ".venv/.installed", "systemd-bundle", f"SYSTEMD_DIST={out}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    print(f"make systemd-bundle: {time.monotonic() - t0:.1f}s")
    (tarball,) = out.glob("rebootcoord-*-systemd-*.tar.gz")
    return tarball


@pytest.fixture(scope="session")
def unpacked(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("bundle")
    with tarfile.open(bundle) as tar:
        tar.extractall(where, filter="data")
    (top,) = where.iterdir()
    return top


@pytest.fixture(scope="session")
def installed(unpacked: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundle's install.sh into a root of its own, as into a host's /."""
    root = tmp_path_factory.mktemp("host") / "root"
    proc = subprocess.run(
        [str(unpacked / "install.sh"), "--root", str(root), "--python", sys.executable],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"installed {__version__} into {root}{PREFIX}" in proc.stdout
    return root


def run_installed(root: Path, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """An installed entry point run by the installed interpreter: its shebang names the final
    path, /opt/rebootcoord, which exists only on the host."""
    venv = root / PREFIX.lstrip("/")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("REBOOTCOORD_")}
    return subprocess.run(
        [str(venv / "bin/python"), *args],
        capture_output=True,
        text=True,
        check=False,
        env=clean,
        cwd=root,
        **kwargs,
    )


@bundle_test
def test_the_bundle_holds_every_wheel_the_units_the_configs_and_the_installer(unpacked: Path) -> None:
    wheels = {p.name.split("-")[0].lower().replace("_", "-") for p in (unpacked / "wheels").glob("*.whl")}
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=!~ \[;]", dep, maxsplit=1)[0].lower() for dep in project["dependencies"]}
    # and the C extensions under them
    assert {"rebootcoord", "grpcio", "protobuf", *declared} <= wheels, declared - wheels
    assert (unpacked / "wheels" / f"rebootcoord-{__version__}-py3-none-any.whl").exists()
    for name in ("install.sh", "rebootcoord-agent.service", "rebootcoord-fleetlock.service"):
        assert (unpacked / name).read_bytes() == (SYSTEMD / name).read_bytes()
    assert os.access(unpacked / "install.sh", os.X_OK)
    assert (unpacked / "VERSION").read_text() == f"{__version__}\n"
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}-{platform.machine()}"
    assert (unpacked / "PYTHON_TAG").read_text() == f"{tag}\n"
    assert unpacked.name == f"rebootcoord-{__version__}-systemd-{tag}"


@bundle_test
def test_the_installed_tree_names_its_final_paths(installed: Path) -> None:
    venv = installed / PREFIX.lstrip("/")
    shebang = (venv / "bin/rebootcoord").read_text().splitlines()[0]
    assert shebang == f"#!{PREFIX}/bin/python"
    for exe in ("rebootcoord", "rebootctl"):
        assert os.readlink(installed / "usr/local/bin" / exe) == f"{PREFIX}/bin/{exe}"
    # No trace of the staging root: not in scripts, pyvenv.cfg or bytecode.
    leaked = subprocess.run(
        ["grep", "-rlF", str(installed), str(venv)], capture_output=True, text=True, check=False
    )
    assert leaked.stdout == "", leaked.stdout[:2000]
    assert list(venv.glob("lib/python3*/site-packages/rebootcoord/__pycache__/*.pyc"))
    assert not list(venv.glob("lib/python3*/site-packages/pip")), "no pip on the host"
    assert not list(installed.glob("opt/*.new.*")) and not list(installed.glob("opt/*.old.*"))
    units = installed / "etc/systemd/system"
    assert sorted(p.name for p in units.iterdir()) == [
        "rebootcoord-agent.service",
        "rebootcoord-fleetlock.service",
    ]


@bundle_test
def test_the_installed_copy_runs_with_its_c_extensions(installed: Path) -> None:
    venv = installed / PREFIX.lstrip("/")
    version = run_installed(installed, str(venv / "bin/rebootcoord"), "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"rebootcoord {__version__}"
    ctl = run_installed(installed, str(venv / "bin/rebootctl"), "--help")
    assert ctl.returncode == 0 and "set-max" in ctl.stdout
    # grpcio, protobuf's upb and PyYAML's libyaml binding are C extensions: they import here.
    imports = run_installed(
        installed,
        "-c",
        "import grpc, etcd3, yaml, kubernetes.client, google.protobuf.internal.api_implementation as a;"
        "assert yaml.CSafeLoader; print(a.Type())",
    )
    assert imports.returncode == 0, imports.stderr
    assert imports.stdout.strip() == "upb"


@bundle_test
@pytest.mark.parametrize("name", ["agent.yaml", "fleetlock.yaml"])
def test_the_installed_example_configs_load(installed: Path, name: str) -> None:
    venv = installed / PREFIX.lstrip("/")
    proc = run_installed(
        installed,
        str(venv / "bin/rebootcoord"),
        "agent",
        "--config",
        f"etc/rebootcoord/{name}",
        "--print-config",
    )
    assert proc.returncode == 0, proc.stderr
    effective = yaml.safe_load(proc.stdout)
    assert effective["backend"] == "etcd" and effective["metrics_address"] == "0.0.0.0:9727"
    if name == "agent.yaml":
        assert effective["node_ops"] == "none"
        assert effective["reboot_command"] == ["systemctl", "reboot"]
    else:
        assert effective["fleetlock_listen"] == "0.0.0.0:9729"


@bundle_test
@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_accepts_the_installed_units(installed: Path, tmp_path: Path) -> None:
    """`systemd-analyze verify --root`: the units parse without a warning and their ExecStart is
    an executable of the installed tree. The root gets a copy of this machine's unit directory
    (multi-user.target, network-online.target, ...); a copy of the tree keeps the session's
    installed root as install.sh left it."""
    if not HOST_UNITS.is_dir():
        pytest.skip(f"no {HOST_UNITS} to resolve the targets the units name")
    root = tmp_path / "root"
    shutil.copytree(installed, root, symlinks=True)
    shutil.copytree(HOST_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    units = ["rebootcoord-agent.service", "rebootcoord-fleetlock.service"]

    def verify(*names: str) -> tuple[int, str]:
        proc = subprocess.run(
            [str(SYSTEMD_ANALYZE), "verify", f"--root={root}", *names],
            capture_output=True,
            text=True,
            check=False,
        )
        ours = [
            line
            for line in (proc.stdout + proc.stderr).splitlines()
            if "rebootcoord" in line or "typo" in line
        ]
        return proc.returncode, "\n".join(ours)

    # with the credentials drop-in docs/hosts.md gives for the server's secret files
    dropin = root / "etc/systemd/system/rebootcoord-fleetlock.service.d/credentials.conf"
    dropin.parent.mkdir()
    dropin.write_text(docs_block("ini", f"# /{dropin.relative_to(root)}"))
    assert verify(*units) == (0, "")
    # The check can fail: a misspelt directive and a missing executable are reported.
    system = root / "etc/systemd/system"
    text = (system / units[1]).read_text()
    (system / "typo.service").write_text(text.replace("ProtectSystem=", "ProtectSytem="))
    assert "Unknown key 'ProtectSytem'" in verify("typo.service")[1]
    (root / PREFIX.lstrip("/") / "bin/rebootcoord").chmod(0o644)
    code, said = verify(units[0])
    assert code != 0 and "is not executable" in said


@bundle_test
def test_a_second_install_swaps_the_tree_and_keeps_the_configs(
    installed: Path, unpacked: Path, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    shutil.copytree(installed, root, symlinks=True)
    config = root / "etc/rebootcoord/agent.yaml"
    config.write_text(config.read_text().replace("group: default", "group: edge"))
    marker = root / PREFIX.lstrip("/") / "from-the-first-install"
    marker.touch()
    proc = subprocess.run(
        [str(unpacked / "install.sh"), "--root", str(root), "--python", sys.executable],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "kept" in proc.stdout and "group: edge" in config.read_text()
    assert not marker.exists(), "a new tree, not one written over the old"
    assert not list(root.glob("opt/*.new.*")) and not list(root.glob("opt/*.old.*"))
    version = run_installed(root, str(root / PREFIX.lstrip("/") / "bin/rebootcoord"), "--version")
    assert version.stdout.strip() == f"rebootcoord {__version__}"


@pytest.fixture
def installed_server(installed: Path, etcd: Any, tmp_path: Path) -> Iterator[tuple[int, int]]:
    """The installed rebootcoord fleetlock-server with the installed example config, pointed at
    the session's etcd and at loopback ports: what rebootcoord-fleetlock.service runs."""
    example = yaml.safe_load((installed / "etc/rebootcoord/fleetlock.yaml").read_text())
    port, metrics_port = free_port(), free_port()
    example.update(
        etcd_endpoints=[etcd.endpoint],
        etcd_key_prefix=f"test-systemd-{os.getpid()}-{port}",
        fleetlock_listen=f"127.0.0.1:{port}",
        metrics_address=f"127.0.0.1:{metrics_port}",
    )
    config = tmp_path / "fleetlock.yaml"
    config.write_text(yaml.safe_dump(example))
    venv = installed / PREFIX.lstrip("/")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("REBOOTCOORD_")}
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [
            str(venv / "bin/python"),
            str(venv / "bin/rebootcoord"),
            "fleetlock-server",
            "--config",
            str(config),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=clean,
    )
    try:
        wait_for(lambda: _get(metrics_port, "/healthz") == 200 or server.poll() is not None, what="/healthz")
        assert server.poll() is None, (tmp_path / "server.log").read_text()
        yield port, metrics_port
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=30)
        finally:
            server.kill()
            log.close()
        assert code == 0, (tmp_path / "server.log").read_text()


def _get(port: int, path: str) -> int:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", path)
        return conn.getresponse().status
    except OSError:
        return 0


@bundle_test
@pytest.mark.etcd
def test_the_installed_fleetlock_server_answers_zincati(installed_server: tuple[int, int]) -> None:
    port, metrics_port = installed_server

    def post(path: str, node: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        body = json.dumps({"client_params": {"id": node, "group": "default"}})
        conn.request("POST", path, body, {"fleet-lock-protocol": "true", "content-type": "application/json"})
        response = conn.getresponse()
        response.read()
        return response.status

    assert post("/v1/pre-reboot", "zincati-1") == 200
    assert post("/v1/pre-reboot", "zincati-2") != 200, "max_holders: 1 in the example"
    assert post("/v1/steady-state", "zincati-1") == 200
    assert _get(metrics_port, "/metrics") == 200
