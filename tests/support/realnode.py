"""A real Kubernetes node for the tests: the kubelet built by ``make testbin`` with Debian's
containerd and runc, joined to a :class:`~tests.support.cluster.KubeCluster` beside its kwok nodes.

kwok nodes run no containers. This one does, for what only a kubelet does: service-link
environment variables, the downward API, volumes, securityContext, probes, ``kubectl logs/exec``,
restarts. See ../shared/notes/real-node.md for the recipe and the blockers it solves.

Owns: a private mount namespace (a *holder* process made by ``unshare -m``) in which containerd and
the kubelet run; their configuration, state and logs under one work directory; the node's client
certificate; the pause image; importing images; a simulated reboot (new boot ID, kubelet
restarted, containers killed); and a teardown that leaves the machine as it was found.

Never, on the machine itself: writes a sysctl, changes a mount, an iptables rule or the network,
or signals PID 1. Inside the namespace, files holding the values the kubelet expects are
bind-mounted over the four ``/proc/sys`` entries it would rewrite, and ``protectKernelDefaults``
makes it refuse rather than write; ``/run`` and ``/var/log`` are private tmpfs/bind mounts there,
and the node's boot ID is a file bind-mounted over ``/proc/sys/kernel/random/boot_id``, so a
"reboot" is a new boot ID and a restarted kubelet. No iptables (``makeIPTablesUtilChains: false``),
no bridge, no pod IPs: hostNetwork pods only, the API server reached on loopback. The node is
tainted :data:`REAL_NODE_TAINT` (NoSchedule), so that only pods made for it land on it: a
DaemonSet of another test, with a real reboot command and hostPID, never runs here.

One real node per machine (the kubelet hard-codes /var/lib/kubelet/device-plugins): a lock file
makes a second start fail with a clear message.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import textwrap
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from tests.support.cluster import (
    REPO_ROOT,
    ClusterError,
    ComponentFailed,
    KubeCluster,
    Process,
    Testbin,
    WaitTimeout,
    free_port,
    wait_for,
)

log = logging.getLogger(__name__)

#: The node carries this taint (NoSchedule) and label (value "true"): pods for it tolerate it.
REAL_NODE_TAINT: Final = "rebootcoord.test/real-node"
REAL_NODE_LABEL: Final = "rebootcoord.test/real-node"
TOLERATION: Final = {"key": REAL_NODE_TAINT, "operator": "Exists", "effect": "NoSchedule"}
PAUSE_IMAGE: Final = "localhost/pause:local"
CNI_DIR: Final = Path("/usr/lib/cni")
RUNC: Final = Path("/usr/sbin/runc")
#: What the kubelet would write into these (kubelet's setupKernelTunables). Inside the namespace the
#: entries are files that already hold these values, so it finds nothing to change.
KUBELET_SYSCTLS: Final = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
}
#: Paths the kubelet or containerd hard-code: private to the namespace (bind mounts of work dirs).
_KUBELET_ROOT: Final = Path("/var/lib/kubelet")
_BOOT_ID: Final = Path("/proc/sys/kernel/random/boot_id")
#: Where a node's host has it: in /run, where a pod's hostPath mount of /run finds it too.
CONTAINERD_SOCKET: Final = Path("/run/containerd/containerd.sock")
#: A node's files that a test reaches as the host's (hostPath volumes): under the private /run.
HOST_TEST_DIR: Final = Path("/run/rebootcoord-test")
#: containerd and its shims carry this variable (value: the work dir): a leftover of a run that was
#: killed is found by it.
MARKER_ENV: Final = "REBOOTCOORD_REALNODE"
LOCK_FILE: Final = Path("/tmp/rebootcoord-realnode.lock")
_CGROUP_ROOT: Final = Path("/sys/fs/cgroup")
_CGROUP_NAMES: Final = ("kubepods", "k8s.io")


class RealNodeUnavailable(ClusterError):
    """The machine lacks what a real node needs; the message says what to install or run."""


@dataclass(frozen=True)
class HostState:
    """What a real node must not change on the machine: sysctls, mounts and cgroups."""

    sysctls: dict[str, str]
    mounts: tuple[str, ...]
    cgroups: frozenset[str]

    @classmethod
    def capture(cls) -> HostState:
        sysctls = {}
        for name in (*KUBELET_SYSCTLS, "kernel/random/boot_id", "net/ipv4/ip_forward"):
            with contextlib.suppress(OSError):
                sysctls[name] = (Path("/proc/sys") / name).read_text().strip()
        mounts = tuple(
            " ".join(line.split()[3:5]) for line in Path("/proc/self/mountinfo").read_text().splitlines()
        )
        cgroups = frozenset(
            str(p.relative_to(_CGROUP_ROOT))
            for p in _CGROUP_ROOT.glob("*/**")
            if p.is_dir() and not p.is_symlink()
        )
        return cls(sysctls=sysctls, mounts=tuple(sorted(mounts)), cgroups=cgroups)


def check_prerequisites(testbin: Testbin) -> None:
    """Raise :class:`RealNodeUnavailable` naming what is missing."""
    missing = []
    for tool in ("containerd", "ctr", "unshare", "nsenter", "mount", "podman", "gcc"):
        if shutil.which(tool) is None:
            missing.append(tool)
    if not RUNC.exists():
        missing.append(str(RUNC))
    if not (CNI_DIR / "loopback").exists():
        missing.append(str(CNI_DIR / "loopback"))
    if missing:
        raise RealNodeUnavailable(
            f"a real node needs {', '.join(missing)}: run hack/ci-deps.sh (Debian packages containerd, "
            "runc, containernetworking-plugins, podman, gcc)"
        )
    for name in ("kubelet", "pause"):
        if not os.access(testbin.path(name), os.X_OK):
            raise RealNodeUnavailable(f"{testbin.path(name)} is missing: run `make testbin`")
    if os.geteuid() != 0:
        raise RealNodeUnavailable("a real node needs root (mount namespaces, cgroups, containerd)")


class RealNode:
    """One kubelet + containerd node in a private mount namespace, joined to ``cluster``.

    ``RealNode(cluster, workdir).start()`` returns once the Node is Ready; :meth:`stop` (also the
    context manager's exit) removes it and everything it made. :meth:`attach` gives a handle on
    the node ``make cluster REAL_NODES=1`` runs (stop() then leaves it running).
    """

    def __init__(self, cluster: KubeCluster, workdir: Path, *, testbin: Testbin | None = None) -> None:
        self.cluster = cluster
        self.workdir = workdir.resolve()
        self.testbin = testbin or cluster.testbin
        self.name = os.uname().nodename
        self._holder: Process | None = None
        self._containerd: Process | None = None
        self._kubelet: Process | None = None
        self._lock: Any = None
        self._made_dirs: list[Path] = []
        self._owned = True
        self._holder_pid: int | None = None
        self.found: HostState | None = None
        #: Seconds from start() to the Node Ready (None before start()).
        self.startup_seconds: float | None = None

    # -- where things are ------------------------------------------------------------------

    @property
    def socket(self) -> Path:
        """containerd's socket as the test reaches it (it lives in the node's /run)."""
        return self.host_path(CONTAINERD_SOCKET)

    @property
    def holder_pid(self) -> int:
        if self._holder_pid is None:
            raise ClusterError("real node not started")
        return self._holder_pid

    def host_path(self, path: str | Path) -> Path:
        """Where the test reaches ``path`` as the node's host sees it (through the namespace)."""
        return Path(f"/proc/{self.holder_pid}/root") / Path(path).relative_to("/")

    @property
    def boot_id_file(self) -> Path:
        """The node's boot ID, as the node sees it: hostPath-mountable (under HOST_TEST_DIR)."""
        return HOST_TEST_DIR / "boot_id"

    def boot_id(self) -> str:
        return self.host_path(self.boot_id_file).read_text().strip()

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    def attach(cls, cluster: KubeCluster, state_file: Path) -> RealNode:
        """A handle on a node another process runs (``make cluster REAL_NODES=1``)."""
        state = json.loads(state_file.read_text())
        node = cls(cluster, Path(state["workdir"]))
        node.name = state["name"]
        node._holder_pid = int(state["holder_pid"])
        node._owned = False
        return node

    def write_state(self, path: Path) -> Path:
        path.write_text(
            json.dumps({"workdir": str(self.workdir), "name": self.name, "holder_pid": self.holder_pid})
        )
        return path

    def __enter__(self) -> RealNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 180.0) -> RealNode:
        check_prerequisites(self.testbin)
        t0 = time.monotonic()
        self._take_lock()
        #: The machine as this node found it: what stop() must leave (tests compare).
        self.found = HostState.capture()
        try:
            kill_leftovers()
            self._start(deadline=t0 + timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        log.info("real node %s Ready in %.1fs", self.name, self.startup_seconds)
        return self

    def _take_lock(self) -> None:
        self._lock = LOCK_FILE.open("a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise RealNodeUnavailable(
                f"another real node runs on this machine ({LOCK_FILE} is locked; `make cluster-down` "
                "stops the one of `make cluster REAL_NODES=1`): the kubelet allows one per machine"
            ) from None

    def _start(self, *, deadline: float) -> None:
        w = self.workdir
        for sub in (
            "containerd/root",
            "containerd/state",
            "containerd/opt",
            "runc",
            "cni",
            "kubelet",
            "pods-logs",
            "varlog",
            "pki",
            "sysctl",
            "logs",
        ):
            (w / sub).mkdir(parents=True, exist_ok=True)
        for name, value in KUBELET_SYSCTLS.items():
            (w / "sysctl" / name.replace("/", ".")).write_text(value + "\n")
        (w / "cni" / "10-loopback.conflist").write_text(
            json.dumps({"cniVersion": "0.4.0", "name": "lo-only", "plugins": [{"type": "loopback"}]})
        )
        # The mount point of the kubelet's root dir must exist on the machine; made (and removed
        # again) only if it does not.
        if not _KUBELET_ROOT.exists():
            _KUBELET_ROOT.mkdir(parents=True)
            self._made_dirs.append(_KUBELET_ROOT)
        self._write_pki()
        (w / "containerd" / "config.toml").write_text(self._containerd_config())
        (w / "kubelet-config.yaml").write_text(yaml.safe_dump(self._kubelet_config(), sort_keys=False))
        (w / "kubelet.kubeconfig").write_text(yaml.safe_dump(self._kubeconfig(), sort_keys=False))

        self._holder = self._spawn(
            "realnode-holder",
            ["unshare", "--mount", "--propagation", "private", "--", "sh", "-euc", self._holder_script()],
        )
        ready = w / "namespace-ready"
        try:
            wait_for(
                lambda: ready.exists() or not self._holder_alive(),
                timeout=max(deadline - time.monotonic(), 1.0),
                what="the real node's mount namespace",
            )
        except WaitTimeout as exc:
            raise ComponentFailed(f"{exc}\n{self._holder.log_tail()}") from None
        if not self._holder_alive():
            raise ComponentFailed(f"the mount namespace holder exited\n{self._holder.log_tail()}")
        self._holder_pid = self._holder.pid

        self._containerd = self._spawn(
            "containerd", [*self._nsenter(), "containerd", "--config", str(w / "containerd" / "config.toml")]
        )
        self._wait(self._containerd, lambda: self.ctr("version", check=False) is not None, deadline)
        self._import_pause()
        self._start_kubelet(deadline)

    def _start_kubelet(self, deadline: float) -> None:
        w = self.workdir
        self._kubelet = self._spawn(
            "kubelet",
            [
                *self._nsenter(),
                str(self.testbin.path("kubelet")),
                f"--config={w / 'kubelet-config.yaml'}",
                f"--kubeconfig={w / 'kubelet.kubeconfig'}",
                f"--root-dir={_KUBELET_ROOT}",
                f"--cert-dir={w / 'pki' / 'kubelet-serving'}",
                f"--node-labels={REAL_NODE_LABEL}=true",
                f"--register-with-taints={REAL_NODE_TAINT}=true:NoSchedule",
                "--v=1",
            ],
        )
        self._wait(self._kubelet, self._node_ready, deadline)

    def _holder_alive(self) -> bool:
        return self._holder is not None and self._holder.alive()

    def _holder_script(self) -> str:
        """Runs in the new mount namespace: make it ours, hide what the node must not touch."""
        w = self.workdir
        binds = "\n".join(
            f'mount --bind "{w}/sysctl/{name.replace("/", ".")}" /proc/sys/{name}' for name in KUBELET_SYSCTLS
        )
        boot_id = str(uuid.uuid4())
        return textwrap.dedent(
            f"""\
            mount --make-rshared /
            {binds}
            mount -t tmpfs -o mode=755,size=64m realnode-run /run
            mkdir -p /run/lock {HOST_TEST_DIR} /run/containerd
            echo {boot_id} > {HOST_TEST_DIR}/boot_id
            mount --bind {HOST_TEST_DIR}/boot_id {_BOOT_ID}
            mount --bind "{w}/kubelet" {_KUBELET_ROOT}
            mount --bind "{w}/varlog" /var/log
            mkdir -p /var/log/pods /var/log/containers
            touch "{w}/namespace-ready"
            exec sleep infinity
            """
        )

    def _nsenter(self) -> list[str]:
        return ["nsenter", f"--mount=/proc/{self.holder_pid}/ns/mnt", "--"]

    def _spawn(self, name: str, argv: Sequence[str]) -> Process:
        process = Process(name, argv, log_path=self.workdir / "logs" / f"{name}.log", cwd=self.workdir)
        process_env = {MARKER_ENV: str(self.workdir)}
        # Process copies os.environ; the marker is added for this start only.
        old = {k: os.environ.get(k) for k in process_env}
        os.environ.update(process_env)
        try:
            process.start()
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        return process

    def _wait(self, process: Process, probe: Any, deadline: float) -> None:
        def ready() -> bool:
            process.check_alive()
            if not self._holder_alive():
                raise ComponentFailed("the mount namespace holder exited")
            return bool(probe())

        try:
            wait_for(
                ready,
                timeout=max(deadline - time.monotonic(), 1.0),
                what=f"{process.name} ready",
                interval=0.3,
            )
        except WaitTimeout as exc:
            raise ComponentFailed(f"{exc}\n{process.log_tail(60)}") from None

    def _node_ready(self) -> bool:
        out = self.cluster.kubectl("get", "node", self.name, "-o", "json", check=False)
        if not out:
            return False
        node = json.loads(out)
        conditions = (node.get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    # -- configuration ---------------------------------------------------------------------

    def _write_pki(self) -> None:
        """A client certificate for the kubelet (system:node:<name>, group system:nodes), signed by
        the cluster's CA: the Node authorizer lets it manage its own Node, pods and Lease."""
        pki = self.workdir / "pki"
        ca_dir = self.cluster.ca_file.parent
        subprocess.run(
            [
                "openssl",
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "kubelet.key",
                "-out",
                "kubelet.csr",
                "-subj",
                f"/O=system:nodes/CN=system:node:{self.name}",
            ],
            cwd=pki,
            check=True,
            capture_output=True,
        )
        (pki / "kubelet.ext").write_text(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=clientAuth\n"
        )
        subprocess.run(
            [
                "openssl",
                "x509",
                "-req",
                "-in",
                "kubelet.csr",
                "-CA",
                str(ca_dir / "ca.crt"),
                "-CAkey",
                str(ca_dir / "ca.key"),
                "-set_serial",
                f"0x{uuid.uuid4().hex[:16]}",
                "-days",
                "30",
                "-sha256",
                "-extfile",
                "kubelet.ext",
                "-out",
                "kubelet.crt",
            ],
            cwd=pki,
            check=True,
            capture_output=True,
        )
        (pki / "kubelet.key").chmod(0o600)

    def _kubeconfig(self) -> dict[str, Any]:
        pki = self.workdir / "pki"
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "test",
                    "cluster": {
                        "server": self.cluster.server,
                        "certificate-authority": str(self.cluster.ca_file),
                    },
                }
            ],
            "users": [
                {
                    "name": "kubelet",
                    "user": {
                        "client-certificate": str(pki / "kubelet.crt"),
                        "client-key": str(pki / "kubelet.key"),
                    },
                }
            ],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "kubelet"}}],
            "current-context": "test",
        }

    def _containerd_config(self) -> str:
        w = self.workdir / "containerd"
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        return textwrap.dedent(
            f"""\
            version = 2
            root = "{w}/root"
            state = "{w}/state"
            disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                                "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
            [grpc]
              address = "{CONTAINERD_SOCKET}"
            [ttrpc]
              address = "{CONTAINERD_SOCKET}.ttrpc"
            [metrics]
              address = ""
            [plugins."io.containerd.internal.v1.opt"]
              path = "{w}/opt"
            [{cri}]
              sandbox_image = "{PAUSE_IMAGE}"
              restrict_oom_score_adj = true
              disable_apparmor = true
              enable_selinux = false
              netns_mounts_under_state_dir = true
              stream_server_address = "127.0.0.1"
              stream_server_port = "0"
              enable_unprivileged_ports = false
              enable_unprivileged_icmp = false
            [{cri}.containerd]
              default_runtime_name = "runc"
            [{cri}.containerd.runtimes.runc]
              runtime_type = "io.containerd.runc.v2"
            [{cri}.containerd.runtimes.runc.options]
              BinaryName = "{RUNC}"
              Root = "{self.workdir}/runc"
              SystemdCgroup = false
            [{cri}.cni]
              bin_dir = "{CNI_DIR}"
              conf_dir = "{self.workdir}/cni"
            """
        )

    def _kubelet_config(self) -> dict[str, Any]:
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": False,  # these machines mount hybrid cgroups
            "cgroupDriver": "cgroupfs",
            "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCKET}",
            "imageServiceEndpoint": f"unix://{CONTAINERD_SOCKET}",
            "address": "127.0.0.1",
            "port": free_port(),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": free_port(),
            # The test API server has no kubelet client certificate (logs, exec).
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "makeIPTablesUtilChains": False,
            "protectKernelDefaults": True,
            "failSwapOn": False,
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
            "podLogsDir": "/var/log/pods",
            "localStorageCapacityIsolation": False,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "shutdownGracePeriod": "0s",
            "nodeStatusUpdateFrequency": "5s",
            "syncFrequency": "10s",
            "fileCheckFrequency": "10s",
            "resolvConf": "/etc/resolv.conf",
            "maxPods": 30,
        }

    def _import_pause(self) -> None:
        archive = self.workdir / "pause.oci.tar"
        build_pause_archive(self.testbin.path("pause"), archive)
        self.ctr("images", "import", "--no-unpack", str(archive))
        self.ctr("images", "tag", "--force", "localhost/pause:local", PAUSE_IMAGE, check=False)

    # -- driving it ------------------------------------------------------------------------

    def ctr(self, *args: str, check: bool = True, timeout: float = 300.0) -> str | None:
        """containerd's ``ctr`` in the kubelet's namespace (k8s.io); its stdout (None on failure
        unless ``check``)."""
        proc = subprocess.run(
            ["ctr", "--address", str(self.socket), "--namespace", "k8s.io", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            if check:
                raise ClusterError(f"ctr {' '.join(args)} failed: {proc.stderr.strip()}")
            return None
        return proc.stdout

    def import_image(self, image: str) -> float:
        """Import a podman image (``localhost/rebootcoord:dev``) into the node; the seconds it took."""
        t0 = time.monotonic()
        archive = self.workdir / f"{image.replace('/', '_').replace(':', '_')}.oci.tar"
        archive.unlink(missing_ok=True)
        subprocess.run(
            ["podman", "save", "--format", "oci-archive", "--output", str(archive), image],
            check=True,
            capture_output=True,
        )
        self.ctr("images", "import", "--index-name", image, str(archive))
        archive.unlink(missing_ok=True)
        return time.monotonic() - t0

    def nsenter(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command in the node's mount namespace (as its host would)."""
        return subprocess.run(
            ["nsenter", f"--mount=/proc/{self.holder_pid}/ns/mnt", "--", *argv],
            capture_output=True,
            text=True,
            check=check,
        )

    def container_pids(self, pod: str, container: str) -> list[int]:
        """PIDs of a running container of ``pod`` (by the CRI labels containerd keeps)."""
        out = self.ctr("containers", "list", "-q") or ""
        pids = []
        for cid in out.split():
            info = self.ctr("containers", "info", cid, check=False)
            if info is None:
                continue
            labels = json.loads(info).get("Labels") or {}
            if (
                labels.get("io.kubernetes.pod.name") != pod
                or labels.get("io.kubernetes.container.name") != container
            ):
                continue
            task = self.ctr("tasks", "ps", cid, check=False)
            if task is None:
                continue
            for line in task.splitlines()[1:]:
                fields = line.split()
                if fields and fields[0].isdigit():
                    pids.append(int(fields[0]))
        return pids

    def simulate_reboot(self, *, timeout: float = 120.0) -> str:
        """What a reboot does to the node, without one: the kubelet stops, every container dies,
        the boot ID changes, the kubelet starts again (and restarts the pods' containers). Returns
        the new boot ID."""
        if self._kubelet is None:
            raise ClusterError("only the process that started the node can reboot it")
        self._kubelet.terminate()
        self._kubelet.wait_or_kill(30)
        for pid in _cgroup_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        boot_id = str(uuid.uuid4())
        self.host_path(self.boot_id_file).write_text(boot_id + "\n")
        self._start_kubelet(time.monotonic() + timeout)
        return boot_id

    def stop(self, timeout: float = 30.0) -> None:
        """Remove the node: pods, kubelet, containers, containerd, shims, the namespace, its
        cgroups, the Node object and the directories made for it. Idempotent."""
        if not self._owned:
            return
        with contextlib.suppress(Exception):
            if self._kubelet is not None and self._kubelet.alive():
                self.cluster.kubectl(
                    "delete",
                    "pods",
                    "--all-namespaces",
                    f"--field-selector=spec.nodeName={self.name}",
                    "--grace-period=0",
                    "--force",
                    "--wait=false",
                    check=False,
                )
        if self._kubelet is not None:
            self._kubelet.terminate()
            self._kubelet.wait_or_kill(timeout)
        if self._containerd is not None and self._containerd.alive():
            out = self.ctr("tasks", "list", "-q", check=False) or ""
            for cid in out.split():
                self.ctr("tasks", "kill", "--signal", "SIGKILL", cid, check=False, timeout=30)
            self._containerd.terminate()
            self._containerd.wait_or_kill(timeout)
        kill_leftovers(self.workdir)
        if self._holder is not None:
            self._holder.terminate()
            self._holder.wait_or_kill(timeout)
        remove_cgroups()
        for directory in reversed(self._made_dirs):
            with contextlib.suppress(OSError):
                directory.rmdir()
        self._made_dirs.clear()
        if self._holder_pid is not None:
            self.cluster.kubectl(
                "delete", "node", self.name, "--ignore-not-found", "--wait=false", check=False
            )
        self._holder_pid = None
        self._kubelet = self._containerd = self._holder = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def build_pause_archive(pause_binary: Path, archive: Path) -> None:
    """An OCI image archive of the static pause binary (``FROM scratch``), built with podman."""
    if archive.exists():
        return
    context = archive.parent / "pause-build"
    context.mkdir(exist_ok=True)
    shutil.copy2(pause_binary, context / "pause")
    (context / "Containerfile").write_text('FROM scratch\nCOPY pause /pause\nENTRYPOINT ["/pause"]\n')
    subprocess.run(
        ["podman", "build", "--isolation", "chroot", "--quiet", "--tag", PAUSE_IMAGE, str(context)],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["podman", "save", "--format", "oci-archive", "--output", str(archive), PAUSE_IMAGE],
        check=True,
        capture_output=True,
    )


def _cgroup_dirs() -> Iterator[Path]:
    for controller in _CGROUP_ROOT.iterdir():
        if controller.is_symlink() or not controller.is_dir():
            continue
        for name in _CGROUP_NAMES:
            top = controller / name
            if top.is_dir():
                yield top


def _cgroup_pids() -> set[int]:
    pids: set[int] = set()
    for top in _cgroup_dirs():
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(p) for p in procs.read_text().split())
    return pids


def _marked_pids(workdir: Path | None) -> set[int]:
    """Processes whose environment carries MARKER_ENV (for ``workdir``, or any)."""
    want = f"{MARKER_ENV}=".encode() + (str(workdir).encode() if workdir else b"")
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in (1, os.getpid()):
            continue
        with contextlib.suppress(OSError):
            environ = (entry / "environ").read_bytes().split(b"\0")
            if any(v.startswith(want) for v in environ):
                found.add(int(entry.name))
    return found


def kill_leftovers(workdir: Path | None = None) -> set[int]:
    """SIGKILL what a node left behind: processes in its cgroups (containers) and processes
    carrying the marker (shims, and a containerd or kubelet of a run that was killed)."""
    killed = set()
    for _ in range(5):
        pids = (_cgroup_pids() | _marked_pids(workdir)) - {1, os.getpid()}
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
        time.sleep(0.2)
    return killed


def remove_cgroups() -> None:
    """Remove the cgroups the kubelet and runc made (deepest first); they must be empty."""
    for top in list(_cgroup_dirs()):
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for directory in [*dirs, top]:
            for _ in range(20):
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)


def pod_spec_for_real_node(node: str) -> dict[str, Any]:
    """What a pod spec needs to run on the real node: its name, the toleration, hostNetwork."""
    return {"nodeName": node, "tolerations": [TOLERATION], "hostNetwork": True}


__all__ = [
    "PAUSE_IMAGE",
    "REAL_NODE_LABEL",
    "REAL_NODE_TAINT",
    "REPO_ROOT",
    "TOLERATION",
    "HostState",
    "RealNode",
    "RealNodeUnavailable",
    "kill_leftovers",
    "remove_cgroups",
]
