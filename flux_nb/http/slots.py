"""The key's active-task slots, shared by every flux_nb process on this machine through file locks.

The API counts active tasks per key (24 at BFL), not per process. Each key on an endpoint (a *scope*) has one
empty lock file, ``<folder>/slots-<scope>.lock`` (a truncated SHA-256 of key and endpoint: never the key), and
slot ``i`` is a lock on its byte ``i`` (``slot_locks``). The kernel keeps the count: a killed process's slots
are free at once, and nothing is written. Locks belong to a process, so each keeps one descriptor per file and
counts its own slots; its waiters stand in one line, whose first looks for a free byte after pauses growing to
``POLL_MAX_S``. A slot given back goes to the next waiter of the same process at once, unless another process
waits too (it holds a shared lock on byte ``WANTED``): then whoever looks first takes it. When no slot came for
``say_after`` seconds and other processes hold some, one log line names them. Without file locks (Windows) the
limit holds per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from flux_nb.errors import FluxTimeout, ValidationError
from flux_nb.http import slot_locks
from flux_nb.protocol import MAX_ACTIVE_TASKS, is_bfl_hostname

FOLDER_ENV = "FLUX_NB_SLOTS_DIR"
SAY_AFTER_S = 30.0  # the session setting ``slots_say_after``
POLL_FIRST_S, POLL_MAX_S = 0.001, 0.025
WANTED = 1 << 20  # past every slot

logger = logging.getLogger("flux_nb.slots")


def default_folder() -> Path:
    """``$FLUX_NB_SLOTS_DIR``, else ``$XDG_CACHE_HOME/flux_nb``, else ``~/.cache/flux_nb``."""
    if folder := os.environ.get(FOLDER_ENV):
        return Path(folder).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "flux_nb"


def scope_of(api_key: str | None, endpoint: str) -> str:
    """A key on an endpoint as a truncated SHA-256 (the key cannot be read from it); every BFL host is one endpoint."""
    parts = urlsplit(endpoint.strip() if "://" in endpoint else f"https://{endpoint.strip()}")
    try:
        host, port = (parts.hostname or "").lower(), f":{parts.port}" if parts.port else ""
    except ValueError:
        raise ValidationError(f"endpoint {endpoint!r} is not a URL with a valid port") from None
    where = "bfl.ai" if is_bfl_hostname(host) else f"{parts.scheme.lower()}://{host}{port}{parts.path.rstrip('/')}"
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
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    event: asyncio.Event = field(default_factory=asyncio.Event)
    lease: Lease | None = None

    def wake(self) -> None:
        with contextlib.suppress(RuntimeError):  # its loop has closed
            self.loop.call_soon_threadsafe(self.event.set)


class _LockFile:
    """This process's side of one lock file: its descriptor, the slots it holds, its line (methods: under ``lock``)."""

    def __init__(self, path: Path, scope: str) -> None:
        self.fd, self.scope, self.lock = slot_locks.open_file(path), scope, threading.Lock()
        self.held: dict[int, Lease] = {}
        self.line: deque[_Waiter] = deque()
        self.wanting = self.told = False  # told: the current stall was told already
        self.moved = time.monotonic()  # when a slot last came to a waiter, or the line formed

    def serve(self) -> None:
        """Give free slots to the waiters in line, in order; the new first one looks from now on."""
        granted = False
        while self.line and (index := self._free(self.line[0].limit)) is not None:
            waiter = self.line.popleft()
            waiter.lease = self.held[index] = Lease(self.scope, index)
            granted, self.told, self.moved = True, False, time.monotonic()
            waiter.wake()
        if granted and self.line:
            self.line[0].wake()
        self._want()

    def _free(self, limit: int) -> int | None:
        return next((i for i in range(limit) if i not in self.held and slot_locks.try_lock(self.fd, i)), None)

    def leave(self, waiter: _Waiter) -> None:
        if self.line[0] is waiter and len(self.line) > 1:
            self.line[1].wake()
        self.line.remove(waiter)
        self._want()

    def _want(self) -> None:
        if bool(self.line) != self.wanting:
            self.wanting = bool(self.line)
            if self.line:
                slot_locks.try_lock(self.fd, WANTED, shared=True)
            else:
                slot_locks.unlock(self.fd, WANTED)

    def give_back(self, lease: Lease) -> None:
        with self.lock:
            if self.held.get(lease.index) is lease:  # not given back already
                del self.held[lease.index]
                slot_locks.unlock(self.fd, lease.index)
                if self.line and slot_locks.holder(self.fd, WANTED) is None:  # nobody else waits: ours next
                    self.serve()

    def holders(self, limit: int) -> Counter[int]:
        """Slots held now by each pid, this one's included (-1: processes the OS does not name)."""
        with self.lock:
            mine = set(self.held)
        others = [slot_locks.holder(self.fd, i) for i in range(limit) if i not in mine]
        return Counter([os.getpid()] * len(mine) + [pid for pid in others if pid is not None])


_FILES: dict[Path, _LockFile] = {}  # one descriptor per file: closing another would drop this process's locks
_FILES_LOCK = threading.Lock()


def _forget_after_fork() -> None:
    """A forked child holds none of its parent's locks: it starts with no slots and no waiters."""
    global _FILES_LOCK
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
        """The slots of ``api_key`` on ``endpoint`` (a base URL) in ``folder`` (default: ``default_folder()``)."""
        scope, folder = scope_of(api_key, endpoint), Path(folder or default_folder()).expanduser().resolve()
        return cls(folder / f"slots-{scope}.lock", scope, limit, say_after)

    def __repr__(self) -> str:
        return f"SharedSlots(limit={self.limit}, path={str(self.path)!r})"

    def _file(self) -> _LockFile:
        with _FILES_LOCK:
            if self.path not in _FILES:
                try:
                    _FILES[self.path] = _LockFile(self.path, self.scope)
                except OSError as exc:
                    raise ValidationError(
                        f"slots folder {str(self.path.parent)!r} cannot hold the lock file ({exc.strerror or exc}); "
                        f"set {FOLDER_ENV} to a writable local folder"
                    ) from None
            return _FILES[self.path]

    def holders(self) -> Counter[int]:
        """Slots of this key and endpoint held now by each process (pid; -1 where the OS does not say)."""
        return self._file().holders(self.limit)

    def held(self) -> int:
        """Slots of this key and endpoint held now, over all processes."""
        return sum(self.holders().values())

    async def acquire(self, timeout: float | None = None) -> Lease:
        """Wait for a free slot and take it; FluxTimeout after ``timeout`` seconds. A cancelled or timed-out
        acquire leaves nothing behind."""
        file, started, waiter, pause = self._file(), time.monotonic(), _Waiter(self.limit), POLL_FIRST_S
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
                waits = [pause * (0.5 + random.random())] if first else []
                waits += [] if timeout is None else [timeout - waited]
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(waits, default=None)):  # unlike wait_for, never swallows a cancel
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
        """One log line naming the processes that hold the slots; none when this one holds them all."""
        me, holders = os.getpid(), self.holders()
        names = {me: "this process", -1: "unnamed processes"}
        if not set(holders) <= {me}:
            who = ", ".join(f"{names.get(pid, f'pid {pid}')} ({n})" for pid, n in holders.most_common())
            logger.warning(
                "flux_nb: no shared slot came free for this process in %.0f s (the key's %d active tasks); held by "
                "%s. End a holder that is stopped or hung, or stop sharing in this process: the setting share_slots "
                "off, or a slots folder of its own (%s)",
                *(stalled, self.limit, who, FOLDER_ENV),
            )

    async def try_acquire(self) -> Lease | None:
        """A slot if one is free now (and no waiter of this process came first), else None."""
        with contextlib.suppress(FluxTimeout):
            return await self.acquire(timeout=0)
        return None

    def release(self, lease: Lease) -> None:
        """Give ``lease`` back; releasing it twice is no error."""
        self._file().give_back(lease)

    def release_later(self, lease: Lease, delay: float) -> asyncio.Task[None] | None:
        """Give ``lease`` back after ``delay`` seconds (at once if not positive), not waiting here: for a task the
        API may still run though this process stopped following it (a lost submit answer, a cancelled wait)."""
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

    @contextlib.asynccontextmanager
    async def slot(self, timeout: float | None = None) -> AsyncIterator[Lease]:
        """Hold one slot for the ``async with`` block; it is given back however the block ends."""
        lease = await self.acquire(timeout)
        try:
            yield lease
        finally:
            self.release(lease)


__all__ = ["FOLDER_ENV", "SAY_AFTER_S", "Lease", "SharedSlots", "default_folder", "scope_of"]
