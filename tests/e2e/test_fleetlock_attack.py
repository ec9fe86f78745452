"""A mixed fleet under attack: real agent processes and polling FleetLock clients share one budget
through two FleetLock server replicas, while a hostile client -- threads through both replicas --
acts as the agents, floods the line with long ids and creates groups. What is checked comes from
records the attacker cannot write: etcd's own key history, the hosts' log and the agents' events
(the run checker), and the answers the attacker got."""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rebootcoord.adapters.etcd import EtcdConnection, EtcdOptions, replay
from rebootcoord.core.fleetlock import MAX_ID
from rebootcoord.core.semaphore import AGENT, FLEETLOCK
from rebootcoord.core.types import Group
from rebootcoord.daemon.group import GroupClient, etcd_group
from rebootcoord.sim.checker import read_jsonl
from rebootcoord.sim.etcd_server import EtcdServer
from rebootcoord.sim.fleet import Fleet
from tests.conftest import wait_for
from tests.support.checks import etcd_report
from tests.support.etcdraw import raw_client, slot_history
from tests.support.fleetlock import FleetLockClient, fleetlock_servers

pytestmark = pytest.mark.e2e

MAX_HOLDERS, MAX_WAITERS, MAX_GROUPS, REPLICAS = 2, 20, 8, 2
AGENTS = [f"agent-{i}" for i in range(1, 5)]
POLLERS = [f"zincati-{i}" for i in range(1, 4)]
OPERATIONS = ("pre-reboot", "steady-state")
FLOODERS = REPLICAS  # flooding threads, one per replica: each has one request in flight at most
EMOJI = "\N{OCTAGONAL SIGN}"  # 4 bytes in UTF-8


def long_id(n: int, size: int = MAX_ID) -> str:
    """A distinct id of ``size`` bytes of UTF-8: a number, then 4-byte emoji (and ASCII to fit)."""
    head = f"{n:09d}-"
    pad = (size - len(head)) % 4
    return head + "x" * pad + EMOJI * ((size - len(head) - pad) // 4)


@dataclass(frozen=True)
class Sent:
    """One answer the attacker got for an agent's id."""

    id: str
    operation: str
    status: int
    kind: str
    answered_at: float  # time.time(), the clock the agents' events use


@dataclass
class Attack:
    """What every thread of the run saw. Appends from threads (list.append is atomic)."""

    stop: threading.Event = field(default_factory=threading.Event)
    as_agents: list[Sent] = field(default_factory=list)
    flood: list[tuple[str, str]] = field(default_factory=list)  # (id, kind)
    groups: Counter[str] = field(default_factory=Counter)  # kind -> answers
    granted: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    most_places_seen: int = 0

    def close(self) -> None:
        self.stop.set()

    def thread(self, target: Callable[[], None], name: str) -> threading.Thread:
        def run() -> None:
            try:
                target()
            except Exception:  # noqa: BLE001 - the test reports it
                self.errors.append(f"{name} crashed: {traceback.format_exc()}")

        t = threading.Thread(target=run, name=name, daemon=True)
        t.start()
        return t


def watch(attack: Attack, group: GroupClient) -> None:
    """Every 50 ms: how many FleetLock places the line holds."""
    while not attack.stop.wait(0.05):
        view = group.read()
        places = sum(1 for w in view.waiters if w.kind == FLEETLOCK)
        attack.most_places_seen = max(attack.most_places_seen, places)


def impersonate(attack: Attack, client: FleetLockClient) -> None:
    """pre-reboot and steady-state with every agent's id, over and over: waiting, holding, or
    idle between cycles (a member of the group since it started)."""
    while not attack.stop.wait(0.01):
        for name in AGENTS:
            for operation in OPERATIONS:
                answer = client.call(operation, name)
                attack.as_agents.append(Sent(name, operation, answer.status, answer.kind, time.time()))


def flood(attack: Attack, client: FleetLockClient, numbers: itertools.count[int]) -> None:
    """A new id of 253 bytes at each request, to fill the line. An id whose turn comes (the line
    ahead of it served) gives its slot back at once: holding a slot for ever is what any
    FleetLock client may do, a denial of service this protocol cannot refuse, not this test's."""
    while not attack.stop.wait(0.005):
        cid = long_id(next(numbers))
        answer = client.pre_reboot(cid)
        attack.flood.append((cid, answer.kind))
        if answer.status == 200 and client.steady_state(cid).status != 200:
            attack.errors.append(f"flood id {cid[:10]}...: steady-state refused")


def new_groups(attack: Attack, client: FleetLockClient, rng: random.Random) -> None:
    """A pre-reboot in a new random group at each request."""
    while not attack.stop.wait(0.01):
        answer = client.pre_reboot(f"attacker-{rng.getrandbits(24)}", f"attack-{rng.getrandbits(64):016x}")
        attack.groups[answer.kind] += 1


def poll(
    attack: Attack, name: str, ask: FleetLockClient, tell: FleetLockClient, placed: threading.Event
) -> None:
    """A client as Zincati is (faster): pre-reboot every second until 200, "reboot", then
    steady-state (through the other replica) until 200."""
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and not attack.stop.is_set():
        answer = ask.pre_reboot(name)
        if answer.status == 200 or answer.kind == "no_free_slot":
            placed.set()  # it has its slot or a place in line
        if answer.status == 200:
            attack.granted.append(name)
            time.sleep(1.0)  # "reboots"
            while time.monotonic() < deadline:
                back = tell.steady_state(name)
                if back.status == 200:
                    attack.released.append(name)
                    return
                attack.errors.append(f"{name}: steady-state {back.status} {back.body!r}")
                time.sleep(1.0)
            return
        if answer.kind not in ("no_free_slot", "line_full"):
            attack.errors.append(f"{name}: pre-reboot {answer.status} {answer.body!r}")
        time.sleep(1.0)
    attack.errors.append(f"{name}: never granted and released")


def key_history(etcd: EtcdServer, base: str) -> list[tuple[int, str, bytes | None]]:
    conn = EtcdConnection(EtcdOptions(endpoints=(etcd.endpoint,), timeout=10.0, retry_for=30.0))
    try:
        return replay(conn, base, since=1)
    finally:
        conn.close()


def trespasses(
    changes: list[tuple[int, str, bytes | None]], base: str, releases: dict[str, set[int]]
) -> tuple[list[str], int]:
    """Changes to an agent's keys that are not the agent's own, and the most FleetLock places
    the line held at any revision.

    The agent's keys are changed by the agent alone if: neither ever holds a value of another
    kind than the agent's; its holder record is deleted only at the revision the agent's own
    event log gives for its release ("slot released", with the revision its release wrote);
    its place in line is deleted only while it holds a slot (the agent leaves the line right
    after its take; a hostile steady-state that freed its place would delete it before)."""
    slots_key = base + "semaphore"
    records, waiters = base + "rebootcoord/holders/", base + "rebootcoord/waiters/"
    held: set[str] = set()
    places: set[str] = set()
    problems: list[str] = []
    most = 0
    for rev, batch in itertools.groupby(changes, key=lambda c: c[0]):
        changed = list(batch)
        for _, key, value in changed:
            if key == slots_key and value is not None:
                held = set(json.loads(value)["holders"])
        for _, key, value in changed:
            prefix = records if key.startswith(records) else waiters if key.startswith(waiters) else ""
            if not prefix:
                continue
            ident = key[len(prefix) :]
            what = "holder record" if prefix == records else "place in line"
            if value is not None:
                kind = json.loads(value).get("kind", AGENT)
                if prefix == waiters and kind == FLEETLOCK:
                    places.add(ident)
                if ident in AGENTS and kind != AGENT:
                    problems.append(f"rev {rev}: the {what} of {ident} written as {kind}")
                continue
            places.discard(ident)
            if ident in AGENTS and prefix == records and rev not in releases.get(ident, set()):
                problems.append(
                    f"rev {rev}: the {what} of {ident} deleted, not by its release "
                    f"(at {sorted(releases.get(ident, set()))})"
                )
            if ident in AGENTS and prefix == waiters and ident not in held:
                problems.append(f"rev {rev}: the {what} of {ident} deleted while it held no slot")
        most = max(most, len(places))
    return problems, most


def groups_under(etcd: EtcdServer, prefix: str) -> set[str]:
    client = raw_client(etcd)
    try:
        base = f"{prefix}/groups/"
        keys = [meta.key.decode() for _, meta in client.get_prefix(base, keys_only=True)]
    finally:
        client.close()
    return {key[len(base) :].split("/", 1)[0] for key in keys}


def test_a_hostile_client_frees_no_agent_overflows_no_line_and_creates_few_groups(
    tmp_path: Path, etcd: EtcdServer, prefix: str
) -> None:
    """Four agents (etcd directly) and three polling FleetLock clients through two replicas,
    two slots, while the attacker -- from the moment the pollers are in line (a flood before
    them would fill the line: line_full for everyone after it) to the end -- sends
    pre-reboot and steady-state with the agents' ids, floods the line with distinct ids of
    253 bytes (fleetlock_max_waiters 20) and asks in new random groups (fleetlock_any_group,
    fleetlock_max_groups 8).

    - The run checker finds nothing (slots, boots, releases, end state); each agent rebooted
      once; each poller was granted and gave its slot back; no revision of the semaphore key
      had more than two holders.
    - No agent's slot or place was freed or taken over: every request with an agent's id was
      answered 409 id_in_use -- whether the agent was in line, held a slot, or was idle between
      cycles (then a member of the group, which a request without a certificate cannot prove to
      be) -- and etcd's history shows the agents' keys changed by the agents alone
      (``trespasses``).
    - The line stays bounded: the flood was answered line_full; a place answered line_full is
      gone; at the end at most 20 FleetLock places; at any revision at most 20 plus the places
      of requests in flight (each thread that can join the line has one at most: a place
      created beyond the bound is withdrawn by its own request, the server's documented way).
    - New groups stop at fleetlock_max_groups: the replicas count one at a time each, so two
      replicas may each add one at the same instant (the server's documented bound): at most
      8 + 1 groups under the prefix, and unknown_group answers.
    - Every node ends healthy: no holder, no record, the group not paused, each agent idle.
      (Agents on etcd without Kubernetes cordon nothing, so there is no cordon to check.)"""
    started = time.monotonic()
    server_config = {
        "backend": "etcd", "etcd_endpoints": [etcd.endpoint], "etcd_key_prefix": prefix,
        "max_holders": MAX_HOLDERS, "fleetlock_waiter_ttl": "10s", "fleetlock_max_waiters": MAX_WAITERS,
        "fleetlock_any_group": True, "fleetlock_max_groups": MAX_GROUPS,
    }  # fmt: skip
    base = f"{prefix}/groups/default/v1/"
    attack = Attack()
    group = closing(etcd_group((etcd.endpoint,), prefix=prefix, group=Group("default"), timeout=5.0))
    fleet = Fleet(
        str(tmp_path / "fleet"), nodes=len(AGENTS), endpoint=etcd.endpoint, max_holders=MAX_HOLDERS,
        reboot_seconds=1.0, agent_config={"etcd_key_prefix": prefix}, node_names=AGENTS,
    )  # fmt: skip
    with (
        fleetlock_servers(tmp_path / "server", server_config, replicas=REPLICAS) as servers,
        fleet,
        group as semaphore,
        closing(attack),  # the attack stops first, whatever happens
    ):
        clients = [FleetLockClient(s.base, timeout=30) for s in servers]
        assert clients[0].pre_reboot(long_id(0, MAX_ID + 1)).kind == "invalid_client_identity"
        threads = [attack.thread(lambda: watch(attack, semaphore), "watch")]
        placed = {name: threading.Event() for name in POLLERS}
        for i, name in enumerate(POLLERS):
            ask, tell = clients[i % 2], clients[1 - i % 2]
            threads.append(
                attack.thread(lambda n=name, a=ask, t=tell: poll(attack, n, a, t, placed[n]), name)
            )
        for name, event in placed.items():
            assert event.wait(30), f"{name} got no place in line"
        # Each agent said it is a member of the group when it started.
        wait_for(lambda: set(AGENTS) <= set(semaphore.read(queue=False).ledger.members), timeout=60,
                 what="every agent a member of the group")  # fmt: skip
        numbers = itertools.count(1)
        rngs = [random.Random(i) for i in range(REPLICAS)]  # random group names, the same each run
        for i, client in enumerate(clients):
            threads += [
                attack.thread(lambda c=client: impersonate(attack, c), f"impersonate-{i}"),
                attack.thread(lambda c=client: flood(attack, c, numbers), f"flood-{i}"),
                attack.thread(lambda c=client, r=rngs[i]: new_groups(attack, c, r), f"groups-{i}"),
            ]
        # Not wait_for: on a timeout the checks below say what went wrong, not only that it did.
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and not (fleet.done() and len(attack.released) == len(POLLERS)):
            time.sleep(0.2)
        attack.stop.set()
        for t in threads:
            t.join(60)
        end = semaphore.read()
        report = etcd_report(fleet, etcd.endpoint, prefix)
        phases = fleet.phases()
    events = read_jsonl(fleet.events_file)
    releases = {
        a: {e["rev"] for e in events if e.get("node") == a and e.get("reason") == "slot released"}
        for a in AGENTS
    }
    problems, most_places = trespasses(key_history(etcd, base), base, releases)
    history = slot_history(etcd, base + "semaphore")
    groups = groups_under(etcd, prefix)
    print(
        f"\n{time.monotonic() - started:.1f}s; as agents {len(attack.as_agents)} requests; "
        f"flood {dict(Counter(k for _, k in attack.flood))}; groups {dict(attack.groups)} -> {len(groups)}; "
        f"FleetLock places: most at a revision {most_places}, sampled {attack.most_places_seen}"
    )

    # No agent's slot or place was freed or taken over by the attacker.
    assert problems == [], problems
    wrong = [s for s in attack.as_agents if (s.status, s.kind) != (409, "id_in_use")]
    assert wrong == [], wrong[:10]
    assert {(s.id, s.operation) for s in attack.as_agents} == {(a, o) for a in AGENTS for o in OPERATIONS}

    # The fleet went through as if no attacker was there.
    assert attack.errors == [], attack.errors
    assert not fleet.violations, fleet.violations
    assert report.violations == [], report.violations
    assert {n: fleet.nodes[n].reboots for n in AGENTS} == dict.fromkeys(AGENTS, 1)
    assert sorted(attack.granted) == sorted(attack.released) == POLLERS
    assert all(len(v["holders"]) <= MAX_HOLDERS for v in history)
    assert {h for v in history for h in v["holders"]} >= {*AGENTS, *POLLERS}

    # The line stayed bounded.
    full = {cid for cid, kind in attack.flood if kind == "line_full"}
    assert full and all(len(cid.encode()) == MAX_ID for cid, _ in attack.flood)
    places = [w.id for w in end.waiters if w.kind == FLEETLOCK]
    assert len(places) <= MAX_WAITERS and not full & set(places)
    in_flight = FLOODERS + len(POLLERS)
    assert max(most_places, attack.most_places_seen) <= MAX_WAITERS + in_flight

    # Groups: bounded.
    assert attack.groups["unknown_group"] > 0
    assert len(groups) <= MAX_GROUPS + REPLICAS - 1, sorted(groups)

    # Every node ends healthy.
    assert end.slots is not None and end.slots.holders == ()
    assert end.records == {} and end.paused is None
    assert phases == dict.fromkeys(AGENTS, "idle")
