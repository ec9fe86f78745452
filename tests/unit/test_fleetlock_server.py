"""The FleetLock server in-process (FleetLockService over the real GroupClient on the memory
store, tests/unit/fakes.py), request by request, as Zincati sends them.

Each table row is one rule of who may act as which id, one bound, or one place where the server
used to decide otherwise than the agent (the old daemon/fleetlock.py re-derived the turn, the
refusal's reason, the cordon's owner and "did it reboot" on its own): each of those rows fails
against that code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
from prometheus_client import CollectorRegistry

from rebootcoord.adapters.kube.lease import LeaseWaitQueue
from rebootcoord.core.config import load_zone
from rebootcoord.core.cycle import DEFAULT_POLICY
from rebootcoord.core.fleetlock import place_ttl
from rebootcoord.core.rollout import ABORTED, DRAIN_FAILED, REBOOTED
from rebootcoord.core.semaphore import AGENT, FLEETLOCK, MANUAL, HolderRecord, Limits, Waiter
from rebootcoord.core.types import Group, HolderId, NodeName, Phase, lease_name_ok
from rebootcoord.core.windows import Schedule, parse_window
from rebootcoord.daemon.fleetlock import FleetLockService, ServerMetrics, ServerSettings
from rebootcoord.daemon.group import GroupClient
from rebootcoord.daemon.httpserve import Peer
from rebootcoord.ports import CheckResult, NodeFacts, NodeOps
from tests.unit.fakes import FakeCheck, FakeClock, FakeNodeOps, MemoryGroupStore, MemoryWaitQueue

G = Group("g")


@dataclass
class FakeDirectory:
    """Nodes by Zincati id: their facts (boot, zone, our cordon), their checks, their ops."""

    nodes: dict[str, NodeName] = field(default_factory=dict)
    boot: dict[NodeName, str] = field(default_factory=dict)
    zones: dict[NodeName, str] = field(default_factory=dict)
    ready: dict[NodeName, bool] = field(default_factory=dict)
    ops: dict[NodeName, FakeNodeOps] = field(default_factory=dict)

    def add(self, client_id: str, node: str, *, boot: str = "boot-1", zone: str = "") -> FakeNodeOps:
        name = NodeName(node)
        self.nodes[client_id] = name
        self.boot[name], self.zones[name], self.ready[name] = boot, zone, True
        self.ops[name] = FakeNodeOps()
        return self.ops[name]

    def find(self, client_id: HolderId) -> NodeName | None:
        return self.nodes.get(client_id)

    def node_ops(self, node: NodeName) -> NodeOps:
        return self.ops[node]

    def facts(self, node: NodeName) -> NodeFacts:
        return NodeFacts(self.boot[node], self.zones[node], self.ops[node].cordoned_by_us())

    def verify(self, node: NodeName) -> tuple[CheckResult, ...]:
        ok = self.ready[node]
        return (CheckResult(ok, "node-ready", "" if ok else f"Node {node} is not Ready"),)


@dataclass
class Server:
    """One server over one memory group; ``settings`` as ServerSettings' keywords."""

    settings: dict[str, object] = field(default_factory=dict)
    directory: FakeDirectory | None = None
    gate: FakeCheck = field(default_factory=lambda: FakeCheck(name="alerts", reason="AlertsFiring"))
    capacity: int = 0
    clock: FakeClock = field(default_factory=FakeClock)

    def __post_init__(self) -> None:
        self.store = MemoryGroupStore("g", capacity=self.capacity)
        self.queue = MemoryWaitQueue()
        self.group = GroupClient(self.store, self.queue)
        base = {"groups": (G,), "max_holders": 1}
        self.service = FleetLockService(
            lambda _g: self.group,
            ServerSettings(**{**base, **self.settings}),  # type: ignore[arg-type]
            directory=self.directory,
            gates=lambda _node: [self.gate],
            clock=self.clock,
        )

    def call(
        self, operation: str, client_id: str, *, group: str = "g", peer: Peer | None = None
    ) -> tuple[int, str, str]:
        body = json.dumps({"client_params": {"id": client_id, "group": group}}).encode()
        status, answer = self.service.handle(
            "POST", f"/v1/{operation}", {"fleet-lock-protocol": "true"}, body, peer
        )
        doc = json.loads(answer)
        return status, doc["kind"], doc["value"]

    def pre(self, client_id: str, **kw: object) -> tuple[int, str, str]:
        return self.call("pre-reboot", client_id, **kw)  # type: ignore[arg-type]

    def steady(self, client_id: str, **kw: object) -> tuple[int, str, str]:
        return self.call("steady-state", client_id, **kw)  # type: ignore[arg-type]

    def holders(self) -> tuple[str, ...]:
        slots = self.store.state.slots
        return slots.holders if slots else ()

    def line(self) -> list[str]:
        return [w.id for w in self.queue.entries]

    def outcomes(self) -> list[tuple[str, str]]:
        return [(c.id, c.outcome) for c in self.store.state.ledger.history]

    def agent_holds(self, holder: str, *, kind: str = AGENT) -> None:
        """An agent (or an operator's lock) holding a slot with its record, as they write it."""
        self.group.ensure(5)
        record = HolderRecord(
            HolderId(holder), NodeName(holder), G, Phase.REBOOTING, "boot-1", 1.0, 1.0, kind=kind
        )
        if kind == MANUAL:
            self.group.lock(record.id, record)
        else:
            self.queue.join(Waiter(record.id, record.node, 1.0, 0))
            assert self.group.acquire(record) is not None


# -- who may act as which id ------------------------------------------------------------------------


@pytest.mark.parametrize("operation", ["pre-reboot", "steady-state"])
@pytest.mark.parametrize("kind", [AGENT, MANUAL])
def test_a_fleetlock_request_never_touches_an_agents_or_an_operators_slot(operation: str, kind: str) -> None:
    server = Server()
    server.agent_holds("worker-3", kind=kind)
    before = server.store.state
    status, answer_kind, value = server.call(operation, "worker-3")
    assert (status, answer_kind) == (409, "id_in_use")
    assert "never acts for it" in value
    assert server.store.state is before  # nothing written


@pytest.mark.parametrize("operation", ["pre-reboot", "steady-state"])
def test_a_fleetlock_request_never_takes_or_frees_an_agents_place_in_line(operation: str) -> None:
    server = Server()
    server.agent_holds("holder")
    server.queue.join(Waiter(HolderId("worker-4"), NodeName("worker-4"), 2.0, 0, AGENT))
    status, kind, _ = server.call(operation, "worker-4")
    assert (status, kind) == (409, "id_in_use")
    assert server.line() == ["worker-4"]
    assert [w.kind for w in server.queue.entries] == [AGENT]


def test_a_slot_held_without_a_record_is_airlocks_and_freed_by_its_steady_state() -> None:
    server = Server()
    server.group.ensure(1)
    server.group.apply(lambda s: replace(s, slots=s.slots.acquire(HolderId("zincati-a"))))  # type: ignore[union-attr]
    assert server.pre("zincati-a")[0] == 200  # recursive, as airlock answers it
    assert server.steady("zincati-a")[0] == 200
    assert server.holders() == ()


def test_a_certificate_binds_its_ids_and_a_node_it_names() -> None:
    directory = FakeDirectory()
    directory.add("e3b0c442", "worker-1")
    server = Server({"client_ids": {"ops.example": ("admin-1",)}}, directory=directory)
    worker = Peer("10.0.0.5:4711", "commonName=worker-1", ("worker-1",))
    assert server.pre("e3b0c442", peer=worker)[0] == 200  # its Node, by machine id, is named by the cert
    status, kind, value = server.pre("admin-1", peer=worker)
    assert (status, kind) == (403, "invalid_client_identity") and "worker-1" in value
    ops = Peer("10.0.0.6:4711", "commonName=ops", ("ops", "ops.example"))
    assert server.steady("e3b0c442", peer=ops)[:2] == (403, "invalid_client_identity")
    assert server.holders() == ("e3b0c442",)


# -- the same rules as the agent -----------------------------------------------------------------------


def test_a_refusal_says_what_the_take_itself_refused_for() -> None:
    """The old server asked the budgets again on a new read, without the client's zone: a zone
    budget's refusal came out as a bare "place 1 of 1 in line"."""
    directory = FakeDirectory()
    directory.add("a", "node-a", zone="z1")
    directory.add("b", "node-b", zone="z1")
    server = Server({"max_holders": 2, "policy": replace(DEFAULT_POLICY, limits=Limits(per_zone=1))},
                    directory=directory)  # fmt: skip
    assert server.pre("a")[0] == 200
    status, kind, value = server.pre("b")
    assert (status, kind) == (423, "no_free_slot")
    assert "zone z1 has 1 of 1 holder(s)" in value, value


def test_our_stale_cordon_is_lifted_before_the_slot_is_taken_as_the_agent_does() -> None:
    """A cordon of ours on a Node that holds nothing (a server killed after its cordon, the
    record unlocked): the agent lifts it at start-up and only then may cordon as its own; the old
    server took the stale cordon for the new holding's."""
    directory = FakeDirectory()
    ops = directory.add("a", "node-a")
    ops.unschedulable = ops.ours = True
    server = Server(directory=directory)
    assert server.pre("a")[0] == 200
    assert ops.calls[:3] == ["uncordon", "cordon", "drain"]
    assert server.store.state.records[HolderId("a")].cordoned is True


def test_a_node_an_operator_cordoned_stays_cordoned() -> None:
    directory = FakeDirectory()
    ops = directory.add("a", "node-a", boot="boot-1")
    ops.unschedulable = True  # an operator's cordon: no mark of ours
    server = Server(directory=directory)
    assert server.pre("a")[0] == 200
    directory.boot[NodeName("node-a")] = "boot-2"
    assert server.steady("a")[0] == 200
    assert "uncordon" not in ops.calls and "cordon" not in ops.calls
    assert ops.unschedulable


@pytest.mark.parametrize(
    ("boot_before", "boot_after", "outcome"),
    [
        ("boot-1", "boot-2", REBOOTED),
        ("boot-1", "boot-1", ABORTED),
        # The old server took a Node that reports no boot ID for one that rebooted.
        ("", "", ABORTED),
    ],
    ids=["rebooted", "same-boot", "no-boot-id"],
)
def test_did_it_reboot_is_the_agents_rule(boot_before: str, boot_after: str, outcome: str) -> None:
    directory = FakeDirectory()
    directory.add("a", "node-a", boot=boot_before)
    server = Server(directory=directory)
    assert server.pre("a")[0] == 200
    directory.boot[NodeName("node-a")] = boot_after
    assert server.steady("a")[0] == 200
    assert server.outcomes() == [("a", outcome)]


def test_without_a_node_the_steady_state_is_the_clients_word() -> None:
    server = Server()
    assert server.pre("zincati-a")[0] == 200
    record = server.store.state.records[HolderId("zincati-a")]
    assert (record.phase, record.kind) == (Phase.REBOOTING, FLEETLOCK)  # nothing to drain
    assert server.steady("zincati-a")[0] == 200
    assert server.outcomes() == [("zincati-a", REBOOTED)]


def test_a_failed_drain_is_undone_and_answered() -> None:
    directory = FakeDirectory()
    ops = directory.add("a", "node-a")
    ops.drain_error = "pod web-1: the PodDisruptionBudget allows no disruption"
    server = Server(directory=directory)
    status, kind, value = server.pre("a")
    assert (status, kind) == (500, "drain_failed") and "PodDisruptionBudget" in value
    assert ops.calls[:3] == ["cordon", "drain", "uncordon"] and not ops.unschedulable
    assert server.holders() == () and server.outcomes() == [("a", DRAIN_FAILED)]


def test_a_node_that_does_not_come_back_keeps_its_slot_and_stops_the_line() -> None:
    directory = FakeDirectory()
    directory.add("a", "node-a")
    policy = replace(DEFAULT_POLICY, pause_group_after=timedelta(minutes=5))
    server = Server({"policy": policy}, directory=directory)
    assert server.pre("a")[0] == 200
    directory.ready[NodeName("node-a")], directory.boot[NodeName("node-a")] = False, "boot-2"
    assert server.steady("a")[:2] == (503, "node_not_ready")
    server.clock.advance(301)
    assert server.steady("a")[:2] == (503, "node_not_ready")
    paused = server.store.state.paused
    assert paused is not None and "node-a" in paused.reason and "fleetlock-server" in paused.by
    assert server.holders() == ("a",)


# -- gates and windows ------------------------------------------------------------------------------------


def test_a_gate_that_says_not_now_refuses_at_the_clients_turn_and_lets_the_others_go() -> None:
    server = Server()
    server.gate.ok = False
    server.gate.detail = "alert KubeNodeNotReady is firing"
    status, kind, value = server.pre("a")
    assert (status, kind) == (423, "gate_blocked") and "AlertsFiring: alert KubeNodeNotReady" in value
    assert server.holders() == () and server.line() == []
    server.gate.ok = True
    assert server.pre("a")[0] == 200


def test_outside_the_maintenance_window_no_place_is_taken() -> None:
    window = parse_window({"start": "Sun 03:00", "length": "1h"}, ZoneInfo("UTC"), "windows[0]", load_zone)
    schedule = Schedule((window,))
    server = Server({"schedule": schedule})
    server.clock.now = 1_700_000_000.0  # a Tuesday
    status, kind, value = server.pre("a")
    assert (status, kind) == (423, "gate_blocked") and "outside the maintenance window" in value
    assert server.line() == [] and server.holders() == ()


# -- bounds -------------------------------------------------------------------------------------------------


def test_the_line_has_a_bound_and_a_clear_answer_beyond_it() -> None:
    server = Server({"max_waiters": 3})
    assert server.pre("holder")[0] == 200
    for i in range(3):
        assert server.pre(f"w{i}")[1] == "no_free_slot"
    status, kind, value = server.pre("w3")
    assert (status, kind) == (429, "line_full") and "fleetlock_max_waiters 3" in value
    assert server.line() == ["w0", "w1", "w2"]
    assert server.pre("w0")[1] == "no_free_slot"  # those in line keep asking


class StampedEarlier(MemoryWaitQueue):
    """A line ordered by the stamp each client wrote (a waiter Lease's acquireTime), where a
    client's write can land after others that stamped later: ``before_landing(id)`` runs when
    that id's join is sent, and then its place lands at the head of the line."""

    def __init__(self) -> None:
        super().__init__()
        self.before_landing: dict[str, object] = {}

    def join(self, waiter: Waiter) -> None:
        hook = self.before_landing.pop(waiter.id, None)
        if hook is None:
            return super().join(waiter)
        hook()  # type: ignore[operator]
        self.entries.insert(0, replace(waiter, order=0))
        self.joins += 1
        self.mine.add(waiter.id)


def test_a_place_that_lands_late_with_an_earlier_stamp_never_pushes_the_line_past_its_bound() -> None:
    """A client "early" reads a line with room, then "late" joins and finds itself within the bound, then
    early's place lands ahead of it: the line would be one over. The newcomer that sees that
    leaves (it used to count only its own position, which was within the bound)."""
    server = Server({"max_waiters": 2})
    server.queue = queue = StampedEarlier()
    server.group = GroupClient(server.store, queue)
    assert server.pre("holder")[0] == 200
    assert server.pre("w0")[1] == "no_free_slot"
    answers: list[tuple[int, str, str]] = []
    queue.before_landing["early"] = lambda: answers.append(server.pre("late"))
    status, kind, value = server.pre("early")
    assert answers[0][1] == "no_free_slot"  # late joined a line of one
    assert (status, kind) == (429, "line_full") and "fleetlock_max_waiters 2" in value
    assert server.line() == ["w0", "late"]


def test_a_store_that_would_overflow_refuses_the_take_and_still_releases() -> None:
    server = Server({"max_holders": 50}, capacity=200_000)
    taken = 0
    while (answer := server.pre(f"{'x' * 240}-{taken}"))[0] == 200:
        taken += 1
    assert answer[:2] == (507, "store_full") and "nothing was written" in answer[2]
    assert 0 < taken < 50
    assert server.steady(f"{'x' * 240}-0")[0] == 200  # a release is never refused
    assert server.pre("y")[0] == 200


def test_ids_are_bounded_in_bytes_not_characters() -> None:
    server = Server()
    assert server.pre("é" * 126)[0] == 200  # 252 bytes
    status, kind, value = server.pre("😀" * 64)  # 64 characters, 256 bytes
    assert (status, kind) == (400, "invalid_client_identity") and "256 bytes" in value


def test_groups_beyond_the_served_ones_are_refused_unless_any_group_within_its_bound() -> None:
    server = Server()
    assert server.pre("a", group="other")[:2] == (400, "unknown_group")
    opened: dict[str, GroupClient] = {}

    def open_group(group: Group) -> GroupClient:
        opened.setdefault(group, GroupClient(MemoryGroupStore(group), MemoryWaitQueue()))
        return opened[group]

    service = FleetLockService(open_group, ServerSettings(groups=(G,), any_group=True, max_groups=2))
    body = lambda g: json.dumps({"client_params": {"id": "a", "group": g}}).encode()  # noqa: E731
    answers = [
        service.handle("POST", "/v1/pre-reboot", {"fleet-lock-protocol": "true"}, body(f"x{i}"))[0]
        for i in range(5)
    ]
    assert answers == [200, 200, 400, 400, 400]
    assert sorted(opened) == ["x0", "x1", "x2", "x3", "x4"]  # looked at, not kept
    assert len(service._groups) == 2


def test_only_an_id_that_stands_for_something_real_counts_as_a_member() -> None:
    directory = FakeDirectory()
    directory.add("known", "node-k")
    server = Server({"unknown_id": "grant"}, directory=directory)
    assert server.pre("known")[0] == 200 and server.steady("known")[0] == 200
    assert server.pre("stranger")[0] == 200 and server.steady("stranger")[0] == 200
    assert set(server.store.state.ledger.members) == {"known"}


@pytest.mark.parametrize(
    ("since_last_poll", "most", "ttl"),
    [(None, 900, 450), (2.0, 900, 5), (60.0, 900, 90), (300.0, 60, 60), (-1.0, 900, 450)],
)
def test_a_pollers_place_lives_one_and_a_half_of_its_own_intervals(
    since_last_poll: float | None, most: float, ttl: int
) -> None:
    assert place_ttl(since_last_poll, most) == ttl


@pytest.mark.parametrize(
    "holder", ["e3b0c44298fc1c149afbf4c8996fb924", "a" * 253, "a..b", "Node_1:x", "\U0001f600" * 63]
)
def test_every_id_has_a_valid_waiter_lease_name(holder: str) -> None:
    """Long ids, and ids that are no Lease name, are hashed into one (found again by the id)."""
    queue = LeaseWaitQueue(None, namespace="ns", group=G)  # type: ignore[arg-type]
    name = queue.name_of(HolderId(holder))
    assert lease_name_ok(name) and name.startswith("rebootcoord-g.w.")
    assert name == queue.name_of(HolderId(holder)) != queue.name_of(HolderId(holder + "x"))


@pytest.mark.parametrize("operation", ["pre-reboot", "steady-state"])
def test_an_agent_taking_its_slot_between_two_reads_is_still_seen(operation: str) -> None:
    """A take writes the agent's record, then leaves the line: the server reads the line first,
    so the agent is seen in one or the other, whenever its take lands."""
    server = Server()
    server.group.ensure(1)
    server.queue.join(Waiter(HolderId("agent-1"), NodeName("agent-1"), 1.0, 0))
    record = HolderRecord(HolderId("agent-1"), NodeName("agent-1"), G, Phase.LOCKED, "b", 1.0, 1.0)
    server.store.after_read = lambda: server.group.acquire(record)  # right after the group's read
    assert server.call(operation, "agent-1")[:2] == (409, "id_in_use")
    assert server.holders() == ("agent-1",) and server.line() == []


@pytest.mark.parametrize("operation", ["pre-reboot", "steady-state"])
def test_an_idle_agents_id_is_refused_as_a_member_of_the_group(operation: str) -> None:
    """An agent between cycles has neither a slot nor a place, but it said it is a member when
    it started; only a request that proves who it is may use a member's id."""
    server = Server()
    server.group.ensure(1, member=HolderId("worker-5"), now=server.clock.now)
    status, kind, value = server.call(operation, "worker-5")
    assert (status, kind) == (409, "id_in_use") and "member" in value
    assert server.holders() == () and server.line() == []
    certified = Peer("10.0.0.7:1", "commonName=worker-5", ("worker-5",))
    assert server.call(operation, "worker-5", peer=certified)[0] in (200, 423)  # proven by its certificate


def test_every_refusal_is_counted_by_its_kind() -> None:
    registry = CollectorRegistry()
    server = Server({"max_waiters": 1})
    server.service.metrics = ServerMetrics(registry)
    assert server.pre("holder")[0] == 200
    assert server.pre("w0")[1] == "no_free_slot"
    assert server.pre("w1")[1] == "line_full"
    assert server.pre("x", group="other")[1] == "unknown_group"

    def count(kind: str) -> float | None:
        return registry.get_sample_value("rebootcoord_fleetlock_refusals_total", {"kind": kind})

    assert (count("no_free_slot"), count("line_full"), count("unknown_group")) == (1, 1, 1)
    assert count("ok") is None
