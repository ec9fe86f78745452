"""release, unlock and reclaim: the same three operations over each backend's one removal."""

from __future__ import annotations

from abc import ABC, abstractmethod

from rebootcoord.core.semaphore import HolderRecord
from rebootcoord.core.types import HolderId
from rebootcoord.errors import NotHolder


class HolderRemoval(ABC):
    """Mixin of a semaphore backend: everything that takes a holder out goes through ``_remove``."""

    @abstractmethod
    def _remove(
        self, holder: HolderId, *, must_hold: bool, expect: HolderRecord | None
    ) -> tuple[HolderRecord | None, int | None]:
        """Remove ``holder``'s slot, record and queue place in one compare-and-swap write.

        ``must_hold``: raise NotHolder when it holds nothing. ``expect``: remove only if its record
        is still that one (same acquired_at), else NotHolder. Returns (removed record, revision)."""

    def release(self, holder: HolderId) -> int | None:
        return self._remove(holder, must_hold=False, expect=None)[1]

    def unlock(self, holder: HolderId) -> HolderRecord | None:
        return self._remove(holder, must_hold=True, expect=None)[0]

    def reclaim(self, holder: HolderId, expect: HolderRecord) -> bool:
        """Remove ``holder`` if it still holds the slot with the same record (acquired_at)."""
        try:
            removed, _ = self._remove(holder, must_hold=True, expect=expect)
        except NotHolder:
            return False
        return removed is not None
