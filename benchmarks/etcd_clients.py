"""The etcd v3 clients for Python side by side (issue 22, item 4: is the etcd client the floor of
the agent's 35 MiB?). Each candidate runs in a fresh subprocess against one etcd on loopback and
reports its resident memory (VmRSS) after ``import``, after connect + one get, after holding a
prefix watch and a kept-alive lease for ``--idle-seconds`` (what an idle agent does), and after
importing, on top, every other module a real idle etcd agent holds (read from one run beforehand,
its etcd client's modules left out): what the agent would weigh with that client. Then the CPU per
operation, client side (process CPU of all threads, median of ``--ops``) and etcd's side (mean),
for a range get of one key, a compare-and-swap txn (compare mod_revision, put on success) and a
lease keep-alive round (python-etcd3's family also on one stream kept open, as our adapter does).

Beside them: a bare sleeping Python, and the RSS of our own import graph piece by piece
(``rebootcoord.daemon.agent`` without etcd3, prometheus_client, yaml, tenacity, kubernetes, grpc),
with ``-X importtime`` summed by top-level package.

python benchmarks/etcd_clients.py [--install] [--venvs /tmp/etcdclients] [--ops 2000]
    [--idle-seconds 10] [--etcd testbin/etcd] [--only NAME ...]

The candidates that this project does not depend on live in a venv each under ``--venvs``
(``--install`` makes the missing ones with pip, pinned to the versions measured), never in the
project's venv; one that cannot be installed or cannot watch, transact and lease is listed with
the reason. The child side of this file imports nothing but the candidate and the standard
library: only the parent imports ``benchmarks.common`` and ``rebootcoord``.
"""

from __future__ import annotations

import importlib
import json
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TARGET_RSS_MIB = 35
LEASE_TTL = 6  # seconds; refreshed every third of it while idle, as the agent's waiter lease is

# ----------------------------------------------------------------------------------------------
# The candidates (parent side)


def candidate(name: str, driver: str, dist: str, **more: Any) -> dict[str, Any]:
    """A candidate: ``driver`` (a key of DRIVERS) serves library ``dist`` (import name
    ``module``); ``requirements`` () runs it on this interpreter (the project's venv);
    ``last_release`` is the newest file's upload date on PyPI's simple index, read on 2026-12-07."""
    return {"name": name, "driver": driver, "dist": dist, "module": "", "requirements": (), "env": {},
            "last_release": "", "transport": "", "note": "", **more}  # fmt: skip


CANDIDATES = (
    candidate(
        "python-etcd3 (cslab-etcd3, ours)",
        "etcd3",
        "cslab-etcd3",
        module="etcd3",
        last_release="2026-03-13",
        transport="gRPC (grpcio, protobuf upb)",
        note="what rebootcoord depends on: the python-etcd3 API, regenerated for protobuf >= 4",
    ),
    candidate(
        "python-etcd3 (cslab-etcd3), protobuf pure-Python",
        "etcd3",
        "cslab-etcd3",
        module="etcd3",
        env={"PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"},
        last_release="2026-03-13",
        transport="gRPC (grpcio, protobuf python)",
        note="PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python (=cpp: protobuf 7 has no cpp backend, "
        "import fails)",
    ),
    candidate(
        "python-etcd3 (etcd3 0.12.0 from PyPI), protobuf pure-Python",
        "etcd3",
        "etcd3",
        module="etcd3",
        requirements=("etcd3==0.12.0",),
        env={"PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"},
        last_release="2020-03-31",
        transport="gRPC (grpcio, protobuf 7 python)",
        note="its generated code fails at import with protobuf >= 4 unless the pure-Python "
        "protobuf is forced",
    ),
    candidate(
        "python-etcd3 (etcd3 0.12.0 from PyPI), protobuf 3.20",
        "etcd3",
        "etcd3",
        module="etcd3",
        requirements=("etcd3==0.12.0", "protobuf<4"),
        last_release="2020-03-31",
        transport="gRPC (grpcio, protobuf 3.20.3: pure Python, no CPython 3.11 wheel)",
        note="protobuf < 4 cannot be installed beside kubernetes and current grpcio tooling",
    ),
    candidate(
        "etcd-sdk-python (pyetcd)",
        "etcd3",
        "etcd-sdk-python",
        module="pyetcd",
        requirements=("etcd-sdk-python==0.0.7", "protobuf"),
        last_release="2025-08-04",
        transport="gRPC (grpcio, protobuf upb)",
        note="a python-etcd3 fork importing as pyetcd; protobuf is an undeclared dependency",
    ),
    candidate(
        "aetcd",
        "aetcd",
        "aetcd",
        requirements=("aetcd==1.0.0",),
        last_release="2026-06-29",
        transport="gRPC aio (grpcio, protobuf upb)",
        note="asyncio only; here its loop runs in one thread (ops are timed inside the loop)",
    ),
    candidate(
        "etcd3-py",
        "etcd3py",
        "etcd3-py",
        requirements=("etcd3-py==0.1.6",),
        last_release="2019-05-09",
        transport="JSON gateway (requests; imports aiohttp, pyOpenSSL too)",
        note="Client.version() breaks on etcd >= 3.5 (the 'storage' field); keep-alive is one HTTP "
        "request per round",
    ),
    candidate(
        "etcd3gw",
        "etcd3gw",
        "etcd3gw",
        requirements=("etcd3gw==2.7.0",),
        last_release="2026-06-09",
        transport="JSON gateway (requests, futurist)",
        note="OpenStack's; not in the python-etcd3 API family (docs/development.md)",
    ),
    candidate(
        "stdlib http.client on the JSON gateway (yardstick)",
        "gateway",
        "",
        transport="JSON gateway (http.client, one kept-alive connection + one for the watch)",
        note="written only inside this benchmark: the floor an etcd client can reach in Python",
    ),
)

#: The import graph, piece by piece (this interpreter): RSS after importing each set alone.
IMPORTS: dict[str, tuple[str, ...]] = {
    "nothing (the child harness)": (),
    "http.client, json, base64 (stdlib)": ("http.client", "json", "base64"),
    "google.protobuf": ("google.protobuf",),
    "grpc": ("grpc",),
    "etcd3.etcdrpc only (generated stubs + grpc, no etcd3/__init__)": (":etcdrpc",),
    "etcd3": ("etcd3",),
    "prometheus_client": ("prometheus_client",),
    "yaml": ("yaml",),
    "tenacity": ("tenacity",),
    "kubernetes": ("kubernetes",),
    "rebootcoord.daemon.agent": ("rebootcoord.daemon.agent",),
    "rebootcoord.cli.main": ("rebootcoord.cli.main",),
    "the etcd agent's (cli.main, cli.wiring, daemon.agent, adapters.etcd)": (
        "rebootcoord.cli.main",
        "rebootcoord.cli.wiring",
        "rebootcoord.daemon.agent",
        "rebootcoord.adapters.etcd",
    ),
}
#: Third-party top-level packages whose presence an import row reports.
WATCHED = ("etcd3", "grpc", "google", "kubernetes", "prometheus_client", "yaml", "tenacity", "urllib3")


# ----------------------------------------------------------------------------------------------
# Child side: memory and CPU of one process


def status() -> dict[str, str]:
    with open("/proc/self/status", encoding="ascii") as fh:
        return {k: v.strip() for k, _, v in (line.partition(":") for line in fh)}


def mib(name: str = "VmRSS") -> float:
    return round(int(status()[name].split()[0]) / 1024, 2)


class Driver:
    """One client library as the child uses it, synchronously."""

    def __init__(self, module: str) -> None:
        self.module = module

    def load(self) -> None:
        raise NotImplementedError

    def connect(self, host: str, port: int) -> None:
        raise NotImplementedError

    def get(self, key: str) -> None:
        raise NotImplementedError

    def put(self, key: str, value: str) -> None:
        raise NotImplementedError

    def mod_revision(self, key: str) -> int:
        raise NotImplementedError

    def cas(self, key: str, revision: int) -> int:
        """Put ``key`` if its mod_revision is ``revision``; the new mod_revision."""
        raise NotImplementedError

    def lease(self, ttl: int) -> int:
        raise NotImplementedError

    def keepalive(self, lease_id: int) -> None:
        raise NotImplementedError

    def watch_prefix(self, prefix: str, on_event: Callable[[], None]) -> None:
        raise NotImplementedError

    def ops(self, key: str, lease_id: int) -> dict[str, Callable[[], Any]]:
        revision = [self.mod_revision(key)]

        def cas() -> None:
            revision[0] = self.cas(key, revision[0])

        return {"get": lambda: self.get(key), "txn_cas": cas, "keepalive": lambda: self.keepalive(lease_id)}

    def timed(self, op: Callable[[], Any], n: int) -> list[tuple[int, int]]:
        """(process CPU ns, wall ns) of each of ``n`` calls of ``op``."""
        out = []
        for _ in range(n):
            c0, w0 = time.process_time_ns(), time.perf_counter_ns()
            op()
            out.append((time.process_time_ns() - c0, time.perf_counter_ns() - w0))
        return out


class Etcd3Family(Driver):
    """python-etcd3 and its forks (cslab-etcd3, etcd-sdk-python): one API, module name aside."""

    def load(self) -> None:
        self.m: Any = importlib.import_module(self.module)

    def connect(self, host: str, port: int) -> None:
        self.c = self.m.client(host=host, port=port, timeout=10)
        self.get("bench/connect")

    def get(self, key: str) -> None:
        self.c.get(key)

    def put(self, key: str, value: str) -> None:
        self.c.put(key, value)

    def mod_revision(self, key: str) -> int:
        return int(self.c.get(key)[1].mod_revision)

    def cas(self, key: str, revision: int) -> int:
        t = self.c.transactions
        ok, responses = self.c.transaction(
            compare=[t.mod(key) == revision], success=[t.put(key, "v")], failure=[]
        )
        if not ok:
            raise RuntimeError("compare failed")
        return int(responses[0].response_put.header.revision)

    def lease(self, ttl: int) -> int:
        return int(self.c.lease(ttl).id)

    def keepalive(self, lease_id: int) -> None:
        for _ in self.c.refresh_lease(lease_id):  # a stream (and a feeding thread) per refresh
            pass

    def watch_prefix(self, prefix: str, on_event: Callable[[], None]) -> None:
        self.c.add_watch_prefix_callback(prefix, lambda _response: on_event())

    def ops(self, key: str, lease_id: int) -> dict[str, Callable[[], Any]]:
        """And the keep-alive as rebootcoord's adapter sends it: one message on a stream kept open."""
        requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        answers: queue.SimpleQueue[int] = queue.SimpleQueue()
        responses = self.c.leasestub.LeaseKeepAlive(iter(requests.get, None), metadata=self.c.metadata)

        def read() -> None:
            for response in responses:
                answers.put(int(response.TTL))

        threading.Thread(target=read, daemon=True).start()

        def round_trip() -> None:
            requests.put(self.m.etcdrpc.LeaseKeepAliveRequest(ID=lease_id))
            answers.get(timeout=10)

        return {**super().ops(key, lease_id), "keepalive_one_stream": round_trip}


class Aetcd(Driver):
    """aetcd: asyncio. Its loop runs in a thread; the timed ops run inside it."""

    def load(self) -> None:
        import asyncio

        self.asyncio = asyncio
        self.m: Any = importlib.import_module("aetcd")

    def connect(self, host: str, port: int) -> None:
        self.loop = self.asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.c = self.m.Client(host=host, port=port, timeout=10)
        self.run(self.c.connect())
        self.get("bench/connect")
        self.tasks: list[Any] = []

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return self.asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def get(self, key: str) -> None:
        self.run(self.c.get(key.encode()))

    def put(self, key: str, value: str) -> None:
        self.run(self.c.put(key.encode(), value.encode()))

    def mod_revision(self, key: str) -> int:
        return int(self.run(self.c.get(key.encode())).mod_revision)

    async def acas(self, key: bytes, revision: int) -> int:
        t = self.c.transactions
        ok, responses = await self.c.transaction(
            compare=[t.mod(key) == revision], success=[t.put(key, b"v")], failure=[]
        )
        if not ok:
            raise RuntimeError("compare failed")
        return int(responses[0].response_put.header.revision)

    def cas(self, key: str, revision: int) -> int:
        return int(self.run(self.acas(key.encode(), revision)))

    def lease(self, ttl: int) -> int:
        return int(self.run(self.c.lease(ttl)).id)

    def keepalive(self, lease_id: int) -> None:
        self.run(self.c.refresh_lease(lease_id))

    def watch_prefix(self, prefix: str, on_event: Callable[[], None]) -> None:
        async def start() -> None:
            watch = await self.c.watch_prefix(prefix.encode())

            async def consume() -> None:
                async for _event in watch:
                    on_event()

            self.tasks.append(self.asyncio.ensure_future(consume()))

        self.run(start())

    def ops(self, key: str, lease_id: int) -> dict[str, Callable[[], Any]]:
        k = key.encode()
        revision = [self.mod_revision(key)]

        async def cas() -> None:
            revision[0] = await self.acas(k, revision[0])

        return {
            "get": lambda: self.c.get(k),
            "txn_cas": cas,
            "keepalive": lambda: self.c.refresh_lease(lease_id),
        }

    def timed(self, op: Callable[[], Any], n: int) -> list[tuple[int, int]]:
        async def batch() -> list[tuple[int, int]]:
            out = []
            for _ in range(n):
                c0, w0 = time.process_time_ns(), time.perf_counter_ns()
                await op()
                out.append((time.process_time_ns() - c0, time.perf_counter_ns() - w0))
            return out

        return list(self.run(batch(), timeout=600))


class Etcd3Py(Driver):
    """etcd3-py (Revolution1's): the JSON gateway through requests."""

    def load(self) -> None:
        self.m: Any = importlib.import_module("etcd3")

    def connect(self, host: str, port: int) -> None:
        self.c = self.m.Client(host, port, timeout=10)
        self.get("bench/connect")

    def get(self, key: str) -> None:
        self.c.range(key)

    def put(self, key: str, value: str) -> None:
        self.c.put(key, value)

    def mod_revision(self, key: str) -> int:
        return int(self.c.range(key).kvs[0].mod_revision)

    def cas(self, key: str, revision: int) -> int:
        txn = self.m.Txn(self.c)
        txn.compare(txn.key(key).mod == revision)
        txn.success(txn.put(key, "v"))
        response = txn.commit()
        if not response.succeeded:
            raise RuntimeError("compare failed")
        return int(response.header.revision)

    def lease(self, ttl: int) -> int:
        return int(self.c.lease_grant(ttl).ID)

    def keepalive(self, lease_id: int) -> None:
        self.c.lease_keep_alive_once(lease_id)

    def watch_prefix(self, prefix: str, on_event: Callable[[], None]) -> None:
        self.watcher = self.m.Watcher(self.c, key=prefix, prefix=True)
        self.watcher.onEvent(lambda _event: on_event())
        self.watcher.runDaemon()


class Etcd3Gw(Driver):
    """etcd3gw (OpenStack's): the JSON gateway through requests."""

    def load(self) -> None:
        self.m: Any = importlib.import_module("etcd3gw")
        self.utils: Any = importlib.import_module("etcd3gw.utils")

    def connect(self, host: str, port: int) -> None:
        self.c = self.m.Etcd3Client(host=host, port=port, timeout=10)
        self.leases: dict[int, Any] = {}
        self.get("bench/connect")

    def get(self, key: str) -> None:
        self.c.get(key)

    def put(self, key: str, value: str) -> None:
        self.c.put(key, value)

    def mod_revision(self, key: str) -> int:
        return int(self.c.get(key, metadata=True)[0][1]["mod_revision"])

    def cas(self, key: str, revision: int) -> int:
        k = self.utils._encode(key)
        response = self.c.transaction(
            {
                "compare": [{"key": k, "target": "MOD", "result": "EQUAL", "mod_revision": revision}],
                "success": [{"request_put": {"key": k, "value": self.utils._encode("v")}}],
            }
        )
        if not response.get("succeeded"):
            raise RuntimeError("compare failed")
        return int(response["header"]["revision"])

    def lease(self, ttl: int) -> int:
        lease = self.c.lease(ttl)
        self.leases[int(lease.id)] = lease
        return int(lease.id)

    def keepalive(self, lease_id: int) -> None:
        self.leases[lease_id].refresh()

    def watch_prefix(self, prefix: str, on_event: Callable[[], None]) -> None:
        events, self.cancel_watch = self.c.watch_prefix(prefix)

        def consume() -> None:
            for _event in events:
                on_event()

        threading.Thread(target=consume, daemon=True).start()


class Gateway(Driver):
    """The yardstick: etcd's JSON gateway with http.client, one kept-alive connection for the
    unary calls (a keep-alive round is one POST: the gateway answers it and ends the stream) and
    one long response for the watch."""

    def load(self) -> None:
        import base64
        import http.client

        self.http = http.client
        self.b64 = lambda s: base64.b64encode(s.encode()).decode()

    def connect(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.conn = self.http.HTTPConnection(host, port, timeout=10)
        self.lock = threading.Lock()
        self.get("bench/connect")

    def call(self, path: str, doc: dict[str, Any]) -> Any:
        body = json.dumps(doc).encode()
        with self.lock:
            try:
                self.conn.request("POST", path, body, {"Content-Type": "application/json"})
                response = self.conn.getresponse()
            except (ConnectionError, self.http.HTTPException):
                self.conn.close()  # etcd closed an idle connection: once more on a new one
                self.conn.request("POST", path, body, {"Content-Type": "application/json"})
                response = self.conn.getresponse()
            data = response.read()
        if response.status != 200:
            raise RuntimeError(f"{path}: {response.status} {data[:200]!r}")
        return json.loads(data)

    def get(self, key: str) -> None:
        self.call("/v3/kv/range", {"key": self.b64(key)})

    def put(self, key: str, value: str) -> None:
        self.call("/v3/kv/put", {"key": self.b64(key), "value": self.b64(value)})

    def mod_revision(self, key: str) -> int:
        return int(self.call("/v3/kv/range", {"key": self.b64(key)})["kvs"][0]["mod_revision"])

    def cas(self, key: str, revision: int) -> int:
        k = self.b64(key)
        response = self.call(
            "/v3/kv/txn",
            {
                "compare": [{"key": k, "target": "MOD", "result": "EQUAL", "mod_revision": revision}],
                "success": [{"request_put": {"key": k, "value": self.b64("v")}}],
            },
        )
        if not response.get("succeeded"):
            raise RuntimeError("compare failed")
        return int(response["header"]["revision"])

    def lease(self, ttl: int) -> int:
        return int(self.call("/v3/lease/grant", {"TTL": ttl})["ID"])

    def keepalive(self, lease_id: int) -> None:
        if int(self.call("/v3/lease/keepalive", {"ID": lease_id})["result"].get("TTL", 0)) <= 0:
            raise RuntimeError("the lease expired")

    def watch_prefix(self, prefix: str, on_event: Callable[[], None]) -> None:
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        conn = self.http.HTTPConnection(self.host, self.port)  # no timeout: an idle watch is quiet
        body = {"create_request": {"key": self.b64(prefix), "range_end": self.b64(end)}}
        conn.request("POST", "/v3/watch", json.dumps(body).encode(), {"Content-Type": "application/json"})
        response = conn.getresponse()
        if not json.loads(response.readline())["result"].get("created"):
            raise RuntimeError("the watch was not created")

        def consume() -> None:
            for line in response:
                if json.loads(line).get("result", {}).get("events"):
                    on_event()

        threading.Thread(target=consume, daemon=True).start()


DRIVERS: dict[str, type[Driver]] = {
    "etcd3": Etcd3Family,
    "aetcd": Aetcd,
    "etcd3py": Etcd3Py,
    "etcd3gw": Etcd3Gw,
    "gateway": Gateway,
}


def child_client(spec: dict[str, Any]) -> dict[str, Any]:
    """One client: RSS by stage, idle CPU, whether the watch fires, CPU per op."""
    out: dict[str, Any] = {"rss_mib": {"start": mib()}}
    own_path = list(sys.path)  # the candidate's venv, before the agent's modules join it
    driver = DRIVERS[spec["driver"]](spec.get("module", ""))
    driver.load()
    out["rss_mib"]["import"] = mib()
    host, _, port = spec["endpoint"].rpartition("//")[2].partition(":")
    driver.connect(host, int(port))
    out["rss_mib"]["connect_get"] = mib()

    prefix = f"bench/{os.getpid()}/"
    events = threading.Event()
    driver.watch_prefix(prefix + "watched/", events.set)
    lease_id = driver.lease(LEASE_TTL)
    stop = threading.Event()
    kept: list[int] = []

    def keep() -> None:
        while not stop.wait(LEASE_TTL / 3):
            driver.keepalive(lease_id)
            kept.append(1)

    keeper = threading.Thread(target=keep, daemon=True)
    keeper.start()
    cpu0 = time.process_time()
    time.sleep(spec["idle_seconds"])
    out["idle_cpu_percent"] = round(100 * (time.process_time() - cpu0) / spec["idle_seconds"], 3)
    out["rss_mib"]["idle_watch_lease"] = mib()
    out["threads_idle"] = int(status()["Threads"])
    stop.set()
    keeper.join()
    out["idle_keepalives"] = len(kept)
    own_modules = {m for m in ("grpc", "google.protobuf", "requests", "aiohttp") if m in sys.modules}
    if spec.get("agent_modules"):
        # The rest of an idle etcd agent: every module it holds but its etcd client's, imported
        # from the project's venv behind the candidate's own packages.
        sys.path.extend(p for p in spec["agent_path"] if p not in sys.path)
        failed = []
        for name in spec["agent_modules"]:
            try:
                importlib.import_module(name)
            except Exception as exc:  # noqa: BLE001 - reported, not fatal
                failed.append(f"{name}: {exc.__class__.__name__}")
        out["rss_mib"]["idle_plus_agent_modules"] = mib()
        out["agent_modules_failed"] = failed
    driver.put(prefix + "watched/x", "v")
    out["watch_event_seen"] = events.wait(10)

    key = prefix + "cas"
    driver.put(key, "v")
    ops = driver.ops(key, lease_id)
    cpu_us: dict[str, Any] = {}
    wall_us: dict[str, Any] = {}
    server_us: dict[str, float] = {}
    for name, op in ops.items():
        driver.timed(op, min(100, spec["ops"]))  # warm-up: connections, caches, lazy imports
        ticks = server_ticks(spec["etcd_pid"])
        samples = driver.timed(op, spec["ops"])
        ticks = server_ticks(spec["etcd_pid"]) - ticks
        server_us[name] = round(ticks / os.sysconf("SC_CLK_TCK") * 1e6 / spec["ops"], 1)
        cpu = sorted(c / 1000 for c, _ in samples)
        wall = sorted(w / 1000 for _, w in samples)
        cpu_us[name] = {"median": round(median(cpu), 1), "p90": round(cpu[int(0.9 * len(cpu))], 1)}
        wall_us[name] = {"median": round(median(wall), 1), "p90": round(wall[int(0.9 * len(wall))], 1)}
    out["cpu_us_per_op"] = cpu_us
    out["wall_us_per_op"] = wall_us
    out["etcd_cpu_us_per_op"] = server_us  # the server's side: mean over the batch, 10 ms ticks
    out["rss_mib"]["after_ops"] = mib()
    out["rss_mib"]["peak"] = mib("VmHWM")
    out.update(versions(spec, own_path, own_modules))
    return out


def server_ticks(pid: int) -> int:
    """etcd's CPU (user + system) in clock ticks."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def median(ordered: list[float]) -> float:
    n = len(ordered)
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def versions(spec: dict[str, Any], path: list[str], modules: set[str]) -> dict[str, Any]:
    """The candidate's version and its transport's (those it imported), from its own venv."""
    from importlib import metadata

    found = {}
    imported = {"grpcio": "grpc", "protobuf": "google.protobuf", "requests": "requests", "aiohttp": "aiohttp"}
    for dist in [spec.get("dist")] + [d for d, m in imported.items() if m in modules]:
        for found_dist in metadata.distributions(name=dist, path=path) if dist else ():
            found[dist] = found_dist.version
            break
    out: dict[str, Any] = {"versions": found}
    if "google.protobuf" in modules:
        from google.protobuf.internal import api_implementation

        out["protobuf_implementation"] = api_implementation.Type()
    return out


def child_imports(spec: dict[str, Any]) -> dict[str, Any]:
    """RSS after importing a set of modules, and which watched packages came with them."""
    before = mib()
    for name in spec["modules"]:
        if name == ":etcdrpc":
            # etcd3's generated stubs without running etcd3/__init__ (the client, locks, ...)
            import types
            from importlib import util

            origin = util.find_spec("etcd3")
            assert origin is not None and origin.submodule_search_locations is not None
            package = types.ModuleType("etcd3")
            package.__path__ = list(origin.submodule_search_locations)
            sys.modules["etcd3"] = package
            importlib.import_module("etcd3.etcdrpc")
        else:
            importlib.import_module(name)
    return {
        "rss_mib_before": before,
        "rss_mib": mib(),
        "modules": len(sys.modules),
        "loaded": sorted(p for p in WATCHED if p in sys.modules),
    }


def child(argument: str) -> None:
    spec = json.loads(argument)
    out = child_imports(spec) if "modules" in spec else child_client(spec)
    print(json.dumps(out), flush=True)
    os._exit(0)  # daemon threads blocked in a gRPC or HTTP stream: no orderly shutdown to wait for


# ----------------------------------------------------------------------------------------------
# Parent side

#: A child runs this file's code compiled beforehand: compiling a script of this size in the
#: child would leave its own megabytes in the RSS being measured.
BOOT = (
    "import importlib.util as u, sys; s = u.spec_from_file_location('etcd_clients_child', sys.argv[1]); "
    "m = u.module_from_spec(s); s.loader.exec_module(m); m.child(sys.argv[2])"
)
#: The etcd agent's own modules that are its etcd client's: left out of "the rest of the agent".
CLIENT_PACKAGES = ("etcd3", "grpc", "google", "six", "rebootcoord.adapters.etcd")


def main() -> None:
    import argparse
    import atexit
    import py_compile
    import shutil
    import subprocess
    import sysconfig
    import tempfile

    sys.path.insert(0, REPO)
    from benchmarks.common import write_json
    from rebootcoord.sim.etcd_server import EtcdServer, find_etcd

    p = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0])
    p.add_argument("--venvs", default="/tmp/etcdclients", help="one venv per candidate: DIR/venv-DIST")
    p.add_argument("--install", action="store_true", help="make the missing candidates' venvs with pip")
    p.add_argument("--ops", type=int, default=2000)
    p.add_argument("--idle-seconds", type=float, default=10)
    p.add_argument("--etcd", default=os.path.join(REPO, "testbin", "etcd"), help="etcd binary")
    p.add_argument("--only", nargs="*", default=None, help="candidates whose name contains one of these")
    args = p.parse_args()
    binary = args.etcd if os.path.exists(args.etcd) else find_etcd()
    etcd_version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    work = tempfile.mkdtemp(prefix="etcd-clients-")
    atexit.register(shutil.rmtree, work, True)
    compiled = py_compile.compile(__file__, cfile=os.path.join(work, "etcd_clients_child.pyc"), doraise=True)

    def run_child(python: str, spec: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
        done = subprocess.run(
            [python, "-c", BOOT, compiled, json.dumps(spec)],
            check=False,
            capture_output=True,
            text=True,
            timeout=900,
            env={**os.environ, **(env or {})},
            cwd=work,
        )
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            return {"error": f"exit {done.returncode}: {tail}"}
        return dict(json.loads(lines[-1]))

    doc: dict[str, Any] = {
        "benchmark": "etcd v3 clients: RSS by stage and client CPU per operation, one process each",
        "etcd": etcd_version.stdout.partition("\n")[0],
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "ops": args.ops,
        "idle_seconds": args.idle_seconds,
        "lease_ttl_s": LEASE_TTL,
        "target_rss_mib": TARGET_RSS_MIB,
        "baseline": baseline(sys.executable),
        "imports": {},
        "importtime_ms_by_package": {},
        "clients": [],
        "skipped": [],
    }
    for label, modules in IMPORTS.items():
        doc["imports"][label] = run_child(sys.executable, {"modules": list(modules)})
    for label, modules in (
        ("rebootcoord.cli.main", ("rebootcoord.cli.main",)),
        ("the etcd agent's", IMPORTS[next(k for k in IMPORTS if k.startswith("the etcd agent"))]),
    ):
        doc["importtime_ms_by_package"][label] = importtime(sys.executable, modules)

    with EtcdServer(data_dir=os.path.join(work, "etcd"), binary=binary) as etcd:
        agent = idle_agent(etcd.endpoint, work)
        doc["idle_agent"] = {k: v for k, v in agent.items() if k != "modules"}
        rest = [
            m
            for m in agent["modules"]
            if m != "__main__"
            and "cython" not in m  # Cython's runtime modules: loaded by extensions, not importable
            and not any(m == c or m.startswith(c + ".") for c in CLIENT_PACKAGES)
        ]
        doc["idle_agent"]["modules_without_its_etcd_client"] = len(rest)
        for cand in CANDIDATES:
            if args.only is not None and not any(s in cand["name"] for s in args.only):
                continue
            python, why = interpreter(cand, args.venvs, args.install)
            row: dict[str, Any] = {
                "client": cand["name"],
                "transport": cand["transport"],
                "last_release": cand["last_release"] or None,
                "note": cand["note"],
                **({"env": cand["env"]} if cand["env"] else {}),
            }
            if python is None:
                doc["skipped"].append({**row, "why": why})
                continue
            print(f"{cand['name']} ...", file=sys.stderr, flush=True)
            spec = {
                "driver": cand["driver"],
                "module": cand["module"],
                "dist": cand["dist"],
                "endpoint": etcd.endpoint,
                "etcd_pid": etcd.proc.pid if etcd.proc else 0,
                "ops": args.ops,
                "idle_seconds": args.idle_seconds,
                "agent_modules": rest,
                "agent_path": [sysconfig.get_paths()["purelib"], REPO],
            }
            result = run_child(python, spec, cand["env"])
            if "error" in result:
                doc["skipped"].append({**row, "why": result["error"]})
            else:
                doc["clients"].append({**row, "python": python, **result})
    doc["table"] = table(doc["clients"])
    write_json("etcd_clients", doc)


def idle_agent(endpoint: str, work: str, seconds: float = 8) -> dict[str, Any]:
    """The real etcd agent, idle for ``seconds``: its RSS, threads and every module it holds."""
    import subprocess

    root = os.path.join(work, "node")
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "boot_id"), "w", encoding="ascii") as fh:
        fh.write("boot-0\n")
    dump = os.path.join(work, "agent.json")
    argv = [
        "agent", "--node-name", "n0", "--etcd-endpoints", endpoint, "--host-root", root,
        "--boot-id-file", os.path.join(root, "boot_id"), "--metrics-address", "127.0.0.1:0",
        "--log-level", "warning",
    ]  # fmt: skip
    code = f"""
import json, os, sys, threading

def dump():
    st = dict(line.split(":", 1) for line in open("/proc/self/status"))
    doc = {{"rss_mib": round(int(st["VmRSS"].split()[0]) / 1024, 2), "threads": int(st["Threads"]),
           "modules": sorted(sys.modules)}}
    with open({dump!r}, "w") as fh:
        json.dump(doc, fh)
    os._exit(0)

threading.Timer({seconds}, dump).start()
from rebootcoord.cli.main import main
main({argv!r})
"""
    done = subprocess.run(
        [sys.executable, "-c", code], timeout=seconds + 60, capture_output=True, text=True, check=False
    )
    if not os.path.exists(dump):
        return {"error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1], "modules": []}
    with open(dump, encoding="utf-8") as fh:
        return dict(json.load(fh))


def baseline(python: str) -> dict[str, float]:
    """A bare ``python -c 'import time; time.sleep(10)'`` (and with -S: no site, no .pth files),
    read from outside once it sleeps."""
    import subprocess

    out = {}
    for label, flags in (("python -c sleep", []), ("python -S -c sleep", ["-S"])):
        proc = subprocess.Popen([python, *flags, "-c", "import time; time.sleep(10)"])
        time.sleep(2)
        with open(f"/proc/{proc.pid}/status", encoding="ascii") as fh:
            kb = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
        proc.kill()
        proc.wait()
        out[label + " rss_mib"] = round(kb / 1024, 2)
    return out


def importtime(python: str, modules: tuple[str, ...]) -> dict[str, float]:
    """``-X importtime``'s self times summed by top-level package, biggest first (top 12)."""
    import subprocess

    done = subprocess.run(
        [python, "-X", "importtime", "-c", "; ".join(f"import {m}" for m in modules)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    by_package: dict[str, int] = {}
    for line in done.stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) != 3 or not parts[0].strip().isdigit():
            continue
        package = parts[2].strip().split(".")[0]
        by_package[package] = by_package.get(package, 0) + int(parts[0])
    top = sorted(by_package.items(), key=lambda kv: -kv[1])[:12]
    return {"total": round(sum(by_package.values()) / 1000, 1), **{k: round(v / 1000, 1) for k, v in top}}


def interpreter(cand: dict[str, Any], venvs: str, install: bool) -> tuple[str | None, str]:
    """The Python to run ``cand`` on, or None and why not."""
    import subprocess

    if not cand["requirements"]:
        return sys.executable, ""
    slug = cand["requirements"][0].split("=")[0] + ("-pb3" if "protobuf<4" in cand["requirements"] else "")
    venv = os.path.join(venvs, "venv-" + slug)
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(python):
        if not install:
            return None, f"not installed: run with --install (a venv at {venv})"
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        done = subprocess.run(
            [python, "-m", "pip", "install", "-q", *cand["requirements"]],
            check=False,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            return None, "pip install failed: " + (done.stderr.strip().splitlines() or ["?"])[-1]
    return python, ""


def table(clients: list[dict[str, Any]]) -> list[str]:
    """One line per client, for the eye (medians)."""
    lines = [
        "client | RSS MiB: import / connect+get / idle (watch+lease) / idle + the agent's other modules"
        " | client CPU us: get / txn CAS / keep-alive (/ on one stream) | etcd CPU us: same"
    ]
    for c in clients:
        r, cpu = c["rss_mib"], c["cpu_us_per_op"]
        ops = " / ".join(f"{cpu[k]['median']:.0f}" for k in cpu)
        server = " / ".join(f"{v:.0f}" for v in c["etcd_cpu_us_per_op"].values())
        lines.append(
            f"{c['client']} | {r['import']} / {r['connect_get']} / {r['idle_watch_lease']} / "
            f"{r.get('idle_plus_agent_modules')} | {ops} | {server}"
        )
    return lines


if __name__ == "__main__":
    main()
