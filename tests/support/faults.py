"""Seeded fault runs of a simulated fleet, checked by the invariant checker.

One run: a fleet of agent processes (``rebootcoord.sim.fleet``) on a real backend -- etcd, or a
Lease on the test control plane with kwok nodes, a Deployment behind a PodDisruptionBudget and a
node cordoned by someone else -- and a plan of faults drawn from the run's seed
(:func:`make_plan`), carried out while the fleet reboots (:class:`Injector`):

``kill_agent``         SIGKILL of one agent when it enters a phase; started again as a supervisor
                       would (unless its host is down: the boot starts it)
``kill_etcd``          SIGKILL of etcd at a moment, started again on its data directory
``restart_apiserver``  SIGKILL of kube-apiserver, started again (Lease backend)
``stop_agent``         SIGSTOP of an agent when it enters a phase, SIGCONT after longer than the
                       waiter TTL
``link``               one agent's connection to its backend, through toxiproxy, delayed
                       (``latency``), held without data (``timeout``), reset (``reset_peer``) or
                       refused (``down``) for a while
``broken_update``      a node whose reboot does not apply its update; repaired a while after its
                       agent, back up, starts verifying (its health gate has seen it whatever
                       the load made of the agent's start)
``set_max``            the group's max changed at run time (never below the holders)

Then the backend's history is replayed and the whole run goes to
:func:`rebootcoord.sim.checker.check_run`. Every run is replayable from its seed (the plan is;
the interleaving is the machine's). ``benchmarks/faults.py`` is the command line.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from rebootcoord.core.types import Group
from rebootcoord.errors import InvalidMax
from rebootcoord.sim.checker import NodeVersion, Report, Version, check_run, read_jsonl
from rebootcoord.sim.fleet import Fleet
from rebootcoord.sim.history import etcd_group_history, kube_group_history
from tests.support.cluster import REPO_ROOT, KubeCluster
from tests.support.toxiproxy import Toxiproxy

FAULT_KINDS = (
    "kill_agent",
    "kill_etcd",
    "restart_apiserver",
    "stop_agent",
    "link",
    "broken_update",
    "set_max",
)
LINK_MODES = ("latency", "timeout", "reset_peer", "down")
WAITER_TTL = 5.0  # the fleet's agents' waiter_ttl (rebootcoord.sim.fleet)

#: Deliberately broken agents, for showing that the runner fails: (file, text, replacement).
MUTANTS: dict[str, tuple[str, str, str]] = {
    "skip-health-gate": (
        "rebootcoord/daemon/agent.py",
        "        if failures:\n            note = ",
        "        if failures and False:\n            note = ",
    ),
    "no-slot-check-before-reboot": (
        "rebootcoord/daemon/agent.py",
        "        if not view.holds(record.id) or view.record(record.id) is None:\n            raise SlotLost",
        "        if False:\n            raise SlotLost",
    ),
    "reboot-again-after-boot": (
        "rebootcoord/core/cycle.py",
        "    if rebooted and record.phase in (Phase.LOCKED, Phase.DRAINING, Phase.REBOOTING):",
        "    if rebooted and record.phase in (Phase.LOCKED, Phase.DRAINING):",
    ),
}


@dataclass(frozen=True)
class Fault:
    kind: str
    node: str = "*"
    phase: str | None = None  # fired when the node's agent enters this phase
    at: float | None = None  # fired this many seconds after the start
    seconds: float = 0.0  # restart delay, stop length, link length, repair delay
    mode: str = ""  # link: one of LINK_MODES
    value: int = 0  # set_max: the new max; link latency: milliseconds

    def describe(self) -> str:
        when = f"@{self.phase}" if self.phase else f"@{self.at:.1f}s" if self.at is not None else ""
        extra = []
        if self.mode:
            extra.append(self.mode + (f" {self.value}ms" if self.mode == "latency" else ""))
        if self.kind == "set_max":
            extra.append(f"max={self.value}")
        if self.seconds:
            extra.append(f"{self.seconds:.1f}s")
        return f"{self.kind}({self.node}{when}{', ' + ', '.join(extra) if extra else ''})"

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, "", 0, 0.0) or k == "kind"}


def run_seed(seed: int, index: int) -> int:
    """The seed of run ``index`` of a campaign started with ``seed``."""
    return random.Random(f"{seed}/{index}").randrange(1, 2**31)


def make_plan(seed: int, *, backend: str, nodes: list[str], max_holders: int) -> list[Fault]:
    """Two to four faults, drawn from ``seed`` alone."""
    rng = random.Random(seed)
    phases = ["waiting", "locked", "draining", "rebooting", "verifying"]
    if backend == "kubernetes":
        phases.append("releasing")  # with node operations, uncordoning comes before the release
    kinds = ["kill_agent", "kill_agent", "stop_agent", "link", "broken_update", "set_max"]
    kinds.append("kill_etcd" if backend == "etcd" else "restart_apiserver")
    plan: list[Fault] = []
    linked = False
    for _ in range(rng.randint(2, 4)):
        kind = rng.choice(kinds)
        node = rng.choice(nodes)
        if kind == "kill_agent":
            plan.append(Fault(kind, node, phase=rng.choice(phases), seconds=round(rng.uniform(0, 1.5), 2)))
        elif kind == "stop_agent":
            plan.append(
                Fault(kind, node, phase=rng.choice(phases), seconds=round(WAITER_TTL + rng.uniform(1, 5), 2))
            )
        elif kind in ("kill_etcd", "restart_apiserver"):
            plan.append(Fault(kind, at=round(rng.uniform(0.5, 4), 2), seconds=round(rng.uniform(0.5, 3), 2)))
        elif kind == "link" and not linked:
            linked = True
            mode = rng.choice(LINK_MODES)
            plan.append(
                Fault(
                    kind,
                    node,
                    at=round(rng.uniform(0.5, 4), 2),
                    seconds=round(rng.uniform(2, 8), 2),
                    mode=mode,
                    value=rng.randint(300, 1500) if mode == "latency" else 0,
                )
            )
        elif kind == "broken_update" and not any(f.kind == kind and f.node == node for f in plan):
            plan.append(Fault(kind, node, seconds=round(rng.uniform(2, 6), 2)))
        elif kind == "set_max":
            value = max(1, max_holders + rng.choice((-1, 1)))
            plan.append(Fault(kind, at=round(rng.uniform(0.5, 4), 2), value=value))
    return plan


@dataclass
class RunResult:
    seed: int
    faults: list[Fault]
    fired: list[str]
    report: Report
    stuck: bool
    seconds: float
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.report.ok and not self.stuck and not self.errors

    def line(self) -> str:
        verdict = "ok"
        if self.stuck:
            verdict = "STUCK"
        if not self.report.ok:
            verdict = "VIOLATED " + "; ".join(self.report.problems[:3])
        if self.errors:
            verdict += " (runner: " + "; ".join(self.errors[:2]) + ")"
        return (
            f"seed {self.seed}: {', '.join(f.describe() for f in self.faults)} "
            f"[fired {len(self.fired)}/{len(self.faults)}] {self.seconds:.1f}s -> {verdict}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "faults": [f.to_json() for f in self.faults],
            "fired": self.fired,
            "seconds": round(self.seconds, 2),
            "stuck": self.stuck,
            "violations": self.report.problems,
            "errors": self.errors,
        }


class Environment(Protocol):
    backend: str
    toxiproxy: Toxiproxy

    def names(self, seed: int, nodes: int) -> list[str]: ...

    def new_fleet(
        self,
        run_dir: Path,
        *,
        seed: int,
        names: list[str],
        max_holders: int,
        linked: str | None,
        agent_env: dict[str, str],
    ) -> tuple[Fleet, frozenset[str]]: ...

    def crash_backend(self, down: float) -> None: ...

    def history(self, fleet: Fleet) -> tuple[list[Version], list[NodeVersion] | None]: ...

    def end_run(self, fleet: Fleet) -> None: ...


class Spawner:
    """A thread that lives as long as its environment and starts the processes a fault restarts:
    they get PR_SET_PDEATHSIG, which fires when the *thread* that started them ends -- a fault's
    own short-lived thread would take the restarted etcd or API server down with it."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[tuple[Callable[[], Any], Future[Any]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="fault-spawner", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, future = job
            try:
                future.set_result(fn())
            except Exception as exc:  # noqa: BLE001 - handed to the caller
                future.set_exception(exc)

    def call(self, fn: Callable[[], Any], timeout: float = 120.0) -> Any:
        future: Future[Any] = Future()
        self._jobs.put((fn, future))
        return future.result(timeout)

    def close(self) -> None:
        self._jobs.put(None)


class EtcdEnvironment:
    """One etcd for every run (a fresh key prefix each), and toxiproxy in front of it."""

    backend = "etcd"

    def __init__(self, workdir: Path) -> None:
        from rebootcoord.sim.etcd_server import EtcdServer

        self.workdir = workdir
        self.etcd = EtcdServer(data_dir=str(workdir / "etcd")).start()
        self.toxiproxy = Toxiproxy(workdir / "toxiproxy").start()
        self.spawner = Spawner()
        self._crash = threading.Lock()

    def names(self, seed: int, nodes: int) -> list[str]:
        return [f"node-{i:02d}" for i in range(1, nodes + 1)]

    def new_fleet(
        self,
        run_dir: Path,
        *,
        seed: int,
        names: list[str],
        max_holders: int,
        linked: str | None,
        agent_env: dict[str, str],
    ) -> tuple[Fleet, frozenset[str]]:
        prefix = f"faults-{seed}"
        node_config: dict[str, dict[str, Any]] = {}
        if linked is not None:
            port = self.toxiproxy.proxy(f"run-{seed}", f"127.0.0.1:{self.etcd.client_port}")
            node_config[linked] = {"etcd_endpoints": [f"http://127.0.0.1:{port}"]}
        fleet = Fleet(
            str(run_dir),
            nodes=len(names),
            node_names=names,
            endpoint=self.etcd.endpoint,
            max_holders=max_holders,
            reboot_seconds=0.5,
            agent_config={"etcd_key_prefix": prefix},
            agent_env=agent_env,
            node_config=node_config,
        )
        return fleet, frozenset()

    def crash_backend(self, down: float) -> None:
        with self._crash:  # one outage at a time: a second one starts after the first ended
            self.etcd.kill()
            time.sleep(down)
            self.spawner.call(self.etcd.start)

    def history(self, fleet: Fleet) -> tuple[list[Version], list[NodeVersion] | None]:
        prefix = str(fleet.agent_config["etcd_key_prefix"])
        return etcd_group_history(
            self.etcd.endpoint, prefix=prefix, group=fleet.group, since=fleet.start_revision
        ), None

    def end_run(self, fleet: Fleet) -> None:
        self.toxiproxy.delete(f"run-{fleet.run_dir.rsplit('-', 1)[-1]}")

    def close(self) -> None:
        self.toxiproxy.stop()
        self.spawner.call(self.etcd.cleanup)
        self.spawner.close()


class KubeEnvironment:
    """The test control plane for every run (a namespace, kwok nodes and a workload each)."""

    backend = "kubernetes"

    def __init__(self, workdir: Path, cluster: KubeCluster | None = None) -> None:
        self.workdir = workdir
        self.owned = cluster is None
        self.cluster = cluster or KubeCluster(workdir / "kube").start()
        self.toxiproxy = Toxiproxy(workdir / "toxiproxy").start()
        self.spawner = Spawner()
        self._crash = threading.Lock()
        self._namespaces: dict[str, tuple[str, list[str]]] = {}

    def _admin(self) -> Any:
        from rebootcoord.adapters.kube.api import Kube

        return Kube(self.cluster.api_client())

    def names(self, seed: int, nodes: int) -> list[str]:
        return [f"f{seed}-{i}" for i in range(nodes)]  # what create_nodes(prefix=f"f{seed}") names them

    def new_fleet(
        self,
        run_dir: Path,
        *,
        seed: int,
        names: list[str],
        max_holders: int,
        linked: str | None,
        agent_env: dict[str, str],
    ) -> tuple[Fleet, frozenset[str]]:
        from rebootcoord.daemon.group import lease_group
        from rebootcoord.sim.kwok import KwokRebootHooks

        namespace = f"faults-{seed}"
        self.cluster.kubectl("create", "namespace", namespace)
        made = self.cluster.create_nodes(len(names), prefix=f"f{seed}", timeout=120)
        assert [n.name for n in made] == names
        self._namespaces[str(run_dir)] = (namespace, names)
        rng = random.Random(seed)
        precordoned = frozenset({rng.choice(names)}) if rng.random() < 0.5 else frozenset()
        for name in precordoned:
            self.cluster.kubectl("cordon", name)
        self._workload(namespace, names)
        run_dir.mkdir(parents=True, exist_ok=True)
        node_config: dict[str, dict[str, Any]] = {}
        if linked is not None:
            server = self.cluster.server.rsplit(":", 1)
            port = self.toxiproxy.proxy(f"run-{seed}", f"127.0.0.1:{server[1]}")
            config = yaml.safe_load(self.cluster.kubeconfig.read_text())
            config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{port}"
            kubeconfig = run_dir / "linked.kubeconfig"
            kubeconfig.write_text(yaml.safe_dump(config))
            node_config[linked] = {"kubeconfig": str(kubeconfig)}
        admin = self._admin()
        fleet = Fleet(
            str(run_dir),
            nodes=len(names),
            node_names=names,
            max_holders=max_holders,
            reboot_seconds=0.5,
            semaphore=lease_group(admin, namespace=namespace, group=Group("default")),
            hooks=KwokRebootHooks(admin),
            agent_config={
                "backend": "kubernetes",
                "namespace": namespace,
                "kubeconfig": str(self.cluster.kubeconfig),
                "drain_timeout": "60s",
                "drain_delete_emptydir_data": True,
                "drain_force": True,
            },
            agent_env=agent_env,
            node_config=node_config,
        )
        return fleet, precordoned

    def _workload(self, namespace: str, names: list[str]) -> None:
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": namespace},
            "spec": {
                "replicas": len(names),
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "containers": [{"name": "web", "image": "registry.invalid/app:1"}],
                        "tolerations": [{"operator": "Exists", "effect": "NoSchedule"}],
                        "affinity": {
                            "nodeAffinity": {
                                "requiredDuringSchedulingIgnoredDuringExecution": {
                                    "nodeSelectorTerms": [
                                        {
                                            "matchExpressions": [
                                                {
                                                    "key": "kubernetes.io/hostname",
                                                    "operator": "In",
                                                    "values": names,
                                                }
                                            ]
                                        }
                                    ]
                                }
                            }
                        },
                    },
                },
            },
        }
        pdb = {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": "web", "namespace": namespace},
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "web"}}},
        }
        self.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([deployment, pdb]))

    def crash_backend(self, down: float) -> None:
        with self._crash:
            self.spawner.call(lambda: self.cluster.restart("kube-apiserver", down=down))

    def history(self, fleet: Fleet) -> tuple[list[Version], list[NodeVersion] | None]:
        namespace, names = self._namespaces[fleet.run_dir]
        versions, nodes = kube_group_history(
            self.cluster.endpoints.etcd, namespace=namespace, group=fleet.group, since=fleet.start_revision
        )
        return versions, [n for n in nodes if n.node in set(names)]

    def end_run(self, fleet: Fleet) -> None:
        namespace, names = self._namespaces.pop(fleet.run_dir)
        self.toxiproxy.delete(f"run-{namespace.rsplit('-', 1)[-1]}")
        for name in names:
            self.cluster.delete_node(name, wait=False)
        self.cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)

    def close(self) -> None:
        self.toxiproxy.stop()
        if self.owned:
            self.cluster.stop()
        self.spawner.close()


class Injector:
    """Carries out a plan while the fleet runs: tails the agents' event log and the hosts' log,
    fires each fault once at its moment, each in a thread of its own."""

    def __init__(self, env: Environment, fleet: Fleet, plan: list[Fault], *, proxy: str) -> None:
        self.env = env
        self.fleet = fleet
        self.plan = plan
        self.proxy = proxy
        self.fired: list[str] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._stopped: set[int] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="fault-injector", daemon=True)
        self._t0 = 0.0

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for t in self._threads:
            t.join(30)
        with self._lock:
            for pid in self._stopped:  # nothing stays stopped
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def _run(self) -> None:
        pending = list(self.plan)
        offsets = {"events": 0, "hosts": 0}
        phases: dict[str, str] = {}
        broken_boots: set[str] = set()  # booted without their update applied, not yet verifying
        while not self._stop.is_set() and pending:
            new_events = self._tail(self.fleet.events_file, offsets, "events")
            new_hosts = self._tail(self.fleet.host_events_file, offsets, "hosts")
            for e in new_events:
                phases[str(e.get("node"))] = str(e.get("phase"))
            elapsed = time.monotonic() - self._t0
            for fault in list(pending):
                due = False
                if fault.phase is not None:
                    due = any(
                        e.get("node") == fault.node and e.get("phase") == fault.phase for e in new_events
                    )
                elif fault.kind == "broken_update":
                    # The boot is written before the agent starts, so it is read no later than
                    # the agent's first phase after it.
                    if any(
                        e.get("node") == fault.node
                        and e.get("event") == "booted"
                        and e.get("applied") is False
                        for e in new_hosts
                    ):
                        broken_boots.add(fault.node)
                    due = fault.node in broken_boots and any(
                        e.get("node") == fault.node and e.get("phase") == "verifying" for e in new_events
                    )
                elif fault.at is not None:
                    due = elapsed >= fault.at
                if due:
                    pending.remove(fault)
                    thread = threading.Thread(target=self._fire, args=(fault,), daemon=True)
                    self._threads.append(thread)
                    thread.start()
            self._stop.wait(0.02)

    @staticmethod
    def _tail(path: str, offsets: dict[str, int], name: str) -> list[dict[str, Any]]:
        try:
            with open(path, "rb") as fh:
                fh.seek(offsets[name])
                data = fh.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        offsets[name] += end
        out = []
        for raw in data[:end].splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(raw))
        return out

    def _fire(self, fault: Fault) -> None:
        fleet = self.fleet
        try:
            fleet.note_fault(fault.kind, fault.node, plan=fault.describe())
            if fault.kind == "kill_agent":
                if fleet.agent_pid(fault.node) is None:
                    return
                fleet.kill_agent(fault.node)
                time.sleep(fault.seconds)
                fleet.restart_agent(fault.node)
            elif fault.kind == "stop_agent":
                pid = fleet.agent_pid(fault.node)
                if pid is None:
                    return
                os.kill(pid, signal.SIGSTOP)
                with self._lock:
                    self._stopped.add(pid)
                time.sleep(fault.seconds)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
                with self._lock:
                    self._stopped.discard(pid)
            elif fault.kind in ("kill_etcd", "restart_apiserver"):
                self.env.crash_backend(fault.seconds)
            elif fault.kind == "link":
                self._link(fault)
            elif fault.kind == "broken_update":
                time.sleep(fault.seconds)
                fleet.apply_update(fault.node)
            elif fault.kind == "set_max":
                # Refused while more nodes hold a slot than the new max: an operator tries again.
                while True:
                    try:
                        fleet.semaphore.set_max(fault.value)
                        break
                    except InvalidMax:
                        if self._stop.wait(0.2):
                            return
            with self._lock:
                self.fired.append(fault.describe())
        except Exception as exc:  # noqa: BLE001 - reported with the run
            self.errors.append(f"{fault.describe()}: {exc}")

    def _link(self, fault: Fault) -> None:
        proxy, tox = self.proxy, self.env.toxiproxy
        if fault.mode == "down":
            tox.enable(proxy, False)
            try:
                time.sleep(fault.seconds)
            finally:
                tox.enable(proxy, True)
            return
        attributes: dict[str, Any] = (
            {"latency": fault.value, "jitter": fault.value // 4}
            if fault.mode == "latency"
            else {"timeout": 0}
        )
        base = tox.toxic(proxy, fault.mode, **attributes)
        try:
            time.sleep(fault.seconds)
        finally:
            tox.untoxic(proxy, base)


def mutant_tree(name: str, workdir: Path) -> Path:
    """A copy of the rebootcoord package with one deliberate bug; put it first on PYTHONPATH."""
    path, text, replacement = MUTANTS[name]
    root = workdir / f"mutant-{name}"
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(REPO_ROOT / "rebootcoord", root / "rebootcoord")
    target = root / path
    source = target.read_text()
    if text not in source:
        raise ValueError(f"mutant {name}: the code it breaks has changed ({path})")
    target.write_text(source.replace(text, replacement, 1))
    return root


def run_once(
    env: Environment,
    seed: int,
    *,
    nodes: int,
    max_holders: int,
    workdir: Path,
    mutant: Path | None = None,
    log: Callable[[str], None] = print,
) -> RunResult:
    """One seeded run: plan, fleet, faults, checker."""
    names = env.names(seed, nodes)
    plan = make_plan(seed, backend=env.backend, nodes=names, max_holders=max_holders)
    run_dir = workdir / f"run-{seed}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    linked = next((f.node for f in plan if f.kind == "link"), None)
    agent_env = {"PYTHONPATH": str(mutant)} if mutant is not None else {}
    log(f"run seed {seed}: {', '.join(f.describe() for f in plan)}")
    fleet, precordoned = env.new_fleet(
        run_dir, seed=seed, names=names, max_holders=max_holders, linked=linked, agent_env=agent_env
    )
    for fault in plan:
        if fault.kind == "broken_update":
            fleet.break_update(fault.node)
    injector = Injector(env, fleet, plan, proxy=f"run-{seed}")
    rounds = math.ceil(nodes / max_holders)
    timeout = 60 + rounds * 20 + sum(f.seconds for f in plan)
    t0 = time.monotonic()
    stuck = True
    try:
        with fleet:
            injector.start()
            deadline = t0 + timeout
            while time.monotonic() < deadline:
                if fleet.done():
                    stuck = False
                    break
                time.sleep(0.2)
            injector.stop()
        seconds = time.monotonic() - t0
        history, node_history = env.history(fleet)
        report = check_run(
            fleet.run_log(
                history=history, node_history=node_history, precordoned=precordoned, finished=not stuck
            )
        )
        if fleet.violations:  # the simulator's own check at each reboot request
            from rebootcoord.sim.checker import Violation

            report.violations.extend(Violation("boot_with_slot", "*", v) for v in fleet.violations)
    finally:
        env.end_run(fleet)
    result = RunResult(seed, plan, injector.fired, report, stuck, seconds, injector.errors)
    if result.ok:
        shutil.rmtree(run_dir, ignore_errors=True)  # kept for the failing ones
    return result


def summarize(results: list[RunResult]) -> dict[str, Any]:
    faults: dict[str, int] = dict.fromkeys(FAULT_KINDS, 0)
    fired: dict[str, int] = dict.fromkeys(FAULT_KINDS, 0)
    violations: dict[str, int] = {}
    for r in results:
        for f in r.faults:
            faults[f.kind] += 1
        for text in r.fired:
            fired[text.split("(", 1)[0]] += 1
        for name, count in r.report.by_invariant().items():
            violations[name] = violations.get(name, 0) + count
    return {
        "runs": len(results),
        "faults": {k: v for k, v in faults.items() if v},
        "faults_fired": {k: v for k, v in fired.items() if v},
        "violations": violations,
        "stuck": [r.seed for r in results if r.stuck],
        "failed_seeds": [r.seed for r in results if not r.ok],
        "runner_errors": [e for r in results for e in r.errors],
    }


def read_host_faults(run_dir: Path) -> list[dict[str, Any]]:
    return [e for e in read_jsonl(str(run_dir / "host-events.jsonl")) if e.get("event") == "fault"]
