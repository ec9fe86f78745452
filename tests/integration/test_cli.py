"""The two command lines as users run them: exit codes, messages, outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from rebootcoord import __version__
from rebootcoord.cli.rebootctl import rfc3339
from rebootcoord.sim.etcd_server import EtcdServer
from rebootcoord.sim.procs import free_port
from tests.conftest import wait_for

pytestmark = pytest.mark.etcd


def run(
    *argv: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("REBOOTCOORD_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", *argv], capture_output=True, text=True, timeout=timeout, env=full_env
    )


def agent(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return run("rebootcoord", "agent", *args, **kw)  # type: ignore[arg-type]


def ctl(etcd: EtcdServer, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run(
        "rebootcoord.cli.rebootctl",
        "--etcd-endpoints", etcd.endpoint, "--etcd-key-prefix", prefix, *args,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "env", "fragments"),
    [
        (["--max-holders", "0"], {}, ["max_holders", "flag --max-holders", "got '0'", "from 1 to 10000"]),
        ([], {"REBOOTCOORD_CHECK_INTERVAL": "often"}, ["check_interval", "'often'", "duration"]),
        ([], {"REBOOTCOORD_TIME_ZONE": "Moon/Base"}, ["time_zone", "IANA"]),
        ([], {"REBOOTCOORD_BOGUS": "1"}, ["bogus", "known key"]),
        (["--windows", "[{start: 'Thu 04:00'}]"], {}, ["windows[0]", "start, length"]),
        (["--node-name", ""], {"NODE_NAME": ""}, ["node_name"]),
    ],
    ids=["max-below-1", "bad-duration", "unknown-zone", "unknown-env-key", "bad-window", "missing-node"],
)
def test_agent_config_errors_exit_2_and_do_nothing(
    tmp_path: Path, etcd: EtcdServer, prefix: str, args: list[str], env: dict[str, str], fragments: list[str]
) -> None:
    events = tmp_path / "events.jsonl"
    before = etcd_revision(etcd)
    # A real etcd the agent would use: a bad config must fail before it writes anything there.
    done = agent(
        "--etcd-endpoints", etcd.endpoint, "--etcd-key-prefix", prefix, "--events-file", str(events),
        "--metrics-address", "", *args, env=env, timeout=20,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    for fragment in fragments:
        assert fragment in done.stderr
    assert done.stdout == ""
    assert not events.exists()
    assert etcd_keys(etcd, prefix) == [] and writes_since(etcd, prefix, before) == [], "nothing written"


def writes_since(etcd: EtcdServer, prefix: str, revision: int) -> list[tuple[int, str, bytes | None]]:
    """Every change under ``prefix`` after ``revision`` (other tests share this etcd: its own
    revision moves with their leases)."""
    from rebootcoord.adapters.etcd import EtcdConnection, EtcdOptions, replay

    conn = EtcdConnection(EtcdOptions((etcd.endpoint,)))
    try:
        return replay(conn, prefix, since=revision + 1)
    finally:
        conn.close()


def etcd_keys(etcd: EtcdServer, prefix: str) -> list[str]:
    from tests.support.etcdraw import raw_client

    client = raw_client(etcd)
    try:
        return [meta.key.decode() for _, meta in client.get_prefix(prefix)]
    finally:
        client.close()


def etcd_revision(etcd: EtcdServer) -> int:
    from tests.support.etcdraw import raw_client

    client = raw_client(etcd)
    try:
        return int(client.get_response("x").header.revision)
    finally:
        client.close()


def test_agent_config_file_errors(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("max_holders: 2\nreboot_command: systemctl reboot\ncolour: blue\n")
    done = agent("--config", str(config))
    assert done.returncode == 2
    assert f"reboot_command (from file {config})" in done.stderr
    assert "argv list" in done.stderr and "colour" in done.stderr
    missing = agent("--config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "nope.yaml" in missing.stderr
    config.write_text("key: [unclosed\n")
    assert agent("--config", str(config)).returncode == 2


def test_print_config_masks_secrets_and_shows_sources_merged(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(
        "etcd_username: root\netcd_password: hunter2\ngroup: from-file\netcd_allow_plaintext_password: true\n"
    )
    done = agent("--config", str(config), "--print-config", env={"REBOOTCOORD_GROUP": "from-env"})
    assert done.returncode == 0, done.stderr
    printed = yaml.safe_load(done.stdout)
    assert printed["group"] == "from-env"
    assert printed["etcd_password"] == "********"
    assert "hunter2" not in done.stdout


def test_usage_error_exits_2() -> None:
    assert run("rebootcoord", "frobnicate").returncode == 2
    assert run("rebootcoord.cli.rebootctl", "set-max", "many").returncode == 2


def test_version() -> None:
    done = run("rebootcoord", "--version")
    assert done.returncode == 0 and done.stdout.startswith("rebootcoord ")


def test_rebootctl_status_lock_unlock_set_max_pause_resume(etcd: EtcdServer, prefix: str) -> None:
    assert ctl(etcd, prefix, "set-max", "2").returncode == 0
    locked = ctl(etcd, prefix, "lock", "maint-1", "--reason", "disk swap")
    assert locked.returncode == 0, locked.stderr
    status = ctl(etcd, prefix, "-o", "json", "status")
    doc = json.loads(status.stdout)
    assert doc["max"] == 2 and doc["held"] == 1
    assert doc["holders"][0]["id"] == "maint-1" and doc["holders"][0]["kind"] == "manual"
    table = ctl(etcd, prefix, "status").stdout
    assert table.splitlines()[-1].split()[:4] == ["maint-1", "maint-1", "operator", "locked"]
    as_yaml = yaml.safe_load(ctl(etcd, prefix, "-o", "yaml", "status").stdout)
    assert as_yaml["held"] == 1

    refused = ctl(etcd, prefix, "unlock", "ghost")
    assert refused.returncode == 1 and "'ghost' holds no slot" in refused.stderr
    below = ctl(etcd, prefix, "set-max", "0")
    assert below.returncode == 1 and "at least 1" in below.stderr

    assert ctl(etcd, prefix, "pause", "--reason", "freeze").returncode == 0
    assert json.loads(ctl(etcd, prefix, "-o", "json", "status").stdout)["paused"]["reason"] == "freeze"
    assert ctl(etcd, prefix, "resume").returncode == 0
    assert json.loads(ctl(etcd, prefix, "-o", "json", "status").stdout)["paused"] is None

    unlocked = ctl(etcd, prefix, "unlock", "maint-1")
    assert unlocked.returncode == 0 and "released" in unlocked.stdout
    assert json.loads(ctl(etcd, prefix, "-o", "json", "status").stdout)["held"] == 0


def test_rebootctl_unlock_refuses_an_agent_mid_cycle_without_force(etcd: EtcdServer, prefix: str) -> None:
    """With max 1, unlocking a draining or rebooting holder let a second node take the slot and
    reboot while the first was down: refused now, unless --force, which says what it does."""
    from rebootcoord.core.semaphore import HolderRecord, Waiter
    from rebootcoord.core.types import Group, HolderId, NodeName, Phase
    from rebootcoord.daemon.group import etcd_group

    sem = etcd_group((etcd.endpoint,), prefix=prefix, group=Group("default"), waiter_ttl=30.0)
    try:
        sem.ensure(1)
        me, node = HolderId("node-a"), NodeName("node-a")
        sem.join_queue(Waiter(me, node, time.time(), 0))
        now = time.time()
        assert sem.acquire(HolderRecord(me, node, Group("default"), Phase.LOCKED, "b1", now, now)) is not None
        for phase in (Phase.DRAINING, Phase.REBOOTING, Phase.VERIFYING):
            sem.update(HolderRecord(me, node, Group("default"), phase, "b1", now, time.time(), cordoned=True))
            refused = ctl(etcd, prefix, "unlock", "node-a")
            assert refused.returncode == 1, refused.stderr
            assert f"node-a is {phase} on node node-a" in refused.stderr and "--force" in refused.stderr
            assert sem.read().holds(me), "a refused unlock changed the group"
        forced = ctl(etcd, prefix, "unlock", "--force", "node-a")
        assert forced.returncode == 0 and "released" in forced.stdout
        assert "warning:" in forced.stderr and "without the health checks' verdict" in forced.stderr
        assert not sem.read().holds(me)
        too_many = ctl(etcd, prefix, "set-max", "10001")
        assert too_many.returncode == 1 and "at most 10000" in too_many.stderr
    finally:
        sem.close()


def test_rebootctl_history_and_the_rollout_in_status(etcd: EtcdServer, prefix: str) -> None:
    """Cycles written by the transitions (a healthy one with its phases, an operator's unlock) and
    a rollout in progress, as an operator reads them in each output format."""
    from rebootcoord.core.rollout import WavePlan, WaveSize
    from rebootcoord.core.semaphore import HolderRecord, Limits, Waiter
    from rebootcoord.core.types import Group, HolderId, NodeName, Phase
    from rebootcoord.daemon.group import etcd_group

    limits = Limits(waves=WavePlan((WaveSize(1), WaveSize(100, percent=True)), soak=600.0))
    sem = etcd_group((etcd.endpoint,), prefix=prefix, group=Group("default"), waiter_ttl=30.0)
    try:
        sem.ensure(2)
        now = time.time() - 100
        me, node = HolderId("node-a"), NodeName("node-a")
        sem.join_queue(Waiter(me, node, now, 0))
        assert sem.acquire(
            HolderRecord(me, node, Group("default"), Phase.LOCKED, "b1", now, now), limits=limits
        )
        record = sem.read().records[me]
        for phase, at in (
            (Phase.DRAINING, now + 2),
            (Phase.REBOOTING, now + 10),
            (Phase.VERIFYING, now + 70),
        ):
            record = record.moved(phase, at)
            sem.update(record)
        assert ctl(etcd, prefix, "history").stdout.startswith("group default: no cycles")
        from rebootcoord.core.group import Ending

        sem.release(me, Ending("rebooted", now + 80, "healthy after reboot"))
        assert ctl(etcd, prefix, "lock", "ops-1").returncode == 0
        assert ctl(etcd, prefix, "unlock", "ops-1").returncode == 0
    finally:
        sem.close()
    table = ctl(etcd, prefix, "history")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["NODE", "STARTED", "TOOK", "PHASES", "OUTCOME", "WAVE", "REASON"]
    assert lines[1].split()[1] == rfc3339(now)
    assert "locked 2s, draining 8s, rebooting 60s, verifying 10s" in lines[1] and "rebooted" in lines[1]
    assert "unlocked" in lines[2] and "unlocked by rebootctl@" in lines[2]
    cycles = json.loads(ctl(etcd, prefix, "-o", "json", "history").stdout)["cycles"]
    assert [c["outcome"] for c in cycles] == ["rebooted", "unlocked"]
    assert cycles[0]["seconds"] == 80.0 and cycles[0]["wave"].endswith("/1")
    # Times as RFC 3339 in UTC, durations as numbers; the rollout's id says when it started.
    assert (cycles[0]["started_at"], cycles[0]["ended_at"]) == (rfc3339(now), rfc3339(now + 80))
    assert cycles[0]["phase_seconds"] == {
        "locked": 2.0,
        "draining": 8.0,
        "rebooting": 60.0,
        "verifying": 10.0,
    }
    assert cycles[0]["wave"] == time.strftime("r-%Y%m%d-%H%M%S/1", time.gmtime(now))
    as_yaml = yaml.safe_load(ctl(etcd, prefix, "-o", "yaml", "history").stdout)["cycles"]
    assert as_yaml[0]["started_at"] == rfc3339(now), "a string in YAML, too (not a YAML timestamp)"
    assert (
        yaml.safe_load(ctl(etcd, prefix, "-o", "yaml", "history", "--limit", "1").stdout)["cycles"][0][
            "outcome"
        ]
        == "unlocked"
    )
    assert ctl(etcd, prefix, "history", "--limit", "0").returncode == 2
    status = ctl(etcd, prefix, "status").stdout
    assert "wave 1 of 2 (1, 100%), 1 node(s) through" in status and "soaks, in" in status
    doc = json.loads(ctl(etcd, prefix, "-o", "json", "status").stdout)
    assert doc["rollout"]["current_wave"] == 1 and doc["members"] == 1
    rollout = doc["rollout"]
    assert rollout["id"] == time.strftime("r-%Y%m%d-%H%M%S", time.gmtime(now))
    assert f"rollout {rollout['id']}: wave 1 of 2" in status
    assert rollout["started_at"] == rollout["opened"][0]["opened_at"] == rfc3339(now)
    assert rollout["opened"][0]["last_done_at"] == rfc3339(now + 80) and rollout["soak_seconds"] == 600.0
    assert yaml.safe_load(ctl(etcd, prefix, "-o", "yaml", "status").stdout)["rollout"][
        "started_at"
    ] == rfc3339(now)


RFC3339 = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


def test_rebootctl_version() -> None:
    done = run("rebootcoord.cli.rebootctl", "--version")
    assert (done.returncode, done.stdout, done.stderr) == (0, f"rebootctl {__version__}\n", "")


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["set-max", "many"], ["argument max", "'many'", "whole number of slots"]),
        (["history", "--limit", "0"], ["--limit", "'0'", "at least 1"]),
        (["history", "--limit", "lots"], ["--limit", "'lots'", "at least 1"]),
        (["status", "-o", "xml"], ["-o/--output", "'xml'", "'table', 'json', 'yaml'"]),
        (["-o", "xml", "status"], ["-o/--output", "'xml'", "'table', 'json', 'yaml'"]),
        (["reboot-everything"], ["invalid choice", "'reboot-everything'", "'status'"]),
        ([], ["required", "COMMAND"]),
        (["status", "--frobnicate"], ["--frobnicate"]),
        (["set-max"], ["max"]),
        (["status", "--etcd-timeout", "often"], ["etcd_timeout", "'often'", "duration"]),
        (["--backend", "fleetlock", "status"], ["backend", "fleetlock", "etcd or kubernetes"]),
        (["status", "--backend", "zookeeper"], ["backend", "zookeeper"]),
        (["lock", "no spaces!"], ["id 'no spaces!'", "expected letters"]),
    ],
    ids=[
        "max-not-a-number",
        "limit-0",
        "limit-not-a-number",
        "output-after",
        "output-before",
        "no-such-command",
        "no-command",
        "unknown-option",
        "missing-max",
        "bad-config-value",
        "fleetlock-backend",
        "unknown-backend",
        "bad-lock-id",
    ],
)
def test_rebootctl_wrong_invocations_exit_2_in_one_line(argv: list[str], fragments: list[str]) -> None:
    """Nothing listens at this endpoint: a wrong invocation is told before any connection."""
    done = run("rebootcoord.cli.rebootctl", "--etcd-endpoints", "http://127.0.0.1:1", *argv, timeout=30)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    lines = done.stderr.splitlines()
    # A configuration key's problem comes in ConfigError's list, one line per problem.
    assert len(lines) == 1 or (lines[0] == "rebootctl: invalid configuration:" and len(lines) == 2), lines
    assert all(fragment in lines[-1] for fragment in fragments), lines


def test_rebootctl_options_go_before_or_after_the_command(etcd: EtcdServer, prefix: str) -> None:
    """As with kubectl: `status -o yaml` is `-o yaml status`; given in both places, the one after
    the command wins -- for the backend's options as for the output's."""
    where = ["--etcd-endpoints", etcd.endpoint, "--etcd-key-prefix", prefix]
    ctl_ = "rebootcoord.cli.rebootctl"
    assert run(ctl_, "set-max", "2", *where, "--group", "blue").returncode == 0
    assert run(ctl_, "--group", "blue", "set-max", "3", *where).returncode == 0
    for argv in (
        [*where, "--group", "blue", "-o", "yaml", "status"],
        ["status", "-o", "yaml", *where, "--group", "blue"],
        ["-o", "json", "--group", "default", "status", "-o", "yaml", "--group", "blue", *where],
        ["--etcd-key-prefix", "elsewhere", "--group", "blue", "status", "-o", "yaml", *where],
    ):
        done = run(ctl_, *argv)
        assert done.returncode == 0, (argv, done.stderr)
        doc = yaml.safe_load(done.stdout)
        assert isinstance(doc, dict) and (doc["group"], doc["max"]) == ("blue", 3), argv
    table = run(ctl_, "-o", "yaml", "status", "-o", "table", "--group", "blue", *where)
    assert table.stdout.split("\n")[1].split() == ["blue", "3", "0", "0", "no"]


def test_rebootctl_refuses_a_group_that_does_not_exist_naming_those_that_do(
    etcd: EtcdServer, prefix: str
) -> None:
    """Every command but set-max, on a group with nothing stored: exit 1, one line naming it and
    the groups under the prefix, and nothing written (no group made as a side effect)."""
    none_yet = ctl(etcd, prefix, "--group", "nosuch", "status")
    assert none_yet.returncode == 1 and "group nosuch does not exist" in none_yet.stderr
    assert "no group exists there" in none_yet.stderr
    for group in ("blue", "green"):
        assert ctl(etcd, prefix, "--group", group, "set-max", "1").returncode == 0
    keys = etcd_keys(etcd, prefix)
    for argv in (
        ["status"],
        ["-o", "json", "status"],
        ["lock", "ops-1"],
        ["unlock", "ops-1"],
        ["unlock", "--force", "ops-1"],
        ["pause", "--reason", "freeze"],
        ["resume"],
        ["history"],
    ):
        done = ctl(etcd, prefix, "--group", "nosuch", *argv)
        assert done.returncode == 1, (argv, done.stderr)
        assert done.stdout == "" and len(done.stderr.splitlines()) == 1, (argv, done.stderr)
        assert "group nosuch does not exist" in done.stderr and "groups there: blue, green" in done.stderr, (
            argv
        )
        assert f"{prefix}/groups/nosuch/" in done.stderr and "set-max creates a group" in done.stderr
        after = ctl(etcd, prefix, *argv, "--group", "nosuch")  # the option after the command
        assert after.returncode == 1 and "group nosuch does not exist" in after.stderr, argv
    assert etcd_keys(etcd, prefix) == keys, "nothing written"
    created = ctl(etcd, prefix, "--group", "nosuch", "set-max", "2")
    assert created.returncode == 0 and created.stdout == "group nosuch: created with max 2\n"
    assert ctl(etcd, prefix, "--group", "nosuch", "status").returncode == 0
    again = ctl(etcd, prefix, "--group", "nosuch", "set-max", "2")
    assert again.stdout == "group nosuch: max is 2 already: nothing changed\n"
    assert (
        ctl(etcd, prefix, "--group", "nosuch", "set-max", "3").stdout
        == "group nosuch: max set to 3 (was 2)\n"
    )


def test_rebootctl_status_shows_the_kind_of_each_holder(etcd: EtcdServer, prefix: str) -> None:
    """An agent, a FleetLock client, an operator's lock and airlock's Zincati node (a slot without
    a record of ours): the KIND column tells them apart; JSON and YAML keep the stored kind."""
    import etcd3

    from rebootcoord.core.semaphore import FLEETLOCK, HolderRecord, Waiter
    from rebootcoord.core.types import Group, HolderId, NodeName, Phase
    from rebootcoord.daemon.group import etcd_group

    sem = etcd_group((etcd.endpoint,), prefix=prefix, group=Group("default"), waiter_ttl=30.0)
    try:
        sem.ensure(4)
        now = time.time()
        me, node = HolderId("node-a"), NodeName("node-a")
        sem.join_queue(Waiter(me, node, now, 0))
        assert (
            sem.acquire(HolderRecord(me, node, Group("default"), Phase.DRAINING, "b1", now, now)) is not None
        )
        zincati = HolderId("zincati-b")
        sem.lock(
            zincati,
            HolderRecord(
                zincati, NodeName("node-b"), Group("default"), Phase.LOCKED, "", now, now, kind=FLEETLOCK
            ),
        )
    finally:
        sem.close()
    assert ctl(etcd, prefix, "lock", "ops-1").returncode == 0
    host, port = etcd.endpoint.split("//")[1].split(":")
    client = etcd3.client(host=host, port=int(port))
    key = f"{prefix}/groups/default/v1/semaphore"
    slots = json.loads(client.get(key)[0])
    client.put(key, json.dumps({"total_slots": 4, "holders": sorted([*slots["holders"], "airlock-c"])}))
    client.close()
    table = ctl(etcd, prefix, "status")
    assert table.returncode == 0, table.stderr
    rows = table.stdout.split("\n\n")[1].splitlines()
    assert rows[0].split() == ["HOLDER", "NODE", "KIND", "PHASE", "AGE", "IN", "PHASE", "NOTE"]
    kinds = {r.split()[0]: r.split()[2:4] for r in rows[1:]}
    assert kinds == {
        "airlock-c": ["external", "-"],
        "node-a": ["agent", "draining"],
        "ops-1": ["operator", "locked"],
        "zincati-b": ["fleetlock", "locked"],
    }
    for output in ("json", "yaml"):
        doc = yaml.safe_load(ctl(etcd, prefix, "-o", output, "status").stdout)
        assert {h["id"]: h["kind"] for h in doc["holders"]} == {
            "airlock-c": "external", "node-a": "agent", "ops-1": "manual", "zincati-b": "fleetlock",
        }  # fmt: skip
        assert doc["holders"][1]["acquired_at"] == rfc3339(now)


def test_rebootctl_pause_and_resume_say_what_changed(etcd: EtcdServer, prefix: str) -> None:
    import re

    assert ctl(etcd, prefix, "set-max", "1").returncode == 0
    not_paused = ctl(etcd, prefix, "resume")
    assert (not_paused.returncode, not_paused.stdout) == (
        0,
        "group default was not paused: nothing changed\n",
    )
    first = ctl(etcd, prefix, "pause", "--reason", "change freeze")
    assert first.returncode == 0 and first.stdout.startswith("group default paused: agents take no new slots")
    again = ctl(etcd, prefix, "pause", "--reason", "bad kernel 6.1")
    assert again.returncode == 0, again.stderr
    since = re.fullmatch(
        rf"group default was already paused by (rebootctl@\S+) since ({RFC3339}); reason added \(2 kept\): "
        r"bad kernel 6.1\n",
        again.stdout,
    )
    assert since is not None, again.stdout
    same = ctl(etcd, prefix, "pause")
    assert same.returncode == 0 and same.stdout.endswith(": nothing changed (reason: bad kernel 6.1)\n")
    assert same.stdout.startswith(f"group default was already paused by {since[1]} since {since[2]}")
    doc = json.loads(ctl(etcd, prefix, "-o", "json", "status").stdout)["paused"]
    assert (doc["by"], doc["at"], doc["reason"]) == (since[1], since[2], "bad kernel 6.1")
    assert [r["reason"] for r in doc["reasons"]] == ["change freeze", "bad kernel 6.1"]
    assert all(re.fullmatch(RFC3339, r["at"]) for r in doc["reasons"])
    table = ctl(etcd, prefix, "status").stdout.splitlines()
    assert table[1].endswith(f"yes, by {since[1]} since {since[2]}")
    assert table[2].startswith("paused: change freeze (by ") and table[3].startswith(
        "paused: bad kernel 6.1 (by "
    )
    for i in range(12):  # the reasons kept are bounded: the last 10
        assert ctl(etcd, prefix, "pause", "--reason", f"reason {i}").returncode == 0
    reasons = json.loads(ctl(etcd, prefix, "-o", "json", "status").stdout)["paused"]["reasons"]
    assert [r["reason"] for r in reasons] == [f"reason {i}" for i in range(2, 12)]
    resumed = ctl(etcd, prefix, "resume")
    assert (
        resumed.returncode == 0
        and resumed.stdout == f"group default resumed (paused by {since[1]} since {since[2]})\n"
    )
    assert ctl(etcd, prefix, "resume").stdout == "group default was not paused: nothing changed\n"


def test_rebootctl_reads_a_pause_marker_written_before_reasons_were_kept(
    etcd: EtcdServer, prefix: str
) -> None:
    import etcd3

    assert ctl(etcd, prefix, "set-max", "1").returncode == 0
    host, port = etcd.endpoint.split("//")[1].split(":")
    client = etcd3.client(host=host, port=int(port))
    client.put(
        f"{prefix}/groups/default/v1/rebootcoord/paused", json.dumps({"by": "ops", "at": 1, "reason": "old"})
    )
    client.close()
    doc = json.loads(ctl(etcd, prefix, "-o", "json", "status").stdout)["paused"]
    assert doc == {
        "by": "ops", "at": "1970-01-01T00:00:01Z", "reason": "old",
        "reasons": [{"by": "ops", "at": "1970-01-01T00:00:01Z", "reason": "old"}],
    }  # fmt: skip
    added = ctl(etcd, prefix, "pause", "--reason", "new")
    assert "already paused by ops since 1970-01-01T00:00:01Z; reason added (2 kept): new" in added.stdout
    doc = json.loads(ctl(etcd, prefix, "-o", "json", "status").stdout)["paused"]
    assert [r["reason"] for r in doc["reasons"]] == ["old", "new"] and doc["by"] == "ops"


def test_rebootctl_unreachable_backend_exits_3() -> None:
    done = run(
        "rebootcoord.cli.rebootctl", "--etcd-endpoints", "http://127.0.0.1:1", "--etcd-timeout", "0.3s",
        "status",
        env={"REBOOTCOORD_ETCD_TIMEOUT": "0.3s"}, timeout=120,
    )  # fmt: skip
    assert done.returncode == 3 and "cannot reach" in done.stderr


def test_rebootctl_corrupt_document_exits_4(etcd: EtcdServer, prefix: str) -> None:
    import etcd3

    host, port = etcd.endpoint.split("//")[1].split(":")
    client = etcd3.client(host=host, port=int(port))
    client.put(f"{prefix}/groups/default/v1/semaphore", "{oops")
    status = ctl(etcd, prefix, "status")
    assert status.returncode == 4
    assert "CORRUPT" in status.stdout and "not valid JSON" in status.stdout
    assert ctl(etcd, prefix, "set-max", "3").returncode == 4
    assert client.get(f"{prefix}/groups/default/v1/semaphore")[0] == b"{oops"
    client.close()


HOSTILE = {
    "100,000-deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "an integer of 5,000 digits": b'{"total_slots": ' + b"9" * 5000 + b', "holders": []}',
    "100,000 holders": json.dumps({"total_slots": 1, "holders": [f"h{i}" for i in range(100_000)]}).encode(),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_rebootctl_reports_a_hostile_document_in_one_short_line(
    etcd: EtcdServer, prefix: str, case: str
) -> None:
    import etcd3

    host, port = etcd.endpoint.split("//")[1].split(":")
    client = etcd3.client(host=host, port=int(port))
    key = f"{prefix}/groups/default/v1/semaphore"
    client.put(key, HOSTILE[case])
    status = ctl(etcd, prefix, "status")
    assert status.returncode == 4, status.stderr
    assert "Traceback" not in status.stderr and "CORRUPT" in status.stdout
    assert max(len(line) for line in status.stdout.splitlines()) < 600
    assert ctl(etcd, prefix, "set-max", "3").returncode == 4
    assert client.get(key)[0] == HOSTILE[case]  # left alone
    client.close()


def test_an_agent_survives_a_hostile_document_and_counts_it(
    etcd: EtcdServer, prefix: str, tmp_path: Path
) -> None:
    """Every agent of a group reads the semaphore key: a document that once crashed them all is
    reported (log, metric) while they keep running."""
    import etcd3

    host, port = etcd.endpoint.split("//")[1].split(":")
    client = etcd3.client(host=host, port=int(port))
    client.put(f"{prefix}/groups/default/v1/semaphore", HOSTILE["100,000-deep nesting"])
    client.close()
    port = free_port()
    boot = tmp_path / "boot_id"
    boot.write_text("b1\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "reboot-required").touch()  # so that it reads the group
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "rebootcoord", "agent",
            "--node-name", "hostile", "--etcd-endpoints", etcd.endpoint, "--etcd-key-prefix", prefix,
            "--host-root", str(tmp_path), "--boot-id-file", str(boot), "--reboot-command", "[/bin/true]",
            "--metrics-address", f"127.0.0.1:{port}", "--check-interval", "1s",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:

        def corrupt_count() -> float:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                    text = resp.read().decode()
            except OSError:
                return 0.0
            for line in text.splitlines():
                if line.startswith('rebootcoord_failures_total{reason="corrupt_document"}'):
                    return float(line.split()[-1])
            return 0.0

        wait_for(lambda: corrupt_count() >= 1, timeout=60, what="the corrupt document counted")
        assert proc.poll() is None, "the agent died"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=15)
    assert "Traceback" not in err
    assert "nested more than 32 levels deep" in err
    assert max(len(line) for line in err.splitlines()) < 2000


def test_agent_serves_metrics_and_healthz(etcd: EtcdServer, prefix: str, tmp_path: Path) -> None:
    port = free_port()
    boot = tmp_path / "boot_id"
    boot.write_text("b1\n")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "rebootcoord", "agent",
            "--node-name", "metrics-node", "--etcd-endpoints", etcd.endpoint, "--etcd-key-prefix", prefix,
            "--host-root", str(tmp_path), "--boot-id-file", str(boot),
            "--metrics-address", f"127.0.0.1:{port}", "--max-holders", "3", "--check-interval", "1s",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:

        def scrape() -> str:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                    return resp.read().decode()
            except OSError:
                return ""

        wait_for(lambda: 'rebootcoord_slots_max{group="default"} 3.0' in scrape(), what="slots_max")
        assert 'rebootcoord_phase{node="metrics-node",phase="idle"} 1.0' in scrape()
        for name in (
            "rebootcoord_reboot_required",
            "rebootcoord_slot_held",
            "rebootcoord_slots_held",
            "rebootcoord_reboots_total",
            "rebootcoord_failures_total",
            "rebootcoord_phase_seconds_bucket",
        ):
            assert name in scrape() or name.replace("_total", "") in scrape(), name
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            assert resp.status == 200
        # A pending reboot shows up as reboot_required within a check interval.
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "reboot-required").touch()
        wait_for(
            lambda: 'rebootcoord_reboot_required{node="metrics-node"} 1.0' in scrape(), what="reboot_required"
        )
    finally:
        proc.terminate()
        proc.wait(10)
    assert proc.returncode == 0  # SIGTERM is a clean stop


def test_sigterm_ends_a_backoff_at_once(tmp_path: Path) -> None:
    """An agent whose etcd is down sits in a retry back-off (30 s per call); SIGTERM ends it at
    once instead of after the back-off (the time limit below is the old behaviour's bound)."""
    boot = tmp_path / "boot_id"
    boot.write_text("b1\n")
    port = free_port()  # nothing listens there
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "rebootcoord", "agent", "--node-name", "backoff",
            "--etcd-endpoints", f"http://127.0.0.1:{port}", "--etcd-timeout", "1s",
            "--host-root", str(tmp_path), "--boot-id-file", str(boot), "--metrics-address", "",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        wait_for(lambda: "agent starting" in proc.stderr.readline(), timeout=60, what="the agent to start")
        time.sleep(2)  # into the back-off
        proc.terminate()
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_stops_a_resting_agent_promptly(etcd: EtcdServer, prefix: str, tmp_path: Path) -> None:
    """A resting agent (the default 60 s check interval) wakes on SIGTERM and exits 0."""
    boot = tmp_path / "boot_id"
    boot.write_text("b1\n")
    events = tmp_path / "events.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "rebootcoord", "agent", "--node-name", "resting",
            "--etcd-endpoints", etcd.endpoint, "--etcd-key-prefix", prefix, "--host-root", str(tmp_path),
            "--boot-id-file", str(boot), "--metrics-address", "", "--events-file", str(events),
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: events.exists() and '"idle"' in events.read_text(), what="the agent to rest")
        proc.terminate()
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
