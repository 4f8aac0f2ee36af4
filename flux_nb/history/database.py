"""Connections to ``history.sqlite``: opened safely, written in short locked transactions, faults explained.

Each thread has its own connection; writes are short IMMEDIATE transactions retried while
another process holds the lock. A new database is built under a temporary name and linked
into place, so ``history.sqlite`` never exists half-made: a zero-length or foreign file there
is somebody else's, and is refused rather than taken for a new history. A folder this process
cannot write is opened read-only (no WAL set-up, no migration): reading works, writing says why not.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import tempfile
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from flux_nb.errors import HistoryError
from flux_nb.history import schema, storage_errors
from flux_nb.sqlite import WriterLock, in_immediate_transaction

# SQLite's own wait for a lock; then, for the few cases where it answers "locked" at once, we retry this long.
BUSY_TIMEOUT_S = 30.0
LOCK_RETRY_S = 30.0
# How long ``close`` waits for other connections to let its checkpoint through.
CLOSE_WAIT_MS = 2000

T = TypeVar("T")


def retrying(work: Callable[[], T]) -> T:
    """Run ``work``; run it again, with jittered backoff, while another connection holds a lock."""
    deadline = time.monotonic() + LOCK_RETRY_S
    delay = 0.005
    while True:
        try:
            return work()
        except sqlite3.OperationalError as exc:
            if not storage_errors.is_lock_error(exc) or time.monotonic() > deadline:
                raise
        time.sleep(delay * (1 + random.random()))
        delay = min(delay * 2, 0.25)


def _writable(path: Path) -> bool:
    """True when this process may write the folder (and the database file, where there is one)."""
    return os.access(path.parent, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))


def _build_new(path: Path) -> None:
    """Make a fresh history under a temporary name, then link it into place (unless another process won)."""
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-history-", suffix=".sqlite")
    os.close(handle)
    try:
        db = sqlite3.connect(temp, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode = WAL")
            schema.create_schema(db)
        finally:
            db.close()
        os.chmod(temp, 0o644)  # mkstemp makes files private; history files are shared like any others
        with contextlib.suppress(FileExistsError):
            os.link(temp, path)
    finally:
        for leftover in (temp, temp + "-wal", temp + "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)


class Database:
    """``history.sqlite`` of one folder: per-thread connections, locked writes, explained storage_errors."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly or not _writable(path)
        self._local = threading.local()
        self._writing = WriterLock()
        self._opened: tuple[int, weakref.WeakSet[sqlite3.Connection]] = (os.getpid(), weakref.WeakSet())
        self._opening = threading.Lock()
        self._generation = 0  # bumped by ``close``: a thread's older connection is not used again
        self.read_uri = f"file:{urllib.parse.quote(str(path))}?mode=ro"
        self._open()

    def _open(self) -> None:
        try:
            if not self.path.exists():
                if self.readonly:
                    raise HistoryError(
                        f"there is no history at {self.path}, and its folder is read-only",
                        path=self.path,
                        hint="point history_dir at an existing history, or at a folder this user may write",
                    )
                _build_new(self.path)
            if self.path.stat().st_size == 0:
                raise storage_errors.not_a_history(self.path, "the file is empty: 0 bytes")
            self._check_and_migrate()
        except (sqlite3.Error, OSError) as exc:
            raise storage_errors.translate(exc, self.path, "open it") from exc

    def _check_and_migrate(self) -> None:
        """Refuse a foreign database before anything (even the WAL switch) writes to it; then migrate."""
        probe = self._connect() if self.readonly else sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S)
        try:
            found = retrying(lambda: schema.tables(probe))
        finally:
            if not self.readonly:
                probe.close()
        if found and "records" not in found:
            raise storage_errors.not_a_history(
                self.path, f"an SQLite database without a records table: {sorted(found)}"
            )
        db = self.connection()
        if not self.readonly and retrying(lambda: schema.needs_migration(db)):
            self.write(schema.create_schema, "bring it up to date")
        self.columns = retrying(lambda: schema.table_columns(db, "records"))
        self.tables = retrying(lambda: schema.tables(db))

    # -- connections ---------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self.readonly:
            try:
                db = _connect(self.read_uri, uri=True)
                db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
                return db
            except sqlite3.OperationalError as exc:
                if "unable to open" not in str(exc):
                    raise
            # A WAL history in a folder nobody may write: no -shm can be made, and no writer can be at work.
            self.read_uri += "&immutable=1"
            return _connect(self.read_uri, uri=True)
        db = _connect(str(self.path))
        retrying(lambda: db.execute("PRAGMA journal_mode = WAL"))
        db.execute("PRAGMA synchronous = NORMAL")  # in WAL: durable at checkpoints, never corrupt
        return db

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (a forked child opens its own: SQLite handles must not cross a fork)."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        opened = (os.getpid(), self._generation)
        if db is None or self._local.opened != opened:
            db = self._connect()
            self._local.db, self._local.opened = db, opened
            with self._opening:
                self._mine().add(db)
        return db

    def _mine(self) -> weakref.WeakSet[sqlite3.Connection]:
        """The connections this process opened (every thread's: ``close`` closes them all)."""
        if self._opened[0] != os.getpid():
            self._opened = (os.getpid(), weakref.WeakSet())
        return self._opened[1]

    def close(self) -> None:
        """Move what the WAL holds into the database file (``wal_checkpoint(TRUNCATE)``), then close every
        thread's connection; a later read or write opens new ones.

        Where the checkpoint cannot finish (a full disk, another process's writer for longer than
        ``CLOSE_WAIT_MS``), the rows stay in the WAL, where SQLite finds them on the next open.
        """
        try:
            if not self.readonly:
                with self._writing, contextlib.suppress(sqlite3.Error, OSError):
                    db = self.connection()
                    db.execute(f"PRAGMA busy_timeout = {CLOSE_WAIT_MS}")
                    db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            with self._opening:
                self._generation += 1
                opened = list(self._mine())
            for db in opened:
                db.close()

    # -- reading and writing -------------------------------------------------------------------

    def write(self, work: Callable[[sqlite3.Connection], T], doing: str) -> T:
        """Run ``work`` in one short IMMEDIATE transaction (write lock taken up front), retried when locked."""
        if self.readonly:
            raise storage_errors.read_only(self.path, doing)

        def attempt() -> T:
            with self._writing:
                return in_immediate_transaction(self.connection(), work)

        try:
            return retrying(attempt)
        except (sqlite3.Error, OSError) as exc:
            raise storage_errors.translate(exc, self.path, doing) from exc

    def read(self, sql: str, params: Sequence[Any] = (), doing: str = "read it") -> list[tuple[Any, ...]]:
        try:
            return retrying(lambda: self.connection().execute(sql, params).fetchall())
        except (sqlite3.Error, OSError) as exc:
            raise storage_errors.translate(exc, self.path, doing) from exc

    def has(self, table: str) -> bool:
        """True when the history has ``table`` (a read-only history of an older flux_nb may not)."""
        return table in self.tables


class _Connection(sqlite3.Connection):
    """A connection ``Database.close`` can reach from any thread (each is still used by one thread only)."""


def _connect(target: str, *, uri: bool = False) -> sqlite3.Connection:
    return sqlite3.connect(
        target, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False, factory=_Connection, uri=uri
    )


def next_seq(db: sqlite3.Connection) -> int:
    """The next change number, inside the caller's write transaction."""
    return int(db.execute("UPDATE changes SET seq = seq + 1 RETURNING seq").fetchone()[0])
