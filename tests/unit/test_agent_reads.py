"""What the agent reads of its group between its own writes (issue 22: no read whose answer it
already holds). On a store that remembers its last read or write (the Lease store) and a client
that writes first against it, as the agent is wired on Kubernetes: a restarted agent reads the
group once (its ensure) and the line only when a reboot is pending; a holder never reads the
line; joining the line writes no group, so the next turn reads only the line; after a drain,
the turn decides on the group's memory. The first waiter of a full group looks up only the
Nodes of holders whose record has not moved lately."""

from __future__ import annotations

from rebootcoord.core.cycle import Acquire, Drain, JoinQueue
from rebootcoord.core.semaphore import HolderRecord, Waiter
from rebootcoord.core.types import Group, HolderId, NodeName, Phase
from rebootcoord.daemon.group import GroupClient
from tests.unit.fakes import MemoryWaitQueue
from tests.unit.test_agent import ME, Rig, to_reboot
from tests.unit.test_write_first import RememberingStore


class CountingQueue(MemoryWaitQueue):
    def __init__(self) -> None:
        super().__init__()
        self.lists = 0

    def waiters(self) -> tuple[Waiter, ...]:
        self.lists += 1
        return super().waiters()


def rig() -> Rig:
    r = Rig(store=RememberingStore(), queue=CountingQueue())
    r.semaphore = GroupClient(r.store, r.queue, write_first=True)
    r.start()
    return r


def lists(r: Rig) -> int:
    assert isinstance(r.queue, CountingQueue)
    return r.queue.lists


def test_a_restarted_holder_reads_the_group_once_and_never_the_line() -> None:
    r = rig()
    to_reboot(r)
    reads, listed = r.store.reads, lists(r)
    r.boot()  # a new process: ensure reads the group
    r.turn()
    assert r.store.reads - reads == 1
    assert lists(r) == listed


def test_the_turn_after_a_take_reads_neither_the_group_nor_the_line() -> None:
    r = rig()
    r.until(lambda: isinstance(r.steps[-1:] and r.steps[-1], Acquire), what="the take")
    assert r.holds()
    reads, listed = r.store.reads, lists(r)
    r.turn()
    assert (r.store.reads, lists(r)) == (reads, listed)


def test_the_turn_after_joining_the_line_reads_the_line_not_the_group() -> None:
    r = rig()
    r.until(lambda: isinstance(r.steps[-1:] and r.steps[-1], JoinQueue), what="joining the line")
    assert r.semaphore.queue_joined(ME)
    reads, listed = r.store.reads, lists(r)
    r.turn()
    assert r.store.reads == reads
    assert lists(r) == listed + 1


def test_the_turn_after_the_drain_decides_on_the_groups_memory() -> None:
    """What follows a drain is a write (a compare-and-swap) or the reboot's fresh last look."""
    r = rig()
    r.until(lambda: isinstance(r.steps[-1:] and r.steps[-1], Drain), what="the drain")
    reads = r.store.reads
    r.turn()
    assert r.store.reads == reads


def test_a_holder_that_moved_lately_is_not_looked_up_a_holder_stuck_is() -> None:
    """The first waiter of a full group looks up a holder's Node only when the holder's record
    has not moved for GONE_CHECK seconds: one that moved since was alive then."""
    r = Rig()
    r.semaphore.ensure(1)
    other = HolderId("x")
    now = r.clock()
    r.semaphore.join_queue(Waiter(other, NodeName("x"), now, 0))
    assert r.semaphore.acquire(HolderRecord(other, NodeName("x"), Group("g"), Phase.DRAINING, "b", now, now))
    r.semaphore.leave_queue(other)
    r.node.exists["x"] = False
    looked: list[str] = []
    exists = r.node.node_exists
    r.node.node_exists = lambda node: looked.append(node) or exists(node)  # type: ignore[method-assign]
    for _ in range(10):
        r.turn()
    assert looked == [] and r.store.state.holds(other)
    r.until(lambda: not r.store.state.holds(other), turns=40, what="the stuck holder reclaimed")
    assert looked == ["x"]


def test_draining_and_whose_cordon_it_is_are_one_write() -> None:
    """The DRAINING record says whether the cordon will be ours: the drain writes no record."""
    r = rig()
    r.until(lambda: isinstance(r.steps[-1:] and r.steps[-1], Acquire), what="the take")
    writes = len(r.store.history)
    to_reboot(r)
    assert r.node.calls[:2] == ["cordon", "drain"]
    record = r.record()
    assert record is not None and record.cordoned is True
    assert len(r.store.history) - writes == 2  # DRAINING (cordoned), REBOOTING


def test_the_phases_a_node_patch_follows_at_once_ride_on_it() -> None:
    """Locked, draining and releasing: their annotations wait for the node's next patch."""
    r = rig()
    told: list[tuple[Phase, bool]] = []
    announce = r.node.announce

    def noting(phase: Phase, reason: str, **kw: object) -> None:
        told.append((phase, bool(kw.get("defer"))))
        announce(phase, reason, **kw)  # type: ignore[arg-type]

    r.node.announce = noting  # type: ignore[method-assign]
    to_reboot(r)
    r.boot()
    r.node.announce = noting  # type: ignore[method-assign]
    r.until(lambda: not r.holds() and r.record() is None, what="the release")
    deferred = {phase for phase, defer in told if defer}
    assert deferred == {Phase.LOCKED, Phase.DRAINING, Phase.RELEASING}, told
    assert (Phase.REBOOTING, False) in told and (Phase.VERIFYING, False) in told
