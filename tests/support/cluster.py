"""Launcher for the real Kubernetes test control plane: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and kwok, built into ``testbin/`` by ``make testbin``.

Owns: starting and stopping those processes on free loopback ports inside one work directory, the
credentials they use (a throw-away CA, static bearer tokens, service-account signing keys, made with
the ``openssl`` CLI), the admin kubeconfig, and the kwok-managed fake nodes (create, NotReady/Ready,
new bootID, delete). The pytest fixtures (``tests.support.kubecluster``), ``make cluster`` (the CLI
at the bottom: ``python -m tests.support.cluster up|down|status``) and ``benchmarks/controlplane.py``
all start the cluster through :class:`KubeCluster`.

Never: listens on or connects to anything but 127.0.0.1, writes outside its work directory, or
leaves a process behind. Each component runs in its own process group (stopped with SIGTERM, then
SIGKILL) and gets ``PR_SET_PDEATHSIG=SIGKILL``, so it dies with the process that started it even
when that one is killed with SIGKILL. Caveat of PDEATHSIG: the signal follows the *thread* that
forked, so start clusters from a thread that lives as long as the cluster (pytest's main thread).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import yaml

log = logging.getLogger(__name__)

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
DEFAULT_TESTBIN: Final = REPO_ROOT / "testbin"
BUILD_SCRIPT: Final = REPO_ROOT / "hack" / "testbin" / "build.sh"
KWOK_STAGES: Final = Path(__file__).with_name("kwok_stages.yaml")

#: Setting this annotation to "true" makes kwok report the node NotReady (see kwok_stages.yaml).
NOT_READY_ANNOTATION: Final = "kwok.rebootcoord.test/not-ready"
#: Every node made by :meth:`KubeCluster.create_nodes` carries this label (value "true").
FAKE_NODE_LABEL: Final = "kwok.rebootcoord.test/fake"
#: kwok manages (renews the Lease of, plays the stages of) nodes labelled KUBELET_LABEL=running:
#: any other value stands for a stopped kubelet.
KUBELET_LABEL: Final = "kwok.rebootcoord.test/kubelet"
#: kwok's node Lease duration (renewed every quarter of it) and the node-lifecycle controller's
#: grace period: a node whose kubelet stops goes Ready=Unknown this long after its last renewal.
NODE_LEASE_SECONDS: Final = 20
ZONE_LABEL: Final = "topology.kubernetes.io/zone"
NOT_READY_TAINT: Final = "node.kubernetes.io/not-ready"
UNREACHABLE_TAINT: Final = "node.kubernetes.io/unreachable"
_HEALTH_TAINTS: Final = frozenset({NOT_READY_TAINT, UNREACHABLE_TAINT})
DEFAULT_ZONES: Final = ("zone-a", "zone-b", "zone-c")
#: status.nodeInfo.kubeletVersion of the fake nodes: the control plane's own release.
KUBELET_VERSION: Final = "v1.36.3"

#: Controllers kube-controller-manager runs (names as in k8s 1.36; `--controllers` also takes the
#: pre-1.28 short aliases). node-lifecycle is on because kwok renews node Leases: it removes the
#: not-ready taint that the TaintNodesByCondition admission plugin puts on every new node, and taints
#: nodes that kwok reports NotReady, as on a real cluster.
CONTROLLERS: Final = (
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "namespace-controller",
    "garbage-collector-controller",
    "replicaset-controller",
    "deployment-controller",
    "daemonset-controller",
    "statefulset-controller",
    "job-controller",
    "disruption-controller",
    "pod-garbage-collector-controller",
    "endpointslice-controller",
    "clusterrole-aggregation-controller",
    "node-lifecycle-controller",
    "taint-eviction-controller",
)
#: Service ClusterIPs come from a loopback block: there is no kube-proxy, so a pod (the real node's
#: are hostNetwork) that dials one must reach nothing but this machine's loopback (refused), never a
#: route off the machine. Pods reach the API server through KUBERNETES_SERVICE_HOST=127.0.0.1.
SERVICE_CLUSTER_IP_RANGE: Final = "127.64.0.0/24"
POD_CIDR: Final = "127.16.0.0/12"
SA_ISSUER: Final = "https://kubernetes.default.svc.cluster.local"

#: Audit policy of ``KubeCluster(audit=True)``: metadata (who, verb, resource, namespace, name,
#: decision, status code) of every request, except those of the control plane's own components,
#: kwok and the health probes, which would be most of the log and are never what a test accounts
#: for. RequestReceived is omitted: ResponseStarted (watches) and ResponseComplete remain.
AUDIT_POLICY: Final = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: None
    users: [system:kube-controller-manager, system:kube-scheduler, system:kwok, system:apiserver]
  - level: None
    nonResourceURLs: [/healthz*, /readyz*, /livez*]
  - level: Metadata
"""

_T = TypeVar("_T")


class ClusterError(RuntimeError):
    """The control plane could not be built, started or driven."""


class TestbinMissing(ClusterError):
    """``testbin/`` lacks a binary or was built from other pins; the message says what to run."""

    __test__ = False  # not a pytest test class, despite the name


class ComponentFailed(ClusterError):
    """A component exited or never became healthy; the message ends with its log tail."""


class WaitTimeout(ClusterError, TimeoutError):
    """A condition polled by :func:`wait_for` did not hold before its deadline."""


def wait_for(
    condition: Callable[[], _T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
    ignore: tuple[type[BaseException], ...] = (),
) -> _T:
    """Poll ``condition`` until it returns something truthy, and return that.

    Raises :class:`WaitTimeout` naming ``what`` (and the last ignored error, if any) once
    ``timeout`` seconds have passed. Exceptions of the types in ``ignore`` count as "not yet".
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = condition()
        except ignore as exc:
            last_error = exc
        else:
            if value:
                return value
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------------------------
# Binaries


TESTBIN_NAMES: Final = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kubelet",
    "kwok",
    "helm",
    "pause",
    "toxiproxy-server",
)


@dataclass(frozen=True)
class Testbin:
    """The binaries ``make testbin`` builds (see hack/testbin/build.sh)."""

    __test__ = False  # not a pytest test class, despite the name

    directory: Path

    def path(self, name: str) -> Path:
        return self.directory / name

    @classmethod
    def locate(cls, directory: Path | None = None, *, check_pins: bool = True) -> Testbin:
        """Find the binaries, or raise :class:`TestbinMissing` saying how to build them.

        With ``check_pins`` the build script is asked (``build.sh --check``, instant) whether the
        binaries match the committed pins; that needs Go, so without Go present binaries are used
        as they are.
        """
        directory = (directory or DEFAULT_TESTBIN).resolve()
        missing = [n for n in TESTBIN_NAMES if not os.access(directory / n, os.X_OK)]
        have_go = shutil.which("go") is not None
        if missing:
            hint = (
                "run `make testbin` (10-25 minutes the first time, then cached)"
                if have_go
                else "install Go 1.26 or newer (https://go.dev/dl, then put its bin/ on PATH), "
                "then run `make testbin`"
            )
            raise TestbinMissing(
                f"the Kubernetes test control plane is not built: {directory} lacks "
                f"{', '.join(missing)}; {hint}"
            )
        if check_pins and have_go and directory == DEFAULT_TESTBIN.resolve():
            check = subprocess.run(
                [str(BUILD_SCRIPT), "--check", str(directory)],
                capture_output=True,
                text=True,
                check=False,
            )
            if check.returncode != 0:
                raise TestbinMissing(
                    f"{directory} was built from other pins than hack/testbin/*/go.mod: "
                    f"run `make testbin` ({check.stdout.strip() or check.stderr.strip()})"
                )
        return cls(directory)


# --------------------------------------------------------------------------------------------
# Credentials


def _openssl(*args: str, cwd: Path) -> None:
    if shutil.which("openssl") is None:
        raise ClusterError("the `openssl` command is needed for test certificates: apt-get install openssl")
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ClusterError(f"openssl {' '.join(args)} failed: {proc.stderr.strip()}")


#: Client -> (user name, group) in tokens.csv. system:masters where a component needs broad
#: rights (kube-controller-manager runs without per-controller service-account credentials).
IDENTITIES: Final[Mapping[str, tuple[str, str]]] = {
    "admin": ("admin", "system:masters"),
    "kube-controller-manager": ("system:kube-controller-manager", "system:masters"),
    "kube-scheduler": ("system:kube-scheduler", ""),  # the bootstrap RBAC policy covers it
    "kwok": ("system:kwok", "system:masters"),
}


@dataclass(frozen=True)
class Credentials:
    """A throw-away PKI and the static tokens of each client (one line each in tokens.csv)."""

    directory: Path
    tokens: Mapping[str, str]  # component -> bearer token

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def serving_cert(self) -> Path:
        return self.directory / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        return self.directory / "apiserver.key"

    @property
    def sa_key(self) -> Path:
        return self.directory / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.directory / "sa.pub"

    @property
    def token_file(self) -> Path:
        return self.directory / "tokens.csv"

    @classmethod
    def generate(cls, directory: Path) -> Credentials:
        directory.mkdir(parents=True, exist_ok=True)
        ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
        _openssl(
            "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "30",
            "-subj", "/CN=rebootcoord-test-ca",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
            cwd=directory,
        )  # fmt: skip
        _openssl(
            "req", "-new", *ec, "-keyout", "apiserver.key", "-out", "apiserver.csr",
            "-subj", "/CN=kube-apiserver",
            cwd=directory,
        )  # fmt: skip
        (directory / "apiserver.ext").write_text(
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\n"
            "subjectAltName=IP:127.0.0.1,IP:127.64.0.1,DNS:localhost,DNS:kubernetes,"
            "DNS:kubernetes.default,DNS:kubernetes.default.svc,"
            "DNS:kubernetes.default.svc.cluster.local\n"
        )
        _openssl(
            "x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-set_serial", f"0x{secrets.token_hex(8)}", "-days", "30", "-sha256",
            "-extfile", "apiserver.ext", "-out", "apiserver.crt",
            cwd=directory,
        )  # fmt: skip
        # RSA for the service-account keys: what every JWT consumer understands.
        _openssl(
            "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "sa.key",
            cwd=directory,
        )  # fmt: skip
        _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=directory)
        tokens = {name: secrets.token_urlsafe(32) for name in IDENTITIES}
        lines = []
        for name, (user, group) in IDENTITIES.items():
            lines.append(f"{tokens[name]},{user},{user}" + (f",{group}" if group else ""))
        token_file = directory / "tokens.csv"
        token_file.write_text("\n".join(lines) + "\n")
        for secret in ("ca.key", "apiserver.key", "sa.key", "tokens.csv"):
            (directory / secret).chmod(0o600)
        return cls(directory=directory, tokens=tokens)


def write_kubeconfig(path: Path, *, server: str, ca_file: Path, token: str, user: str) -> Path:
    """A kubeconfig with one cluster, one token user and one current context."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "rebootcoord-test", "cluster": {"server": server, "certificate-authority": str(ca_file)}}
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "rebootcoord-test", "context": {"cluster": "rebootcoord-test", "user": user}}],
        "current-context": "rebootcoord-test",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


# --------------------------------------------------------------------------------------------
# Processes

_PR_SET_PDEATHSIG: Final = 1


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    def preexec() -> None:  # runs in the child, between fork and exec
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


class Process:
    """One component: its own process group, its output in ``log_path``, death with its parent."""

    def __init__(self, name: str, argv: Sequence[str], *, log_path: Path, cwd: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.cwd = cwd
        self._popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self._popen = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: killpg reaches any helper it forks
                # Only prctl and getppid run there; we start components from one thread.
                preexec_fn=_die_with_parent(os.getpid()),  # noqa: PLW1509
                env={**os.environ, "HOME": str(self.cwd)},  # keeps ~/.kube, ~/.kwok out of it
            )
        log.debug("started %s (pid %d): %s", self.name, self._popen.pid, " ".join(self.argv))

    @property
    def pid(self) -> int:
        if self._popen is None:
            raise ClusterError(f"{self.name} was not started")
        return self._popen.pid

    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def check_alive(self) -> None:
        if self._popen is not None and self._popen.poll() is not None:
            raise ComponentFailed(f"{self.name} exited with code {self._popen.returncode}\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return f"(no log at {self.log_path})"
        return f"--- last lines of {self.log_path} ---\n" + "\n".join(text[-lines:])

    def terminate(self) -> None:
        """Send SIGTERM to the process group (no wait)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)

    def wait_or_kill(self, timeout: float) -> None:
        """Wait for the exit; past ``timeout`` SIGKILL the group. Reaps the child either way."""
        if self._popen is None:
            return
        try:
            self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s ignored SIGTERM for %.0fs: SIGKILL", self.name, timeout)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self._popen.wait()
        # A helper the component forked could outlive it in the group: make sure it does not.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)


def _get(url: str, *, context: ssl.SSLContext | None, token: str | None = None) -> str | None:
    """Body of a 200 answer, or None for anything else (refused, 500, TLS not ready...)."""
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=2, context=context) as response:
            body: bytes = response.read()
            return body.decode() if response.status == 200 else None
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return None


def _insecure_context() -> ssl.SSLContext:
    # kube-controller-manager and kube-scheduler serve /healthz with a self-signed certificate.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


# --------------------------------------------------------------------------------------------
# The cluster


@dataclass(frozen=True)
class FakeNode:
    """A kwok-managed node made by :meth:`KubeCluster.create_nodes`."""

    name: str
    zone: str
    machine_id: str
    boot_id: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Endpoints:
    """Where a running cluster answers, and with which credentials (also saved as state.json)."""

    server: str
    kubeconfig: Path
    ca_file: Path
    admin_token: str
    pids: Mapping[str, int]
    audit_log: Path | None = None  # the API server's audit log (JSON lines), when enabled
    etcd: str = ""  # the cluster's etcd (client URL): its history is the checker's

    def to_json(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "kubeconfig": str(self.kubeconfig),
            "ca_file": str(self.ca_file),
            "admin_token": self.admin_token,
            "pids": dict(self.pids),
            "audit_log": str(self.audit_log) if self.audit_log else None,
            "etcd": self.etcd,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Endpoints:
        return cls(
            server=data["server"],
            kubeconfig=Path(data["kubeconfig"]),
            ca_file=Path(data["ca_file"]),
            admin_token=data["admin_token"],
            pids={str(k): int(v) for k, v in data["pids"].items()},
            audit_log=Path(data["audit_log"]) if data.get("audit_log") else None,
            etcd=str(data.get("etcd") or ""),
        )


class KubeCluster:
    """A real control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) and
    kwok faking the kubelets, in ``workdir``.

    ``KubeCluster(workdir).start()`` starts it (also a context manager); :meth:`attach` gives a
    handle on one that another process runs (``make cluster``), which :meth:`stop` leaves running.
    ``audit=True`` makes the API server write an audit log (:data:`AUDIT_POLICY`) to
    :attr:`audit_log`, from which :mod:`tests.support.rbac` tells which rights an identity used.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        testbin: Testbin | None = None,
        node_lifecycle: bool = True,
        verbosity: int = 1,
        audit: bool = False,
    ) -> None:
        self.workdir = workdir.resolve()
        self.testbin = testbin or Testbin.locate()
        self.node_lifecycle = node_lifecycle
        self.verbosity = verbosity
        self.audit = audit
        self._processes: list[Process] = []
        self._probes: dict[str, Callable[[], object]] = {}
        self._endpoints: Endpoints | None = None
        self._owned = True
        #: Seconds from start() to a healthy control plane (None before start()).
        self.startup_seconds: float | None = None

    # -- lifecycle --------------------------------------------------------------------------

    @classmethod
    def attach(cls, state_file: Path) -> KubeCluster:
        """A handle on a cluster started elsewhere, from its state.json; stop() won't stop it."""
        cluster = cls.__new__(cls)
        cluster.workdir = state_file.resolve().parent
        cluster.testbin = Testbin(DEFAULT_TESTBIN)
        cluster.node_lifecycle = True
        cluster.verbosity = 1
        cluster.audit = False  # whether it audits is in its endpoints (audit_log)
        cluster._processes = []
        cluster._endpoints = Endpoints.from_json(json.loads(state_file.read_text()))
        cluster._owned = False
        cluster.startup_seconds = None
        return cluster

    def __enter__(self) -> KubeCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 120.0) -> KubeCluster:
        """Start every component and return once all are healthy; on failure stop what started."""
        if self._endpoints is not None:
            raise ClusterError("cluster already started")
        t0 = time.monotonic()
        try:
            self._start(deadline=t0 + timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        log.info("control plane ready in %.1fs at %s", self.startup_seconds, self.server)
        return self

    def _start(self, *, deadline: float) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        creds = Credentials.generate(self.workdir / "pki")
        bin_ = self.testbin.path
        logs = self.workdir / "logs"
        v = str(self.verbosity)

        etcd_port, etcd_peer = free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        etcd = self._spawn(
            "etcd",
            [
                str(bin_("etcd")),
                "--name=default",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=default=http://127.0.0.1:{etcd_peer}",
                "--unsafe-no-fsync",  # a test cluster lives minutes: durability buys nothing
                "--log-level=warn",
            ],
            logs,
        )
        self._wait_healthy(etcd, lambda: _get(f"{etcd_url}/health", context=None), deadline)

        api_port = free_port()
        server = f"https://127.0.0.1:{api_port}"
        admission = [] if self.node_lifecycle else ["--disable-admission-plugins=TaintNodesByCondition"]
        audit_log: Path | None = None
        auditing: list[str] = []
        if self.audit:
            policy = self.workdir / "audit-policy.yaml"
            policy.write_text(AUDIT_POLICY)
            audit_log = logs / "audit.log"
            auditing = [
                f"--audit-policy-file={policy}",
                f"--audit-log-path={audit_log}",
                "--audit-log-format=json",
                "--audit-log-mode=blocking",  # written by the request's own goroutine, in order
                "--audit-log-maxsize=0",  # never rotated: a test reads one file
            ]
        apiserver = self._spawn(
            "kube-apiserver",
            [
                str(bin_("kube-apiserver")),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                f"--tls-cert-file={creds.serving_cert}",
                f"--tls-private-key-file={creds.serving_key}",
                f"--client-ca-file={creds.ca_cert}",
                f"--token-auth-file={creds.token_file}",
                "--authorization-mode=Node,RBAC",
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-account-key-file={creds.sa_pub}",
                f"--service-account-signing-key-file={creds.sa_key}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--allow-privileged=true",
                "--profiling=false",
                # Objects stored as JSON and etcd's history kept: the fault checker replays the
                # Leases' and Nodes' every revision from etcd (rebootcoord.sim.history).
                "--storage-media-type=application/json",
                "--etcd-compaction-interval=0",
                f"--v={v}",
                *admission,
                *auditing,
            ],
            logs,
        )
        ca_context = ssl.create_default_context(cafile=str(creds.ca_cert))
        admin = creds.tokens["admin"]
        self._wait_healthy(
            apiserver, lambda: _get(f"{server}/readyz", context=ca_context, token=admin), deadline
        )

        kubeconfigs = {
            name: write_kubeconfig(
                self.workdir / ("kubeconfig" if name == "admin" else f"{name}.kubeconfig"),
                server=server,
                ca_file=creds.ca_cert,
                token=creds.tokens[name],
                user=IDENTITIES[name][0],
            )
            for name in IDENTITIES
        }

        kcm_port, sched_port, kwok_port = free_port(), free_port(), free_port()
        controllers = [c for c in CONTROLLERS if self.node_lifecycle or "node-lifecycle" not in c]
        kcm_kc = str(kubeconfigs["kube-controller-manager"])
        kcm = self._spawn(
            "kube-controller-manager",
            [
                str(bin_("kube-controller-manager")),
                f"--kubeconfig={kcm_kc}",
                f"--authentication-kubeconfig={kcm_kc}",
                f"--authorization-kubeconfig={kcm_kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={kcm_port}",
                f"--cert-dir={self.workdir / 'kcm-certs'}",
                "--leader-elect=false",
                f"--controllers={','.join(controllers)}",
                f"--service-account-private-key-file={creds.sa_key}",
                f"--root-ca-file={creds.ca_cert}",
                "--node-monitor-period=2s",
                # The default 20 requests/s makes untainting 100 new nodes take 20 s.
                "--kube-api-qps=200",
                "--kube-api-burst=400",
                f"--node-monitor-grace-period={NODE_LEASE_SECONDS}s",
                f"--v={v}",
            ],
            logs,
        )
        sched_kc = str(kubeconfigs["kube-scheduler"])
        scheduler = self._spawn(
            "kube-scheduler",
            [
                str(bin_("kube-scheduler")),
                f"--kubeconfig={sched_kc}",
                f"--authentication-kubeconfig={sched_kc}",
                f"--authorization-kubeconfig={sched_kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={sched_port}",
                f"--cert-dir={self.workdir / 'scheduler-certs'}",
                "--leader-elect=false",
                f"--v={v}",
            ],
            logs,
        )
        kwok = self._spawn(
            "kwok",
            [
                str(bin_("kwok")),
                f"--kubeconfig={kubeconfigs['kwok']}",
                f"--config={KWOK_STAGES}",
                # Not --manage-all-nodes: a node whose label says its kubelet is stopped must get
                # no Lease renewals, so that the node-lifecycle controller sees it go silent.
                f"--manage-nodes-with-label-selector={KUBELET_LABEL}=running",
                # kwok renews each managed node's Lease (kube-node-lease) every 5 s: the heartbeat
                # the node-lifecycle controller watches (without Leases nodes go Unknown).
                f"--node-lease-duration-seconds={NODE_LEASE_SECONDS}",
                # Pod IPs kwok hands out: a loopback block, so that an address a test reads from
                # the API can never lead traffic off the machine (the default is 10.0.0.0/24).
                f"--cidr={POD_CIDR}",
                f"--server-address=127.0.0.1:{kwok_port}",
            ],
            logs,
        )
        insecure = _insecure_context()
        self._wait_healthy(
            kcm, lambda: _get(f"https://127.0.0.1:{kcm_port}/healthz", context=insecure), deadline
        )
        self._wait_healthy(
            scheduler,
            lambda: _get(f"https://127.0.0.1:{sched_port}/healthz", context=insecure),
            deadline,
        )
        self._wait_healthy(
            kwok, lambda: _get(f"http://127.0.0.1:{kwok_port}/healthz", context=None), deadline
        )
        self._endpoints = Endpoints(
            server=server,
            kubeconfig=kubeconfigs["admin"],
            ca_file=creds.ca_cert,
            admin_token=admin,
            pids={p.name: p.pid for p in self._processes},
            audit_log=audit_log,
            etcd=etcd_url,
        )

    def _spawn(self, name: str, argv: list[str], logs: Path) -> Process:
        process = Process(name, argv, log_path=logs / f"{name}.log", cwd=self.workdir)
        self._processes.append(process)
        process.start()
        return process

    def _wait_healthy(self, process: Process, probe: Callable[[], object], deadline: float) -> None:
        self._probes[process.name] = probe

        def ready() -> bool:
            process.check_alive()  # a crash fails fast, with the log tail
            return bool(probe())

        try:
            wait_for(ready, timeout=max(deadline - time.monotonic(), 0.0), what=f"{process.name} health")
        except WaitTimeout as exc:
            raise ComponentFailed(f"{exc}\n{process.log_tail()}") from None

    def stop(self, timeout: float = 15.0) -> None:
        """Stop every component this object started (clients first, etcd last). Idempotent."""
        if not self._owned:
            return
        by_name = {p.name: p for p in self._processes}
        waves = [("kwok", "kube-scheduler", "kube-controller-manager"), ("kube-apiserver",), ("etcd",)]
        for wave in waves:
            members = [by_name[n] for n in wave if n in by_name]
            for p in members:
                p.terminate()
            for p in members:
                p.wait_or_kill(timeout)
        self._processes.clear()
        self._endpoints = None

    def restart(self, name: str, *, down: float = 0.0, timeout: float = 60.0) -> float:
        """SIGKILL component ``name`` and start it again with the same arguments after ``down``
        seconds (a crashed or restarted API server, etcd...); returns once it is healthy, with the
        seconds it was unavailable."""
        if not self._owned:
            raise ClusterError("only the process that started the cluster can restart its components")
        old = next(p for p in self._processes if p.name == name)
        t0 = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(old.pid, signal.SIGKILL)
        old.wait_or_kill(10)
        if down:
            time.sleep(down)
        new = Process(name, old.argv, log_path=old.log_path, cwd=old.cwd)
        self._processes[self._processes.index(old)] = new
        new.start()
        self._wait_healthy(new, self._probes[name], time.monotonic() + timeout)
        if self._endpoints is not None:
            pids = {**self._endpoints.pids, name: new.pid}
            self._endpoints = dataclasses.replace(self._endpoints, pids=pids)
        return time.monotonic() - t0

    def check_alive(self) -> None:
        """Raise :class:`ComponentFailed` if a component this object started has exited."""
        for p in self._processes:
            p.check_alive()

    # -- where and who ----------------------------------------------------------------------

    @property
    def endpoints(self) -> Endpoints:
        if self._endpoints is None:
            raise ClusterError("cluster not started")
        return self._endpoints

    @property
    def server(self) -> str:
        """The API server's URL, https://127.0.0.1:PORT."""
        return self.endpoints.server

    @property
    def kubeconfig(self) -> Path:
        """An admin kubeconfig (token user in system:masters)."""
        return self.endpoints.kubeconfig

    @property
    def ca_file(self) -> Path:
        """The CA that signed the API server's certificate."""
        return self.endpoints.ca_file

    @property
    def admin_token(self) -> str:
        return self.endpoints.admin_token

    @property
    def audit_log(self) -> Path | None:
        """The API server's audit log (JSON lines; see :data:`AUDIT_POLICY`), None if not auditing."""
        return self.endpoints.audit_log

    def processes(self) -> dict[str, int]:
        """Component name -> pid."""
        return dict(self.endpoints.pids)

    def rss_bytes(self) -> dict[str, int]:
        """Resident memory of each component (from /proc), by name."""
        return {name: _rss_bytes(pid) for name, pid in self.processes().items()}

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> str:
        """Run testbin's kubectl against this cluster as admin; return its stdout."""
        proc = subprocess.run(
            [str(self.testbin.path("kubectl")), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            input=input,
            check=False,
        )
        if check and proc.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    # -- clients ----------------------------------------------------------------------------

    def api_client(self, *, as_user: str | None = None, as_group: str | None = None) -> Any:
        """A ``kubernetes.client.ApiClient`` as admin, or impersonating ``as_user``.

        For ``as_user="system:serviceaccount:NS:NAME"`` leave ``as_group`` unset: the API server
        then adds the service-account groups itself. (The Python client sends one value per
        header, so at most one ``Impersonate-Group``.)
        """
        client = self._client_for_token(self.admin_token)
        if as_user is not None:
            client.set_default_header("Impersonate-User", as_user)
            if as_group is not None:
                client.set_default_header("Impersonate-Group", as_group)
        elif as_group is not None:
            raise ValueError("as_group needs as_user")
        return client

    def service_account_client(self, namespace: str, name: str, *, token: bool = False) -> Any:
        """An ApiClient acting as ServiceAccount ``namespace/name``.

        By default through impersonation; ``token=True`` uses a real, signed token from the
        TokenRequest API instead (proves the signing keys and the SA authenticator).
        """
        if token:
            return self._client_for_token(self.service_account_token(namespace, name))
        return self.api_client(as_user=f"system:serviceaccount:{namespace}:{name}")

    def service_account_token(self, namespace: str, name: str, *, seconds: int = 3600) -> str:
        """A bound token for an existing ServiceAccount (TokenRequest)."""
        from kubernetes import client as k8s

        with self.api_client() as api:
            request = k8s.AuthenticationV1TokenRequest(
                spec=k8s.V1TokenRequestSpec(audiences=[SA_ISSUER], expiration_seconds=seconds)
            )
            answer = k8s.CoreV1Api(api).create_namespaced_service_account_token(name, namespace, request)
            return str(answer.status.token)

    def _client_for_token(self, token: str) -> Any:
        from kubernetes import client as k8s

        config = k8s.Configuration()
        config.host = self.server
        config.ssl_ca_cert = str(self.ca_file)
        config.api_key = {"authorization": token}
        config.api_key_prefix = {"authorization": "Bearer"}
        return k8s.ApiClient(config)

    # -- kwok nodes -------------------------------------------------------------------------

    def create_nodes(
        self,
        count: int,
        *,
        prefix: str = "node",
        labels: Mapping[str, str] | None = None,
        zones: Sequence[str] = DEFAULT_ZONES,
        annotations: Mapping[str, str] | None = None,
        start: int = 0,
        wait: bool = True,
        timeout: float = 60.0,
    ) -> list[FakeNode]:
        """Create ``count`` kwok-managed nodes ``{prefix}-{start}``... and, with ``wait``, return once
        each is Ready and schedulable (the not-ready taint gone).

        Zones go round-robin (``topology.kubernetes.io/zone``); each node gets a random
        ``status.nodeInfo.machineID`` (32 hex digits, like /etc/machine-id) and ``bootID`` (a
        UUID), plus the usual ``kubernetes.io/hostname``/``os``/``arch`` labels and
        ``kwok.rebootcoord.test/fake=true``.
        """
        from kubernetes import client as k8s

        nodes: list[FakeNode] = []
        with self.api_client() as api:
            core = k8s.CoreV1Api(api)
            for i in range(start, start + count):
                name = f"{prefix}-{i}"
                zone = zones[i % len(zones)] if zones else ""
                node_labels = {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                    FAKE_NODE_LABEL: "true",
                    KUBELET_LABEL: "running",
                    **({ZONE_LABEL: zone} if zone else {}),
                    **(labels or {}),
                }
                fake = FakeNode(
                    name=name,
                    zone=zone,
                    machine_id=uuid.uuid4().hex,
                    boot_id=str(uuid.uuid4()),
                    labels=node_labels,
                )
                body = {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": name,
                        "labels": node_labels,
                        "annotations": {"kwok.x-k8s.io/node": "fake", **(annotations or {})},
                    },
                    "status": {
                        "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                        "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                        "nodeInfo": _node_info(fake),
                        "addresses": [
                            {"type": "InternalIP", "address": _node_ip(name)},
                            {"type": "Hostname", "address": name},
                        ],
                    },
                }
                # The API server keeps a new Node's status (kubelets register that way) and kwok's
                # stages keep the nodeInfo they find, so one call sets machineID and bootID.
                core.create_node(body)
                nodes.append(fake)
        if wait:
            self.wait_nodes_ready([n.name for n in nodes], True, timeout=timeout)
        return nodes

    def set_node_ready(self, name: str, ready: bool, *, wait: bool = True, timeout: float = 30.0) -> None:
        """Make kwok report node ``name`` Ready or NotReady, as a running kubelet would.

        NotReady: the annotation kwok.rebootcoord.test/not-ready=true, which kwok's node-not-ready
        stage turns into Ready=False (reason KubeletNotReady) and which stops kwok from making the
        node Ready again. Ready: the annotation removed; kwok's node-initialize stage sets
        Ready=True, and pods the node-lifecycle controller marked unready meanwhile are made ready
        again (a kubelet re-posts them; kwok would not). kwok renews the node's Lease throughout,
        so the node never goes Unknown: see :meth:`set_kubelet_running` for that. With ``wait``,
        returns once the condition shows (for Ready, also once the not-ready taint is gone).
        """
        from kubernetes import client as k8s

        patch = {"metadata": {"annotations": {NOT_READY_ANNOTATION: None if ready else "true"}}}
        with self.api_client() as api:
            k8s.CoreV1Api(api).patch_node(name, patch)
        if wait:
            self.wait_node_ready(name, ready, timeout=timeout)
            if ready:
                self.restore_pod_readiness(name)

    def set_kubelet_running(
        self, name: str, running: bool, *, wait: bool = True, timeout: float | None = None
    ) -> None:
        """Stop or start the fake kubelet of node ``name``: a node that is powered off or
        rebooting, as the control plane sees it.

        Stopped (label kwok.rebootcoord.test/kubelet=stopped): kwok stops renewing the node's Lease
        and playing its stages; NODE_LEASE_SECONDS later the node-lifecycle controller sets
        Ready=Unknown, taints it unreachable (NoSchedule, NoExecute) and marks its pods unready,
        so PodDisruptionBudgets count them as unhealthy. Pods deleted meanwhile stay Terminating.
        Started: kwok takes the Lease again, node-initialize sets Ready=True, and the pods are made
        ready again. With ``wait``: until Ready=Unknown, or until Ready and untainted.
        """
        from kubernetes import client as k8s

        patch = {"metadata": {"labels": {KUBELET_LABEL: "running" if running else "stopped"}}}
        with self.api_client() as api:
            k8s.CoreV1Api(api).patch_node(name, patch)
        if wait:
            limit = timeout if timeout is not None else NODE_LEASE_SECONDS * 3 + 30
            self.wait_node_ready(name, True if running else None, timeout=limit)
            if running:
                self.restore_pod_readiness(name)

    def restore_pod_readiness(self, name: str) -> list[str]:
        """Set Ready/ContainersReady back to True on the Running pods of node ``name`` that the
        node-lifecycle controller marked unready (what a kubelet's status sync does after it comes
        back). Returns the pods changed. A kwok stage cannot do it without fighting that controller
        while the node is still NotReady."""
        from kubernetes import client as k8s

        changed = []
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with self.api_client() as api:
            core = k8s.CoreV1Api(api)
            pods = core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={name}").items
            for pod in pods:
                if pod.metadata.deletion_timestamp is not None or pod.status.phase != "Running":
                    continue
                if all(c.status == "True" for c in pod.status.conditions or () if c.type == "Ready"):
                    continue
                conditions = [
                    {"type": t, "status": "True", "lastTransitionTime": now}
                    for t in ("Ready", "ContainersReady")
                ]
                core.patch_namespaced_pod_status(
                    pod.metadata.name, pod.metadata.namespace, {"status": {"conditions": conditions}}
                )
                changed.append(f"{pod.metadata.namespace}/{pod.metadata.name}")
        return changed

    def set_boot_id(self, name: str, boot_id: str | None = None) -> str:
        """Set ``status.nodeInfo.bootID`` (a new random UUID by default): what a reboot changes.
        kwok keeps it. Returns the new boot ID."""
        from kubernetes import client as k8s

        boot_id = boot_id or str(uuid.uuid4())
        with self.api_client() as api:
            k8s.CoreV1Api(api).patch_node_status(name, {"status": {"nodeInfo": {"bootID": boot_id}}})
        return boot_id

    def simulate_reboot(self, name: str, *, stop_kubelet: bool = False) -> str:
        """Take node ``name`` down, give it a new bootID, bring it back (waiting for each step);
        returns the new boot ID. Down is Ready=False reported by a live kubelet (instant), or with
        ``stop_kubelet`` a silent node (Ready=Unknown after NODE_LEASE_SECONDS, pods unready):
        slower, and closer to a real reboot."""
        if stop_kubelet:
            self.set_kubelet_running(name, False)
        else:
            self.set_node_ready(name, False)
        boot_id = self.set_boot_id(name)
        if stop_kubelet:
            self.set_kubelet_running(name, True)
        else:
            self.set_node_ready(name, True)
        return boot_id

    def delete_node(self, name: str, *, wait: bool = True, timeout: float = 30.0) -> None:
        """Delete node ``name`` (absent is fine). The pod GC controller then removes its pods."""
        from kubernetes import client as k8s
        from kubernetes.client.exceptions import ApiException

        with self.api_client() as api:
            core = k8s.CoreV1Api(api)
            try:
                core.delete_node(name)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                return

            def gone() -> bool:
                try:
                    core.read_node(name)
                except ApiException as exc:
                    if exc.status == 404:
                        return True
                    raise
                return False

            if wait:
                wait_for(gone, timeout=timeout, what=f"node {name} deleted")

    def node_ready(self, name: str) -> bool | None:
        """The node's Ready condition: True, False, or None for Unknown (or not reported yet)."""
        from kubernetes import client as k8s

        with self.api_client() as api:
            node = k8s.CoreV1Api(api).read_node(name)
        return _ready(node)

    def wait_node_ready(self, name: str, ready: bool | None, *, timeout: float = 30.0) -> None:
        """Wait for Ready to be ``ready`` (None: Unknown). For True with node-lifecycle on, also
        for the not-ready/unreachable taints to be gone (until then nothing is scheduled there)."""
        self.wait_nodes_ready([name], ready, timeout=timeout)

    def wait_nodes_ready(self, names: Sequence[str], ready: bool | None, *, timeout: float = 30.0) -> None:
        """:meth:`wait_node_ready` for many nodes at once (one list call per poll)."""
        from kubernetes import client as k8s

        pending = set(names)
        with self.api_client() as api:
            core = k8s.CoreV1Api(api)

            def settled(node: Any) -> bool:
                if _ready(node) is not ready:
                    return False
                if ready and self.node_lifecycle:
                    return not any(t.key in _HEALTH_TAINTS for t in node.spec.taints or ())
                return True

            def check() -> bool:
                if len(pending) == 1:
                    (name,) = pending
                    nodes = [core.read_node(name)]
                else:
                    nodes = core.list_node(label_selector=FAKE_NODE_LABEL).items
                pending.difference_update(n.metadata.name for n in nodes if settled(n))
                return not pending

            state = {True: "True", False: "False", None: "Unknown"}[ready]
            some = ", ".join(sorted(pending)[:5]) + (", ..." if len(pending) > 5 else "")
            wait_for(check, timeout=timeout, what=f"Ready={state} on {some}", interval=0.25)

    # -- state for other processes ----------------------------------------------------------

    def write_state(self, path: Path) -> Path:
        path.write_text(json.dumps(self.endpoints.to_json(), indent=2) + "\n")
        path.chmod(0o600)
        return path


def _node_info(node: FakeNode) -> dict[str, str]:
    return {
        "machineID": node.machine_id,
        "bootID": node.boot_id,
        "systemUUID": str(uuid.UUID(node.machine_id)),
        "architecture": "amd64",
        "operatingSystem": "linux",
        "osImage": "Debian GNU/Linux 12 (kwok)",
        "kernelVersion": "6.1.0-kwok",
        "containerRuntimeVersion": "kwok://v0.8.0",
        "kubeletVersion": KUBELET_VERSION,
        "kubeProxyVersion": KUBELET_VERSION,
    }


def _node_ip(name: str) -> str:
    """A stable loopback address for a fake node: kwok needs one, nothing ever connects to it."""
    digest = hashlib.sha256(name.encode()).digest()
    return f"127.1.{digest[0]}.{digest[1] % 254 + 1}"


def _ready(node: Any) -> bool | None:
    for condition in node.status.conditions or ():
        if condition.type == "Ready":
            return {"True": True, "False": False}.get(condition.status)
    return None


def _rss_bytes(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return False
    return state != "Z"


# --------------------------------------------------------------------------------------------
# CLI: `make cluster` / `make cluster-down`
#
#   up     starts a detached supervisor (`serve`) and returns once the cluster is ready
#   serve  runs the cluster in the foreground until SIGTERM/SIGINT (its components die with it)
#   down   SIGTERMs the supervisor, waits, and checks that no component survived
#   status prints the state

_STATE = "state.json"
_SUPERVISOR_PID = "supervisor.pid"
_MARKER = ".rebootcoord-cluster"
_REAL_NODE_STATE = "realnode.json"


def _supervisor_pid(workdir: Path) -> int | None:
    try:
        pid = int((workdir / _SUPERVISOR_PID).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def _cmd_up(args: argparse.Namespace) -> int:
    workdir = Path(args.dir).resolve()
    if (pid := _supervisor_pid(workdir)) is not None:
        print(f"cluster already running (supervisor pid {pid}); kubeconfig: {workdir / 'kubeconfig'}")
        return 0
    if workdir.exists() and any(workdir.iterdir()):
        if not (workdir / _MARKER).exists():
            print(f"error: {workdir} exists and was not made by this launcher", file=sys.stderr)
            return 2
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    (workdir / _MARKER).touch()
    Testbin.locate()  # fail here, not in the detached supervisor, when testbin/ is missing
    argv = [
        sys.executable, "-m", "tests.support.cluster", "serve",
        "--dir", str(workdir), "--nodes", str(args.nodes), "--timeout", str(args.timeout),
        "--real-nodes", str(args.real_nodes),
    ]  # fmt: skip
    with (workdir / "supervisor.log").open("ab") as out:
        supervisor = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives `make`, immune to its Ctrl-C
        )
    print(f"starting the control plane in {workdir} (supervisor pid {supervisor.pid}) ...")
    ready = workdir / "ready"
    try:
        wait_for(
            lambda: ready.exists() or supervisor.poll() is not None,
            timeout=args.timeout + 60,
            what="the cluster",
            interval=0.5,
        )
    except WaitTimeout:
        supervisor.terminate()
        supervisor.wait(30)
    if not ready.exists():
        print((workdir / "supervisor.log").read_text(errors="replace")[-4000:], file=sys.stderr)
        print("error: the cluster did not start (log above)", file=sys.stderr)
        return 1
    endpoints = Endpoints.from_json(json.loads((workdir / _STATE).read_text()))
    print(ready.read_text(), end="")
    print(f"  export KUBECONFIG={endpoints.kubeconfig}")
    print(f"  {DEFAULT_TESTBIN / 'kubectl'} get nodes -L {ZONE_LABEL}")
    print("  make cluster-down   # stops it")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    workdir = Path(args.dir).resolve()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    (workdir / _SUPERVISOR_PID).write_text(f"{os.getpid()}\n")
    cluster = KubeCluster(workdir, audit=True)
    real_node = None
    try:
        cluster.start(timeout=args.timeout)
        t0 = time.monotonic()
        if args.nodes:
            cluster.create_nodes(args.nodes, prefix="node", timeout=args.timeout)
        lines = ""
        if args.real_nodes:
            from tests.support.realnode import RealNode

            if args.real_nodes > 1:
                raise ClusterError("one real node per machine (the kubelet hard-codes its paths)")
            real_node = RealNode(cluster, workdir / "realnode").start(timeout=args.timeout)
            real_node.write_state(workdir / _REAL_NODE_STATE)
            lines = f"  real node {real_node.name}: Ready in {real_node.startup_seconds:.1f}s\n"
        cluster.write_state(workdir / _STATE)
        (workdir / "ready").write_text(
            f"cluster ready in {cluster.startup_seconds:.1f}s (+{time.monotonic() - t0:.1f}s for "
            f"{args.nodes} nodes): {cluster.server}\n"
            + "".join(f"  {name:24} pid {pid}\n" for name, pid in cluster.processes().items())
            + lines
        )
        while not stop.wait(2.0):
            cluster.check_alive()
    except ClusterError as exc:
        log.error("%s", exc)
        return 1
    finally:
        if real_node is not None:
            log.info("stopping the real node")
            real_node.stop()
        log.info("stopping the control plane")
        cluster.stop()
        for name in ("ready", _STATE, _SUPERVISOR_PID, _REAL_NODE_STATE):
            (workdir / name).unlink(missing_ok=True)
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    workdir = Path(args.dir).resolve()
    pids: dict[str, int] = {}
    with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
        pids = dict(Endpoints.from_json(json.loads((workdir / _STATE).read_text())).pids)
    supervisor = _supervisor_pid(workdir)
    if supervisor is None and not pids:
        print("no cluster running")
        return 0
    if supervisor is not None:
        os.kill(supervisor, signal.SIGTERM)
        try:
            wait_for(lambda: not pid_alive(supervisor), timeout=60, what="the supervisor", interval=0.3)
        except WaitTimeout:
            os.kill(supervisor, signal.SIGKILL)  # its components die with it (PDEATHSIG)
    # The components die with the supervisor; anything still there is a bug: report, then kill.
    survivors = {n: p for n, p in pids.items() if pid_alive(p)}
    for pid in survivors.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    if (workdir / _REAL_NODE_STATE).exists():
        # The supervisor stops the real node; after a SIGKILL its containers and shims remain.
        from tests.support.realnode import kill_leftovers, remove_cgroups

        survivors.update({f"real-node pid {p}": p for p in kill_leftovers()})
        remove_cgroups()
    for name in ("ready", _STATE, _SUPERVISOR_PID, _REAL_NODE_STATE):
        (workdir / name).unlink(missing_ok=True)
    if survivors:
        print(f"warning: killed components that outlived the supervisor: {survivors}", file=sys.stderr)
        return 1
    print("cluster stopped; no component left running")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    workdir = Path(args.dir).resolve()
    supervisor = _supervisor_pid(workdir)
    if supervisor is None:
        print("no cluster running")
        return 1
    print(f"supervisor pid {supervisor}")
    ready = workdir / "ready"
    print(ready.read_text() if ready.exists() else "starting")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.cluster", description="Run the test control plane."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("up", "serve", "down", "status"):
        p = sub.add_parser(name)
        p.add_argument("--dir", default=str(REPO_ROOT / ".cluster"))
        if name in ("up", "serve"):
            p.add_argument("--nodes", type=int, default=6)
            p.add_argument("--timeout", type=float, default=180.0)
            p.add_argument("--real-nodes", type=int, default=0, help="real kubelet nodes (0 or 1)")
    args = parser.parse_args(argv)
    try:
        handler = {"up": _cmd_up, "serve": _cmd_serve, "down": _cmd_down, "status": _cmd_status}
        return handler[args.command](args)
    except TestbinMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
