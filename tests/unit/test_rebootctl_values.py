"""What rebootctl stores and shows, as pure values: the pause marker's reasons (bounded, old
markers still read), readable rollout ids, and the command line (options before or after the
command; a kubectl plugin's defaults)."""

from __future__ import annotations

import argparse
import json

import pytest

from rebootcoord.cli.rebootctl import as_kubectl_plugin, parser, rfc3339
from rebootcoord.core.bounds import MAX_PAUSE_REASON_BYTES, MAX_PAUSE_REASONS, MAX_TEXT_BYTES, utf8_len
from rebootcoord.core.group import GroupState
from rebootcoord.core.rollout import WavePlan, WaveSize, admit
from rebootcoord.core.semaphore import PauseInfo, PauseNote

# -- the pause and its reasons ---------------------------------------------------------------------


def test_pausing_a_paused_group_keeps_who_and_since_and_adds_the_reason() -> None:
    state = GroupState().created(1).pause(PauseInfo("ops", 100.0, "freeze"))
    again = state.pause(PauseInfo("ci", 200.0, "bad kernel"))
    assert again.paused is not None
    assert (again.paused.by, again.paused.at, again.paused.reason) == ("ops", 100.0, "bad kernel")
    assert again.paused.notes() == (PauseNote("ops", 100.0, "freeze"), PauseNote("ci", 200.0, "bad kernel"))


@pytest.mark.parametrize(
    "info",
    [
        pytest.param(PauseInfo("ci", 200.0, ""), id="no reason"),
        pytest.param(PauseInfo("ci", 200.0, "freeze"), id="the same reason"),
    ],
)
def test_pausing_again_without_a_new_reason_changes_nothing(info: PauseInfo) -> None:
    state = GroupState().created(1).pause(PauseInfo("ops", 100.0, "freeze"))
    assert state.pause(info) is state


def test_the_reasons_kept_are_bounded_in_count_and_bytes() -> None:
    state = GroupState().created(1).pause(PauseInfo("ops", 0.0, "é" * 5000))
    assert state.paused is not None and utf8_len(state.paused.reason) <= MAX_PAUSE_REASON_BYTES
    for i in range(3 * MAX_PAUSE_REASONS):
        state = state.pause(PauseInfo("x" * 1000, float(i), f"{i} " + "€" * 2000))
    paused = state.paused
    assert paused is not None and len(paused.notes()) == MAX_PAUSE_REASONS
    assert paused.notes()[-1].at == 3 * MAX_PAUSE_REASONS - 1, "the newest are kept"
    assert all(
        utf8_len(n.reason) <= MAX_TEXT_BYTES and utf8_len(n.by) <= MAX_TEXT_BYTES for n in paused.notes()
    )
    assert (paused.by, paused.at) == ("ops", 0.0)
    assert len(paused.encode()) < MAX_PAUSE_REASON_BYTES + 2 * MAX_TEXT_BYTES * (MAX_PAUSE_REASONS + 1) + 2000
    assert PauseInfo.decode(paused.encode()) == paused


def test_a_marker_written_before_reasons_were_kept_still_reads() -> None:
    old = json.dumps({"by": "ops", "at": 100.0, "reason": "freeze"}).encode()
    paused = PauseInfo.decode(old)
    assert paused == PauseInfo("ops", 100.0, "freeze")
    assert paused.notes() == (PauseNote("ops", 100.0, "freeze"),)
    assert paused.encode() == old, "a marker with one reason is written as before"
    assert PauseInfo.decode(b'{"by": "ops", "at": 1}').notes() == ()


def test_reasons_that_cannot_be_read_are_left_out_and_the_group_stays_paused() -> None:
    raw = json.dumps(
        {
            "by": "ops",
            "at": 1,
            "reason": "b",
            "reasons": [{"by": "ops", "at": 1, "reason": "a"}, "junk", {"at": "x"}],
        }
    ).encode()
    assert PauseInfo.decode(raw).notes() == (PauseNote("ops", 1.0, "a"),)
    assert PauseInfo.decode(json.dumps({"by": "o", "at": 1, "reasons": 7}).encode()).notes() == ()


# -- rollout ids ------------------------------------------------------------------------------------

PLAN = WavePlan((WaveSize(1),), soak=0.0)
AT = 1796655003.25  # 2026-12-07T14:50:03Z


def test_a_rollout_id_says_when_it_started() -> None:
    admitted = admit(None, PLAN, in_flight=0, waiting=1, now=AT)
    assert admitted.rollout is not None and admitted.rollout.id == "r-20261207-145003"


def test_a_rollout_that_starts_in_the_same_second_as_the_last_gets_an_id_of_its_own() -> None:
    ids = []
    previous = None
    for _ in range(3):
        admitted = admit(previous, PLAN, in_flight=0, waiting=1, now=AT)
        assert admitted.rollout is not None
        previous = admitted.rollout
        ids.append(previous.id)
    assert ids == ["r-20261207-145003", "r-20261207-145003.2", "r-20261207-145003.3"]


def test_an_old_rollout_id_is_followed_by_a_new_one() -> None:
    old = admit(None, PLAN, in_flight=0, waiting=1, now=AT).rollout
    assert old is not None
    legacy = old.__class__("r1796655003250", old.started_at, old.plan, old.waves)
    admitted = admit(legacy, PLAN, in_flight=0, waiting=1, now=AT + 1)
    assert admitted.rollout is not None and admitted.rollout.id == "r-20261207-145004"


def test_rfc3339() -> None:
    assert rfc3339(AT) == "2026-12-07T14:50:03Z"
    assert rfc3339(None) is None and rfc3339(1e300) is None and rfc3339(float("nan")) is None


# -- the command line -------------------------------------------------------------------------------


def parse(*argv: str, plugin: bool = False) -> argparse.Namespace:
    return parser(plugin=plugin).parse_args(argv)


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        pytest.param(["status"], {"output": "table", "cfg_group": None}, id="defaults"),
        pytest.param(["-o", "yaml", "status"], {"output": "yaml"}, id="before"),
        pytest.param(["status", "-o", "yaml"], {"output": "yaml"}, id="after"),
        pytest.param(["-o", "json", "status", "-o", "yaml"], {"output": "yaml"}, id="after wins"),
        pytest.param(
            ["--group", "a", "pause", "--reason", "r"], {"cfg_group": "a", "reason": "r"}, id="group before"
        ),
        pytest.param(["pause", "--group", "b"], {"cfg_group": "b"}, id="group after"),
        pytest.param(
            ["--group", "a", "history", "--group", "b", "--limit", "3"],
            {"cfg_group": "b", "limit": 3},
            id="group after wins",
        ),
        pytest.param(
            ["set-max", "3", "-n", "ns", "--context", "c", "--kubeconfig", "k"],
            {"cfg_namespace": "ns", "cfg_kube_context": "c", "cfg_kubeconfig": "k", "max": 3},
            id="kubectl's spellings after",
        ),
        pytest.param(
            ["--namespace=ns", "lock", "x", "--config", "f.yaml", "--backend=etcd"],
            {"cfg_namespace": "ns", "config": "f.yaml", "cfg_backend": "etcd", "id": "x"},
            id="= forms",
        ),
        pytest.param(
            ["--etcd-endpoints", "http://a:1", "unlock", "x", "--etcd-key-prefix", "p"],
            {"cfg_etcd_endpoints": "http://a:1", "cfg_etcd_key_prefix": "p"},
            id="etcd keys",
        ),
    ],
)
def test_options_go_before_or_after_the_command(argv: list[str], expect: dict[str, object]) -> None:
    args = vars(parse(*argv))
    assert {k: args.get(k) for k in expect} == expect
    assert args["kubectl_plugin"] is False


def test_as_a_kubectl_plugin() -> None:
    assert as_kubectl_plugin("/usr/local/bin/kubectl-rebootctl") and not as_kubectl_plugin(
        "/usr/bin/rebootctl"
    )
    p = parser(plugin=True)
    assert p.prog == "kubectl rebootctl" and "backend is kubernetes" in " ".join(p.format_help().split())
    assert parse("status", plugin=True).kubectl_plugin is True


def _parsers(p: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [p]
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _parsers(sub)
    return found


def test_every_option_says_what_it_takes() -> None:
    for p in _parsers(parser(plugin=False)):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            what = f"{p.prog} {'/'.join(action.option_strings) or action.dest}"
            assert action.help and action.help != argparse.SUPPRESS, f"{what} has no help"
            shown = p._get_formatter()._expand_help(action) + str(action.metavar or "")  # %(choices)s
            for choice in action.choices or ():
                assert str(choice) in shown, f"{what}: {choice}"
    helps = {a.dest: a.help or "" for p in _parsers(parser(plugin=False)) for a in p._actions}
    assert "table" in helps["output"] and "json" in helps["output"] and "yaml" in helps["output"]
    assert "1 to 10000" in helps["max"] and "at least 1" in helps["limit"]
    assert "creates the group" in " ".join(parser(plugin=False).format_help().split())
