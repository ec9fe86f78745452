"""GroupClient's ``write_first``: a write tried against the state the store remembers, with no
read first. The compare-and-swap decides; a memory gone stale costs one refused write, never a
wrong grant, and a refusal is only ever decided on a fresh read."""

from __future__ import annotations

from rebootcoord.core.group import GroupState
from rebootcoord.core.semaphore import HolderRecord, Waiter
from rebootcoord.core.types import Group, HolderId, NodeName, Phase
from rebootcoord.daemon.group import GroupClient
from tests.unit.fakes import MemoryGroupStore, MemoryWaitQueue


class RememberingStore(MemoryGroupStore):
    """Remembers the state of its last read or write, as the Lease store does."""

    def __init__(self) -> None:
        super().__init__()
        self.memory: tuple[GroupState, int] | None = None

    def read(self) -> tuple[GroupState, int]:
        got = super().read()
        self.memory = got
        return got

    def write(self, new: GroupState, *, expect: int) -> int:
        revision = super().write(new, expect=expect)
        self.memory = (new, revision)
        return revision

    def remembered(self) -> tuple[GroupState, int] | None:
        return self.memory


def record(holder: str) -> HolderRecord:
    return HolderRecord(
        id=HolderId(holder), node=NodeName(holder), group=Group("g"), phase=Phase.LOCKED,
        boot_id="b", acquired_at=1.0, phase_since=1.0,
    )  # fmt: skip


def take(group: GroupClient, holder: str) -> int | None:
    group.join_queue(Waiter(HolderId(holder), NodeName(holder), 1.0, 0))
    return group.acquire(record(holder))


def client(slots: int = 1) -> tuple[GroupClient, RememberingStore]:
    store = RememberingStore()
    group = GroupClient(store, MemoryWaitQueue(), write_first=True)
    group.ensure(slots)
    return group, store


def test_a_write_after_our_own_needs_no_read() -> None:
    group, store = client()
    take(group, "a")
    reads = store.reads
    group.update(record("a").moved(Phase.DRAINING, 2.0))
    assert store.reads == reads
    assert store.state.records[HolderId("a")].phase is Phase.DRAINING


def test_a_stale_memory_is_refused_by_the_compare_and_swap_and_read_again() -> None:
    group, store = client(slots=2)
    other = GroupClient(store, group.queue)  # another agent writes meanwhile
    take(group, "a")
    ours = store.memory
    take(other, "b")  # another process: our memory does not see its write
    store.memory = ours
    group.update(record("a").moved(Phase.DRAINING, 2.0))
    assert group.stale_writes == 1 and group.conflicts == 0
    assert set(store.state.slots.holders) == {"a", "b"}  # type: ignore[union-attr]
    assert store.state.records[HolderId("a")].phase is Phase.DRAINING


def test_a_refusal_is_decided_on_a_fresh_read_never_on_the_memory() -> None:
    group, store = client(slots=1)
    other = GroupClient(store, group.queue)
    take(other, "b")
    group.read()  # remembers the slot full
    ours = store.memory
    other.release(HolderId("b"))
    store.memory = ours
    assert take(group, "a") is not None  # the memory said full; the store says free
    assert store.state.slots.holders == ("a",)  # type: ignore[union-attr]
