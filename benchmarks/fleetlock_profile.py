"""What one refused FleetLock poll costs our server, in-process: CPU, the etcd requests it makes
(counted by etcd itself), and where the time goes (cProfile's top functions).

    .venv/bin/python benchmarks/fleetlock_profile.py [--polls 2000] [--waiters 40] [--slots 5]

One etcd of our own, the server as ``rebootcoord fleetlock-server`` builds it
(``build_fleetlock_service``), asked through ``FleetLockService.handle_at_once`` then ``handle``
-- what its HTTP server does -- without the HTTP: ``--slots`` clients take the slots,
``--waiters`` clients join the line, each polls twice more (its place's lease fitted to its
polls), then ``--polls`` refused polls go round the waiters. Measured twice: once plain (CPU and
etcd requests per poll), once under cProfile (the top 15 functions by cumulative time). JSON on
stdout and in benchmarks/out/fleetlock_profile.json.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import re
import sys
import threading
import time
import urllib.request
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.common import write_json  # noqa: E402

HEADERS = {"fleet-lock-protocol": "true"}


def unary_requests(metrics_url: str) -> dict[str, int]:
    """etcd's answered unary gRPC requests by method."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    counts: dict[str, int] = {}
    for labels, value in re.findall(r"^grpc_server_handled_total\{([^}]*)\} (\S+)", text, re.M):
        if 'grpc_type="unary"' in labels:
            method = re.search(r'grpc_method="([^"]+)"', labels)
            name = method.group(1) if method else "?"
            counts[name] = counts.get(name, 0) + int(float(value))
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--polls", type=int, default=2000)
    parser.add_argument("--waiters", type=int, default=40)
    parser.add_argument("--slots", type=int, default=5)
    parser.add_argument("--out", help="directory of fleetlock_profile.json (default: benchmarks/out)")
    args = parser.parse_args(argv)

    from prometheus_client import CollectorRegistry

    from rebootcoord.cli.wiring import build_fleetlock_service
    from rebootcoord.core.config import load_settings
    from rebootcoord.sim.etcd_server import EtcdServer

    with EtcdServer() as etcd:
        settings = load_settings(
            file_data={"etcd_endpoints": [etcd.endpoint], "max_holders": args.slots, "node_name": "bench"},
            env={},
        )
        service = build_fleetlock_service(settings, threading.Event(), CollectorRegistry())
        metrics = etcd._metrics_url.replace("/health", "/metrics")

        def ask(client: str) -> int:
            body = json.dumps({"client_params": {"id": client, "group": "default"}}).encode()
            at_once = getattr(service, "handle_at_once", None)  # (absent before commit 29a1c09)
            reply = at_once("POST", "/v1/pre-reboot", HEADERS, body) if at_once else None
            return (reply or service.handle("POST", "/v1/pre-reboot", HEADERS, body))[0]

        try:
            for i in range(args.slots):
                assert ask(f"holder-{i}") == 200
            waiters = [f"waiter-{i}" for i in range(args.waiters)]
            for _ in range(3):
                for w in waiters:
                    assert ask(w) == 423
            time.sleep(0.5)  # the group's mirror is live

            def run(n: int) -> None:
                for k in range(n):
                    assert ask(waiters[k % len(waiters)]) == 423

            before, cpu = unary_requests(metrics), time.process_time()
            run(args.polls)
            cpu = time.process_time() - cpu
            after = unary_requests(metrics)
            profile = cProfile.Profile()
            profile.runcall(run, args.polls)
        finally:
            service.close()
    requests = {m: after[m] - before.get(m, 0) for m in after if after[m] != before.get(m, 0)}
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(15)
    top = [line.strip() for line in out.getvalue().splitlines() if re.match(r"\s*\d", line)]
    doc: dict[str, Any] = {
        "benchmark": "fleetlock_profile",
        "parameters": vars(args),
        "cpu_ms_per_refused_poll": round(cpu / args.polls * 1000, 4),
        "etcd_requests_per_refused_poll": round(sum(requests.values()) / args.polls, 4),
        "etcd_requests_by_method": requests,
        "profile_top_cumulative": top,
    }
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "fleetlock_profile.json"), "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=2)
        print(json.dumps(doc, indent=2))
    else:
        write_json("fleetlock_profile", doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
