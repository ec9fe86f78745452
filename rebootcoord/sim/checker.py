"""The invariants of DESIGN.md, checked from what happened rather than from what the agents say.

A run leaves three records, and the checker reads all of them:

- the backend's own history of the group (:class:`Version`): every revision of the semaphore
  document and of the holder records -- on etcd replayed by a watch from the run's first revision,
  on Kubernetes every resourceVersion of the group's Lease replayed from the cluster's etcd --
  and, on Kubernetes, every revision of the Nodes (:class:`NodeVersion`), in the same revision
  order (a Lease's resourceVersion is the etcd revision of its write);
- the hosts' log, written by the simulator (``Fleet``), not by the agents: each reboot request and
  each boot with the backend revision the host read at that moment, whether the reboot applied the
  update, when a broken update was repaired, and the faults a runner injected;
- the agents' event log (one JSON line per phase change) and their log files.

The invariants, each with the name a violation is reported under:

``max_holders``      holders never exceed the document's total_slots, at any revision (so a
                     run-time set-max is honoured)
``boot_with_slot``   a node's boot ID changes only while it holds a slot: it holds at the revision
                     its host read when the reboot was requested and when it booted, in one
                     holding interval
``release``          every release follows a boot in its holding interval and the update applied
                     (the post-reboot gate could pass), or is an abort: the record says why, no
                     reboot was requested, and the node is as it was found
``one_reboot``       no node boots twice for one update
``cordon_kept``      a node cordoned before the run by someone else stays cordoned
``end_state``        every node ends idle (no slot, no record, its last phase idle) and
                     schedulable unless someone else cordoned it
``traceback``        no traceback in an agent's log
``max_per_zone``     with a zone budget (max_holders_per_zone), the holders whose record names
                     one zone never exceed it, at any revision
``holders_in_events`` without a backend history, the holding intervals of the event log never
                     overlap beyond the max (the weaker, older check)
``history``          the history is whole: every node that booted appears among the holders (an
                     empty or foreign history would let every other check pass)

Pure apart from reading files: the histories are handed in.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

HOLDING = {"locked", "draining", "rebooting", "verifying", "releasing"}
INVARIANTS = (
    "max_holders",
    "max_per_zone",
    "boot_with_slot",
    "release",
    "one_reboot",
    "cordon_kept",
    "end_state",
    "traceback",
    "holders_in_events",
    "history",
)
_TRACEBACK = re.compile(r"Traceback \(most recent call last\)")


@dataclass(frozen=True)
class Version:
    """The group's document at one revision."""

    rev: int
    total: int | None  # total_slots; None: no semaphore document (yet)
    holders: frozenset[str] = frozenset()
    records: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    corrupt: str = ""


@dataclass(frozen=True)
class NodeVersion:
    rev: int
    node: str
    unschedulable: bool
    exists: bool = True


@dataclass(frozen=True)
class Violation:
    invariant: str
    node: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.invariant}] {self.node}: {self.detail}"


@dataclass
class RunLog:
    """Everything a run left behind. ``history`` None: the backend's history is not available."""

    nodes: frozenset[str]
    agent_events: Sequence[Mapping[str, Any]] = ()
    host_events: Sequence[Mapping[str, Any]] = ()
    history: Sequence[Version] | None = None
    node_history: Sequence[NodeVersion] | None = None
    agent_logs: Mapping[str, str] = field(default_factory=dict)
    precordoned: frozenset[str] = frozenset()
    max_holders: int | None = None  # for the event-log check when there is no history
    max_per_zone: int | None = None  # the zone budget (None: none); judged from the history
    finished: bool = True  # False: the run timed out; end-state is not judged


@dataclass
class Report:
    violations: list[Violation] = field(default_factory=list)
    max_holders: int = 0  # most holders at once (history, else the event log)
    max_zone_holders: dict[str, int] = field(default_factory=dict)  # zone -> most at once (history)
    by_revision: bool = True
    reboots: dict[str, int] = field(default_factory=dict)  # node -> boots seen
    cycles: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # (locked ts, idle ts)

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def problems(self) -> list[str]:
        return [str(v) for v in self.violations]

    def by_invariant(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for v in self.violations:
            counts[v.invariant] += 1
        return dict(counts)


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """The JSON lines of a file; a torn last line (a writer killed mid-write) is skipped."""
    out = []
    try:
        with open(path, encoding="utf-8") as fh:
            for raw in fh:
                if raw.strip():
                    try:
                        out.append(json.loads(raw))
                    except ValueError:
                        continue
    except FileNotFoundError:
        pass
    return out


read_events = read_jsonl


# ----------------------------------------------------------------------------------------------
# Histories from raw changes (revision, key, value or None)


def group_history(
    changes: Iterable[tuple[int, str, bytes | None]], *, slots_key: str, records_prefix: str
) -> list[Version]:
    """Versions of an etcd group (airlock's semaphore key, our records beside it)."""
    state: dict[str, bytes] = {}
    versions: list[Version] = []
    for rev, batch in _batches(changes):
        touched = False
        for key, value in batch:
            if key == slots_key or key.startswith(records_prefix):
                touched = True
                if value is None:
                    state.pop(key, None)
                else:
                    state[key] = value
        if touched:
            versions.append(_etcd_version(rev, state, slots_key, records_prefix))
    return versions


def _etcd_version(rev: int, state: Mapping[str, bytes], slots_key: str, records_prefix: str) -> Version:
    records: dict[str, Mapping[str, Any]] = {}
    corrupt = []
    for key, value in state.items():
        if key.startswith(records_prefix):
            doc = _json(value)
            if isinstance(doc, dict):
                records[key[len(records_prefix) :]] = doc
            else:
                corrupt.append(key)
    total, holders, bad = _slots(state.get(slots_key))
    return Version(rev, total, holders, records, "; ".join([*corrupt, *bad]))


def lease_history(changes: Iterable[tuple[int, str, bytes | None]], *, lease_key: str) -> list[Version]:
    """Versions of a group's Lease, from the JSON the API server stored in etcd."""
    versions = []
    for rev, batch in _batches(changes):
        for key, value in batch:
            if key != lease_key:
                continue
            if value is None:
                versions.append(Version(rev, None))
                continue
            lease = _json(value)
            annotations = ((lease or {}).get("metadata") or {}).get("annotations") or {}
            total, holders, bad = _slots(str(annotations.get("rebootcoord.io/semaphore", "")).encode())
            records = _json(str(annotations.get("rebootcoord.io/holders", "{}")).encode())
            if not isinstance(records, dict):
                bad.append("holders annotation")
                records = {}
            versions.append(Version(rev, total, holders, records, "; ".join(bad)))
    return versions


def node_history(changes: Iterable[tuple[int, str, bytes | None]], *, nodes_prefix: str) -> list[NodeVersion]:
    out = []
    for rev, batch in _batches(changes):
        for key, value in batch:
            if not key.startswith(nodes_prefix):
                continue
            name = key[len(nodes_prefix) :]
            if value is None:
                out.append(NodeVersion(rev, name, False, exists=False))
                continue
            node = _json(value) or {}
            out.append(NodeVersion(rev, name, bool((node.get("spec") or {}).get("unschedulable"))))
    return out


def _batches(
    changes: Iterable[tuple[int, str, bytes | None]],
) -> list[tuple[int, list[tuple[str, bytes | None]]]]:
    grouped: dict[int, list[tuple[str, bytes | None]]] = defaultdict(list)
    for rev, key, value in changes:
        grouped[rev].append((key, value))
    return sorted(grouped.items())


def _json(raw: bytes | None) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _slots(raw: bytes | None) -> tuple[int | None, frozenset[str], list[str]]:
    if raw is None:
        return None, frozenset(), []
    doc = _json(raw)
    if not isinstance(doc, dict) or not isinstance(doc.get("total_slots"), int):
        return None, frozenset(), ["semaphore document"]
    holders = doc.get("holders") or []
    if not isinstance(holders, list):
        return int(doc["total_slots"]), frozenset(), ["semaphore holders"]
    return int(doc["total_slots"]), frozenset(str(h) for h in holders), []


# ----------------------------------------------------------------------------------------------
# The check


def check_run(run: RunLog) -> Report:
    report = Report()
    _event_intervals(run, report)
    if run.history is not None:
        _check_history(run, report)
    elif run.max_holders is not None and report.max_holders > run.max_holders:
        report.violations.append(
            Violation(
                "holders_in_events",
                "*",
                f"{report.max_holders} holders at once in the event log, above the max of {run.max_holders}",
            )
        )
    _check_boots(run, report)
    if run.node_history is not None:
        _check_cordons(run, report)
    if run.finished:
        _check_end(run, report)
    for node, text in run.agent_logs.items():
        if _TRACEBACK.search(text):
            line = next((ln for ln in reversed(text.splitlines()) if ln.strip()), "")
            report.violations.append(Violation("traceback", node, f"a traceback in its log: {line[:200]}"))
    return report


def check(events: Iterable[Mapping[str, Any]], *, max_holders: int | None = None) -> Report:
    """The event log alone (no backend history): holding intervals and phases."""
    evs = list(events)
    nodes = frozenset(str(e["node"]) for e in evs)
    return check_run(RunLog(nodes=nodes, agent_events=evs, max_holders=max_holders, finished=False))


def _event_intervals(run: RunLog, report: Report) -> None:
    """Holding intervals from the event log: ``locked`` to the next ``idle``, ordered by the backend
    revisions they carry (timestamps where they carry none)."""
    by_node: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for event in run.agent_events:
        by_node[str(event["node"])].append(event)
    boundaries: list[tuple[tuple[Any, float], int, str]] = []
    for node, unordered in by_node.items():
        evs = sorted(unordered, key=lambda e: float(e["ts"]))
        start: Mapping[str, Any] | None = None
        cycles = []
        for e in evs:
            phase = e["phase"]
            if phase in HOLDING and start is None:
                start = e
            elif phase == "idle" and start is not None:
                boundaries.append((_order(start), +1, node))
                boundaries.append((_order(e), -1, node))
                cycles.append((float(start["ts"]), float(e["ts"])))
                start = None
        if start is not None:
            boundaries.append((_order(start), +1, node))
            boundaries.append(((float("inf"), float("inf")), -1, node))
        report.cycles[node] = cycles
    report.by_revision = all(b[0][0] is not None for b in boundaries if b[0][0] != float("inf"))
    key = (lambda b: (b[0][0], b[1])) if report.by_revision else (lambda b: (b[0][1], b[1]))
    count = 0
    for _, delta, _node in sorted(boundaries, key=key):
        count += delta
        report.max_holders = max(report.max_holders, count)


def _order(event: Mapping[str, Any]) -> tuple[Any, float]:
    rev = event.get("rev")
    return (int(rev) if rev is not None else None, float(event["ts"]))


@dataclass
class _Interval:
    node: str
    acquired: int  # revision of the version where the node entered the holders
    released: int | None  # revision where it left them; None: held at the end
    acquired_at: Any  # the record's acquired_at (None: no record of ours, e.g. airlock's)
    last_record: Mapping[str, Any] | None


def _intervals(history: Sequence[Version], nodes: frozenset[str]) -> list[_Interval]:
    out: list[_Interval] = []
    open_: dict[str, _Interval] = {}
    for v in history:
        for node in nodes:
            if node in v.holders and node not in open_:
                record = v.records.get(node)
                open_[node] = _Interval(node, v.rev, None, (record or {}).get("acquired_at"), record)
            elif node in v.holders:
                if node in v.records:
                    open_[node].last_record = v.records[node]
            elif node in open_:
                interval = open_.pop(node)
                interval.released = v.rev
                out.append(interval)
    return out + list(open_.values())


def _check_history(run: RunLog, report: Report) -> None:
    assert run.history is not None
    seen = frozenset().union(*(v.holders for v in run.history)) if run.history else frozenset()
    booted = {str(e.get("node")) for e in run.host_events if e.get("event") == "booted"}
    for node in sorted(booted & run.nodes - seen):
        report.violations.append(
            Violation(
                "history",
                node,
                "booted, but never a holder in the backend's history: the history is not whole",
            )
        )
    most = 0
    told: set[tuple[str, frozenset[str]]] = set()
    for v in run.history:
        most = max(most, len(v.holders))
        _check_zones(run, report, v, told)
        if v.total is not None and len(v.holders) > v.total:
            report.violations.append(
                Violation(
                    "max_holders",
                    ",".join(sorted(v.holders)),
                    f"{len(v.holders)} holders above total_slots {v.total} at revision {v.rev}",
                )
            )
    report.max_holders = most


def _check_zones(run: RunLog, report: Report, v: Version, told: set[tuple[str, frozenset[str]]]) -> None:
    """The holders of ``v`` per zone, from their records (a holder without a zone counts in none);
    one violation per zone and set of holders over its budget (``told``: those reported)."""
    zones: dict[str, list[str]] = defaultdict(list)
    for holder in v.holders:
        zone = (v.records.get(holder) or {}).get("zone")
        if isinstance(zone, str) and zone:
            zones[zone].append(holder)
    for zone, holders in zones.items():
        report.max_zone_holders[zone] = max(report.max_zone_holders.get(zone, 0), len(holders))
        if run.max_per_zone is not None and len(holders) > run.max_per_zone:
            if (zone, frozenset(holders)) in told:
                continue
            told.add((zone, frozenset(holders)))
            report.violations.append(
                Violation(
                    "max_per_zone",
                    ",".join(sorted(holders)),
                    f"{len(holders)} holders in zone {zone} above max_holders_per_zone "
                    f"{run.max_per_zone} from revision {v.rev}",
                )
            )


def _holding_at(history: Sequence[Version], node: str, rev: int) -> Version | None:
    """The version in force at ``rev`` if the node held a slot in it."""
    current = None
    for v in history:
        if v.rev > rev:
            break
        current = v
    return current if current is not None and node in current.holders else None


def _check_boots(run: RunLog, report: Report) -> None:
    requests: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    boots: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    applied: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for e in run.host_events:
        node = str(e.get("node", ""))
        kind = e.get("event")
        if kind == "reboot_requested":
            requests[node].append(e)
        elif kind == "booted":
            boots[node].append(e)
        elif kind == "update_applied":
            applied[node].append(e)
    for node in run.nodes:
        report.reboots[node] = len(boots[node])
        per_update: dict[str, int] = defaultdict(int)
        for b in boots[node]:
            per_update[str(b.get("update"))] += 1
        for update, count in per_update.items():
            if count > 1 and update != "None":
                report.violations.append(
                    Violation("one_reboot", node, f"booted {count} times for update {update}")
                )
    if run.history is None:
        return
    history = run.history
    for node in run.nodes:
        for e in requests[node] + boots[node]:
            rev = e.get("rev")
            what = "the reboot request" if e["event"] == "reboot_requested" else "the boot"
            if rev is None:
                report.violations.append(
                    Violation("boot_with_slot", node, f"{what} has no backend revision to check")
                )
                continue
            if _holding_at(history, node, int(rev)) is None:
                report.violations.append(
                    Violation("boot_with_slot", node, f"{what} came while holding no slot (revision {rev})")
                )
        for b in boots[node]:
            request = max(
                (r for r in requests[node] if float(r["ts"]) <= float(b["ts"])),
                key=lambda r: float(r["ts"]),
                default=None,
            )
            if request is None or request.get("rev") is None or b.get("rev") is None:
                continue
            held_then = _holding_at(history, node, int(request["rev"]))
            held_now = _holding_at(history, node, int(b["rev"]))
            if held_then is not None and held_now is not None:
                before = (held_then.records.get(node) or {}).get("acquired_at")
                after = (held_now.records.get(node) or {}).get("acquired_at")
                if before != after:
                    report.violations.append(
                        Violation(
                            "boot_with_slot",
                            node,
                            f"the slot held at the boot (revision {b['rev']}) is not the one held at the "
                            f"request (revision {request['rev']}): it was released in between",
                        )
                    )
    nodes_now = _node_states(run.node_history)
    for interval in _intervals(history, run.nodes):
        if interval.released is None or interval.acquired_at is None:
            continue  # held at the end (end_state judges), or not one of our agents' slots
        _check_release(report, interval, boots=boots, requests=requests, applied=applied, nodes_now=nodes_now)


def _check_release(
    report: Report,
    interval: _Interval,
    *,
    boots: Mapping[str, list[Mapping[str, Any]]],
    requests: Mapping[str, list[Mapping[str, Any]]],
    applied: Mapping[str, list[Mapping[str, Any]]],
    nodes_now: Any,
) -> None:
    node, lo, hi = interval.node, interval.acquired, interval.released
    assert hi is not None

    def within(e: Mapping[str, Any]) -> bool:
        return e.get("rev") is not None and lo <= int(e["rev"]) < hi

    booted = [b for b in boots[node] if within(b)]
    if booted:
        boot = booted[-1]
        ok = bool(boot.get("applied")) or any(
            within(a) and int(a["rev"]) >= int(boot["rev"]) for a in applied[node]
        )
        if not ok:
            report.violations.append(
                Violation(
                    "release",
                    node,
                    f"released at revision {hi} after a boot that did not apply update "
                    f"{boot.get('update')}, before it was repaired: the post-reboot gate cannot have passed",
                )
            )
        return
    record = interval.last_record or {}
    asked = [r for r in requests[node] if within(r)]
    if not record.get("abort_reason") or asked:
        why = "a reboot was requested" if asked else "its record gives no abort reason"
        report.violations.append(
            Violation("release", node, f"released at revision {hi} without a boot in its interval ({why})")
        )
        return
    if nodes_now is not None:
        before = nodes_now(node, lo - 1)
        after = nodes_now(node, hi)
        if before is not None and after is not None and before != after:
            report.violations.append(
                Violation(
                    "release",
                    node,
                    f"aborted, but unschedulable={after} at revision {hi} (found unschedulable={before})",
                )
            )


def _node_states(history: Sequence[NodeVersion] | None) -> Any:
    if history is None:
        return None
    by_node: dict[str, list[NodeVersion]] = defaultdict(list)
    for v in history:
        by_node[v.node].append(v)

    def at(node: str, rev: int) -> bool | None:
        state = None
        for v in by_node.get(node, []):
            if v.rev > rev:
                break
            state = v.unschedulable
        return state

    return at


def _check_cordons(run: RunLog, report: Report) -> None:
    assert run.node_history is not None
    cordoned: set[str] = set()  # from the first revision that shows someone else's cordon
    for v in run.node_history:
        if v.node not in run.precordoned or not v.exists:
            continue
        if v.unschedulable:
            cordoned.add(v.node)
        elif v.node in cordoned:
            report.violations.append(
                Violation("cordon_kept", v.node, f"cordoned by someone else, uncordoned at revision {v.rev}")
            )


def _check_end(run: RunLog, report: Report) -> None:
    last_phase: dict[str, str] = {}
    for e in sorted(run.agent_events, key=lambda e: float(e["ts"])):
        last_phase[str(e["node"])] = str(e["phase"])
    final = run.history[-1] if run.history else None
    for node in sorted(run.nodes):
        if last_phase.get(node, "idle") != "idle":
            report.violations.append(
                Violation("end_state", node, f"its last phase is {last_phase[node]}, not idle")
            )
        if final is not None and (node in final.holders or node in final.records):
            report.violations.append(
                Violation("end_state", node, f"still holds a slot or a record at revision {final.rev}")
            )
    if run.node_history is not None:
        last = {nv.node: nv for nv in run.node_history}
        for node in sorted(run.nodes - run.precordoned):
            found = last.get(node)
            if found is not None and found.exists and found.unschedulable:
                report.violations.append(Violation("end_state", node, "left cordoned"))
