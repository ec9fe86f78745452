"""What the agent reads of its group between its own writes (issue 22: no read whose answer it
already holds). On a store that remembers its last read or write (the Lease store) and a client
that writes first against it, as the agent is wired on Kubernetes: a restarted agent reads the
group once (its ensure) and the line only when a reboot is pending; a holder never reads the
line; joining the line writes no group, so the next turn reads only the line."""

from __future__ import annotations

from rebootcoord.core.cycle import Acquire, JoinQueue
from rebootcoord.core.semaphore import Waiter
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
