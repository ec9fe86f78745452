"""What holding a slot does to a node, once, for both drivers of the cycle: the agent (its own
node) and the FleetLock server (a client's Node).

The decisions are the core's (``rebootcoord.core.cycle``: ``toward_reboot``, ``did_reboot``,
``release_outcome``); these are their effects, with the cordon's bookkeeping that invariant 4
rests on: a node found unschedulable is not ours -- the record says ``cordoned`` only when we
cordoned a schedulable node, written *before* the cordon, and only such a cordon is lifted.

Never decides what comes next and never reads the clock: the caller passes the record and the
ending; what happened comes back as a value (``Drained``) or an exception of the ports.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

from rebootcoord.core.cycle import Drained
from rebootcoord.core.group import Ending
from rebootcoord.core.semaphore import HolderRecord
from rebootcoord.core.types import HolderId
from rebootcoord.errors import DrainInterrupted, NodeOperationError
from rebootcoord.ports import NodeOps


class Holder(Protocol):
    """The part of a group's semaphore a holder writes (GroupClient, the Semaphore port)."""

    def update(self, record: HolderRecord) -> None: ...

    def release(self, holder: HolderId, ending: Ending | None = None) -> int | None: ...

    def drop_record(self, holder: HolderId) -> None: ...


def claim_cordon(ops: NodeOps, record: HolderRecord) -> HolderRecord:
    """``record`` saying whether the cordon will be ours: True for a schedulable node (read
    now, never from memory), unchanged for a node unschedulable already or a record that says
    so already. To be written before the cordon -- the agent writes it with the DRAINING phase,
    in one write."""
    if record.cordoned is None and not ops.is_unschedulable():
        return replace(record, cordoned=True)
    return record


def drain(
    sem: Holder,
    ops: NodeOps,
    record: HolderRecord,
    stop: threading.Event,
    *,
    labels: Sequence[tuple[str, str]] = (),
) -> Drained | None:
    """Cordon (a schedulable node only, recorded first), label and drain the node of
    ``record``. The outcome for the next decision; None when ``stop`` interrupted the drain (the
    record still says draining: the next start drains again). Raises SlotLost when the record
    cannot be written (the slot was taken away)."""
    claimed = claim_cordon(ops, record)
    if claimed is not record:
        # Record before touching the node: a crash between the two leaves a record that says
        # "we cordon", and uncordoning a schedulable node is harmless. A node that is
        # unschedulable already is not ours to uncordon; nothing to record (None stays None).
        record = claimed
        sem.update(record)
    try:
        if record.cordoned:
            ops.cordon()
        ops.set_labels(labels)
        ops.drain(stop)
    except DrainInterrupted:
        return None
    except NodeOperationError as exc:
        return Drained(record.acquired_at, str(exc))
    return Drained(record.acquired_at)


def undo(ops: NodeOps, record: HolderRecord) -> None:
    """Leave the node as found: lift our own cordon, never another's."""
    if record.cordoned:
        ops.uncordon()


def give_back(sem: Holder, ops: NodeOps, record: HolderRecord, ending: Ending) -> int | None:
    """Lift our cordon, then give the slot back with the cycle into the history: uncordoning
    first, so that a crash between the two leaves a holder that uncordons again, never a
    cordoned node nobody owns. The revision written (None: nothing was held)."""
    undo(ops, record)
    return sem.release(record.id, ending)


def abandon(sem: Holder, ops: NodeOps, record: HolderRecord) -> None:
    """Our record outlived our slot (an operator unlocked it): lift our cordon, drop the record."""
    undo(ops, record)
    sem.drop_record(record.id)
