"""Stop the line: how long from a failed post-reboot gate to the group paused, and to the others
standing still. A simulated fleet on etcd: the first node comes back from its reboot with a check
that fails; ``pause_group_after`` later its agent pauses the group.

Per run, from the agents' event log and the pause marker:

- ``gate_to_pause``: the sick node entering ``verifying`` (back from its reboot, its checks about
  to fail) to the pause marker's time; ``pause_group_after`` is part of it by design, so
  ``overshoot`` is what the coordinator adds on top (its verify interval and one write);
- ``taken_after_pause``: slots taken in the five seconds after the pause (the pause is one write
  that every take() compares against: none).

    python benchmarks/stop_the_line.py [--runs 5] [--nodes 4] [--pause-after 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import OUT, summarize, write_json
from rebootcoord.sim.checker import read_jsonl
from rebootcoord.sim.etcd_server import EtcdServer
from rebootcoord.sim.fleet import Fleet

SICK = "node-1"


def one_run(run_dir: str, endpoint: str, i: int, nodes: int, pause_after: float) -> dict[str, float]:
    names = [f"node-{k}" for k in range(1, nodes + 1)]
    fleet = Fleet(
        run_dir, nodes=nodes, endpoint=endpoint, max_holders=2, reboot_seconds=0.5, node_names=names,
        arm=False,
        agent_config={"etcd_key_prefix": f"bench-stop-{i}", "pause_group_after": f"{pause_after}s",
                      "verify_interval": "1s"},
        node_config={SICK: {"health_checks": [
            {"type": "command", "name": "app", "argv": ["test", "-e", "{node_dir}/healthy"]}]}},
    )  # fmt: skip
    with fleet:
        fleet.arm_sentinel(SICK, "update-1")
        deadline = time.time() + 60
        while not fleet.semaphore.read(queue=False).holds(SICK) and time.time() < deadline:
            time.sleep(0.1)
        for name in names[1:]:
            fleet.arm_sentinel(name, "update-1")
        paused = None
        deadline = time.time() + 120
        while paused is None and time.time() < deadline:
            paused = fleet.semaphore.read(queue=False).paused
            time.sleep(0.1)
        if paused is None:
            raise SystemExit("the group was never paused")
        time.sleep(5)
        events = read_jsonl(fleet.events_file)
    back = min(e["ts"] for e in events if e["node"] == SICK and e["phase"] == "verifying")
    return {
        "gate_to_pause": paused.at - back,
        "overshoot": paused.at - back - pause_after,
        "taken_after_pause": float(sum(1 for e in events if e["phase"] == "locked" and e["ts"] > paused.at)),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--pause-after", type=float, default=3.0)
    args = p.parse_args()
    runs = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-stop-") as tmp,
        EtcdServer(data_dir=os.path.join(tmp, "etcd")) as etcd,
    ):
        for i in range(args.runs):
            runs.append(one_run(os.path.join(tmp, f"run{i}"), etcd.endpoint, i, args.nodes, args.pause_after))
    doc = {
        "benchmark": "stop_the_line",
        "pause_group_after_seconds": args.pause_after,
        "nodes": args.nodes,
        "runs": runs,
        **{k: summarize([r[k] for r in runs]) for k in runs[0]},
    }
    write_json("stop_the_line", doc)
    plot(runs, args.pause_after)


def plot(runs: list[dict[str, float]], pause_after: float) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    xs = list(range(1, len(runs) + 1))
    ax.bar(xs, [r["gate_to_pause"] for r in runs], width=0.6, label="gate failing to group paused")
    ax.axhline(pause_after, color="grey", linestyle="--", label=f"pause_group_after ({pause_after:g}s)")
    ax.set_xlabel("run")
    ax.set_ylabel("seconds")
    ax.set_title("Stop the line: from a failed post-reboot gate to the group paused")
    ax.legend()
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "stop_the_line.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
