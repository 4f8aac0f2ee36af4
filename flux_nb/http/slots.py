"""The key's active-task slots, shared by every flux_nb process on this machine.

The API allows a number of active tasks per key (24 at BFL), not per process: two notebooks that each
keep 24 in flight live on 429s. Each task in flight holds a *lease*, one row in a small SQLite table
(WAL) in the user's cache folder; a process takes a lease only while fewer than ``limit`` live leases
exist for its key and endpoint, in one IMMEDIATE transaction, so the count and the insert are atomic
across threads and processes.

Waiting processes stand in one line (the ``waiters`` table), so a slot goes to whoever asked first in
any process, not to whoever happens to look first: two notebooks sweeping at once share the slots.
A waiter looks again after a short jittered pause; one of this process's releases wakes it at once. A
waiter whose process has not looked for ``STALLED_S`` (stopped, or its event loop blocked) is passed by.

A lease names its owner as ``host:pid@start`` (the process start time, so a recycled pid is not taken
for its predecessor: the rule of ``flux_nb.history.store.process_owner``, which this layer may not
import). Leases and waiters of a process of this host that no longer runs are deleted by whoever looks
next, so a process killed while holding slots gives them back at the next acquire elsewhere. Those of
other hosts (a shared home folder) cannot be checked and expire after ``FOREIGN_TTL_S``.

    <folder>/slots.sqlite    ``leases`` (lease_id, scope, owner, acquired_at) and ``waiters`` (ticket, ...)

The scope is a truncated SHA-256 of the key and the endpoint: the key itself is never written.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import math
import os
import random
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from flux_nb.errors import FluxTimeout, ValidationError
from flux_nb.protocol import MAX_ACTIVE_TASKS, is_bfl_hostname

DATABASE = "slots.sqlite"
FOLDER_ENV = "FLUX_NB_SLOTS_DIR"
# SQLite's own wait for the write lock; a lock error past it is retried, never raised.
BUSY_TIMEOUT_S = 10.0
# Leases of another host cannot be checked for liveness: they count until they are this old.
FOREIGN_TTL_S = 3600.0
# A waiter looks at the table again after a jittered pause growing from the first to the last figure.
POLL_FIRST_S = 0.005
POLL_MAX_S = 0.1
# ... except the first in line, which looks more often: it is the one a slot freed by another process goes to.
POLL_HEAD_S = 0.02
# A waiter's process says it is still looking this often; one silent for STALLED_S (a stopped process,
# a blocked event loop) no longer holds up the line behind it, until it looks again.
HEARTBEAT_S = 1.0
STALLED_S = 10.0
# What ``SlotTable.try_take`` answers when it took the slot (else: how many waiters are ahead).
TAKEN = -1

T = TypeVar("T")


def default_folder() -> Path:
    """``$FLUX_NB_SLOTS_DIR``, else ``$XDG_CACHE_HOME/flux_nb``, else ``~/.cache/flux_nb``."""
    if folder := os.environ.get(FOLDER_ENV):
        return Path(folder).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "flux_nb"


def scope_of(api_key: str | None, endpoint: str) -> str:
    """The table's name for a key on an endpoint: a truncated SHA-256, from which the key cannot be read.

    Every BFL host (global and regional) is one endpoint: the API counts active tasks per key.
    """
    parts = urlsplit(endpoint.strip() if "://" in endpoint else f"https://{endpoint.strip()}")
    try:
        host, port = (parts.hostname or "").lower(), f":{parts.port}" if parts.port else ""
    except ValueError:
        raise ValidationError(f"endpoint {endpoint!r} is not a URL with a valid port") from None
    where = f"{parts.scheme.lower()}://{host}{port}{parts.path.rstrip('/')}"
    where = "bfl.ai" if is_bfl_hostname(host) else where
    material = b"flux_nb slots\0" + (api_key or "").encode() + b"\0" + where.encode()
    return hashlib.sha256(material).hexdigest()[:32]


# -- owners (as flux_nb.history.store names them) -------------------------------------------------


def _start_time(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from /proc), or None where that is unknown."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


@functools.cache
def _owner_of(pid: int) -> str:
    start = _start_time(pid)
    return f"{socket.gethostname()}:{pid}" + (f"@{start}" if start else "")


def lease_owner() -> str:
    """This process as a lease's owner: ``host:pid``, plus ``@start`` where the start time is known."""
    return _owner_of(os.getpid())


def owner_is_gone(owner: str) -> bool:
    """True when ``owner`` is a process of this host that no longer runs (other hosts: not known, False)."""
    pid, _, start = owner.rpartition(":")[2].partition("@")
    if not _is_local(owner) or not pid.isdigit():
        return False
    if start and _start_time(int(pid)) not in (start, None):
        return True  # that pid now belongs to another process
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


def _is_local(owner: str) -> bool:
    """True for an owner whose liveness can be checked: one of this host (not on Windows, where signal 0 is Ctrl-C)."""
    return os.name != "nt" and owner.rpartition(":")[0] == socket.gethostname()


# -- the table -------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class Lease:
    """One slot held by this process until released."""

    lease_id: str
    scope: str
    owner: str
    acquired_at: float


class SlotTable:
    """``<folder>/slots.sqlite``: the leases of every scope; one connection per thread, short IMMEDIATE writes."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder).expanduser().resolve()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / DATABASE
        self._local = threading.local()
        self._lock = threading.Lock()
        self._wakers: dict[asyncio.Event, asyncio.AbstractEventLoop] = {}
        self._heartbeat = 0.0  # time.monotonic() of this process's last "still waiting"
        self._write(self._create_schema)

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
            db = self._db()
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

        return _until_unlocked(attempt)

    def _look(self, db: sqlite3.Connection, lease: Lease, limit: int) -> _Look:
        me = lease_owner()
        gone = functools.cache(lambda owner: owner != me and owner_is_gone(owner))  # one look per owner
        now = time.time()
        cutoff = now - FOREIGN_TTL_S
        leases = db.execute(
            "SELECT lease_id, owner, acquired_at FROM leases WHERE scope = ?", (lease.scope,)
        ).fetchall()
        waiters = db.execute(
            "SELECT lease_id, owner, since, seen FROM waiters WHERE scope = ? ORDER BY ticket", (lease.scope,)
        ).fetchall()
        look = _Look()
        for lease_id, owner, at in leases:
            if gone(owner) if _is_local(owner) else at < cutoff:
                look.stale_leases.append(lease_id)
            else:
                look.live += 1
        for lease_id, owner, since, seen in waiters:
            if lease_id == lease.lease_id:
                look.in_line = True
                break
            if gone(owner) if _is_local(owner) else since < cutoff:
                look.stale_waiters.append(lease_id)
            elif seen > now - STALLED_S:
                look.ahead += 1
        look.free = look.live + look.ahead < limit
        return look

    def try_take(self, lease: Lease, limit: int, *, look_first: bool = True) -> int:
        """Insert ``lease`` if its scope has a free slot and no live waiter of this host came first: TAKEN.

        Otherwise the lease joins the line (once) and the number of waiters ahead of it comes back: call
        again later. Leases and waiters of dead processes are deleted on the way. With ``look_first``, it
        looks without the write lock first (in WAL a read never waits for a writer), so that waiters on a
        full table do not queue for the lock; a first try, which writes either way (a lease or a place in
        line), need not.
        """
        if look_first:
            try:
                look = self._look(self._db(), lease, limit)
            except sqlite3.OperationalError as exc:
                if not _is_lock_error(exc):
                    raise
                return limit
            if look.in_line and not look.free:
                if time.monotonic() - self._heartbeat >= HEARTBEAT_S:
                    self._write(self._still_waiting)
                return look.ahead

        def work(db: sqlite3.Connection) -> int:
            look = self._look(db, lease, limit)
            db.executemany("DELETE FROM leases WHERE lease_id = ?", [(i,) for i in look.stale_leases])
            db.executemany("DELETE FROM waiters WHERE lease_id = ?", [(i,) for i in look.stale_waiters])
            if look.free:
                db.execute("DELETE FROM waiters WHERE lease_id = ?", (lease.lease_id,))
                db.execute(
                    "INSERT INTO leases VALUES (?, ?, ?, ?)", (lease.lease_id, lease.scope, lease.owner, time.time())
                )
            elif not look.in_line:
                now = time.time()
                db.execute(
                    "INSERT INTO waiters (lease_id, scope, owner, since, seen) VALUES (?, ?, ?, ?, ?)",
                    (lease.lease_id, lease.scope, lease.owner, now, now),
                )
            return TAKEN if look.free else look.ahead

        return self._write(work)

    def _still_waiting(self, db: sqlite3.Connection) -> None:
        """Mark every waiter of this process as seen now (one write a second however many wait)."""
        db.execute("UPDATE waiters SET seen = ? WHERE owner = ?", (time.time(), lease_owner()))
        self._heartbeat = time.monotonic()

    def forget(self, lease_id: str) -> None:
        """Give a lease back, or leave the line; one already gone (released, or reclaimed) is no error."""

        def work(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM leases WHERE lease_id = ?", (lease_id,))
            db.execute("DELETE FROM waiters WHERE lease_id = ?", (lease_id,))

        self._write(work)
        self._wake()

    def count(self, scope: str) -> tuple[int, int]:
        """(leases, waiters) that ``scope`` has now, counting dead processes' rows not yet reclaimed."""

        def read() -> tuple[int, int]:
            db = self._db()
            leases = db.execute("SELECT COUNT(*) FROM leases WHERE scope = ?", (scope,)).fetchone()[0]
            return leases, db.execute("SELECT COUNT(*) FROM waiters WHERE scope = ?", (scope,)).fetchone()[0]

        return _until_unlocked(read)

    # -- waking this process's waiters when it gives a lease back --------------------------------

    def waiting_room(self) -> asyncio.Event:
        """An event that is set (from any thread) when this process next gives a lease back or leaves the line."""
        event = asyncio.Event()
        with self._lock:
            self._wakers[event] = asyncio.get_running_loop()
        return event

    def leave_room(self, event: asyncio.Event) -> None:
        with self._lock:
            self._wakers.pop(event, None)

    def _wake(self) -> None:
        with self._lock:
            wakers, self._wakers = self._wakers, {}
        for event, loop in wakers.items():
            with contextlib.suppress(RuntimeError):  # its loop has closed
                loop.call_soon_threadsafe(event.set)


@dataclass
class _Look:
    """What a slot table says for one lease, as ``SlotTable._look`` reads it."""

    live: int = 0
    stale_leases: list[str] = field(default_factory=list)
    stale_waiters: list[str] = field(default_factory=list)
    ahead: int = 0
    in_line: bool = False
    free: bool = False


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


class SharedSlots:
    """The active-task slots of one key on one endpoint, shared by every flux_nb process on this machine.

    >>> slots = SharedSlots.for_key(api_key, "https://api.bfl.ai")  # doctest: +SKIP
    >>> async with slots.slot() as lease:  # doctest: +SKIP
    ...     task = await client.submit(request)
    """

    def __init__(self, table: SlotTable, scope: str, limit: int = MAX_ACTIVE_TASKS) -> None:
        if limit < 1:
            raise ValidationError(f"slot limit must be at least 1, got {limit}")
        self.table = table
        self.scope = scope
        self.limit = limit
        self._later: set[asyncio.Future[None]] = set()
        self._held: ContextVar[tuple[Lease, ...]] = ContextVar(f"flux_nb_slots_{scope}", default=())

    @classmethod
    def for_key(
        cls, api_key: str | None, endpoint: str, limit: int = MAX_ACTIVE_TASKS, folder: Path | None = None
    ) -> SharedSlots:
        """The slots of ``api_key`` on ``endpoint`` (a base URL; every BFL host counts as one endpoint)."""
        return cls(slot_table(folder), scope_of(api_key, endpoint), limit)

    def __repr__(self) -> str:
        return f"SharedSlots(limit={self.limit}, folder={str(self.table.folder)!r})"

    def held(self) -> int:
        """Leases this key and endpoint hold now, over all processes (dead ones' until reclaimed)."""
        return self.table.count(self.scope)[0]

    async def acquire(self, timeout: float | None = None) -> Lease:
        """Wait for a free slot (first come, first served across processes) and take it.

        Raises FluxTimeout after ``timeout`` seconds (None: wait as long as it takes). A cancelled or
        timed-out acquire leaves nothing behind, not even when its last look at the table was under way.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        lease = Lease(uuid.uuid4().hex, self.scope, lease_owner(), time.time())
        pause = POLL_FIRST_S
        step: asyncio.Future[int] | None = None
        try:
            while True:
                woken = self.table.waiting_room()  # before looking, so a release during the look wakes us
                try:
                    # The first try writes either way (the lease or a place in line): no need to look first.
                    call = functools.partial(self.table.try_take, lease, self.limit, look_first=step is not None)
                    step = asyncio.ensure_future(asyncio.to_thread(call))
                    ahead = await asyncio.shield(step)
                    if ahead == TAKEN:
                        return lease
                    left = math.inf if deadline is None else deadline - time.monotonic()
                    if left <= 0:
                        raise FluxTimeout(f"no free slot of {self.limit} active tasks within {timeout:g} s")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(woken.wait(), min(pause * (0.5 + random.random()), left))
                finally:
                    self.table.leave_room(woken)
                pause = min(pause * 2, POLL_HEAD_S if ahead == 0 else POLL_MAX_S)
        except asyncio.CancelledError:
            # The look may still be running in its thread: undo it (lease or place in line) once it ends.
            forget = functools.partial(_forget_in_background, self.table, lease.lease_id)
            if step is None:
                forget()
            else:
                step.add_done_callback(lambda _: forget())
            raise
        except BaseException:
            await asyncio.to_thread(self.table.forget, lease.lease_id)
            raise

    async def try_acquire(self) -> Lease | None:
        """A slot if one is free now (nobody waiting first), else None, leaving no place in line behind."""
        try:
            return await self.acquire(timeout=0)
        except FluxTimeout:
            return None

    async def release(self, lease: Lease) -> None:
        """Give ``lease`` back; releasing it twice, or after it was reclaimed, is no error.

        The delete runs in a thread that finishes even when the caller is cancelled meanwhile.
        """
        await asyncio.to_thread(self.table.forget, lease.lease_id)

    def release_later(self, lease: Lease, delay: float) -> asyncio.Task[None]:
        """Give ``lease`` back after ``delay`` seconds, not waiting here: for a task the API may still be running
        though this process stopped following it (a submit whose answer was lost, a cancelled wait)."""

        async def later() -> None:
            await asyncio.sleep(delay)
            await self.release(lease)

        task = asyncio.ensure_future(later())
        self._later.add(task)  # held, or the loop could drop it half way
        task.add_done_callback(self._later.discard)
        return task

    @asynccontextmanager
    async def slot(self, timeout: float | None = None) -> AsyncIterator[Lease]:
        """Hold one slot for the ``async with`` block; it is given back however the block ends."""
        lease = await self.acquire(timeout)
        try:
            yield lease
        finally:
            await self.release(lease)

    async def __aenter__(self) -> Lease:
        lease = await self.acquire()
        self._held.set((*self._held.get(), lease))
        return lease

    async def __aexit__(self, *exc: object) -> None:
        *rest, lease = self._held.get()
        self._held.set(tuple(rest))
        await self.release(lease)


def _forget_in_background(table: SlotTable, lease_id: str) -> None:
    threading.Thread(target=table.forget, args=(lease_id,), name="flux_nb-slots-forget", daemon=True).start()
