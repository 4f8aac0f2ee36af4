"""The key's active-task slots, shared by every flux_nb process on this machine through file locks.

The API allows a number of active tasks per key (24 at BFL), not per process: two notebooks that each keep 24
in flight live on 429s. Each key on an endpoint (a *scope*) has one lock file, named by a truncated SHA-256 of
the key and the endpoint (the key itself is never written), and slot ``i`` is a lock on its byte ``i``::

    <folder>/slots-<scope>.lock    empty; only its locks count (``flux_nb.http.slot_locks``)

The kernel keeps the count: a process killed while holding slots gives them back at once, nothing is written
while slots are taken or given back, and there is no table to repair. Locks belong to a process, so each
process keeps one descriptor per lock file and counts its own slots. Its waiters stand in one line, first come
first served; the first in line looks for a free byte, again after a short pause that grows to ``POLL_MAX_S``.
A slot given back goes at once to the next waiter of the same process, unless a waiter of another process
wants one too (each waiting process holds a shared lock on the ``WANTED`` byte): then whoever looks first takes
it. When no slot came to a waiter for ``say_after`` seconds and other processes hold some, one log line names them.
Where there are no file locks (Windows), the limit holds per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import random
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from flux_nb.errors import FluxTimeout, ValidationError
from flux_nb.http import slot_locks
from flux_nb.protocol import MAX_ACTIVE_TASKS, is_bfl_hostname

FOLDER_ENV = "FLUX_NB_SLOTS_DIR"
# A waiter that waited this long says who holds the slots (``Flux.slots_say_after``).
SAY_AFTER_S = 30.0
# The first in line looks for a free slot again after a jittered pause growing from the first to the last figure.
POLL_FIRST_S = 0.001
POLL_MAX_S = 0.025
# The byte past every slot that waiting processes hold a shared lock on.
WANTED = 1 << 20

logger = logging.getLogger("flux_nb.slots")


def default_folder() -> Path:
    """``$FLUX_NB_SLOTS_DIR``, else ``$XDG_CACHE_HOME/flux_nb``, else ``~/.cache/flux_nb``."""
    if folder := os.environ.get(FOLDER_ENV):
        return Path(folder).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "flux_nb"


def scope_of(api_key: str | None, endpoint: str) -> str:
    """A key on an endpoint as a truncated SHA-256, from which the key cannot be read.

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


@dataclass(frozen=True, eq=False)
class Lease:
    """One slot held by this process until released: byte ``index`` of its scope's lock file."""

    scope: str
    index: int


@dataclass(eq=False)
class _Waiter:
    limit: int
    loop: asyncio.AbstractEventLoop
    event: asyncio.Event = field(default_factory=asyncio.Event)
    lease: Lease | None = None

    def wake(self) -> None:
        with contextlib.suppress(RuntimeError):  # its loop has closed
            self.loop.call_soon_threadsafe(self.event.set)


class _LockFile:
    """This process's side of one lock file: its descriptor, the slots it holds, and its waiters in line."""

    def __init__(self, path: Path, scope: str) -> None:
        self.path, self.scope = path, scope
        self.fd = slot_locks.open_file(path)
        self.lock = threading.Lock()
        self.held: dict[int, Lease] = {}
        self.line: deque[_Waiter] = deque()
        self.wanting = False
        self.moved = time.monotonic()  # when a slot last came to a waiter, or the line last formed
        self.told = False  # the current stall was told already

    def take(self, limit: int) -> Lease | None:
        """A free slot below ``limit``, locked for this process (under ``lock``)."""
        for index in range(limit):
            if index not in self.held and slot_locks.try_lock(self.fd, index):
                lease = self.held[index] = Lease(self.scope, index)
                return lease
        return None

    def serve(self) -> None:
        """Give free slots to the waiters in line, in order; wake the new first one (under ``lock``)."""
        granted = False
        while self.line and (lease := self.take(self.line[0].limit)):
            waiter = self.line.popleft()
            waiter.lease, granted, self.told, self.moved = lease, True, False, time.monotonic()
            waiter.wake()
        if granted and self.line:
            self.line[0].wake()  # it looks from now on
        self.want(bool(self.line))

    def leave(self, waiter: _Waiter) -> None:
        """Take ``waiter`` out of the line (under ``lock``)."""
        first = self.line[0] is waiter
        self.line.remove(waiter)
        if first and self.line:
            self.line[0].wake()
        self.want(bool(self.line))

    def want(self, waiting: bool) -> None:
        if waiting != self.wanting:
            self.wanting = waiting
            if waiting:
                slot_locks.try_lock(self.fd, WANTED, shared=True)
            else:
                slot_locks.unlock(self.fd, WANTED)

    def give_back(self, lease: Lease) -> None:
        with self.lock:
            if self.held.get(lease.index) is not lease:
                return  # given back already
            del self.held[lease.index]
            slot_locks.unlock(self.fd, lease.index)
            if self.line and slot_locks.holder(self.fd, WANTED) is None:  # nobody else waits: ours next
                self.serve()

    def holders(self, limit: int) -> Counter[int]:
        """Slots held now by each pid (this one's included; -1: held by processes the OS does not name)."""
        with self.lock:
            mine = set(self.held)
        others = (slot_locks.holder(self.fd, i) for i in range(limit) if i not in mine)
        return Counter([os.getpid()] * len(mine) + [pid for pid in others if pid is not None])


_FILES: dict[Path, _LockFile] = {}
_FILES_LOCK = threading.Lock()


def _lock_file(path: Path, scope: str) -> _LockFile:
    """This process's ``_LockFile`` for ``path`` (one descriptor: closing another would drop its locks)."""
    with _FILES_LOCK:
        if path not in _FILES:
            try:
                _FILES[path] = _LockFile(path, scope)
            except OSError as exc:
                raise ValidationError(
                    f"slots folder {str(path.parent)!r} cannot hold the lock file ({exc.strerror or exc}); "
                    f"set {FOLDER_ENV} to a writable local folder"
                ) from None
        return _FILES[path]


def _forget_after_fork() -> None:
    """A forked child holds none of its parent's locks: it starts with no lock files, slots or waiters."""
    global _FILES_LOCK
    for file in _FILES.values():
        if file.fd is not None:
            with contextlib.suppress(OSError):
                os.close(file.fd)  # the child holds no locks on it: closing drops none of the parent's
    _FILES.clear()
    _FILES_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


class SharedSlots:
    """The active-task slots of one key on one endpoint, shared by every flux_nb process on this machine.

    >>> slots = SharedSlots.for_key(api_key, "https://api.bfl.ai")  # doctest: +SKIP
    >>> async with slots.slot():  # doctest: +SKIP
    ...     task = await client.submit(request)
    """

    def __init__(self, path: Path, scope: str, limit: int = MAX_ACTIVE_TASKS, say_after: float = SAY_AFTER_S) -> None:
        if not 1 <= limit < WANTED:
            raise ValidationError(f"slot limit must be between 1 and {WANTED - 1}, got {limit}")
        self.path, self.scope, self.limit, self.say_after = path, scope, limit, say_after
        self._later: dict[asyncio.Task[None], Lease] = {}
        self._file()  # a folder that cannot hold the file fails here, before any request

    @classmethod
    def for_key(
        cls,
        api_key: str | None,
        endpoint: str,
        limit: int = MAX_ACTIVE_TASKS,
        folder: Path | None = None,
        say_after: float = SAY_AFTER_S,
    ) -> SharedSlots:
        """The slots of ``api_key`` on ``endpoint`` (a base URL; every BFL host counts as one endpoint)."""
        scope = scope_of(api_key, endpoint)
        folder = Path(folder if folder is not None else default_folder()).expanduser().resolve()
        return cls(folder / f"slots-{scope}.lock", scope, limit, say_after)

    def __repr__(self) -> str:
        return f"SharedSlots(limit={self.limit}, path={str(self.path)!r})"

    def _file(self) -> _LockFile:
        return _lock_file(self.path, self.scope)

    def holders(self) -> Counter[int]:
        """Slots of this key and endpoint held now by each process (pid; -1 where the OS does not say)."""
        return self._file().holders(self.limit)

    def held(self) -> int:
        """Slots of this key and endpoint held now, over all processes."""
        return sum(self.holders().values())

    async def acquire(self, timeout: float | None = None) -> Lease:
        """Wait for a free slot and take it; after ``timeout`` seconds (None: no limit) raise FluxTimeout.

        A cancelled or timed-out acquire leaves nothing behind.
        """
        file, started = self._file(), time.monotonic()
        waiter, pause = _Waiter(self.limit, asyncio.get_running_loop()), POLL_FIRST_S
        with file.lock:
            if not file.line:
                file.moved = started
            file.line.append(waiter)
            file.serve()
            first = bool(file.line) and file.line[0] is waiter
        try:
            while waiter.lease is None:
                waited = time.monotonic() - started
                if timeout is not None and waited >= timeout:
                    raise FluxTimeout(f"no free slot of {self.limit} active tasks within {timeout:g} s")
                wait = pause * (0.5 + random.random()) if first else math.inf
                wait = min(wait, math.inf if timeout is None else timeout - waited)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(None if wait == math.inf else wait):  # a cancel is never swallowed
                        await waiter.event.wait()
                waiter.event.clear()
                pause = min(pause * 2, POLL_MAX_S) if first else POLL_FIRST_S
                with file.lock:
                    if waiter.lease is None:
                        file.serve()
                    first = bool(file.line) and file.line[0] is waiter
                    stalled = time.monotonic() - file.moved
                    tell = first and not file.told and stalled >= self.say_after
                    file.told |= tell
                if tell:
                    self._tell(stalled)
            return waiter.lease
        except BaseException:
            with file.lock:
                if waiter.lease is None:
                    file.leave(waiter)
            if waiter.lease is not None:  # handed a slot as it stopped waiting
                file.give_back(waiter.lease)
            raise

    def _tell(self, stalled: float) -> None:
        """One log line: which processes hold the slots this one waits for, and how to go on.

        Nothing when this process holds them all: its own tasks end or time out.
        """
        me, holders = os.getpid(), self.holders()
        if set(holders) <= {me}:
            return
        who = ", ".join(
            f"{'this process' if pid == me else f'pid {pid}' if pid > 0 else 'unnamed processes'} ({count})"
            for pid, count in holders.most_common()
        )
        logger.warning(
            "flux_nb: no shared slot came free for this process in %.0f s (the key's %d active tasks); held by %s. "
            "End a holder that is stopped or hung, or stop sharing in this process: "
            "Flux.share_slots = False, or a slots folder of its own (%s)",
            stalled,
            self.limit,
            who,
            FOLDER_ENV,
        )

    async def try_acquire(self) -> Lease | None:
        """A slot if one is free now (and no waiter of this process came first), else None."""
        try:
            return await self.acquire(timeout=0)
        except FluxTimeout:
            return None

    def release(self, lease: Lease) -> None:
        """Give ``lease`` back; releasing it twice is no error."""
        self._file().give_back(lease)

    def release_later(self, lease: Lease, delay: float) -> asyncio.Task[None] | None:
        """Give ``lease`` back after ``delay`` seconds (at once when not positive), not waiting here: for a task the
        API may still be running though this process stopped following it (a lost submit answer, a cancelled wait)."""
        if delay <= 0:
            self.release(lease)
            return None

        async def later() -> None:
            await asyncio.sleep(delay)
            self.release(lease)

        task = asyncio.ensure_future(later())
        self._later[task] = lease  # held, or the loop could drop it half way
        task.add_done_callback(lambda done: self._later.pop(done, None))
        return task

    async def release_pending(self) -> int:
        """Give back now every lease ``release_later`` still holds (before its loop closes); how many."""
        later, self._later = self._later, {}
        for task, lease in later.items():
            task.cancel()
            self.release(lease)
        return len(later)

    @asynccontextmanager
    async def slot(self, timeout: float | None = None) -> AsyncIterator[Lease]:
        """Hold one slot for the ``async with`` block; it is given back however the block ends."""
        lease = await self.acquire(timeout)
        try:
            yield lease
        finally:
            self.release(lease)


__all__ = ["FOLDER_ENV", "SAY_AFTER_S", "Lease", "SharedSlots", "default_folder", "scope_of"]
