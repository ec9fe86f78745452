"""What an unfriendly FleetLock client on the same network can do to a group: the findings of
issue 20, measured against a server process of any checkout (``--source``), so that one run of
this script on the code before and one after give the figures side by side.

    .venv/bin/python benchmarks/fleetlock_bounds.py --label after
    .venv/bin/python benchmarks/fleetlock_bounds.py --label before --source ../before

Each scenario runs on a fresh etcd (its database size is the scenario's own) with the server as
a process (``python -m rebootcoord fleetlock-server``, the source tree first on PYTHONPATH),
spoken to over HTTP as Zincati does:

- ``agent_slot``: an agent rebooting (its holder record, as the agent writes it) and an agent
  waiting in line; a stranger sends steady-state and pre-reboot with their ids;
- ``cycles``: 1,000 cycles (pre-reboot, steady-state) with 253-byte ids: the largest stored
  value, the etcd database's size, the answers at the end, ``rebootctl unlock --force``;
- ``waiters``: 1,200 refused pre-reboots with 253-byte ids behind a holder: the bytes of the
  line, ``rebootctl status``'s exit code;
- ``groups``: 300 new groups (``fleetlock_any_group`` with its default bound, after) while a
  client of the configured group cycles: how many groups exist, what that client was answered;
- ``vanished``: 2 clients poll twice a second apart and stop; 2 slots free; how long a client
  polling every second waits for a slot (the waiter TTL is set to 60 s to bound the run: the
  default is 15 minutes).

JSON in benchmarks/out/fleetlock_bounds-<label>.json and a bar plot of both labels when both
files exist.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.common import OUT, write_json  # noqa: E402
from rebootcoord.core.semaphore import HolderRecord, Waiter  # noqa: E402
from rebootcoord.core.types import Group, HolderId, NodeName, Phase  # noqa: E402
from rebootcoord.daemon.group import etcd_group  # noqa: E402
from rebootcoord.sim.etcd_server import EtcdServer  # noqa: E402
from tests.support.etcdraw import raw_client  # noqa: E402
from tests.support.fleetlock import FleetLockClient, FleetLockServer  # noqa: E402

PREFIX = "com.coreos.airlock"


def long_id(i: int) -> str:
    return f"{i:05d}" + "\U0001f600" * 62  # 253 bytes


class Run:
    def __init__(self, source: str, label: str, work: Path) -> None:
        self.source, self.label, self.work = source, label, work

    def server(self, etcd: EtcdServer, name: str, **config: Any) -> FleetLockServer:
        base = {"backend": "etcd", "etcd_endpoints": [etcd.endpoint], "max_holders": 1,
                "node_name": "fleetlock", "log_format": "text"}  # fmt: skip
        return FleetLockServer(
            self.work / name, {**base, **config}, env={"PYTHONPATH": self.source}, cwd=self.source
        ).start(timeout=60)

    def ctl(self, etcd: EtcdServer, *args: str) -> int:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REBOOTCOORD_")}
        done = subprocess.run(
            [sys.executable, "-m", "rebootcoord.cli.rebootctl", "--etcd-endpoints", etcd.endpoint, *args],
            check=False, capture_output=True, text=True, timeout=120,
            env={**env, "PYTHONPATH": self.source}, cwd=self.source,
        )  # fmt: skip
        return done.returncode

    def etcd(self, name: str) -> EtcdServer:
        return EtcdServer(data_dir=str(self.work / name / "etcd")).start()

    @contextmanager
    def backend(self, name: str, **config: Any) -> Iterator[tuple[EtcdServer, FleetLockServer]]:
        """A fresh etcd and this checkout's server on it, both stopped at the end."""
        etcd = self.etcd(name)
        try:
            server = self.server(etcd, name, **config)
            try:
                yield etcd, server
            finally:
                server.stop()
        finally:
            etcd.stop()


def stored(etcd: EtcdServer) -> dict[str, int]:
    return {m.key.decode(): len(v) for v, m in raw_client(etcd).get_prefix(PREFIX)}


def etcd_log_tail(etcd: EtcdServer) -> str:
    """The last lines of etcd's own log (a panic, when it died)."""
    path = Path(str(etcd.data_dir)) / "etcd.log"
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    return "\n".join(line[:300] for line in lines if "panic" in line or "fatal" in line.lower())[-2000:]


def agent_slot(run: Run) -> dict[str, Any]:
    with run.backend("agent_slot") as (etcd, server):
        sem = etcd_group((etcd.endpoint,), prefix=PREFIX, group=Group("default"), waiter_ttl=60)
        try:
            sem.ensure(1)
            now = time.time()
            sem.join_queue(Waiter(HolderId("worker-1"), NodeName("worker-1"), now, 0))
            record = HolderRecord(HolderId("worker-1"), NodeName("worker-1"), Group("default"), Phase.LOCKED,
                                  "boot-1", now, now)  # fmt: skip
            assert sem.acquire(record) is not None
            sem.update(record.moved(Phase.REBOOTING, now))
            sem.join_queue(Waiter(HolderId("worker-2"), NodeName("worker-2"), now, 0))  # an agent in line
            client = FleetLockClient(server.base)
            out: dict[str, Any] = {}
            for op, who in (("steady-state", "worker-1"), ("steady-state", "worker-2"),
                            ("pre-reboot", "worker-2")):  # fmt: skip
                before = stored(etcd)
                answer = client.call(op, who)
                view = sem.read()
                out[f"{op} {who}"] = {
                    "status": answer.status,
                    "kind": answer.kind,
                    "stored_changed": stored(etcd) != before,
                    "worker-1 holds": view.holds(HolderId("worker-1")),
                    "worker-2 in line": view.queue_position(HolderId("worker-2")) is not None,
                }
            return out
        finally:
            sem.close()


def cycles(run: Run, count: int = 1000) -> dict[str, Any]:
    with run.backend("cycles") as (etcd, server):
        client = FleetLockClient(server.base)
        db_before = int(raw_client(etcd).status().db_size)
        answers: Counter[str] = Counter()
        started = time.monotonic()
        for i in range(count):
            answers["pre " + (client.pre_reboot(long_id(i)).kind or "?")] += 1
            answers["steady " + (client.steady_state(long_id(i)).kind or "?")] += 1
        seconds = time.monotonic() - started
        keys = stored(etcd)
        largest = max(keys.items(), key=lambda kv: kv[1])
        last = client.pre_reboot("node-a")
        return {
            "cycles": count,
            "seconds": round(seconds, 1),
            "answers": dict(answers),
            "largest_value": {"key": largest[0].rsplit("/", 2)[-2:], "bytes": largest[1]},
            "stored_bytes": sum(keys.values()),
            "etcd_db_grew_bytes": int(raw_client(etcd).status().db_size) - db_before,
            "then_pre_reboot": last.kind,
            "then_unlock_force_exit": run.ctl(etcd, "unlock", "--force", "node-a"),
        }


def waiters(run: Run, count: int = 1200) -> dict[str, Any]:
    with run.backend("waiters") as (etcd, server):
        client = FleetLockClient(server.base)
        assert client.pre_reboot("holder").status == 200
        answers: Counter[str] = Counter(client.pre_reboot(long_id(i)).kind for i in range(count))
        line = {k: n for k, n in stored(etcd).items() if "/waiters/" in k}
        return {
            "requests": count,
            "answers": dict(answers),
            "places": len(line),
            "line_bytes": sum(len(k.encode()) + n for k, n in line.items()),
            "rebootctl_status_exit": run.ctl(etcd, "status"),
            "holder_steady_state": client.steady_state("holder").kind,
        }


def groups(run: Run, count: int = 300) -> dict[str, Any]:
    extra = {"fleetlock_any_group": True} if run.label == "after" else {}
    with run.backend("groups", **extra) as (etcd, server):
        client = FleetLockClient(server.base)
        steady: Counter[str] = Counter()
        stop = threading.Event()

        def cycle() -> None:
            while not stop.is_set():
                steady["pre " + client.pre_reboot("node-a").kind] += 1
                steady["steady " + client.steady_state("node-a").kind] += 1

        worker = threading.Thread(target=cycle)
        worker.start()
        answers: Counter[str] = Counter()
        try:
            for i in range(count):
                answers[client.pre_reboot("x", f"g{i}").kind or "?"] += 1
        finally:
            stop.set()
            worker.join(120)
        out: dict[str, Any] = {
            "new_groups_asked": count,
            "answers": dict(answers),
            "other_client_answers": dict(steady),
            "server_alive": server.process is not None and server.process.poll() is None,
            "etcd_alive": etcd.proc is not None and etcd.proc.poll() is None,
        }
        if out["etcd_alive"]:
            keys = stored(etcd)
            out |= {"groups_in_store": len({k[len(PREFIX) :].split("/")[2] for k in keys}),
                    "keys_in_store": len(keys)}  # fmt: skip
        else:
            out["etcd_log"] = etcd_log_tail(etcd)
        return out


def vanished(run: Run) -> dict[str, Any]:
    with run.backend("vanished", max_holders=2, fleetlock_waiter_ttl="60s") as (_etcd, server):
        client = FleetLockClient(server.base)
        for holder in ("holder-1", "holder-2"):
            assert client.pre_reboot(holder).status == 200
        for _ in range(2):
            for gone in ("gone-1", "gone-2"):
                client.pre_reboot(gone)
            time.sleep(1.0)
        client.pre_reboot("late")
        for holder in ("holder-1", "holder-2"):
            client.steady_state(holder)
        freed = time.monotonic()
        while client.pre_reboot("late").status != 200:
            if time.monotonic() - freed > 120:
                return {"late_waited_seconds": None}
            time.sleep(1.0)
        return {
            "slots_free": 2,
            "vanished_pollers": 2,
            "late_waited_seconds": round(time.monotonic() - freed, 1),
        }


SCENARIOS = {"agent_slot": agent_slot, "cycles": cycles, "waiters": waiters, "groups": groups,
             "vanished": vanished}  # fmt: skip


def plot() -> None:
    paths = {label: os.path.join(OUT, f"fleetlock_bounds-{label}.json") for label in ("before", "after")}
    if not all(os.path.exists(p) for p in paths.values()):
        return
    docs = {label: json.load(open(p, encoding="utf-8")) for label, p in paths.items()}  # noqa: SIM115
    if not all("error" not in doc.get(name, {"error": 1}) for doc in docs.values()
               for name in ("cycles", "waiters", "vanished")):  # fmt: skip
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = {
        "largest value after\n1,000 cycles (KiB)": lambda d: d["cycles"]["largest_value"]["bytes"] / 1024,
        "etcd database growth in\n1,000 cycles (MiB)": lambda d: d["cycles"]["etcd_db_grew_bytes"] / 2**20,
        "line after 1,200\nlong ids (KiB)": lambda d: d["waiters"]["line_bytes"] / 1024,
        "wait behind 2 vanished\npollers (s)": lambda d: d["vanished"]["late_waited_seconds"] or 0,
    }
    fig, axes = plt.subplots(1, len(figures), figsize=(12, 3.5))
    for ax, (title, value) in zip(axes, figures.items(), strict=True):
        values = [value(docs["before"]), value(docs["after"])]
        ax.bar(["before", "after"], values, color=["#c44", "#4a4"])
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(OUT, "fleetlock_bounds.png"), dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default=ROOT, help="the checkout whose server runs (default: this one)")
    parser.add_argument("--label", default="after")
    parser.add_argument("--only", nargs="*", choices=sorted(SCENARIOS), default=sorted(SCENARIOS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fleetlock-bounds-") as work:
        run = Run(os.path.abspath(args.source), args.label, Path(work))
        doc: dict[str, Any] = {"label": args.label, "source": args.source}
        for name in args.only:
            print(f"-- {name}", file=sys.stderr, flush=True)
            try:
                doc[name] = SCENARIOS[name](run)
            except Exception as exc:  # noqa: BLE001 - the code before may break the backend itself
                doc[name] = {"error": f"{type(exc).__name__}: {str(exc)[:500]}"}
    write_json(f"fleetlock_bounds-{args.label}", doc)
    plot()


if __name__ == "__main__":
    main()
