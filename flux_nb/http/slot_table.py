"""The slot table behind ``flux_nb.http.slots``: ``<folder>/slots.sqlite`` with its leases and its line of waiters.

    <folder>/slots.sqlite    ``leases`` (lease_id, scope, owner, acquired_at) and ``waiters`` (ticket, ...)

Every write is one short IMMEDIATE transaction (WAL), retried while another connection holds the lock. Rows
of a process of this host that no longer runs are deleted by whoever looks next (the owner rule of
``flux_nb.owners``); those of other hosts expire after ``FOREIGN_TTL_S``.

A look decides for several leases of one scope at once (``try_take_many``): the waiters of a process that
ask together (``queue_look``) are answered by one read and at most one write, first come first served.
``forget`` wakes the processes whose waiters a look would now let in (judged with the releaser's limit):
this one's directly, others through ``Wakeups``. Releases queued by ``queue_release`` are written together by
``run_queued``, which hands the freed slots to this process's parked waiters whose turn it is (``park``).
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, cast

from flux_nb.errors import ValidationError
from flux_nb.group_commit import GroupCommit
from flux_nb.http.slot_room import WaitingRoom
from flux_nb.http.slot_rules import TAKEN, Lease, Snapshot, decide, hand_to_parked
from flux_nb.http.slot_wakeups import Wakeups
from flux_nb.owners import is_local as _is_local
from flux_nb.owners import owner_is_gone
from flux_nb.owners import process_owner as lease_owner
from flux_nb.sqlite import WriterLock, in_immediate_transaction

DATABASE = "slots.sqlite"
FOLDER_ENV = "FLUX_NB_SLOTS_DIR"
WAKEUPS_ENV = "FLUX_NB_SLOT_WAKEUPS"
# SQLite's own wait for the write lock; a lock error past it is retried, never raised.
BUSY_TIMEOUT_S = 10.0
# Leases of another host cannot be checked for liveness: they count until they are this old.
FOREIGN_TTL_S = 3600.0
# A waiter looks at the table again after a jittered pause growing from the first to the last figure.
POLL_FIRST_S = 0.005
POLL_MAX_S = 0.1
# ... except the first in line, which looks more often: it is the one a slot freed by another process goes to.
POLL_HEAD_S = 0.02
# ... and a waiter whose process listens for wake-ups (``slot_wakeups``) only as a fallback: releases anywhere
# wake it; its own looks still find slots of processes that died, and waiters that stalled, passed by.
POLL_LISTENING_S = 0.5
# A waiter's process says it is still looking this often; one silent for STALLED_S (a stopped process,
# a blocked event loop) no longer holds up the line behind it, until it looks again.
HEARTBEAT_S = 1.0
STALLED_S = 10.0

T = TypeVar("T")
_SCOPE_OF = "SELECT scope FROM leases WHERE lease_id = ? UNION ALL SELECT scope FROM waiters WHERE lease_id = ?"


def default_folder() -> Path:
    """``$FLUX_NB_SLOTS_DIR``, else ``$XDG_CACHE_HOME/flux_nb``, else ``~/.cache/flux_nb``."""
    if folder := os.environ.get(FOLDER_ENV):
        return Path(folder).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "flux_nb"


def wakeups_enabled() -> bool:
    """False when ``$FLUX_NB_SLOT_WAKEUPS`` is ``0``: waiters then only poll (as where AF_UNIX is missing)."""
    return os.environ.get(WAKEUPS_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _is_lock_error(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # extended codes (BUSY_RECOVERY, ...) share the low byte
    return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in str(exc)


def _until_unlocked(work: Callable[[], T]) -> T:
    """Run ``work``, again after a jittered pause for as long as another connection holds a lock."""
    delay = POLL_FIRST_S
    while True:
        try:
            return work()
        except sqlite3.OperationalError as exc:
            if not _is_lock_error(exc):
                raise
        time.sleep(delay * (1 + random.random()))
        delay = min(delay * 2, POLL_MAX_S)


class SlotTable:
    """``<folder>/slots.sqlite``: the leases of every scope; one connection per thread, short IMMEDIATE writes."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder).expanduser().resolve()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / DATABASE
        self._local = threading.local()
        self._writing = WriterLock()
        self._lock = threading.Lock()
        #: This process's waiters: woken when a release lets them in, or handed the slot (``park``).
        self.room = WaitingRoom()
        self._heartbeat = 0.0  # time.monotonic() of this process's last "still waiting"
        #: Write transactions this process began (each try of one that waited for the lock counts).
        self.writes = 0
        self._write(self._create_schema)
        #: Other processes' releases wake this one's waiters through it (polling stays the fallback).
        self.wakeups = Wakeups(self.folder, self.room.wake, enabled=wakeups_enabled())
        #: Looks at the table by ``try_take_many`` in this process (each a read, or a write transaction).
        self.looks = 0
        #: Looks and releases of this process that arrive together, run in one round by one thread.
        self.queue: GroupCommit[_Look | _Release, int | None] = GroupCommit(self._run_round, "slots queue")

    def __repr__(self) -> str:
        return f"SlotTable({str(self.path)!r})"

    @staticmethod
    def _create_schema(db: sqlite3.Connection) -> None:
        db.execute(
            "CREATE TABLE IF NOT EXISTS leases (lease_id TEXT PRIMARY KEY, scope TEXT NOT NULL,"
            " owner TEXT NOT NULL, acquired_at REAL NOT NULL)"
        )
        db.execute("CREATE INDEX IF NOT EXISTS leases_scope ON leases (scope)")
        # The line of processes waiting for a slot: first come, first served across processes.
        db.execute(
            "CREATE TABLE IF NOT EXISTS waiters (ticket INTEGER PRIMARY KEY AUTOINCREMENT, lease_id TEXT UNIQUE"
            " NOT NULL, scope TEXT NOT NULL, owner TEXT NOT NULL, since REAL NOT NULL, seen REAL NOT NULL)"
        )
        db.execute("CREATE INDEX IF NOT EXISTS waiters_scope ON waiters (scope)")

    def _db(self) -> sqlite3.Connection:
        """This thread's connection (a forked child opens its own: SQLite handles must not cross a fork)."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None or self._local.pid != os.getpid():
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            _until_unlocked(lambda: db.execute("PRAGMA journal_mode = WAL"))
            db.execute("PRAGMA synchronous = NORMAL")  # in WAL: durable at checkpoints, never corrupt
            self._local.db, self._local.pid = db, os.getpid()
        return db

    def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` in one IMMEDIATE transaction (the write lock taken up front), retried while locked."""

        def attempt() -> T:
            with self._writing:
                self.writes += 1
                return in_immediate_transaction(self._db(), work)

        return _until_unlocked(attempt)

    def _snapshot(self, db: sqlite3.Connection, scope: str) -> Snapshot:
        """The scope's live leases and its line, as this process judges them (dead owners' rows set apart)."""
        me = lease_owner()
        gone = functools.cache(lambda owner: owner != me and owner_is_gone(owner))  # one look per owner
        now = time.time()
        cutoff = now - FOREIGN_TTL_S
        snap = Snapshot()
        leases = db.execute("SELECT lease_id, owner, acquired_at FROM leases WHERE scope = ?", (scope,))
        for lease_id, owner, at in leases:
            if gone(owner) if _is_local(owner) else at < cutoff:
                snap.stale_leases.append(lease_id)
            else:
                snap.live += 1
        rows = db.execute("SELECT lease_id, owner, since, seen FROM waiters WHERE scope = ? ORDER BY ticket", (scope,))
        for lease_id, owner, since, seen in rows:
            if gone(owner) if _is_local(owner) else since < cutoff:
                snap.stale_waiters.append(lease_id)
            else:
                snap.line.append((lease_id, seen > now - STALLED_S, owner))
        return snap

    def try_take(self, lease: Lease, limit: int, *, look_first: bool = True) -> int:
        """Insert ``lease`` if its scope has a free slot and no live waiter came first: TAKEN.

        Otherwise the lease joins the line (once) and the number of waiters ahead of it comes back: call
        again later. See ``try_take_many``, which this is for one lease.
        """
        return self.try_take_many([lease], limit, look_first=look_first)[0]

    def try_take_many(self, leases: list[Lease], limit: int, *, look_first: bool = True) -> list[int]:
        """``try_take`` for several leases of one scope in one look (and at most one write transaction).

        Leases and waiters of dead processes are deleted on the way. With ``look_first``, it looks without
        the write lock first (in WAL a read never waits for a writer), so that waiters on a full table do
        not queue for the lock; a first try, which writes either way (a lease or a place in line), need not.
        """
        self.looks += 1
        scope = leases[0].scope
        if look_first:
            try:
                decided = decide(self._snapshot(self._db(), scope), leases, limit)
            except sqlite3.OperationalError as exc:
                if not _is_lock_error(exc):
                    raise
                return [limit] * len(leases)
            if not decided.changes:
                if time.monotonic() - self._heartbeat >= HEARTBEAT_S:
                    self._write(self._still_waiting)
                return decided.answers

        def work(db: sqlite3.Connection) -> list[int]:
            snap = self._snapshot(db, scope)
            decided = decide(snap, leases, limit)
            db.executemany("DELETE FROM leases WHERE lease_id = ?", [(i,) for i in snap.stale_leases])
            db.executemany("DELETE FROM waiters WHERE lease_id = ?", [(i,) for i in snap.stale_waiters])
            now = time.time()
            db.executemany("DELETE FROM waiters WHERE lease_id = ?", [(x.lease_id,) for x in decided.taken])
            rows = [(x.lease_id, x.scope, x.owner, now) for x in decided.taken]
            db.executemany("INSERT INTO leases VALUES (?, ?, ?, ?)", rows)
            db.executemany(
                "INSERT INTO waiters (lease_id, scope, owner, since, seen) VALUES (?, ?, ?, ?, ?)",
                [(x.lease_id, x.scope, x.owner, now, now) for x in decided.joined],
            )
            return decided.answers

        return self._write(work)

    def queue_look(self, lease: Lease, limit: int, *, look_first: bool) -> tuple[concurrent.futures.Future[int], bool]:
        """Join the next look at the table (``try_take``'s answer comes in the future) and whether the caller leads.

        The leader starts ``queue`` (``run_queued`` in a thread): waiters that ask while a look is under way
        share the next one, so a process looks once for all its waiters that a release woke, not once for each.
        """
        return cast("tuple[concurrent.futures.Future[int], bool]", self.queue.submit(_Look(lease, limit, look_first)))

    def queue_release(self, lease_id: str, limit: int | None) -> tuple[concurrent.futures.Future[None], bool]:
        """``forget`` in the next round of ``run_queued`` (done when the future is) and whether the caller leads.

        Releases that arrive together are written in one transaction, before the looks of the same round:
        a process's own threads never queue for SQLite's write lock, whose busy wait sleeps in steps of
        milliseconds, and a waiter woken by a release always sees it.
        """
        return cast("tuple[concurrent.futures.Future[None], bool]", self.queue.submit(_Release(lease_id, limit)))

    def run_queued(self) -> None:
        """Run the queued releases, then the looks, round after round until none is left (the leader's thread)."""
        self.queue.drain()

    def _run_round(self, items: list[_Look | _Release]) -> list[int | BaseException | None]:
        """One round: the releases in one transaction, then one look per scope and kind."""
        outcomes: list[int | BaseException | None] = [None] * len(items)
        releases = {i: item for i, item in enumerate(items) if isinstance(item, _Release)}
        if releases:
            try:
                self.forget_many({item.lease_id: item.limit for item in releases.values()}, hand_over=True)
            except Exception as exc:
                outcomes = [exc if i in releases else None for i in range(len(items))]
        groups: dict[tuple[str, int, bool], list[int]] = {}
        for i, item in enumerate(items):
            if isinstance(item, _Look):
                if self.room.granted(item.lease.lease_id):  # a release of this round handed it the slot
                    outcomes[i] = TAKEN
                else:
                    groups.setdefault((item.lease.scope, item.limit, item.look_first), []).append(i)
        for (_, limit, look_first), indexes in groups.items():
            leases = [cast(_Look, items[i]).lease for i in indexes]
            answers: list[int | BaseException]
            try:
                answers = list(self.try_take_many(leases, limit, look_first=look_first))
            except Exception as exc:
                answers = [exc] * len(indexes)
            for i, answer in zip(indexes, answers, strict=True):
                outcomes[i] = answer
        return outcomes

    def _still_waiting(self, db: sqlite3.Connection) -> None:
        """Mark every waiter of this process as seen now (one write a second however many wait)."""
        db.execute("UPDATE waiters SET seen = ? WHERE owner = ?", (time.time(), lease_owner()))
        self._heartbeat = time.monotonic()

    def forget(self, lease_id: str, limit: int | None = None) -> None:
        """Give a lease back, or leave the line; one already gone (released, or reclaimed) is no error.

        With the scope's ``limit``, only the processes whose waiters a look would now let in are woken (their
        owners are read in the same transaction); without it, every waiting process is.
        """
        self.forget_many({lease_id: limit})

    def forget_many(self, limits: dict[str, int | None], *, hand_over: bool = False) -> None:
        """``forget`` for several leases (lease id: its scope's limit) in one transaction.

        With ``hand_over`` (only ``run_queued`` passes it, so that hand-overs and looks never overlap), the
        freed slots go in the same transaction to this process's parked waiters whose turn it is, first come
        first served across processes (a waiter of another process ahead of them keeps its place).
        """
        me = lease_owner()
        parked = self.room.parked() if hand_over else set()

        def work(db: sqlite3.Connection) -> tuple[set[str] | None, list[str]]:
            scopes: dict[str, int | None] = {}
            for lease_id, limit in limits.items():
                found = db.execute(_SCOPE_OF, (lease_id, lease_id)).fetchone()
                db.execute("DELETE FROM leases WHERE lease_id = ?", (lease_id,))
                db.execute("DELETE FROM waiters WHERE lease_id = ?", (lease_id,))
                if found is not None:
                    known = scopes.get(found[0], 0)
                    scopes[found[0]] = None if limit is None or known is None else max(limit, known)
            owners: set[str] | None = set()
            granted: list[str] = []
            for scope, limit in scopes.items():
                if limit is None:
                    owners = None
                    continue
                snap = self._snapshot(db, scope)
                if parked:
                    granted += hand_to_parked(db, scope, snap, limit, parked)
                if owners is not None:
                    owners.update([owner for _, looking, owner in snap.line if looking][: max(0, limit - snap.live)])
            return owners, granted

        owners, granted = self._write(work)
        self.room.grant(granted)
        if owners is None or me in owners:
            self.room.wake()
        self.wakeups.notify(None if owners is None else owners - {me})

    def count(self, scope: str) -> tuple[int, int]:
        """(leases, waiters) that ``scope`` has now, counting dead processes' rows not yet reclaimed."""

        def read() -> tuple[int, int]:
            db = self._db()
            leases = db.execute("SELECT COUNT(*) FROM leases WHERE scope = ?", (scope,)).fetchone()[0]
            return leases, db.execute("SELECT COUNT(*) FROM waiters WHERE scope = ?", (scope,)).fetchone()[0]

        return _until_unlocked(read)


@dataclass(frozen=True)
class _Look:
    lease: Lease
    limit: int
    look_first: bool


@dataclass(frozen=True)
class _Release:
    lease_id: str
    limit: int | None


_TABLES: dict[Path, SlotTable] = {}
_TABLES_LOCK = threading.Lock()


def slot_table(folder: Path | None = None) -> SlotTable:
    """The one ``SlotTable`` of this process for ``folder`` (default: ``default_folder()``)."""
    path = Path(folder if folder is not None else default_folder()).expanduser().resolve()
    with _TABLES_LOCK:
        if path not in _TABLES:
            try:
                _TABLES[path] = SlotTable(path)
            except (OSError, sqlite3.DatabaseError) as exc:
                raise ValidationError(
                    f"slots folder {str(path)!r} cannot hold the slot table ({exc}); "
                    f"set {FOLDER_ENV} to a writable local folder"
                ) from None
        return _TABLES[path]
