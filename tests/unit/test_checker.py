"""The invariant checker on synthetic runs: a good one passes, and each invariant broken on its own
makes it fail with that invariant's name."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from rebootcoord.sim.checker import (
    NodeVersion,
    RunLog,
    Version,
    check_run,
    group_history,
    lease_history,
    node_history,
)


def rec(phase: str, acquired_at: float = 1.0, **kw: Any) -> dict[str, Any]:
    return {"phase": phase, "acquired_at": acquired_at, "boot_id": "b0", **kw}


def cycle(
    node: str, start: int, *, acquired_at: float, others: frozenset[str] = frozenset()
) -> list[Version]:
    """One holding interval of ``node``, from revision ``start``: locked, draining, rebooting,
    verifying, then released (start + 4)."""
    out = []
    for i, phase in enumerate(["locked", "draining", "rebooting", "verifying"]):
        out.append(Version(start + i, 1, frozenset({node}) | others, {node: rec(phase, acquired_at)}))
    out.append(Version(start + 4, 1, others, {}))
    return out


def good() -> RunLog:
    history = [Version(10, 1), *cycle("a", 11, acquired_at=1.0), *cycle("b", 16, acquired_at=2.0)]
    host = [
        {"ts": 1.0, "node": "a", "event": "armed", "update": "u1"},
        {"ts": 1.0, "node": "b", "event": "armed", "update": "u1"},
        {"ts": 2.0, "node": "a", "event": "reboot_requested", "rev": 13, "update": "u1"},
        {"ts": 3.0, "node": "a", "event": "booted", "rev": 13, "update": "u1", "applied": True},
        {"ts": 5.0, "node": "b", "event": "reboot_requested", "rev": 18, "update": "u1"},
        {"ts": 6.0, "node": "b", "event": "booted", "rev": 18, "update": "u1", "applied": True},
    ]
    agent = []
    for node, base, rev in (("a", 1.0, 11), ("b", 4.0, 16)):
        for i, phase in enumerate(["waiting", "locked", "draining", "rebooting", "verifying", "idle"]):
            event: dict[str, Any] = {"ts": base + i * 0.1, "node": node, "phase": phase}
            if phase == "locked":
                event["rev"] = rev
            if phase == "idle":
                event["rev"] = rev + 4
            agent.append(event)
    nodes = [NodeVersion(5, "a", False), NodeVersion(5, "b", False), NodeVersion(5, "c", True)]
    return RunLog(
        nodes=frozenset({"a", "b"}),
        agent_events=agent,
        host_events=host,
        history=history,
        node_history=nodes,
        agent_logs={"a": "INFO phase idle\n", "b": "WARNING backend unavailable\n"},
        precordoned=frozenset({"c"}),
    )


def test_a_good_run_passes() -> None:
    report = check_run(good())
    assert report.ok, report.problems
    assert report.max_holders == 1 and report.reboots == {"a": 1, "b": 1}


def _host(run: RunLog, fn: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> RunLog:
    return replace(run, host_events=fn([dict(e) for e in run.host_events]))


def two_holders(run: RunLog) -> RunLog:
    history = list(run.history or [])
    history[2] = replace(history[2], holders=frozenset({"a", "b"}))
    return replace(run, history=history)


def boot_after_release(run: RunLog) -> RunLog:
    return _host(
        run, lambda evs: [{**e, "rev": 15} if e["event"] == "booted" and e["node"] == "a" else e for e in evs]
    )


def request_without_slot(run: RunLog) -> RunLog:
    return _host(run, lambda evs: [*evs, {"ts": 9.0, "node": "a", "event": "reboot_requested", "rev": 16}])


def release_in_between(run: RunLog) -> RunLog:
    """a's reboot requested in one holding interval, booted in a later one."""
    history = [*(run.history or []), *cycle("a", 21, acquired_at=7.0)]

    def events(evs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {**e, "rev": 23, "ts": 8.0} if e["event"] == "booted" and e["node"] == "a" else e for e in evs
        ]

    return _host(replace(run, history=history), events)


def released_without_boot(run: RunLog) -> RunLog:
    return _host(run, lambda evs: [e for e in evs if not (e["node"] == "b" and e["event"] == "booted")])


def released_before_repair(run: RunLog) -> RunLog:
    """b's reboot did not apply the update; b released before anyone repaired it."""
    return _host(
        run,
        lambda evs: [
            {**e, "applied": False} if e["event"] == "booted" and e["node"] == "b" else e for e in evs
        ],
    )


def aborted_after_a_reboot_request(run: RunLog) -> RunLog:
    history = list(run.history or [])
    history[9] = replace(history[9], records={"b": rec("verifying", 2.0, abort_reason="drain failed")})
    return released_without_boot(replace(run, history=history))


def aborted_but_left_cordoned(run: RunLog) -> RunLog:
    history = list(run.history or [])
    history[9] = replace(history[9], records={"b": rec("draining", 2.0, abort_reason="drain failed")})
    nodes = [*(run.node_history or []), NodeVersion(17, "b", True)]
    out = _host(
        replace(run, history=history, node_history=nodes),
        lambda evs: [e for e in evs if e["node"] != "b" or e["event"] == "armed"],
    )
    return out


def booted_twice(run: RunLog) -> RunLog:
    extra = {"ts": 3.5, "node": "a", "event": "booted", "rev": 14, "update": "u1", "applied": True}
    return _host(run, lambda evs: [*evs, extra])


def precordoned_uncordoned(run: RunLog) -> RunLog:
    return replace(run, node_history=[*(run.node_history or []), NodeVersion(12, "c", False)])


def ends_holding(run: RunLog) -> RunLog:
    history = list(run.history or [])
    history.append(Version(30, 1, frozenset({"a"}), {"a": rec("locked", 9.0)}))
    return replace(run, history=history)


def ends_not_idle(run: RunLog) -> RunLog:
    return replace(run, agent_events=[*run.agent_events, {"ts": 99.0, "node": "b", "phase": "waiting"}])


def ends_cordoned(run: RunLog) -> RunLog:
    return replace(run, node_history=[*(run.node_history or []), NodeVersion(25, "a", True)])


def traceback(run: RunLog) -> RunLog:
    logs = dict(run.agent_logs)
    logs["a"] += "Traceback (most recent call last):\n  File x\nRecursionError: maximum recursion depth\n"
    return replace(run, agent_logs=logs)


def overlapping_events(run: RunLog) -> RunLog:
    """No backend history: the event log's intervals overlap beyond the max."""
    agent = [dict(e) for e in run.agent_events]
    for e in agent:
        e.pop("rev", None)
        if e["node"] == "b":
            e["ts"] -= 3.1  # b's cycle now starts inside a's
    return replace(run, agent_events=agent, history=None, node_history=None, max_holders=1)


def two_in_a_zone(run: RunLog, zones: tuple[str, str] = ("z1", "z1")) -> RunLog:
    """a and b hold at once (two slots) with one holder allowed per zone."""
    history = list(run.history or [])
    records = {"a": rec("draining", zone=zones[0]), "b": rec("locked", 2.0, zone=zones[1])}
    history[2] = replace(history[2], total=2, holders=frozenset({"a", "b"}), records=records)
    return replace(run, history=history, max_per_zone=1)


def foreign_history(run: RunLog) -> RunLog:
    """A history of another group (or none at all): every other check would pass vacuously."""
    return replace(run, history=[Version(10, 1)])


BROKEN = [
    pytest.param(foreign_history, "history", id="a-history-without-the-nodes"),
    pytest.param(two_holders, "max_holders", id="more-holders-than-slots"),
    pytest.param(two_in_a_zone, "max_per_zone", id="more-holders-in-a-zone-than-its-budget"),
    pytest.param(boot_after_release, "boot_with_slot", id="boot-after-the-release"),
    pytest.param(request_without_slot, "boot_with_slot", id="reboot-request-without-a-slot"),
    pytest.param(release_in_between, "boot_with_slot", id="slot-released-between-request-and-boot"),
    pytest.param(released_without_boot, "release", id="release-without-a-boot"),
    pytest.param(released_before_repair, "release", id="release-before-the-health-gate-could-pass"),
    pytest.param(aborted_after_a_reboot_request, "release", id="abort-that-had-asked-for-a-reboot"),
    pytest.param(aborted_but_left_cordoned, "release", id="abort-that-left-the-node-cordoned"),
    pytest.param(booted_twice, "one_reboot", id="two-boots-for-one-update"),
    pytest.param(precordoned_uncordoned, "cordon_kept", id="someone-elses-cordon-undone"),
    pytest.param(ends_holding, "end_state", id="ends-holding"),
    pytest.param(ends_not_idle, "end_state", id="ends-not-idle"),
    pytest.param(ends_cordoned, "end_state", id="ends-cordoned"),
    pytest.param(traceback, "traceback", id="traceback-in-a-log"),
    pytest.param(overlapping_events, "holders_in_events", id="event-log-overlap"),
]


@pytest.mark.parametrize(("breaks", "invariant"), BROKEN)
def test_each_broken_invariant_is_reported_by_name(
    breaks: Callable[[RunLog], RunLog], invariant: str
) -> None:
    report = check_run(breaks(good()))
    assert invariant in report.by_invariant(), report.problems


def test_holders_of_two_zones_fit_one_per_zone() -> None:
    report = check_run(two_in_a_zone(good(), ("z1", "z2")))
    assert "max_per_zone" not in report.by_invariant(), report.problems
    assert report.max_zone_holders == {"z1": 1, "z2": 1}
    assert check_run(good()).max_zone_holders == {}  # records without a zone count in none


def test_an_abort_that_left_the_node_as_found_passes() -> None:
    run = good()
    history = list(run.history or [])
    history[9] = replace(history[9], records={"b": rec("draining", 2.0, abort_reason="drain failed")})
    nodes = [*(run.node_history or []), NodeVersion(17, "b", True), NodeVersion(19, "b", False)]
    run = _host(
        replace(run, history=history, node_history=nodes),
        lambda evs: [e for e in evs if e["node"] != "b" or e["event"] == "armed"],
    )
    assert check_run(run).ok, check_run(run).problems


def test_a_broken_update_repaired_before_the_release_passes() -> None:
    run = released_before_repair(good())
    repaired = {"ts": 7.0, "node": "b", "event": "update_applied", "update": "u1", "rev": 19}
    assert check_run(_host(run, lambda evs: [*evs, repaired])).ok


def test_histories_from_raw_changes() -> None:
    p = "x/groups/g/v1/"
    slots = p + "semaphore"
    rec_key = p + "rebootcoord/holders/a"
    changes: list[tuple[int, str, bytes | None]] = [
        (5, slots, json.dumps({"total_slots": 1, "holders": []}).encode()),
        (6, p + "rebootcoord/waiters/a", b"{}"),
        (7, slots, json.dumps({"total_slots": 1, "holders": ["a"]}).encode()),
        (7, rec_key, json.dumps(rec("locked")).encode()),
        (8, slots, json.dumps({"total_slots": 1, "holders": []}).encode()),
        (8, rec_key, None),
    ]
    versions = group_history(changes, slots_key=slots, records_prefix=p + "rebootcoord/holders/")
    assert [(v.rev, sorted(v.holders), sorted(v.records)) for v in versions] == [
        (5, [], []),
        (7, ["a"], ["a"]),
        (8, [], []),
    ]
    lease = {
        "metadata": {
            "annotations": {
                "rebootcoord.io/semaphore": json.dumps({"total_slots": 2, "holders": ["n1"]}),
                "rebootcoord.io/holders": json.dumps({"n1": rec("locked")}),
            }
        }
    }
    key = "/registry/leases/ns/rebootcoord-g"
    lv = lease_history(
        [(3, key, json.dumps(lease).encode()), (4, "/registry/leases/ns/other", b"{}")], lease_key=key
    )
    assert [(v.rev, v.total, sorted(v.holders)) for v in lv] == [(3, 2, ["n1"])]
    nv = node_history(
        [
            (2, "/registry/minions/n1", json.dumps({"spec": {"unschedulable": True}}).encode()),
            (9, "/registry/minions/n1", None),
        ],
        nodes_prefix="/registry/minions/",
    )
    assert [(v.rev, v.unschedulable, v.exists) for v in nv] == [(2, True, True), (9, False, False)]
