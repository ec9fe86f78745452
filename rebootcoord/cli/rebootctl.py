"""``rebootctl``: operators' view of and hand on the semaphore, like ``locksmithctl``.

Also a kubectl plugin (installed as ``kubectl-rebootctl``: ``kubectl rebootctl status``), where
the backend defaults to the Kubernetes Leases. Options go before or after the command, as with
kubectl; given in both places, the one after the command wins.

Exit codes: 0 done; 1 refused (unknown group or holder, no free slot, bad max); 2 usage or
configuration error; 3 backend unreachable; 4 a corrupted semaphore document (status still
shows the rest).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import yaml

from rebootcoord import __version__
from rebootcoord.cli.common import (
    EXIT_CORRUPT,
    EXIT_FAILED,
    EXIT_OK,
    Parser,
    add_completion_parser,
    add_config_flags,
    add_versions,
    completion_script,
    exit_with,
    offer_completions,
    reported,
    settings_from_args,
)
from rebootcoord.cli.wiring import build_semaphore_and_catalog
from rebootcoord.core.bounds import HISTORY_SIZE, MAX_PAUSE_REASON_BYTES, MAX_PAUSE_REASONS, MAX_TEXT_BYTES
from rebootcoord.core.config import KEYS, Settings
from rebootcoord.core.group import BUSY_PHASES, Ending, stored
from rebootcoord.core.rollout import UNLOCKED, Cycle
from rebootcoord.core.semaphore import (
    AGENT,
    FLEETLOCK,
    MANUAL,
    MAX_SLOTS,
    NO_LIMITS,
    GroupView,
    HolderRecord,
    PauseInfo,
)
from rebootcoord.core.types import HOLDER_ID_RE, HolderId, NodeName, Phase
from rebootcoord.daemon.group import GroupClient
from rebootcoord.errors import GroupAbsent, HolderBusy, UsageError
from rebootcoord.ports import GroupCatalog

_CTL = {"group", "backend", "node_name", "kubeconfig", "kube_context", "namespace"}
CTL_KEYS = {k: v for k, v in KEYS.items() if k in _CTL or k.startswith("etcd_")}
# kubectl's spellings for finding the cluster
CTL_ALIASES = {"kube_context": ["--context"], "namespace": ["-n"]}
#: The name of the kubectl plugin's executable (pyproject.toml's [project.scripts]).
PLUGIN = "kubectl-rebootctl"
OUTPUTS = ("table", "json", "yaml")
EXTERNAL = "external"  # kind of a holder without a record of ours (airlock's Zincati nodes)
#: What the KIND column calls each kind of holder (JSON and YAML keep the stored kind).
KIND_LABELS = {AGENT: "agent", FLEETLOCK: "fleetlock", MANUAL: "operator", EXTERNAL: "external"}
#: Groups named when one asked for does not exist.
NAMED_GROUPS = 20


def as_kubectl_plugin(argv0: str | None = None) -> bool:
    """Run as ``kubectl rebootctl``: kubectl runs the plugin's executable by its path."""
    name = os.path.basename(sys.argv[0] if argv0 is None else argv0)
    return name in (PLUGIN, PLUGIN + ".exe")


def _slots(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"got {text!r}, expected a whole number of slots (1 to {MAX_SLOTS})"
        ) from None


def _cycles(text: str) -> int:
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if limit < 1:
        raise argparse.ArgumentTypeError(f"got {text!r}, expected a number of cycles of at least 1")
    return limit


def _global_options(p: argparse.ArgumentParser, *, default: Any) -> None:
    """The options of every command: where the group is, how to print. ``default``: None on the
    top parser, SUPPRESS on each command's copy (a value given before the command stays)."""
    add_config_flags(p, CTL_KEYS, CTL_ALIASES, default=default)
    p.add_argument(
        "-o",
        "--output",
        choices=OUTPUTS,
        default=default if default is argparse.SUPPRESS else "table",
        help="output format of status and history: table (default), json or yaml; times in json "
        "and yaml are RFC 3339 in UTC, durations (*_seconds) are numbers",
    )


def parser(*, plugin: bool | None = None) -> argparse.ArgumentParser:
    """``plugin``: as ``kubectl rebootctl`` (None: as the executable's name says)."""
    plugin = as_kubectl_plugin() if plugin is None else plugin
    backend = (
        "As a kubectl plugin the backend is kubernetes unless --backend, $REBOOTCOORD_BACKEND or "
        "the file says otherwise; -n/--namespace, --context and --kubeconfig find the cluster as "
        "with kubectl. "
        if plugin
        else ""
    )
    p = Parser(
        prog="kubectl rebootctl" if plugin else "rebootctl",
        description="Inspect and steer rebootcoord's reboot semaphore. Options go before or after "
        "the command (after it, they win). " + backend + "Every command but set-max refuses a group "
        "that does not exist, naming the groups that do.",
        epilog="exit codes: 0 done, 1 refused (unknown group or holder, no free slot, bad max), "
        "2 usage/config error, 3 backend unreachable, 4 corrupted document",
    )
    p.add_argument(
        "--version", action="version", version=f"rebootctl {__version__}", help="print the version and exit"
    )
    _global_options(p, default=None)
    p.set_defaults(kubectl_plugin=plugin)
    shared = Parser(add_help=False)
    _global_options(shared, default=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")

    def command(name: str, what: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[shared], help=what, description=what)

    command("status", "show max, holders (id, node, kind, phase, age), waiters, the pause and its reasons")
    lock = command("lock", "take a slot by hand, outside the queue and the pause (the group must exist)")
    lock.add_argument(
        "id",
        nargs="?",
        help="the holder id to lock as: letters, digits, '.', '_', ':' and '-' (default: this node's "
        "holder id)",
    )
    lock.add_argument(
        "--reason",
        default="locked by hand with rebootctl",
        help=f"why, shown by status (any text; kept to {MAX_TEXT_BYTES} bytes)",
    )
    unlock = command(
        "unlock",
        "release a holder's slot (refuses unknown holders, and holders mid-cycle without --force)",
    )
    unlock.add_argument("id", help="the holder whose slot to free, as status shows it")
    unlock.add_argument(
        "--force",
        action="store_true",
        help="also free the slot of an agent that is locked, draining, rebooting or verifying",
    )
    set_max = command(
        "set-max",
        "change the number of slots; creates the group with that many slots if it does not exist "
        "(as the first agent would)",
    )
    set_max.add_argument(
        "max",
        type=_slots,
        help=f"the number of slots: a whole number from 1 to {MAX_SLOTS}, and no fewer than the "
        "current holders",
    )
    pause = command(
        "pause",
        "agents take no new slots until resume; paused already, a new --reason is added to the "
        f"reasons kept (the last {MAX_PAUSE_REASONS})",
    )
    pause.add_argument(
        "--reason",
        default="",
        help=f"why, shown by status (any text; kept to {MAX_PAUSE_REASON_BYTES} bytes, earlier "
        f"reasons to {MAX_TEXT_BYTES}; default: none)",
    )
    command("resume", "let agents take slots again (says so when the group was not paused)")
    history = command("history", "the group's last cycles: node, start, time per phase, outcome, reason")
    history.add_argument(
        "--limit",
        type=_cycles,
        default=20,
        help=f"show the last N cycles, N at least 1 (default 20; the group keeps at most {HISTORY_SIZE})",
    )
    add_completion_parser(sub, "rebootctl")
    add_versions(p, f"rebootctl {__version__}")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    offer_completions(p)
    args = p.parse_args(argv)
    if args.command == "completion":
        sys.stdout.write(completion_script("rebootctl", args.shell))
        return EXIT_OK
    return reported("rebootctl", lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    # A kubectl plugin finds its group where kubectl finds the cluster: in a Lease.
    fallbacks = {"backend": "kubernetes"} if getattr(args, "kubectl_plugin", False) else None
    settings = settings_from_args(args, fallbacks=fallbacks)
    sem, catalog = build_semaphore_and_catalog(settings, retry_for=5.0)
    try:
        try:
            return _run(args, settings, sem)
        except GroupAbsent:
            raise GroupAbsent(_absent(settings, catalog)) from None
    finally:
        sem.close()


def _absent(settings: Settings, catalog: GroupCatalog) -> str:
    """One line: the group asked for does not exist, where it was looked for, and which do."""
    group = settings.identity.group
    if settings.semaphore.backend == "kubernetes":
        where = f"no Lease rebootcoord-{group} in namespace {settings.kube.namespace or '(default)'}"
    else:
        where = f"nothing under etcd prefix {settings.etcd.etcd_key_prefix.strip('/')}/groups/{group}/"
    names = [printable(n) for n in catalog.names(NAMED_GROUPS + 1)]
    if not names:
        there = "no group exists there"
    else:
        more = ", ..." if len(names) > NAMED_GROUPS else ""
        there = "groups there: " + ", ".join(names[:NAMED_GROUPS]) + more
    return f"group {printable(group)} does not exist ({where}); {there} (set-max creates a group)"


def _run(args: argparse.Namespace, settings: Settings, sem: GroupClient) -> int:
    who = f"rebootctl@{settings.identity.node_name}"
    group = settings.identity.group
    match args.command:
        case "status":
            view = sem.read()
            if not stored(view) and not view.waiters:
                raise GroupAbsent(group)
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
                group=group,
                phase=Phase.LOCKED,
                boot_id="",
                acquired_at=now,
                phase_since=now,
                kind=MANUAL,
                reason=args.reason,
                note=f"locked by {who}",
            )
            sem.lock(record.id, record, existing=True)
            print(f"locked: {holder} holds a slot of group {group}")
        case "unlock":
            try:
                ending = Ending(UNLOCKED, time.time(), f"unlocked by {who}")
                freed = sem.unlock(HolderId(args.id), force=args.force, ending=ending, existing=True)
            except HolderBusy as exc:
                print(f"rebootctl: refused: {exc}", file=sys.stderr)
                print(f"rebootctl: `rebootctl unlock --force {args.id}` would free it: {_forced(exc.record)}",
                      file=sys.stderr)  # fmt: skip
                return EXIT_FAILED
            was = f" (it was {freed.phase} on {freed.node})" if freed else ""
            print(f"unlocked: {args.id} released its slot of group {group}{was}")
            if freed is not None and freed.kind != MANUAL and freed.phase in BUSY_PHASES:
                print(f"warning: {_forced(freed)}", file=sys.stderr)
        case "set-max":
            applied = sem.set_max(args.max)
            if applied.before.slots is None:
                print(f"group {group}: created with max {args.max}")
            elif applied.changed:
                print(f"group {group}: max set to {args.max} (was {applied.before.slots.max})")
            else:
                print(f"group {group}: max is {args.max} already: nothing changed")
        case "pause":
            info = PauseInfo(by=who, at=time.time(), reason=args.reason)
            applied = sem.pause(info, existing=True)
            _said_paused(group, applied.before.paused, applied.after.paused, changed=applied.changed)
        case "resume":
            applied = sem.resume(existing=True)
            paused = applied.before.paused
            if paused is None:
                print(f"group {group} was not paused: nothing changed")
            else:
                print(f"group {group} resumed (paused by {printable(paused.by)} since {rfc3339(paused.at)})")
        case "history":
            view = sem.read(queue=False)
            if not stored(view):
                raise GroupAbsent(group)
            _print_history(view, args.output, args.limit)
            return EXIT_CORRUPT if view.corrupt else EXIT_OK
    return EXIT_OK


def _said_paused(group: str, before: PauseInfo | None, after: PauseInfo | None, *, changed: bool) -> None:
    if before is None:
        print(f"group {group} paused: agents take no new slots (holders finish their cycle)")
        return
    since = f"group {group} was already paused by {printable(before.by)} since {rfc3339(before.at)}"
    if changed and after is not None:
        print(f"{since}; reason added ({len(after.notes())} kept): {printable(after.reason)}")
    else:
        print(f"{since}: nothing changed (reason: {printable(before.reason) or 'none'})")


def rfc3339(at: float | None) -> str | None:
    """``at`` (seconds since the epoch) as RFC 3339 in UTC, to the second: 2026-12-07T14:50:03Z.
    None for None, or for a time no calendar holds (a hostile document's)."""
    if at is None:
        return None
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
    except (OverflowError, OSError, ValueError):
        return None


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
            holders.append({"id": holder, "node": None, "phase": None, "kind": EXTERNAL, "age_seconds": None})
            continue
        holders.append(
            {
                "id": holder,
                "node": record.node,
                "phase": record.phase.value,
                "kind": record.kind,
                "acquired_at": rfc3339(record.acquired_at),
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
        "paused": None if view.paused is None else pause_doc(view.paused),
        "holders": holders,
        "waiters": [
            {
                "position": i + 1,
                "id": w.id,
                "node": w.node,
                "since": rfc3339(w.since) if w.since else None,
                "waiting_seconds": round(now - w.since, 1) if w.since else None,
            }
            for i, w in enumerate(view.waiters)
        ],
        "orphaned_records": orphans,
        "rollout": rollout_doc(view, now),
        "corrupt": [str(c) for c in view.corrupt],
        "revision": view.revision,
    }


def pause_doc(paused: PauseInfo) -> dict[str, Any]:
    """The pause: who paused the group and since when, the latest reason, and every reason kept
    (oldest first)."""
    return {
        "by": paused.by,
        "at": rfc3339(paused.at),
        "reason": paused.reason,
        "reasons": [{"by": n.by, "at": rfc3339(n.at), "reason": n.reason} for n in paused.notes()],
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
        "started_at": rfc3339(r.started_at),
        "waves": [str(w) for w in r.plan.sizes],
        "soak_seconds": r.plan.soak,
        "current_wave": r.current + 1,
        "through": r.through,
        "state": state,
        "opened": [
            {
                "wave": i + 1,
                "opened_at": rfc3339(w.opened_at),
                "quota": w.quota,
                "done": w.done,
                "drain_failures": w.failures,
                "last_done_at": rfc3339(w.last_done_at),
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
        "started_at": rfc3339(c.started_at),
        "ended_at": rfc3339(c.ended_at),
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
        started = c["started_at"] or "-"
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
    paused = "no" if doc["paused"] is None else f"yes, by {doc['paused']['by']} since {doc['paused']['at']}"
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
    for note in doc["paused"]["reasons"] if doc["paused"] is not None else ():
        print(f"paused: {printable(note['reason'])} (by {printable(note['by'])}, {note['at']})")
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
        hrows = [["HOLDER", "NODE", "KIND", "PHASE", "AGE", "IN PHASE", "NOTE"]]
        for h in doc["holders"]:
            phase = h["phase"] or "-"  # external: no record, no phase (KIND says whose)
            hrows.append(
                [
                    h["id"],
                    h["node"] or "-",
                    KIND_LABELS.get(h["kind"], h["kind"]),
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
    exit_with(main)


if __name__ == "__main__":
    entrypoint()
