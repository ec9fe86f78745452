"""Our FleetLock server beside airlock, the real Go binary, on one etcd, under the same load: what
a refused poll and a full cycle cost each of them, and whether the group held its bound.

    .venv/bin/python benchmarks/fleetlock_peers.py [--clients 40] [--slots 5] [--seconds 10]
                                                   [--repeat 3] [--client-procs 2]

Each phase starts the server on a clean group (its keys under ``com.coreos.airlock`` deleted),
runs, and stops it; the servers take turns, in alternating order from one repetition to the next,
on the same etcd. Both serve the same group with the same slots on the same key: airlock's
``com.coreos.airlock/groups/<group>/v1/semaphore`` (ours with ``etcd_key_prefix:
com.coreos.airlock``).

- ``storm``: K holders take the K slots and never give them back; N clients then send pre-reboot
  as fast as they can for the phase's seconds, each request on a new connection (as Zincati
  does): answers/s, latency p50/p99, the server's and etcd's CPU per answer (their processes'
  user+system time from /proc, before and after);
- ``cycles``: the K slots free; N clients each send pre-reboot until granted, then steady-state,
  over and over: cycles/s, with the same CPU figures per cycle.

The load runs in ``--client-procs`` processes of their own (asyncio, raw sockets: no GIL shared
with anything else); their CPU is reported beside the servers', so a reader can see when the
client, not the server, was the limit. The group's bound is checked after every phase from the
semaphore key's history in etcd (every value it was written with, replayed by a watch): never
more holders than slots, and in the storm no holder but the K.

Medians over ``--repeat`` repetitions; ratios ours/airlock of those medians. JSON on stdout and
in ``--out`` (default benchmarks/out/) as fleetlock_peers.json, a bar plot beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.common import OUT  # noqa: E402

PREFIX = "com.coreos.airlock"
SERVERS = ("rebootcoord", "airlock")


# ----------------------------------------------------------------------------------------------
# The load: a process of asyncio clients, one new connection per request


def _request(operation: str, client_id: str, group: str, port: int) -> bytes:
    body = json.dumps({"client_params": {"id": client_id, "group": group}}).encode()
    head = (
        f"POST /v1/{operation} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nfleet-lock-protocol: true\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def _kind(raw: bytes) -> tuple[int, str]:
    """(status, kind) of a whole HTTP answer; 200 is ``ok``."""
    status = int(raw[9:12])
    if status == 200:
        return status, "ok"
    try:
        return status, str(json.loads(raw.partition(b"\r\n\r\n")[2]).get("kind", "?"))
    except (ValueError, AttributeError):
        return status, "?"


async def _ask(port: int, request: bytes) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        raw = await reader.read()  # both servers close the connection after the answer
    finally:
        writer.close()
    return _kind(raw)


async def _load(mode: str, port: int, group: str, ids: list[str], seconds: float) -> dict[str, Any]:
    kinds: Counter[str] = Counter()
    latencies: list[float] = []
    cycles = 0
    deadline = time.monotonic() + seconds
    clock = time.monotonic

    async def ask(request: bytes) -> int:
        started = clock()
        try:
            status, kind = await _ask(port, request)
        except OSError as exc:
            status, kind = 0, f"error {type(exc).__name__}"
        done = clock()
        if done <= deadline:  # what the window's CPU paid for
            kinds[kind] += 1
            if status:
                latencies.append(done - started)
        return status

    async def storm(client_id: str) -> None:
        request = _request("pre-reboot", client_id, group, port)
        while clock() < deadline:
            await ask(request)

    async def cycle(client_id: str) -> None:
        nonlocal cycles
        pre = _request("pre-reboot", client_id, group, port)
        steady = _request("steady-state", client_id, group, port)
        while clock() < deadline:
            if await ask(pre) != 200:
                continue
            while clock() < deadline:  # a slot is given back, whatever the deadline says
                if await ask(steady) == 200:
                    cycles += clock() <= deadline
                    break

    await asyncio.gather(*((storm if mode == "storm" else cycle)(i) for i in ids))
    return {"kinds": dict(kinds), "latencies": latencies, "cycles": cycles}


def _client_process(mode: str, port: int, group: str, ids: list[str], seconds: float,
                    barrier: Any, out: Any) -> None:  # fmt: skip
    barrier.wait()
    cpu = time.process_time()
    result = asyncio.run(_load(mode, port, group, ids, seconds))
    result["cpu_seconds"] = time.process_time() - cpu
    out.put(result)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat, fields 14 and 15)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU time all cores spent busy so far (/proc/stat): the other tenants of a shared machine too."""
    with open("/proc/stat", encoding="ascii") as fh:
        ticks = [int(t) for t in fh.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def cpu_now(pids: dict[str, int | None]) -> dict[str, float]:
    return {name: cpu_seconds(pid) for name, pid in pids.items() if pid} | {"machine": machine_busy_seconds()}


def run_load(*, mode: str, port: int, group: str, clients: int, procs: int, seconds: float,
             pids: dict[str, int | None]) -> dict[str, Any]:  # fmt: skip
    """The load against one server: what it answered, and the CPU each process spent meanwhile."""
    ctx = mp.get_context("spawn")  # no fork of the parent's gRPC threads
    procs = max(1, min(procs, clients))
    ids = [f"{mode}-{i:03d}" for i in range(clients)]
    barrier, queue = ctx.Barrier(procs + 1), ctx.Queue()
    workers = [
        ctx.Process(target=_client_process, args=(mode, port, group, ids[i::procs], seconds, barrier, queue))
        for i in range(procs)
    ]
    for w in workers:
        w.start()
    try:
        barrier.wait(timeout=120)
        before = cpu_now(pids)
        time.sleep(seconds)
        after = cpu_now(pids)
        results = [queue.get(timeout=seconds + 120) for _ in workers]
    finally:
        for w in workers:
            w.join(30)
            if w.is_alive():
                w.kill()
    kinds: Counter[str] = Counter()
    latencies: list[float] = []
    for r in results:
        kinds.update(r["kinds"])
        latencies += r["latencies"]
    cpu = {name: after[name] - before[name] for name in before}
    cpu["client"] = sum(r["cpu_seconds"] for r in results)
    return {
        "seconds": seconds,
        "kinds": dict(kinds),
        "answers": len(latencies),
        "errors": sum(n for k, n in kinds.items() if k.startswith("error")),
        "latencies": latencies,
        "cycles": sum(r["cycles"] for r in results),
        "cpu_seconds": cpu,
    }


# ----------------------------------------------------------------------------------------------
# The store: a clean group, and its bound checked from the semaphore key's history


class Store:
    def __init__(self, endpoint: str, group: str) -> None:
        import etcd3

        from rebootcoord.adapters.etcd import EtcdConnection, EtcdOptions

        host, _, port = endpoint.partition("//")[2].partition(":")
        self.raw = etcd3.client(host=host, port=int(port))
        self.conn = EtcdConnection(EtcdOptions((endpoint,)))
        self.group = group
        self.key = f"{PREFIX}/groups/{group}/v1/semaphore"

    def wipe(self) -> None:
        self.raw.delete_prefix(f"{PREFIX}/groups/{self.group}/")

    def revision(self) -> int:
        """The revision of the semaphore key's last write: its history is read from there."""
        response = self.raw.get_response(self.key)
        if response.kvs:
            return int(response.kvs[0].mod_revision)
        return int(response.header.revision) + 1  # ours creates it at the first request

    def slots(self) -> dict[str, Any] | None:
        value, _ = self.raw.get(self.key)
        return None if value is None else dict(json.loads(value))

    def check(self, since: int, slots: int, allowed: set[str] | None) -> dict[str, Any]:
        """Every value the semaphore key had from revision ``since``: at most ``slots``
        holders, ``total_slots`` unchanged, and (``allowed``) no holder outside that set."""
        from rebootcoord.adapters.etcd import replay

        changes = replay(self.conn, self.key, since=since)
        writes = [(rev, value) for rev, key, value in changes if key == self.key]
        violations: list[str] = []
        most = 0
        for rev, value in writes:
            if value is None:
                violations.append(f"revision {rev}: the semaphore key was deleted")
                continue
            doc = json.loads(value)
            holders = list(doc.get("holders") or [])
            most = max(most, len(holders))
            total = doc.get("total_slots")
            if len(holders) > slots or total != slots:
                violations.append(f"revision {rev}: {len(holders)} holders, total_slots {total}")
            if allowed is not None and not set(holders) <= allowed:
                strangers = sorted(set(holders) - allowed)
                violations.append(f"revision {rev}: {strangers} took a slot of a full group")
        return {"writes": len(writes), "most_holders": most, "violations": violations[:20]}

    def close(self) -> None:
        self.raw.close()
        self.conn.close()


# ----------------------------------------------------------------------------------------------
# The servers


@contextmanager
def serve(name: str, *, work: Path, endpoint: str, group: str, slots: int, airlock: Path,
          store: Store) -> Iterator[tuple[int, int | None]]:  # fmt: skip
    """One server on a clean group: (port, pid) while it runs."""
    store.wipe()
    if name == "airlock":
        from tests.support.peers import Airlock

        class QuietAirlock(Airlock):  # the support class logs every request (-vv): not measured here
            def start(self, timeout: float = 30.0) -> QuietAirlock:
                from tests.support.cluster import free_port

                self.port = self.port or free_port()
                path = self.run_dir / f"airlock-{self.port}.toml"
                self.run_dir.mkdir(parents=True, exist_ok=True)
                path.write_text(self.config())
                self._spawn(["--config", str(path), "serve"])
                self._wait("POST /v1/pre-reboot", timeout)
                return self

        peer = QuietAirlock(airlock, work / "airlock", [endpoint], group, slots)
        peer.start()
        try:
            _wait(lambda: store.slots() is not None, "airlock's semaphore key")
            assert peer.process is not None
            yield peer.port, peer.process.pid
        finally:
            peer.stop()
    else:
        from tests.support.fleetlock import FleetLockServer

        ours = FleetLockServer(
            work / "rebootcoord",
            {"backend": "etcd", "etcd_endpoints": [endpoint], "etcd_key_prefix": PREFIX, "group": group,
             "max_holders": slots, "log_level": "warning"},
        )  # fmt: skip
        ours.start(timeout=60)
        try:
            assert ours.process is not None
            yield ours.port, ours.process.pid
        finally:
            ours.stop()


def _wait(condition: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {what} after {timeout}s")
        time.sleep(0.05)


def _take(port: int, group: str, holder: str) -> None:
    """One pre-reboot that must be granted (the storm's holders)."""
    for _ in range(100):
        status, kind = asyncio.run(_ask(port, _request("pre-reboot", holder, group, port)))
        if status == 200:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{holder} was not granted a free slot: {status} {kind}")


def phase(mode: str, name: str, args: argparse.Namespace, *, work: Path, store: Store, airlock: Path,
          etcd_pid: int | None) -> dict[str, Any]:  # fmt: skip
    with serve(name, work=work, endpoint=args.etcd_endpoint, group=args.group, slots=args.slots,
               airlock=airlock, store=store) as (port, pid):  # fmt: skip
        holders = [f"holder-{i}" for i in range(args.slots)]
        if mode == "storm":
            for holder in holders:
                _take(port, args.group, holder)
        since = store.revision()  # the value the phase starts from is checked too
        load = run_load(mode=mode, port=port, group=args.group, clients=args.clients, procs=args.client_procs,
                        seconds=args.seconds, pids={"server": pid, "etcd": etcd_pid})  # fmt: skip
        check = store.check(since, args.slots, set(holders) if mode == "storm" else None)
        if mode == "storm" and sorted((store.slots() or {}).get("holders") or []) != holders:
            check["violations"].append(f"after the storm the holders are {store.slots()}, not {holders}")
    return figures(mode, load) | {"consistency": check}


def figures(mode: str, load: dict[str, Any]) -> dict[str, Any]:
    seconds, cpu = load["seconds"], load["cpu_seconds"]
    unit = load["answers"] if mode == "storm" else load["cycles"]
    per = "answer" if mode == "storm" else "cycle"
    lat = sorted(load["latencies"])

    def pct(p: float) -> float | None:
        return round(1000 * lat[min(len(lat) - 1, round(p / 100 * (len(lat) - 1)))], 2) if lat else None

    out: dict[str, Any] = {
        "seconds": seconds,
        "answers": load["answers"],
        "answers_per_second": round(load["answers"] / seconds, 1),
        "answers_by_kind": load["kinds"],
        "errors": load["errors"],
        "latency_ms": {"p50": pct(50), "p99": pct(99)},
    }
    if mode == "cycles":
        out |= {"cycles": load["cycles"], "cycles_per_second": round(load["cycles"] / seconds, 2)}
    for proc in ("server", "etcd"):
        if proc in cpu:
            out[f"{proc}_cpu_cores"] = round(cpu[proc] / seconds, 3)
            out[f"{proc}_cpu_ms_per_{per}"] = round(1000 * cpu[proc] / unit, 3) if unit else None
            if mode == "cycles":  # a cycle is a grant, a release and the refusals between them
                answers = load["answers"]
                out[f"{proc}_cpu_ms_per_answer"] = round(1000 * cpu[proc] / answers, 3) if answers else None
    out["client_cpu_cores"] = round(cpu["client"] / seconds, 3)
    out["machine_busy_cores"] = round(cpu["machine"] / seconds, 3)  # everything, other tenants too
    return out


# ----------------------------------------------------------------------------------------------
# The run: repetitions, medians, ratios, plot

#: (phase, figure) pairs compared: the medians and the ratios ours/airlock.
METRICS = (
    ("storm", "answers_per_second"),
    ("storm", "latency_ms.p50"),
    ("storm", "latency_ms.p99"),
    ("storm", "server_cpu_ms_per_answer"),
    ("storm", "etcd_cpu_ms_per_answer"),
    ("storm", "server_cpu_cores"),
    ("storm", "etcd_cpu_cores"),
    ("storm", "client_cpu_cores"),
    ("storm", "machine_busy_cores"),
    ("cycles", "cycles_per_second"),
    ("cycles", "answers_per_second"),
    ("cycles", "server_cpu_ms_per_cycle"),
    ("cycles", "server_cpu_ms_per_answer"),
    ("cycles", "etcd_cpu_ms_per_cycle"),
    ("cycles", "client_cpu_cores"),
    ("cycles", "machine_busy_cores"),
)


def _get(doc: dict[str, Any], path: str) -> float | None:
    node: Any = doc
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, (int, float)) else None


def summarize_runs(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    medians: dict[str, dict[str, float | None]] = {}
    for name, reps in runs.items():
        medians[name] = {}
        for mode, path in METRICS:
            values = [v for r in reps if (v := _get(r[mode], path)) is not None]
            medians[name][f"{mode}.{path}"] = round(statistics.median(values), 3) if values else None
    ratios = {}
    for key in medians["rebootcoord"]:
        ours, theirs = medians["rebootcoord"][key], medians["airlock"][key]
        ratios[key] = round(ours / theirs, 3) if ours is not None and theirs else None
    return {"medians": medians, "ratio_ours_to_airlock": ratios}


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = {
        "storm: answers/s": "storm.answers_per_second",
        "storm: latency p50 (ms)": "storm.latency_ms.p50",
        "storm: latency p99 (ms)": "storm.latency_ms.p99",
        "storm: server CPU ms/answer": "storm.server_cpu_ms_per_answer",
        "storm: etcd CPU ms/answer": "storm.etcd_cpu_ms_per_answer",
        "cycles/s": "cycles.cycles_per_second",
        "cycles: server CPU ms/cycle": "cycles.server_cpu_ms_per_cycle",
        "cycles: etcd CPU ms/cycle": "cycles.etcd_cpu_ms_per_cycle",
    }
    fig, axes = plt.subplots(2, 4, figsize=(13, 6))
    colors = {"rebootcoord": "#3a7", "airlock": "#57b"}
    for ax, (title, key) in zip(axes.flat, shown.items(), strict=True):
        mode, _, rest = key.partition(".")
        for x, name in enumerate(SERVERS):
            median = doc["medians"][name][key]
            ax.bar(x, median or 0, color=colors[name], alpha=0.8)
            points = [_get(r[mode], rest) for r in doc["runs"][name]]
            ax.plot([x] * len(points), [p or 0 for p in points], "k.", markersize=5)
        ratio = doc["ratio_ours_to_airlock"][key]
        ax.set_xticks(range(len(SERVERS)), SERVERS)
        ax.set_title(f"{title}\nours/airlock {ratio}" if ratio is not None else title, fontsize=9)
    p = doc["parameters"]
    fig.suptitle(
        f"FleetLock on one etcd: {p['clients']} clients, {p['slots']} slots, {p['seconds']:g} s, "
        f"median of {p['repeat']} (dots: each run)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def source() -> dict[str, Any]:
    """The checkout whose server was measured: its commit and the files of rebootcoord/ changed
    beside it (another engineer's work in progress is measured too)."""
    import subprocess

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.rstrip("\n")

    changed = [line[3:] for line in git("status", "--porcelain", "--", "rebootcoord").splitlines()]
    return {"commit": git("rev-parse", "--short", "HEAD"), "rebootcoord_uncommitted": changed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--slots", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0, help="of each phase")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--client-procs", type=int, default=2, help="processes the clients run in")
    parser.add_argument("--group", default="bench-peers")
    parser.add_argument("--etcd-endpoint", help="an etcd already running (default: one of our own)")
    parser.add_argument("--etcd-pid", type=int, help="with --etcd-endpoint: its process, for its CPU")
    parser.add_argument("--out", default=OUT, help="directory of fleetlock_peers.json and .png")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out

    from tests.support.cluster import DEFAULT_TESTBIN
    from tests.support.peers import AIRLOCK, SHARED_PEERS, peer_binary

    airlock = peer_binary(AIRLOCK)
    if airlock is None:
        env = os.environ.get(AIRLOCK[0])
        places = env if env else f"{DEFAULT_TESTBIN / 'airlock'}, {SHARED_PEERS / 'airlock'}"
        print(f"fleetlock_peers: no airlock binary (looked at ${AIRLOCK[0]}: {places})", file=sys.stderr)
        return 2

    from rebootcoord.sim.etcd_server import EtcdServer

    with tempfile.TemporaryDirectory(prefix="fleetlock-peers-") as tmp:
        work = Path(tmp)
        etcd = None
        if args.etcd_endpoint is None:
            etcd = EtcdServer(data_dir=str(work / "etcd")).start()
            assert etcd.proc is not None
            args.etcd_endpoint, args.etcd_pid = etcd.endpoint, etcd.proc.pid
        store = Store(args.etcd_endpoint, args.group)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in SERVERS}
        try:
            for rep in range(args.repeat):
                order = SERVERS if rep % 2 == 0 else SERVERS[::-1]
                for name in order:
                    run: dict[str, Any] = {"repetition": rep}
                    for mode in ("storm", "cycles"):
                        print(f"-- {rep + 1}/{args.repeat} {name} {mode}", file=sys.stderr, flush=True)
                        run[mode] = phase(mode, name, args, work=work / f"{rep}-{mode}", store=store,
                                          airlock=airlock, etcd_pid=args.etcd_pid)  # fmt: skip
                    runs[name].append(run)
            store.wipe()
        finally:
            store.close()
            if etcd is not None:
                etcd.stop()

    checks = [(f"{name} rep {r['repetition']} {mode}", r[mode]["consistency"])
              for name, reps in runs.items() for r in reps for mode in ("storm", "cycles")]  # fmt: skip
    violations = [f"{where}: {v}" for where, check in checks for v in check["violations"]]
    parameters = {"clients": args.clients, "slots": args.slots, "seconds": args.seconds,
                  "repeat": args.repeat, "client_procs": args.client_procs, "group": args.group,
                  "airlock": str(airlock), "cpus": os.cpu_count(),
                  "load_average_at_end": [round(x, 2) for x in os.getloadavg()], **source()}  # fmt: skip
    doc: dict[str, Any] = {
        "benchmark": "fleetlock_peers",
        "parameters": parameters,
        **summarize_runs(runs),
        "consistency": {
            "held": not violations,
            "semaphore_writes_checked": sum(check["writes"] for _, check in checks),
            "most_holders_seen": max(check["most_holders"] for _, check in checks),
            "violations": violations[:20],
        },
        "runs": runs,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=2)
    (out / "fleetlock_peers.json").write_text(text + "\n")
    print(text)
    if not args.no_plot:
        plot(doc, out / "fleetlock_peers.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
