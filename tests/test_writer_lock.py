"""Writers of one process queue on a lock of their own, not in SQLite's busy handler (which sleeps in ms steps)."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flux_nb.history import database as database_module
from flux_nb.history import storage_errors as history_faults
from flux_nb.history.database import Database
from flux_nb.history.store import HistoryStore
from flux_nb.sqlite import WriterLock

THREADS = 8
WRITES = 25


def _hammer(write: Callable[[int], None]) -> None:
    """``THREADS`` threads writing ``WRITES`` times each, all started at one moment."""
    start = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def run(n: int) -> None:
        start.wait()
        try:
            for i in range(WRITES):
                write(n * WRITES + i)
        except BaseException as exc:  # reported below, with the thread's own traceback
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def _count_lock_errors(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[sqlite3.OperationalError]:
    """Every "locked" error the module's check sees from now on (the test fails on any)."""
    locked: list[sqlite3.OperationalError] = []
    is_lock_error = getattr(module, name)

    def counted(exc: sqlite3.OperationalError) -> bool:
        found = bool(is_lock_error(exc))
        if found:
            locked.append(exc)
        return found

    monkeypatch.setattr(module, name, counted)
    return locked


def test_history_writers_of_one_process_never_meet_a_locked_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    HistoryStore(tmp_path)  # a fresh history, with its tables
    monkeypatch.setattr(database_module, "BUSY_TIMEOUT_S", 0.0)  # a lock met would fail at once, not sleep
    locked = _count_lock_errors(monkeypatch, history_faults, "is_lock_error")
    db = Database(tmp_path / "history.sqlite")

    def write(n: int) -> None:
        db.write(lambda c: c.execute("UPDATE changes SET seq = seq + 1"), "count")

    _hammer(write)
    assert locked == []
    assert db.read("SELECT seq FROM changes")[0][0] >= THREADS * WRITES


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_gets_a_writer_lock_of_its_own() -> None:
    lock = WriterLock()
    with lock:  # held by this process when it forks
        pid = os.fork()
        if pid == 0:  # the child: the parent's hold must not block it
            with lock:
                pass
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
