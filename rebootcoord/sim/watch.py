"""The live view of a simulated run: its progress line, the waves as they open, an operator's
pause and resume, the line stopped, and what the group already holds when the run joins it."""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the fleet imports the backends: only `simulate` pays for them
    from rebootcoord.core.semaphore import GroupView, PauseInfo
    from rebootcoord.sim.fleet import Fleet

#: The phases in the order the progress line counts them.
PHASE_ORDER = [
    "idle",
    "pending",
    "waiting",
    "locked",
    "draining",
    "rebooting",
    "verifying",
    "releasing",
]


def group_in_use(view: GroupView, ours: set[str], now: float) -> str:
    """What the group already has when the run joins it -- holders, waiters, members that are not
    this run's nodes -- in one line ("": nothing, a group of its own)."""
    from rebootcoord.core.rollout import MEMBER_TTL

    holders = [h for h in (view.slots.holders if view.slots else ()) if h not in ours]
    waiting = [w for w in view.waiters if w.id not in ours]
    members = [m for m, seen in view.ledger.members.items() if m not in ours and now - seen < MEMBER_TTL]
    if not (holders or waiting or members):
        return ""
    named = ", ".join(_holder_label(view, h) for h in holders)
    return (
        f"group {view.group} already has {_count(len(holders), 'holder')}"
        + (f" ({named})" if named else "")
        + f", {len(waiting)} waiting, {_count(len(members), 'other member')}: "
        "they take part in this run's budget"
    )


def max_note(view: GroupView, wanted: int) -> str:
    if view.slots is None or view.slots.max == wanted:
        return ""
    return f"; it allows {view.slots.max} holder(s) at once, not --max {wanted} (the group's own max rules)"


def _holder_label(view: GroupView, holder: str) -> str:
    """``node-x:verifying(agent)``, as the progress shows this run's holders, with the kind of
    holder (agent, manual, fleetlock) -- or ``zincati-x(no record)`` for one that writes none
    (airlock's Zincati nodes)."""
    from rebootcoord.core.types import HolderId

    record = view.record(HolderId(holder))
    return f"{holder}:{record.phase.value}({record.kind})" if record else f"{holder}(no record)"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


#: A node that stops the line writes the pause, then its record saying so (core.cycle's
#: PauseGroup): a pause is an operator's once it stayed this long without such a record.
PAUSE_SETTLE = 1.0


class Watch:
    """Watches the run: progress, the waves as they open, an operator's pause and resume, and the
    line stopped, from the group as read."""

    def __init__(
        self,
        fleet: Fleet,
        args: argparse.Namespace,
        *,
        started: float,
        timeout: float,
        stopped: Any,
        zones: dict[str, str],
        ctl: str,
    ) -> None:
        self.fleet, self.args, self.started, self.timeout, self.stopped = (
            fleet,
            args,
            started,
            timeout,
            stopped,
        )
        self.zones = zones
        self.ctl = ctl
        self.tty = sys.stderr.isatty() and not args.quiet
        self.view: GroupView | None = None
        self.waves: dict[tuple[str, int], dict[str, Any]] = {}  # (rollout, wave index) -> as seen
        self.members: dict[tuple[str, int], set[str]] = {}  # (rollout, wave index) -> holders seen
        self.paused: dict[str, Any] | None = None  # the line stopped: the pause that ended the run
        self.pauses: list[dict[str, Any]] = []  # operators' pauses, each with how long it held
        self.paused_seconds = 0.0  # held by the operators' pauses that have ended
        self._pause: tuple[str, float] | None = None  # (by, at) of the pause holding the run now
        self._pause_seen = 0.0  # when the watch first saw it
        self._seen: tuple[tuple[str, float], float] | None = None  # a pause not yet judged, since

    def run(self) -> str:
        """Until the fleet is done ("done"), a node stopped the line ("paused"), "timeout" or
        "interrupted". An operator's pause holds the run, and its timeout, until resumed."""
        last_line = ""
        last_print = 0.0
        while True:
            self.poll()
            now = time.time()
            view = self.view
            if self.fleet.done():
                self._resumed(now)
                self._show(self.line(now), final=True)  # nothing held: the state the run ends in
                return "done"
            if view is not None and view.paused is not None and _line_stopped(view):
                self._resumed(now)
                info = view.paused
                self.paused = {
                    "by": info.by,
                    "reason": info.reason,
                    "at_seconds": round(info.at - self.started, 3),
                }
                self._end_line()
                print(
                    f"rebootcoord simulate: the line is stopped ({info.by} paused the group; the "
                    f"reason is below); unfinished: {_unfinished(self.fleet)}",
                    file=sys.stderr,
                )
                return "paused"
            if view is not None and view.paused is not None:
                self._paused(view.paused, now)
            elif view is not None:
                self._seen = None
                self._resumed(now)
            waited = self.waited(now)
            if self.stopped() or now - self.started - waited > self.timeout:
                self._end_line()
                why = "interrupted" if self.stopped() else f"timed out after {self.timeout:.0f}s"
                if waited and not self.stopped():
                    why += f" (not counting {waited:.0f}s paused)"
                print(f"rebootcoord simulate: {why}; unfinished: {_unfinished(self.fleet)}", file=sys.stderr)
                return "interrupted" if self.stopped() else "timeout"
            line = self.line(now)
            if not self.args.quiet and (self.tty or (line != last_line and now - last_print >= 2)):
                self._show(line)
                last_line, last_print = line, now
            time.sleep(0.25)

    def waited(self, now: float) -> float:
        """Seconds operators' pauses have held the run so far."""
        return self.paused_seconds + (now - self._pause_seen if self._pause is not None else 0.0)

    def _paused(self, info: PauseInfo, now: float) -> None:
        """The group is paused by an operator: say so once a pause, and hold the run."""
        key = (info.by, info.at)
        if self._pause == key:
            return
        if self._seen is None or self._seen[0] != key:
            self._seen = (key, now)
        if now - self._seen[1] < PAUSE_SETTLE:
            return
        self._resumed(now)
        self._pause, self._pause_seen = key, self._seen[1]
        at = round(info.at - self.started, 3)
        self.pauses.append({"by": info.by, "reason": info.reason, "at_seconds": at, "seconds": None})
        self._note(
            f"group {self.fleet.group} paused by {info.by} {self._at(info.at)}: {_reason(info.reason)}; "
            f"the holders finish their cycle, no node takes a slot until `{self.ctl} resume`"
        )

    def _resumed(self, now: float) -> None:
        """The pause holding the run (if any) is over: count how long it held."""
        if self._pause is None:
            return
        held = now - self._pause_seen
        self.paused_seconds += held
        self.pauses[-1]["seconds"] = round(held, 3)
        self._pause = None
        if self.view is not None and self.view.paused is None:
            self._note(
                f"group {self.fleet.group} resumed at +{now - self.started:.1f}s after {held:.1f}s "
                "paused: the run goes on"
            )

    def _at(self, at: float) -> str:
        if at >= self.started:
            return f"at +{at - self.started:.1f}s"
        return f"{self.started - at:.0f}s before the run"

    def line(self, now: float) -> str:
        """The progress line: what the fleet and the group are doing now."""
        fleet, view = self.fleet, self.view
        phases = fleet.phases()
        rebooted = sum(1 for n in fleet.nodes.values() if n.reboots >= fleet.cycles)
        # A node whose simulated host is down shows its last phase, marked: its agent is not running.
        booting = {n.name for n in fleet.nodes.values() if n.rebooting}
        held = set(view.slots.holders) if view is not None and view.slots is not None else set()
        holding = [
            name
            + (f"@{self.zones[name]}" if name in self.zones else "")
            + f":{phase}"
            + ("(host down)" if name in booting else "")
            for name, phase in sorted(phases.items())
            # Its last event may lag the group: a node that gave its slot back holds nothing.
            if phase in PHASE_ORDER[3:] and (view is None or name in held or name in booting)
        ]
        counts = Counter(phases.get(name, "starting") for name in fleet.nodes)
        segments = [f"[{now - self.started:6.1f}s] rebooted {rebooted}/{len(fleet.nodes)}"]
        if view is not None:
            segments.append(_wave_segment(view, now))
            if view.paused is not None:
                info = view.paused
                segments.append(f"PAUSED by {info.by} {self._at(info.at)}: {_reason(info.reason)}")
        segments.append(f"holding: {' '.join(holding) or '-'}")
        tally = [f"{p}={counts[p]}" for p in ("starting", "pending", "waiting", "idle") if counts[p]]
        if view is not None:
            others = sorted(held - set(fleet.nodes))
            if others:
                segments.append("other holders: " + ", ".join(_holder_label(view, h) for h in others))
            waiting = sum(1 for w in view.waiters if w.id not in fleet.nodes)
            if waiting:
                tally.append(f"others-waiting={waiting}")
        segments.append(" ".join(tally))
        return " | ".join(segment for segment in segments if segment)

    def _show(self, line: str, *, final: bool = False) -> None:
        if self.args.quiet:
            return
        if self.tty:
            sys.stderr.write("\r\033[K" + line + ("\n" if final else ""))
            sys.stderr.flush()
        else:
            print(line, file=sys.stderr)

    def poll(self) -> None:
        """Read the group; note each wave the first time it is seen open."""
        try:
            view = self.fleet.semaphore.read()
        except Exception:  # noqa: BLE001 - the backend may be down a moment: the next poll tells
            return
        self.view = view
        for record in view.records.values():
            if record.rollout and view.holds(record.id):
                self.members.setdefault((record.rollout, record.wave), set()).add(record.id)
        rollout = view.ledger.rollout
        if rollout is None:
            return
        for index, wave in enumerate(rollout.waves):
            key = (rollout.id, index)
            entry = {
                "rollout": rollout.id,
                "wave": index + 1,
                "of": len(rollout.plan.sizes),
                "size": str(rollout.plan.sizes[index]),
                "quota": wave.quota,
                "opened_at_seconds": round(wave.opened_at - self.started, 3),
                "through": wave.done,
                "drain_failures": wave.failures,
                "last_through_at_seconds": (
                    round(wave.last_done_at - self.started, 3) if wave.last_done_at is not None else None
                ),
            }
            if key not in self.waves:
                quota = (
                    f"{wave.quota} node(s) through in all" if wave.quota is not None else "every node left"
                )
                self._note(
                    f"{rollout.label(index)} opens at +{entry['opened_at_seconds']:.1f}s "
                    f"(rollout {rollout.id}): {quota}"
                )
            self.waves[key] = entry

    def _note(self, text: str) -> None:
        if self.args.quiet:
            return
        if self.tty:
            sys.stderr.write("\r\033[K")
        print(text, file=sys.stderr)

    def _end_line(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def _line_stopped(view: GroupView) -> bool:
    """The group's pause is a stop-the-line -- a holder whose post-reboot checks kept failing
    paused it, and its record says when (``paused_group_at``) -- not an operator's pause. An
    operator who paused first and a node that stopped the line since: stopped all the same."""
    info = view.paused
    return info is not None and any(
        r.paused_group_at is not None and r.paused_group_at >= info.at and view.holds(r.id)
        for r in view.records.values()
    )


def _reason(reason: str) -> str:
    """A pause's reason on one line of the progress, cut if long."""
    text = " ".join(reason.split()) or "no reason given"
    return text if len(text) <= 120 else text[:119] + "\u2026"


def _wave_segment(view: GroupView, now: float) -> str:
    """``wave 2/3``; ``wave 1/3 soaking, wave 2 in 3s`` while the soak runs after a full wave's
    nodes are all back (core.rollout.admit's rule: a wave is full when as many nodes went through
    it and the earlier ones as its quota); "" outside a rollout."""
    from rebootcoord.core.semaphore import in_flight

    rollout = view.rollout(now)
    if rollout is None:
        return ""
    label = f"wave {rollout.current + 1}/{len(rollout.plan.sizes)}"
    wave = rollout.waves[-1]
    busy = in_flight(view.slots, view.records, rollout.id)
    if rollout.last or busy or wave.quota is None or rollout.through < wave.quota:
        return label
    opens_at = (wave.last_done_at or wave.opened_at) + rollout.plan.soak
    if now >= opens_at:
        return label
    return f"{label} soaking, wave {rollout.current + 2} in {math.ceil(opens_at - now)}s"


def _unfinished(fleet: Fleet) -> str:
    phases = fleet.phases()
    rest = [
        f"{n.name}({phases.get(n.name, 'starting')}, {n.reboots} reboots)"
        for n in fleet.nodes.values()
        if n.reboots < fleet.cycles
    ]
    return ", ".join(rest) or "all rebooted; slots not yet released"
