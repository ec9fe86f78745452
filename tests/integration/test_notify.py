"""Notifications through the real apprise to a real HTTP receiver on loopback (apprise's json://
and form:// webhooks), for a cycle of the real agent in-process (fakes for the host's ports, as
tests/unit/test_agent.py): the message arrives with its fields; a receiver that is down or hangs
costs the cycle nothing, its failures are counted; no part of a URL's secrets reaches the log."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from rebootcoord.adapters.notify import AppriseNotifier
from rebootcoord.cli.main import main
from rebootcoord.cli.wiring import build_notifier
from rebootcoord.core.config import load_settings
from rebootcoord.core.notices import Severity, Templates, render
from rebootcoord.daemon.metrics import Metrics
from rebootcoord.ports import Notifier
from tests.conftest import wait_for
from tests.support.webhook import Receiver, Stuck, closed_port, hanging, receiving
from tests.unit.test_agent import UPDATE, Rig, to_reboot

PASSWORD = "pw-Hunter2xyz"
TOKEN = "T0kenInThePath"
QUERY_TOKEN = "qT0kenInTheQuery"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as r:
        yield r


@pytest.fixture
def stuck() -> Iterator[Stuck]:
    with hanging() as receiver:
        yield receiver


def secret_url(port: int, scheme: str = "json") -> str:
    return f"{scheme}://bot:{PASSWORD}@127.0.0.1:{port}/hooks/{TOKEN}?-token={QUERY_TOKEN}"


@dataclass
class Wired:
    notifier: Notifier
    registry: CollectorRegistry

    def count(self, event: str, outcome: str) -> float:
        value = self.registry.get_sample_value(
            "rebootcoord_notifications_total", {"event": event, "outcome": outcome}
        )
        return value or 0.0


def wired(urls: list[str], **keys: object) -> Wired:
    """The notifier as the composition root builds it, with the agent's metrics."""
    settings = load_settings(file_data={"notify_urls": urls, **keys}, fallbacks={"node_name": "n1"})
    registry = CollectorRegistry()
    notifier = build_notifier(settings, Metrics(registry, node="n1", group="g"))
    assert notifier is not None
    return Wired(notifier, registry)


def cycle(notifier: Notifier) -> Rig:
    """One whole cycle of the agent, drain to release, with this notifier."""
    rig = Rig(notifier=notifier)
    to_reboot(rig)
    rig.boot()
    rig.until(lambda: not rig.holds() and rig.record() is None, what="the slot given back")
    return rig


def test_a_cycle_of_the_agent_posts_drain_reboot_and_done_with_their_fields(receiver: Receiver) -> None:
    w = wired([secret_url(receiver.port)])
    cycle(w.notifier)
    got = receiver.wait(3)
    w.notifier.close(10)
    assert [g["data"]["title"] for g in got] == [
        "rebootcoord: n1 drain",
        "rebootcoord: n1 reboot",
        "rebootcoord: n1 done",
    ]
    drain, reboot, done = (g["data"] for g in got)
    assert drain["message"] == f"n1 (g): draining for a reboot: {UPDATE.reason}"
    assert reboot["message"] == f"n1 (g): rebooting from boot boot-1: {UPDATE.reason}"
    assert done["message"] == "n1 (g): back healthy in boot boot-2; its slot is given back"
    assert [d["type"] for d in (drain, reboot, done)] == ["info", "info", "success"]
    # The URL's parts went where they belong: the path, the query, basic auth.
    assert got[0]["path"] == f"/hooks/{TOKEN}?token={QUERY_TOKEN}"
    assert got[0]["auth"] and got[0]["auth"].startswith("Basic ")
    assert [w.count(e, "sent") for e in ("drain", "reboot", "done")] == [1, 1, 1]
    assert w.count("failure", "sent") == 0


def test_a_form_webhook_gets_the_same_notice(receiver: Receiver) -> None:
    notifier = AppriseNotifier([f"form://127.0.0.1:{receiver.port}/reboots"], timeout=5)
    notice = render(
        Templates(failure="{node} {phase}: {reason:.11}"),
        "failure",
        node="n7",
        group="g",
        phase="draining",
        reason="evicting web-1: the budget allows no disruption",
        boot_id="b1",
    )
    notifier.notify(notice)
    [got] = receiver.wait(1)
    notifier.close(10)
    assert got["path"] == "/reboots"
    assert got["data"]["message"] == "n7 draining: evicting we"
    assert got["data"]["type"] == Severity.FAILURE.value


@pytest.mark.parametrize("receiver_state", ["down", "hanging"])
def test_a_receiver_down_or_hanging_costs_the_cycle_nothing_and_is_counted(
    receiver_state: str,
    stuck: Stuck,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # apprise's and urllib3's most talkative lines too
    bad = closed_port() if receiver_state == "down" else stuck.port
    w = wired([secret_url(bad), secret_url(receiver.port, "form")], notify_timeout="1s")
    rig = cycle(w.notifier)
    # The cycle is over: the slot given back, the reboot asked once, whatever the receiver does.
    assert rig.rebooter.requests == ["boot-1"] and not rig.holds()
    events = ("drain", "reboot", "done")
    wait_for(lambda: all(w.count(e, "failed") == 1 for e in events), what="each failure counted")
    # A receiver that works beside it got every notice.
    assert [g["data"]["title"].split()[-1] for g in receiver.wait(3)] == ["drain", "reboot", "done"]
    w.notifier.close(10)
    assert [w.count(e, "sent") for e in events] == [1, 1, 1]
    failed = [r.getMessage() for r in caplog.records if r.name == "rebootcoord.adapters.notify"]
    assert any("notification drain to notify_urls[0] (JSON) failed" in m for m in failed), failed
    log_text = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert any(r.name == "apprise" for r in caplog.records), "apprise's own lines were captured"
    for secret in (PASSWORD, TOKEN, QUERY_TOKEN):
        assert secret not in log_text


def test_a_service_that_hangs_delays_no_other(stuck: Stuck, receiver: Receiver) -> None:
    w = wired([secret_url(stuck.port), secret_url(receiver.port)], notify_timeout="5m")
    cycle(w.notifier)
    assert [g["data"]["title"].split()[-1] for g in receiver.wait(3)] == ["drain", "reboot", "done"]
    assert stuck.connections == 1, "the stuck service is still in its first request"
    assert w.count("drain", "failed") == 0
    w.notifier.close(0)  # the agent stops: what waits for the stuck service is dropped, counted
    assert [w.count(e, "dropped") for e in ("drain", "reboot", "done")] == [0, 1, 1]


def test_a_full_queue_drops_and_counts_and_never_waits(stuck: Stuck) -> None:
    outcomes: list[tuple[str, str]] = []
    notifier = AppriseNotifier(
        [f"json://127.0.0.1:{stuck.port}/x"],
        timeout=30,  # the first notice is stuck in its request for the whole test
        queue_size=1,
        on_outcome=lambda e, o: outcomes.append((e, o)),
    )

    def notice(event: str) -> Any:
        return render(Templates(), event, node="n1", group="g", phase="p", reason="r", boot_id="b")

    notifier.notify(notice("drain"))  # taken by the sending thread, which hangs on it
    wait_for(lambda: stuck.connections == 1, what="the first notice in its request")
    notifier.notify(notice("reboot"))  # waits in the queue
    notifier.notify(notice("done"))  # the queue is full: dropped at once
    assert outcomes == [("done", "dropped")]
    notifier.close(0)  # stopping: what still waits is dropped too, never sent after the fact
    assert outcomes == [("done", "dropped"), ("reboot", "dropped")]
    notifier.notify(notice("failure"))  # closed: dropped
    assert outcomes[-1] == ("failure", "dropped")


def test_a_url_apprise_cannot_use_is_exit_2_naming_it_by_its_place(
    capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    code = main(
        [
            "agent",
            "--node-name=n1",
            f"--events-file={tmp_path / 'events.jsonl'}",
            "--metrics-address=",
            f"--notify-urls=json://127.0.0.1:1/ok nosuchservice://{TOKEN}/x",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert "notify_urls[1]" in err and "nosuchservice://********" in err and "apprise" in err
    assert TOKEN not in err
    assert not (tmp_path / "events.jsonl").exists(), "nothing started"
