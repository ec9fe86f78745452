"""Seeded fault-injection runs of a simulated fleet, each checked against every invariant.

    .venv/bin/python benchmarks/faults.py --backend etcd --runs 10 --seed 1
    .venv/bin/python benchmarks/faults.py --backend kubernetes --runs 5 --seed 1 --nodes 4 --max 2
    .venv/bin/python benchmarks/faults.py --replay 1306148069              # one run, by its seed
    .venv/bin/python benchmarks/faults.py --runs 10 --seed 1 --mutant skip-health-gate  # must fail

Each run draws its faults from its own seed (printed with them, so that any run can be replayed
with ``--replay``): kill -9 of agents in any phase, kill -9 of etcd (or a restart of the API
server), SIGSTOP of an agent for longer than the waiter TTL, a delayed, held, reset or refused
connection between one agent and its backend (toxiproxy), a node whose reboot does not apply its
update, a change of max at run time (tests/support/faults.py). The backend's history, the hosts'
log and the agents' events and logs go to rebootcoord.sim.checker. Prints one line per run and
then JSON (runs, faults by kind, violations by invariant, stuck runs, seeds that failed); writes
it and a plot to benchmarks/out/faults-<backend>.{json,png}. Exit code 0 only when every run
finished with no violation. ``--mutant NAME`` runs agents with a deliberate bug (a copy of the
package, first on their PYTHONPATH; names in tests/support/faults.py): the runner must then fail.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import OUT, summarize, write_json
from tests.support.faults import (
    FAULT_KINDS,
    MUTANTS,
    EtcdEnvironment,
    KubeEnvironment,
    RunResult,
    mutant_tree,
    run_once,
    run_seed,
)
from tests.support.faults import summarize as summarize_runs


def plot(results: list[RunResult], summary: dict[str, Any], backend: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    kinds = [k for k in FAULT_KINDS if summary["faults"].get(k)]
    left.barh(kinds, [summary["faults"][k] for k in kinds], label="planned")
    left.barh(kinds, [summary["faults_fired"].get(k, 0) for k in kinds], label="fired", alpha=0.7)
    left.set_xlabel("faults")
    left.set_title(f"{summary['runs']} runs on {backend}: faults by kind")
    left.legend(loc="lower right")
    seconds = [r.seconds for r in results]
    colors = ["tab:red" if not r.ok else "tab:green" for r in results]
    right.scatter(range(len(results)), seconds, c=colors, s=12)
    violated = sum(1 for r in results if not r.ok)
    right.set_title(f"run time; red: failed ({violated}), violations {sum(summary['violations'].values())}")
    right.set_xlabel("run")
    right.set_ylabel("seconds")
    fig.tight_layout()
    Path(OUT).mkdir(parents=True, exist_ok=True)
    path = str(Path(OUT) / f"faults-{backend}.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["etcd", "kubernetes"], default="etcd")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1, help="the campaign's seed (each run derives its own)")
    parser.add_argument("--replay", type=int, action="append", default=[], metavar="SEED",
                        help="run these run seeds instead (as printed)")  # fmt: skip
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--max", type=int, default=2)
    parser.add_argument("--mutant", choices=sorted(MUTANTS), help="agents with this deliberate bug")
    parser.add_argument("--workdir", help="keep the runs here (default: a temp dir; failing runs are kept)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.nodes < 1 or args.max < 1:
        parser.error("--runs, --nodes and --max must be at least 1")

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix=f"faults-{args.backend}-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    seeds = args.replay or [run_seed(args.seed, i) for i in range(args.runs)]
    mutant = mutant_tree(args.mutant, workdir) if args.mutant else None
    env = EtcdEnvironment(workdir) if args.backend == "etcd" else KubeEnvironment(workdir)
    results: list[RunResult] = []
    t0 = time.monotonic()
    try:
        for i, seed in enumerate(seeds):
            result = run_once(
                env, seed, nodes=args.nodes, max_holders=args.max, workdir=workdir, mutant=mutant,
                log=lambda text: print(text, flush=True),
            )  # fmt: skip
            results.append(result)
            print(f"[{i + 1}/{len(seeds)}] {result.line()}", flush=True)
    finally:
        env.close()
    summary = summarize_runs(results)
    doc = {
        "backend": args.backend,
        "seed": args.seed,
        "replayed": args.replay,
        "nodes": args.nodes,
        "max": args.max,
        "mutant": args.mutant,
        **summary,
        "run_seconds": summarize([r.seconds for r in results]),
        "total_seconds": round(time.monotonic() - t0, 1),
        "workdir": str(workdir),
        "details": [r.to_json() for r in results if not r.ok],
    }
    doc["plot"] = plot(results, summary, args.backend)
    write_json(f"faults-{args.backend}" + (f"-{args.mutant}" if args.mutant else ""), doc)
    return 0 if not summary["failed_seeds"] else 1


if __name__ == "__main__":
    sys.exit(main())
