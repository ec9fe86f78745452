"""``rebootctl``: operators' view of and hand on the semaphore, like ``locksmithctl``.

Exit codes: 0 done; 1 refused (unknown holder, no free slot, bad max); 2 usage or configuration
error; 3 backend unreachable; 4 a corrupted semaphore document (status still shows the rest).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import yaml

from rebootcoord.cli.common import (
    EXIT_CORRUPT,
    EXIT_FAILED,
    EXIT_OK,
    Parser,
    add_config_flags,
    reported,
    settings_from_args,
)
from rebootcoord.cli.wiring import build_semaphore
from rebootcoord.core.config import KEYS, Settings
from rebootcoord.core.group import BUSY_PHASES, Ending
from rebootcoord.core.rollout import UNLOCKED, Cycle
from rebootcoord.core.semaphore import MANUAL, NO_LIMITS, GroupView, HolderRecord, PauseInfo
from rebootcoord.core.types import HOLDER_ID_RE, HolderId, NodeName, Phase
from rebootcoord.errors import HolderBusy, UsageError

_CTL = {"group", "backend", "node_name", "kubeconfig", "kube_context", "namespace"}
CTL_KEYS = {k: v for k, v in KEYS.items() if k in _CTL or k.startswith("etcd_")}
# kubectl's spellings for finding the cluster
CTL_ALIASES = {"kube_context": ["--context"], "namespace": ["-n"]}


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="rebootctl",
        description="Inspect and steer rebootcoord's reboot semaphore.",
        epilog="exit codes: 0 done, 1 refused, 2 usage/config error, 3 backend unreachable, "
        "4 corrupted document",
    )
    add_config_flags(p, CTL_KEYS, CTL_ALIASES)
    p.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    sub.add_parser("status", help="show max, holders (node, phase, age), waiters and pause state")
    lock = sub.add_parser("lock", help="take a slot by hand (default id: this node)")
    lock.add_argument("id", nargs="?")
    lock.add_argument("--reason", default="locked by hand with rebootctl")
    unlock = sub.add_parser(
        "unlock",
        help="release a holder's slot (refuses unknown holders, and holders mid-cycle without --force)",
    )
    unlock.add_argument("id")
    unlock.add_argument(
        "--force",
        action="store_true",
        help="also free the slot of an agent that is locked, draining, rebooting or verifying",
    )
    set_max = sub.add_parser("set-max", help="change the number of slots")
    set_max.add_argument("max", type=int)
    pause = sub.add_parser("pause", help="agents take no new slots until resume")
    pause.add_argument("--reason", default="")
    sub.add_parser("resume", help="let agents take slots again")
    history = sub.add_parser(
        "history", help="the group's last cycles: node, start, time per phase, outcome, reason"
    )
    history.add_argument("--limit", type=int, default=20, help="show the last N cycles (default 20)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return reported("rebootctl", lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    sem = build_semaphore(settings, retry_for=5.0)
    try:
        return _run(args, settings, sem)
    finally:
        sem.close()


def _run(args: argparse.Namespace, settings: Settings, sem: Any) -> int:
    who = f"rebootctl@{settings.identity.node_name}"
    match args.command:
        case "status":
            view = sem.read()
            _print_status(view, args.output)
            return EXIT_CORRUPT if view.corrupt else EXIT_OK
        case "lock":
            holder = args.id or settings.identity.holder
            if not HOLDER_ID_RE.match(holder):
                raise UsageError(f"id {holder!r}: expected letters, digits, '.', '_', ':' and '-'")
            now = time.time()
            record = HolderRecord(
                id=HolderId(holder),
                node=NodeName(args.id or settings.identity.node_name),
                group=settings.identity.group,
                phase=Phase.LOCKED,
                boot_id="",
                acquired_at=now,
                phase_since=now,
                kind=MANUAL,
                reason=args.reason,
                note=f"locked by {who}",
            )
            sem.lock(HolderId(holder), record)
            print(f"locked: {holder} holds a slot of group {settings.identity.group}")
        case "unlock":
            try:
                ending = Ending(UNLOCKED, time.time(), f"unlocked by {who}")
                record = sem.unlock(HolderId(args.id), force=args.force, ending=ending)
            except HolderBusy as exc:
                print(f"rebootctl: refused: {exc}", file=sys.stderr)
                print(f"rebootctl: `rebootctl unlock --force {args.id}` would free it: {_forced(exc.record)}",
                      file=sys.stderr)  # fmt: skip
                return EXIT_FAILED
            was = f" (it was {record.phase} on {record.node})" if record else ""
            print(f"unlocked: {args.id} released its slot of group {settings.identity.group}{was}")
            if record is not None and record.kind != MANUAL and record.phase in BUSY_PHASES:
                print(f"warning: {_forced(record)}", file=sys.stderr)
        case "set-max":
            sem.set_max(args.max)
            print(f"group {settings.identity.group}: max set to {args.max}")
        case "pause":
            sem.pause(PauseInfo(by=who, at=time.time(), reason=args.reason))
            print(
                f"group {settings.identity.group} paused:"
                " agents take no new slots (holders finish their cycle)"
            )
        case "resume":
            sem.resume()
            print(f"group {settings.identity.group} resumed")
        case "history":
            if args.limit < 1:
                raise UsageError(f"--limit {args.limit}: expected a number of cycles of at least 1")
            view = sem.read(queue=False)
            _print_history(view, args.output, args.limit)
            return EXIT_CORRUPT if view.corrupt else EXIT_OK
    return EXIT_OK


def _forced(record: Any) -> str:
    """What freeing the slot of ``record``'s agent mid-cycle does to its node."""
    node = record.node
    match record.phase:
        case Phase.LOCKED | Phase.DRAINING:
            return (f"the agent on {node} stops before any reboot, reports slot_lost, uncordons "
                    f"{node} if it cordoned it, and queues again; the next waiter may take the slot "
                    "at once")  # fmt: skip
        case Phase.REBOOTING:
            return (f"{node} may be going down now; when its agent is back it finds no slot, reports "
                    f"slot_lost and uncordons {node} without waiting for its health checks, while "
                    "another node may already be draining")  # fmt: skip
        case _:
            return (f"{node} rebooted and is being checked; its agent uncordons it without the health "
                    "checks' verdict and reports slot_lost; another node may drain at once")  # fmt: skip


def status_doc(view: GroupView, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    holders: list[dict[str, Any]] = []
    for holder in view.slots.holders if view.slots else ():
        record = view.record(holder)
        if record is None:
            holders.append(
                {"id": holder, "node": None, "phase": None, "kind": "external", "age_seconds": None}
            )
            continue
        holders.append(
            {
                "id": holder,
                "node": record.node,
                "phase": record.phase.value,
                "kind": record.kind,
                "age_seconds": round(now - record.acquired_at, 1),
                "phase_age_seconds": round(now - record.phase_since, 1),
                "boot_id": record.boot_id,
                "cordoned_by_us": record.cordoned,
                "reason": record.reason,
                "note": record.note,
                "wave": record.wave + 1 if record.rollout else None,
            }
        )
    orphans = sorted(set(view.records) - set(view.slots.holders if view.slots else ()))
    return {
        "group": view.group,
        "max": view.slots.max if view.slots else None,
        "held": len(view.slots.holders) if view.slots else 0,
        "members": view.ledger.group_size(now),
        "paused": None
        if view.paused is None
        else {"by": view.paused.by, "at": view.paused.at, "reason": view.paused.reason},
        "holders": holders,
        "waiters": [
            {
                "position": i + 1,
                "id": w.id,
                "node": w.node,
                "waiting_seconds": round(now - w.since, 1) if w.since else None,
            }
            for i, w in enumerate(view.waiters)
        ],
        "orphaned_records": orphans,
        "rollout": rollout_doc(view, now),
        "corrupt": [str(c) for c in view.corrupt],
        "revision": view.revision,
    }


def rollout_doc(view: GroupView, now: float) -> dict[str, Any] | None:
    """The rollout in progress, as the wave rules see it now (core.rollout), or None."""
    r = view.rollout(now)
    if r is None:
        return None  # none, or it ended: the next slot starts a new one
    admitted = view.admission(NO_LIMITS, now)
    state = "open" if admitted.ok else admitted.reason
    return {
        "id": r.id,
        "started_at": r.started_at,
        "waves": [str(w) for w in r.plan.sizes],
        "soak_seconds": r.plan.soak,
        "current_wave": r.current + 1,
        "through": r.through,
        "state": state,
        "opened": [
            {
                "wave": i + 1,
                "opened_at": w.opened_at,
                "quota": w.quota,
                "done": w.done,
                "drain_failures": w.failures,
                "last_done_at": w.last_done_at,
            }
            for i, w in enumerate(r.waves)
        ],
    }


def history_doc(view: GroupView, limit: int) -> list[dict[str, Any]]:
    return [_cycle(c) for c in view.ledger.history[-limit:]]


def _cycle(c: Cycle) -> dict[str, Any]:
    return {
        "node": c.node,
        "id": c.id,
        "kind": c.kind,
        "started_at": c.started_at,
        "ended_at": c.ended_at,
        "seconds": round(c.seconds, 1),
        "phase_seconds": {p: round(t, 1) for p, t in c.phase_seconds().items()},
        "outcome": c.outcome,
        "reason": c.reason,
        "wave": c.wave,
        "zone": c.zone,
    }


def _print_history(view: GroupView, output: str, limit: int) -> None:
    doc: dict[str, Any] = {"group": view.group, "cycles": history_doc(view, limit)}
    if _printed_as_data(doc, output):
        return
    if not doc["cycles"]:
        print(f"group {view.group}: no cycles recorded yet")
        return
    rows = [["NODE", "STARTED", "TOOK", "PHASES", "OUTCOME", "WAVE", "REASON"]]
    for c in doc["cycles"]:
        phases = ", ".join(f"{p} {_age(t)}" for p, t in c["phase_seconds"].items())
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(c["started_at"]))
        wave = c["wave"].rsplit("/", 1)[-1] if c["wave"] else "-"
        rows.append([c["node"], started, _age(c["seconds"]), phases, c["outcome"], wave, c["reason"][:80]])
    print(_table(rows))


SHOWN_PROBLEMS = 10  # corrupted documents listed in the table output


def printable(text: str) -> str:
    """``text`` with control characters (terminal escape sequences, newlines) shown escaped:
    holder ids, notes and reasons come from the backend, where anyone may have written them."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def _printed_as_data(doc: dict[str, Any], output: str) -> bool:
    """``-o json`` and ``-o yaml``: the document as it is; False for the table."""
    if output == "json":
        print(json.dumps(doc, indent=2))
    elif output == "yaml":
        print(yaml.safe_dump(doc, sort_keys=False), end="")
    return output in ("json", "yaml")


def _print_status(view: GroupView, output: str) -> None:
    doc = status_doc(view)
    if _printed_as_data(doc, output):
        return
    rows = [["GROUP", "MAX", "HELD", "WAITING", "PAUSED"]]
    paused = "no" if doc["paused"] is None else f"yes, by {doc['paused']['by']}"
    rows.append(
        [
            doc["group"],
            str(doc["max"] if doc["max"] is not None else "-"),
            str(doc["held"]),
            str(len(doc["waiters"])),
            paused,
        ]
    )
    print(_table(rows))
    if doc["paused"] is not None and doc["paused"]["reason"]:
        print(f"paused: {printable(doc['paused']['reason'])}")
    if doc["rollout"] is not None:
        r = doc["rollout"]
        wave = r["opened"][-1]
        quota = "the rest" if wave["quota"] is None else f"{wave['quota']} in all"
        print(
            f"rollout {r['id']}: wave {r['current_wave']} of {len(r['waves'])} ({', '.join(r['waves'])}), "
            f"{r['through']} node(s) through, this wave lets {quota}; {printable(r['state'])}"
        )
    if doc["holders"]:
        print()
        hrows = [["HOLDER", "NODE", "PHASE", "AGE", "IN PHASE", "NOTE"]]
        for h in doc["holders"]:
            phase = h["phase"] or "(airlock/external)"
            if h["kind"] == MANUAL:
                phase = "(manual lock)"
            hrows.append(
                [
                    h["id"],
                    h["node"] or "-",
                    phase,
                    _age(h["age_seconds"]),
                    _age(h.get("phase_age_seconds")),
                    h.get("note") or "",
                ]
            )
        print(_table(hrows))
    if doc["waiters"]:
        print()
        wrows = [["#", "WAITER", "NODE", "WAITING"]]
        wrows += [
            [str(w["position"]), w["id"], w["node"], _age(w["waiting_seconds"])] for w in doc["waiters"]
        ]
        print(_table(wrows))
    for problem in doc["corrupt"][:SHOWN_PROBLEMS]:
        print(f"\nCORRUPT: {printable(problem)}")
    if len(doc["corrupt"]) > SHOWN_PROBLEMS:
        print(
            f"\n... and {len(doc['corrupt']) - SHOWN_PROBLEMS} more corrupted documents (-o json lists all)"
        )
    for orphan in doc["orphaned_records"]:
        print(f"\nnote: record of {printable(orphan)} has no slot (it will be dropped by its agent)")


def _table(rows: list[list[str]]) -> str:
    rows = [[printable(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
