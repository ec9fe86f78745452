"""Reads an event log (one JSON line per phase change) and checks the invariants of DESIGN.md.

Holding intervals run from a node's ``locked`` event to the ``idle`` event that follows it. Both
carry ``rev``, the backend revision of the acquiring and releasing writes, which orders them
exactly across processes; without revisions the timestamps are used (and are only approximate).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

HOLDING = {"locked", "draining", "rebooting", "verifying", "releasing"}


@dataclass
class Report:
    max_holders: int = 0
    by_revision: bool = True
    reboots: dict[str, int] = field(default_factory=dict)  # node -> boot ID changes seen
    cycles: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # node -> (locked ts, idle ts)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def read_events(path: str) -> list[dict[str, Any]]:
    out = []
    with open(path, encoding="utf-8") as fh:
        for raw in fh:
            if raw.strip():
                out.append(json.loads(raw))
    return out


def check(events: Iterable[dict[str, Any]], *, max_holders: int | None = None) -> Report:
    report = Report()
    by_node: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        by_node[str(event["node"])].append(event)
    boundaries: list[tuple[Any, int, str]] = []
    for node, evs in by_node.items():
        evs.sort(key=lambda e: float(e["ts"]))
        boots: list[str] = []
        for e in evs:
            if not boots or boots[-1] != e["boot_id"]:
                boots.append(e["boot_id"])
        report.reboots[node] = len(dict.fromkeys(boots)) - 1
        start: dict[str, Any] | None = None
        cycles = []
        holding = False
        for e in evs:
            phase = e["phase"]
            if phase in HOLDING and not holding:
                # normally "locked"; after a crash right after acquiring, the first phase logged
                start, holding = e, True
            elif phase == "idle" and holding:
                # "slot released" carries the release revision; an idle after a restart carries
                # the revision the agent saw, which is later: conservative.
                assert start is not None
                boundaries.append((_order(start), +1, node))
                boundaries.append((_order(e), -1, node))
                cycles.append((float(start["ts"]), float(e["ts"])))
                holding, start = False, None
            if holding and phase not in HOLDING and phase != "idle":
                report.problems.append(f"{node}: phase {phase} while holding a slot (ts={e['ts']})")
        if holding and start is not None:
            boundaries.append((_order(start), +1, node))
            boundaries.append(((float("inf"), float("inf")), -1, node))
        report.cycles[node] = cycles
    report.by_revision = all(b[0][0] is not None for b in boundaries if b[0][0] != float("inf"))
    key = (lambda b: (b[0][0], b[1])) if report.by_revision else (lambda b: (b[0][1], b[1]))
    count = 0
    for _, delta, _node in sorted(boundaries, key=key):
        count += delta
        report.max_holders = max(report.max_holders, count)
    if max_holders is not None and report.max_holders > max_holders:
        report.problems.append(f"{report.max_holders} holders at once, above the max of {max_holders}")
    return report


def _order(event: dict[str, Any]) -> tuple[Any, float]:
    rev = event.get("rev")
    return (int(rev) if rev is not None else None, float(event["ts"]))
