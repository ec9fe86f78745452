"""The agent in-process tells people what its cycle does, through a fake of the Notifier port:
drain, reboot, done (released healthy), failure (drain, reboot, post-reboot checks), paused. The
real notifier over apprise and a real receiver: tests/integration/test_notify.py."""

from __future__ import annotations

import pytest

from rebootcoord.core.notices import Severity
from tests.unit.fakes import FakeNodeOps, FakeNotifier
from tests.unit.test_agent import UPDATE, Rig, to_reboot


def rig(**settings: object) -> tuple[Rig, FakeNotifier]:
    notifier = FakeNotifier()
    return Rig(settings=dict(settings), notifier=notifier), notifier


def test_a_cycle_tells_drain_reboot_and_done_once_each_with_their_fields() -> None:
    r, told = rig()
    to_reboot(r)
    assert told.events() == ["drain", "reboot"]
    drain, reboot = told.notices
    assert drain.body == f"n1 (g): draining for a reboot: {UPDATE.reason}"
    assert drain.title == "rebootcoord: n1 drain" and drain.severity is Severity.INFO
    assert reboot.body == f"n1 (g): rebooting from boot boot-1: {UPDATE.reason}"
    r.boot()
    r.until(lambda: not r.holds(), what="the release")
    for _ in range(5):
        r.turn()
    assert told.events() == ["drain", "reboot", "done"]
    done = told.notices[-1]
    assert done.body == "n1 (g): back healthy in boot boot-2; its slot is given back"
    assert done.severity is Severity.SUCCESS


def test_failing_post_reboot_checks_are_a_failure_told_once_and_then_done() -> None:
    r, told = rig()
    to_reboot(r)
    r.check.ok = False
    r.boot()
    for _ in range(30):
        r.turn()
    failures = [n for n in told.notices if n.event == "failure"]
    assert len(failures) == 1, "told once, not at every try of the checks"
    assert "post-reboot checks failed: check: failing" in failures[0].body
    assert "verifying" in failures[0].body and failures[0].severity is Severity.FAILURE
    r.check.ok = True
    r.until(lambda: not r.holds(), what="the release")
    r.turn()
    assert told.events()[-1] == "done"


def test_a_failed_drain_is_a_failure_and_its_abort_is_not_done() -> None:
    r, told = rig()
    r.node = FakeNodeOps(drain_error="evicting web-1: the budget allows no disruption")
    r.restart()
    r.until(lambda: "drain" in r.node.calls, what="the drain")
    r.until(lambda: not r.holds(), what="the slot given back")
    assert told.events() == ["drain", "failure"]
    assert "evicting web-1: the budget allows no disruption" in told.notices[-1].body
    assert "draining" in told.notices[-1].body


def test_a_reboot_that_fails_is_a_failure() -> None:
    r, told = rig()
    r.rebooter.fail = "systemctl reboot: exit status 1"
    r.until(lambda: "failure" in told.events(), what="the failure told")
    failure = told.notices[told.events().index("failure")]
    assert "systemctl reboot: exit status 1" in failure.body and "rebooting" in failure.body
    assert "warn:RebootFailed" in r.node.calls, "and the Node has its Warning Event"
    assert told.events()[: told.events().index("failure")] == ["drain", "reboot"]


def test_a_node_that_pauses_its_group_tells_it() -> None:
    r, told = rig(pause_group_after="60s")
    to_reboot(r)
    r.check.ok = False
    r.boot()
    for _ in range(60):
        if r.store.state.paused is not None:
            break
        r.turn(2.0)
    assert r.store.state.paused is not None
    paused = [n for n in told.notices if n.event == "paused"]
    assert len(paused) == 1 and "n1 paused group g" in paused[0].body
    assert "check: failing" in paused[0].body and paused[0].severity is Severity.WARNING


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        pytest.param(["failure", "done"], ["done"], id="only-done-and-failures"),
        pytest.param([], [], id="none"),
        pytest.param(["drain", "reboot", "done", "failure", "paused"], ["drain", "reboot", "done"], id="all"),
    ],
)
def test_only_the_configured_events_are_told(events: list[str], expected: list[str]) -> None:
    r, told = rig(notify_events=events, notify_templates={"done": "{event}: {node} of {group} in {boot_id}"})
    to_reboot(r)
    r.boot()
    r.until(lambda: not r.holds(), what="the release")
    r.turn()
    assert told.events() == expected
    if "done" in expected:
        assert told.notices[-1].body == "done: n1 of g in boot-2"


def test_no_notifier_no_notices_and_the_cycle_is_the_same() -> None:
    r = Rig()
    to_reboot(r)
    r.boot()
    r.until(lambda: not r.holds(), what="the release")
