"""SQLite habits the history and the shared slot table both keep (neither may import the other)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def in_immediate_transaction(db: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``work`` in one IMMEDIATE transaction (the write lock taken up front); rolled back if it raises."""
    db.execute("BEGIN IMMEDIATE")
    try:
        result = work(db)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        raise
    return result


class WriterLock:
    """The lock this process's writers of one database queue on, instead of in SQLite's busy handler (which
    sleeps in steps of milliseconds while another thread of the same process holds the write lock).

    Reentrant; a forked child gets a fresh one (a parent's thread may have held it at the fork).
    """

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.RLock()

    def __enter__(self) -> None:
        if self._pid != os.getpid():
            self._pid, self._lock = os.getpid(), threading.RLock()
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
