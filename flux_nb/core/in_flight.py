"""What a session holds in memory about its requests: the ones in flight, and the writes the history owes.

When the disk fills up mid-sweep, the history refuses writes (``HistoryError(retryable=True)``). A task the API
already runs must not be lost for that: its id, and its image once downloaded, are kept here and written at the
next chance (the next request's first write, or ``resume``), in the order they were meant to happen.

Every session's ledger counts for the whole process: a record one session has queued or runs is not free
for another session's ``resume`` (``running_here``).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import TypeVar

from flux_nb.history.store import HistoryError

T = TypeVar("T")

#: Held while a batch writes its records and enters them in flight, and while ``resume`` picks free ones:
#: a record is never seen written but not yet in flight.
CLAIMING = threading.RLock()


def is_retryable(exc: BaseException) -> bool:
    """True for a storage fault that the same write overcomes later (a full disk)."""
    return isinstance(exc, HistoryError) and exc.retryable


class Ledger:
    """Records this session is running now, and per record the history writes it could not make yet."""

    def __init__(self) -> None:
        self.in_flight: set[str] = set()
        self._owed: dict[str, list[Callable[[], object]]] = {}
        self._lock = threading.RLock()
        with CLAIMING:
            _LEDGERS.add(self)

    def owe(self, record_id: str, work: Callable[[], object]) -> None:
        """Keep ``work`` (a write about ``record_id``) for later."""
        with self._lock:
            self._owed.setdefault(record_id, []).append(work)

    def write(self, record_id: str, work: Callable[[], T]) -> T:
        """Make ``work`` now, after what is owed for ``record_id``; on a full disk keep it for later and raise."""
        with self._lock:
            if not self._settle(record_id):
                self._owed[record_id].append(work)
                raise self.blocked
            try:
                return work()
            except HistoryError as exc:
                if exc.retryable:
                    self._owed.setdefault(record_id, []).append(work)
                raise

    def _settle(self, record_id: str) -> bool:
        """Make the writes owed for ``record_id``, in order; False (and ``blocked`` set) if one still fails."""
        owed = self._owed.get(record_id, [])
        while owed:
            try:
                owed[0]()
            except HistoryError as exc:
                if not exc.retryable:
                    raise
                self.blocked = exc
                return False
            owed.pop(0)
        self._owed.pop(record_id, None)
        return True

    def flush(self) -> list[str]:
        """Make every owed write that the history takes now; the record ids still owed come back."""
        with self._lock:
            for record_id in list(self._owed):
                if not self._settle(record_id):
                    break
            return list(self._owed)

    def owed(self) -> list[str]:
        """Record ids with writes still owed (their task ids or images are held in memory)."""
        with self._lock:
            return list(self._owed)

    blocked: HistoryError


_LEDGERS: weakref.WeakSet[Ledger] = weakref.WeakSet()


def running_here(record_id: str) -> bool:
    """True when a request of this process (in any session) has ``record_id`` queued or in flight."""
    with CLAIMING:
        return any(record_id in ledger.in_flight for ledger in _LEDGERS)


__all__ = ["CLAIMING", "Ledger", "is_retryable", "running_here"]
