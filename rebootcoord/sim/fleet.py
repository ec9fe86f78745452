"""A simulated fleet: N agents as real OS processes, each with a simulated host, on a real backend.

A simulated host is a directory: ``root/run/reboot-required`` (the sentinel, under the host root
the agent is configured with), ``boot_id`` (the agent's boot_id_file) and a reboot command
(``python -m rebootcoord.sim.hostctl``) that asks this simulator for a reboot over a Unix socket.
A reboot stops the agent (SIGTERM, then SIGKILL, as a shutdown would), waits ``reboot_seconds``,
applies the update (removes the sentinel), writes a new boot ID and starts the agent again.
A host whose application is broken (``break_app``) has a marker file under its root
(:data:`APP_BROKEN`); a health check (:func:`app_check`, the same on every node) fails on it.

The agents are configured exactly like real ones; nothing in the agent knows it is simulated.
At each reboot request the simulator checks in the backend that the node holds a slot, and
records a violation otherwise: the "never reboot without a slot" invariant, checked at the edge.

The hosts' log (``host_events_file``, one JSON line each) is the simulator's own record for the
checker (``rebootcoord.sim.checker``): updates armed, reboot requests and boots -- each with the
backend revision the host read at that moment -- whether a reboot applied the update, repairs,
agents started and killed, and the faults a runner notes. A host whose update a reboot does not
apply (``break_update``) keeps it pending until ``apply_update``, as a broken upgrade would.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

import yaml

from rebootcoord.core.types import Group, HolderId
from rebootcoord.daemon.group import GroupClient, etcd_group
from rebootcoord.sim.checker import NodeVersion, RunLog, Version, read_jsonl
from rebootcoord.sim.procs import orphan_proof

log = logging.getLogger(__name__)

#: Under a simulated host's root: present, the host's application is broken (see app_check).
APP_BROKEN = os.path.join("var", "lib", "sim-app", "broken")


def app_check(name: str = "app") -> dict[str, Any]:
    """A post-reboot command check of the simulated application, for ``health_checks``: it fails
    on a host with the :data:`APP_BROKEN` marker (``{root}`` is each node's host root)."""
    return {"type": "command", "name": name, "argv": ["test", "!", "-e", "{root}/" + APP_BROKEN]}


def sim_node_names(count: int, prefix: str = "node") -> list[str]:
    """The names of a fleet of ``count`` simulated hosts: node-01, node-02, ... (zero-padded to
    at least two digits, so they sort as they are numbered)."""
    width = max(2, len(str(count)))
    return [f"{prefix}-{i:0{width}d}" for i in range(1, count + 1)]


@dataclass
class SimNode:
    name: str
    dir: str
    boot_id: str
    proc: subprocess.Popen[bytes] | None = None
    reboots: int = 0
    rebooting: bool = False
    agent_starts: int = 0
    boots: list[str] = field(default_factory=list)
    update: str | None = None  # the update pending on the host
    broken_update: bool = False  # the next reboot does not apply it

    @property
    def root(self) -> str:
        return os.path.join(self.dir, "root")

    @property
    def sentinel(self) -> str:
        return os.path.join(self.root, "run", "reboot-required")

    @property
    def boot_id_file(self) -> str:
        return os.path.join(self.dir, "boot_id")

    @property
    def config_file(self) -> str:
        return os.path.join(self.dir, "agent.yaml")

    @property
    def log_file(self) -> str:
        return os.path.join(self.dir, "agent.log")


class RebootHooks(Protocol):
    """What a simulated reboot does to the rest of the world (Kubernetes: the Node object)."""

    def down(self, node: str) -> None: ...

    def up(self, node: str, boot_id: str) -> None: ...


class Fleet:
    def __init__(
        self,
        run_dir: str,
        *,
        nodes: int,
        endpoint: str | None = None,
        group: str = "default",
        max_holders: int = 2,
        reboot_seconds: float = 1.0,
        events_file: str | None = None,
        cycles: int = 1,
        agent_config: dict[str, Any] | None = None,
        prefix: str = "node",
        arm: bool = True,
        node_names: Sequence[str] | None = None,
        semaphore: GroupClient | None = None,
        hooks: RebootHooks | None = None,
        agent_env: dict[str, str] | None = None,
        node_config: dict[str, dict[str, Any]] | None = None,
        node_env: dict[str, dict[str, str]] | None = None,
    ) -> None:
        """An etcd fleet by default (``endpoint``). For Kubernetes pass ``node_names`` (existing
        Nodes), ``semaphore`` (to check slots at reboot time), ``hooks`` (take the Node down and
        up) and the backend settings in ``agent_config``."""
        self.run_dir = os.path.abspath(run_dir)
        self.endpoint = endpoint
        self.group = group
        self.max_holders = max_holders
        self.reboot_seconds = reboot_seconds
        self.cycles = cycles
        self.arm = arm
        self.hooks = hooks
        self.agent_env = dict(agent_env or {})
        self.events_file = os.path.abspath(events_file or os.path.join(self.run_dir, "events.jsonl"))
        self.host_events_file = os.path.join(self.run_dir, "host-events.jsonl")
        self.start_revision = 0
        self.agent_config = dict(agent_config or {})
        self.node_config = {k: dict(v) for k, v in (node_config or {}).items()}  # per node, on top
        self.node_env = {k: dict(v) for k, v in (node_env or {}).items()}  # per node, on top
        self.socket_path = os.path.join(self.run_dir, "sim.sock")
        names = list(node_names) if node_names is not None else sim_node_names(nodes, prefix)
        self.nodes: dict[str, SimNode] = {
            name: SimNode(name, os.path.join(self.run_dir, "nodes", name), str(uuid.uuid4()))
            for name in names
        }
        self.violations: list[str] = []
        self.reboot_requests: list[tuple[float, str]] = []
        self._reboots_go = threading.Event()
        self._reboots_go.set()
        self._actions: queue.Queue[tuple[Callable[[], Any], Future[Any]] | None] = queue.Queue()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._supervisor = threading.Thread(target=self._supervise, name="sim-supervisor", daemon=True)
        self._server: socket.socket | None = None
        self._server_thread: threading.Thread | None = None
        if semaphore is None:
            if endpoint is None:
                raise ValueError("an etcd fleet needs an endpoint, other backends a semaphore")
            semaphore = etcd_group(
                (endpoint,),
                prefix=str(self.agent_config.get("etcd_key_prefix", "com.coreos.airlock")),
                group=Group(group),
                timeout=5.0,
            )
        self.semaphore = semaphore

    # ------------------------------------------------------------------------------------------
    # life cycle

    def start(self) -> Fleet:
        os.makedirs(self.run_dir, exist_ok=True)
        self.start_revision = self.revision() or 0
        for node in self.nodes.values():
            self._prepare(node)
        self._serve()
        self._supervisor.start()
        for name in self.nodes:
            self.start_agent(name)
        return self

    def stop(self) -> None:
        if self._stopping.is_set():
            return
        if not self._supervisor.is_alive() and self._server is None:  # never started
            self._stopping.set()
            self.semaphore.close()
            return
        if self._supervisor.is_alive():
            self.call(self._stop_all)
        self._stopping.set()
        self._actions.put(None)
        self._supervisor.join(10)
        if self._server is not None:
            self._server.close()
        with contextlib.suppress(OSError):
            os.unlink(self.socket_path)
        self.semaphore.close()

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _prepare(self, node: SimNode) -> None:
        os.makedirs(os.path.join(node.root, "run"), exist_ok=True)
        self._write_boot_id(node)
        if self.hooks is not None:
            self.hooks.up(node.name, node.boot_id)  # the Node reports the boot the host is in
        if self.arm:
            self.arm_sentinel(node.name, "update-1")
        config: dict[str, Any] = {
            "group": self.group,
            "max_holders": self.max_holders,
            "host_root": node.root,
            "boot_id_file": node.boot_id_file,
            "reboot_method": "command",
            "reboot_command": [
                sys.executable, "-m", "rebootcoord.sim.hostctl",
                "--socket", self.socket_path, "reboot", "--node", node.name,
            ],
            "check_interval": "1s",
            "verify_interval": "1s",
            "waiter_ttl": "5s",
            "metrics_address": "",
            "events_file": self.events_file,
            "log_format": "json",
        }  # fmt: skip
        if self.endpoint is not None:
            config.update({"backend": "etcd", "etcd_endpoints": [self.endpoint]})
        if self.hooks is None:
            config["node_name"] = node.name  # else from $NODE_NAME, as a DaemonSet's downward API sets it
        for key, value in {**self.agent_config, **self.node_config.get(node.name, {})}.items():
            config[key] = _fill(value, node)
        with open(node.config_file, "w", encoding="utf-8") as fh:
            yaml.safe_dump(config, fh, sort_keys=False)

    def arm_sentinel(self, name: str, update: str) -> None:
        """Make the simulated host need a reboot, as unattended-upgrades would."""
        node = self.nodes[name]
        with open(node.sentinel + ".pkgs", "w", encoding="utf-8") as fh:
            fh.write(f"{update}\n")
        with open(node.sentinel, "w", encoding="utf-8") as fh:
            fh.write("*** System restart required ***\n")
        node.update = update
        self.host_event("armed", name, update=update)

    def break_app(self, name: str) -> None:
        """The node's application is broken: :func:`app_check` fails on it (after its reboot too)."""
        path = os.path.join(self.nodes[name].root, APP_BROKEN)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write("broken by the simulator\n")
        self.note_fault("app_broken", name)

    def hold_reboots(self, hold: bool = True) -> None:
        """Hold every host between a reboot request and going down (True), or let them go."""
        if hold:
            self._reboots_go.clear()
        else:
            self._reboots_go.set()

    def break_update(self, name: str) -> None:
        """The node's next reboot does not apply its update (it stays pending after the boot)."""
        self.nodes[name].broken_update = True

    def apply_update(self, name: str) -> None:
        """Repair a node whose reboot did not apply its update: it is no longer pending."""
        node = self.nodes[name]
        self._clear_sentinel(node)
        self.host_event("update_applied", name, update=node.update, rev=self.revision(wait=30))

    def _clear_sentinel(self, node: SimNode) -> None:
        for path in (node.sentinel, node.sentinel + ".pkgs"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # the update is applied; /run is a tmpfs

    # ------------------------------------------------------------------------------------------
    # the hosts' log

    def revision(self, *, wait: float = 0.0) -> int | None:
        """The backend's current revision, retried up to ``wait`` seconds (None: unreachable)."""
        deadline = time.monotonic() + wait
        while True:
            try:
                return self.semaphore.read().revision
            except Exception:  # noqa: BLE001 - the backend may be down (a fault)
                if time.monotonic() >= deadline:
                    return None
                time.sleep(0.1)

    def host_event(self, event: str, node: str, **fields: Any) -> None:
        line = {"ts": time.time(), "node": node, "event": event, **fields}
        data = (json.dumps(line, separators=(",", ":")) + "\n").encode()
        os.makedirs(self.run_dir, exist_ok=True)
        fd = os.open(self.host_events_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def note_fault(self, kind: str, node: str = "*", **fields: Any) -> None:
        """A runner's injected fault, in the hosts' log."""
        self.host_event("fault", node, kind=kind, **fields)

    def _write_boot_id(self, node: SimNode) -> None:
        tmp = node.boot_id_file + ".tmp"
        with open(tmp, "w", encoding="ascii") as fh:
            fh.write(node.boot_id + "\n")
        os.replace(tmp, node.boot_id_file)
        node.boots.append(node.boot_id)

    # ------------------------------------------------------------------------------------------
    # the supervisor thread: every spawn happens here (see pdeath: children die with this thread)

    def call(self, fn: Callable[[], Any]) -> Any:
        future: Future[Any] = Future()
        self._actions.put((fn, future))
        return future.result(timeout=60)

    def _after(self, delay: float, fn: Callable[[], None]) -> None:
        with self._lock:
            heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), fn))
        self._actions.put((lambda: None, Future()))  # wake the supervisor to re-arm its timeout

    def _supervise(self) -> None:
        while True:
            with self._lock:
                timeout = max(0.0, self._timers[0][0] - time.monotonic()) if self._timers else None
            try:
                item = self._actions.get(timeout=timeout)
            except queue.Empty:
                item = ()  # type: ignore[assignment]
            if item is None:
                return
            if item:
                fn, future = item
                try:
                    future.set_result(fn())
                except Exception as exc:  # noqa: BLE001 - handed to the caller
                    future.set_exception(exc)
            while True:
                with self._lock:
                    if not self._timers or self._timers[0][0] > time.monotonic():
                        break
                    _, _, fn = heapq.heappop(self._timers)
                if not self._stopping.is_set():
                    try:
                        fn()
                    except Exception:
                        log.exception("simulator timer failed")

    # ------------------------------------------------------------------------------------------
    # agents

    def start_agent(self, name: str) -> None:
        self.call(lambda: self._spawn(self.nodes[name]))

    def kill_agent(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Kill the agent (SIGKILL by default) and wait for it to be gone."""
        self.call(lambda: self._kill(self.nodes[name], sig))

    def restart_agent(self, name: str) -> None:
        """Start the agent again unless its host is down (the boot starts it): what a supervisor
        (systemd, the kubelet) does after a crash."""

        def restart() -> None:
            node = self.nodes[name]
            if not node.rebooting:
                self._spawn(node)

        self.call(restart)

    def agent_pid(self, name: str) -> int | None:
        proc = self.nodes[name].proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def _spawn(self, node: SimNode) -> None:
        if node.proc is not None and node.proc.poll() is None:
            return
        self.host_event("agent_started", node.name)
        extra = {**self.agent_env, **self.node_env.get(node.name, {})}
        env = {**os.environ, **{k: _fill(v, node) for k, v in extra.items()}, "NODE_NAME": node.name}
        with open(node.log_file, "ab") as logf:
            node.proc = subprocess.Popen(
                orphan_proof([sys.executable, "-m", "rebootcoord", "agent", "--config", node.config_file]),
                stdout=logf,
                stderr=logf,
                stdin=subprocess.DEVNULL,
                cwd=node.dir,
                env=env,
            )
        node.agent_starts += 1

    def _kill(self, node: SimNode, sig: int) -> None:
        proc = node.proc
        if proc is None or proc.poll() is not None:
            return
        self.host_event("agent_killed", node.name, signal=int(sig), pid=proc.pid)
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _stop_all(self) -> None:
        for node in self.nodes.values():
            if node.proc is not None and node.proc.poll() is None:
                node.proc.terminate()
        deadline = time.monotonic() + 5
        for node in self.nodes.values():
            if node.proc is None:
                continue
            try:
                node.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()

    # ------------------------------------------------------------------------------------------
    # reboots

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.socket_path)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(self.socket_path)
        server.listen(64)
        self._server = server
        self._server_thread = threading.Thread(target=self._accept, name="sim-socket", daemon=True)
        self._server_thread.start()

    def _accept(self) -> None:
        assert self._server is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                request = json.loads(conn.makefile("rb").readline())
                answer = self.request_reboot(str(request["node"]))
            except (ValueError, KeyError) as exc:
                answer = f"bad request: {exc}"
            conn.sendall(answer.encode() + b"\n")

    def request_reboot(self, name: str) -> str:
        node = self.nodes.get(name)
        if node is None:
            return f"unknown node {name}"
        view = None
        deadline = time.monotonic() + 30  # the backend may be down a moment (a fault): ask again
        while view is None:
            try:
                view = self.semaphore.read()
            except Exception as exc:  # noqa: BLE001 - the check must not break the simulated host
                if time.monotonic() > deadline:
                    self.violations.append(f"{name}: could not verify the slot at reboot time: {exc}")
                    break
                time.sleep(0.1)
        if view is not None and not view.holds(HolderId(name)):
            self.violations.append(
                f"{name} asked for a reboot without holding a slot (holders: {view.slots})"
            )
        self.host_event(
            "reboot_requested",
            name,
            rev=view.revision if view is not None else None,
            held=view.holds(HolderId(name)) if view is not None else None,
            update=node.update,
        )
        with self._lock:
            self.reboot_requests.append((time.time(), name))
        self._reboots_go.wait()  # held by a test: the request is in, the host not yet going down
        with self._lock:
            if node.rebooting:
                return "ok"  # a host already going down ignores a second request
            node.rebooting = True
        self.call(lambda: self._shutdown(node))
        if self.hooks is not None:
            try:
                self.hooks.down(name)
            except Exception as exc:  # noqa: BLE001 - a simulated host cannot fail to go down
                log.warning("reboot hook (down) for %s failed: %s", name, exc)
        self._after(self.reboot_seconds, lambda: self._boot(node))
        return "ok"

    def _shutdown(self, node: SimNode) -> None:
        if node.proc is not None and node.proc.poll() is None:
            node.proc.terminate()  # a shutdown sends SIGTERM first; _boot makes sure it is gone

    def _boot(self, node: SimNode) -> None:
        if node.proc is not None:
            try:
                node.proc.wait(2)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()
        update, applied = node.update, not node.broken_update
        if applied:
            self._clear_sentinel(node)  # the update is applied by the reboot
        node.broken_update = False
        node.reboots += 1
        previous, node.boot_id = node.boot_id, str(uuid.uuid4())
        # The boot "happens" at the revision read now: the agent is down, and starts after it.
        rev = self.revision(wait=30)
        self._write_boot_id(node)
        self.host_event(
            "booted",
            node.name,
            boot_id=node.boot_id,
            previous=previous,
            update=update,
            applied=applied,
            rev=rev,
        )
        if node.reboots < self.cycles and applied:
            self.arm_sentinel(node.name, f"update-{node.reboots + 1}")
        if self.hooks is not None:
            try:
                self.hooks.up(node.name, node.boot_id)
            except Exception as exc:  # noqa: BLE001 - logged; the agent's health gate will tell
                log.warning("reboot hook (up) for %s failed: %s", node.name, exc)
        with self._lock:
            node.rebooting = False
        self._spawn(node)

    # ------------------------------------------------------------------------------------------
    # what the run left

    def run_log(
        self,
        *,
        history: Sequence[Version] | None = None,
        node_history: Sequence[NodeVersion] | None = None,
        precordoned: frozenset[str] = frozenset(),
        finished: bool = True,
    ) -> RunLog:
        """The records of this run for the checker; ``history`` from the backend (sim.history)."""
        names = frozenset(self.nodes)
        logs = {}
        for node in self.nodes.values():
            try:
                with open(node.log_file, encoding="utf-8", errors="replace") as fh:
                    logs[node.name] = fh.read()
            except FileNotFoundError:
                logs[node.name] = ""
        return RunLog(
            nodes=names,
            agent_events=[e for e in read_jsonl(self.events_file) if e.get("node") in names],
            host_events=read_jsonl(self.host_events_file),
            history=history,
            node_history=node_history,
            agent_logs=logs,
            precordoned=precordoned,
            max_holders=self.max_holders,
            max_per_zone=int(self.agent_config.get("max_holders_per_zone") or 0) or None,
            finished=finished,
        )

    # ------------------------------------------------------------------------------------------
    # progress

    def done(self) -> bool:
        """Every node rebooted its cycles, no slot or record of ours is left, and every agent has
        said it is idle (its release written, its last event too)."""
        if any(n.reboots < self.cycles or n.rebooting for n in self.nodes.values()):
            return False
        if any(phase != "idle" for phase in self.phases().values()):
            return False
        view = self.semaphore.read()
        ours = set(self.nodes)
        holders = set(view.slots.holders) if view.slots else set()
        return not (holders & ours) and not (set(view.records) & ours)

    def phases(self) -> dict[str, str]:
        """Each node's last phase, from the event log."""
        last: dict[str, str] = {}
        try:
            with open(self.events_file, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    if event.get("node") in self.nodes:
                        last[event["node"]] = event["phase"]
        except FileNotFoundError:
            pass
        return last


def _fill(value: Any, node: SimNode) -> Any:
    """Per-node placeholders in agent_config values: {node}, {node_dir}, {root}."""
    if isinstance(value, str):
        return value.format(node=node.name, node_dir=node.dir, root=node.root)
    if isinstance(value, list):
        return [_fill(v, node) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, node) for k, v in value.items()}
    return value
