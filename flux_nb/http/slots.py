"""The key's active-task slots, shared by every flux_nb process on this machine.

The API allows a number of active tasks per key (24 at BFL), not per process: two notebooks that each
keep 24 in flight live on 429s. Each task in flight holds a *lease*, one row in a small SQLite table
(WAL) in the user's cache folder; a process takes a lease only while fewer than ``limit`` live leases
exist for its key and endpoint, in one IMMEDIATE transaction, so the count and the insert are atomic
across threads and processes.

Waiting processes stand in one line (the ``waiters`` table), so a slot goes to whoever asked first in
any process, not to whoever happens to look first: two notebooks sweeping at once share the slots.
A release hands its slot over in its own transaction when a waiter of its own process is next in line
(no look, no second write), and the releases a process makes at the same moment share that transaction
(``SlotTable.queue_release``). Waiters of other processes whose turn it is are woken through their wake-up
socket (``flux_nb.http.slot_wakeups``: one AF_UNIX datagram socket per waiting process in ``<folder>/wake/``)
and take the slot themselves: a process that stopped is never handed one it would hold while stopped.
The table stays the only truth: a wake-up only says "look again", and a waiter also looks on its own
after a short jittered pause (every 0.5 s at most while its process listens; more often where wake-ups
are off, ``FLUX_NB_SLOT_WAKEUPS=0``, or missing, as on Windows). The waiters of one process that look at
the same moment share one look (``SlotTable.queue_look``): one read, and at most one write, however many
a release woke. A waiter whose process has not looked for ``STALLED_S`` (stopped, or its event loop
blocked) is passed by.

A lease names its owner as ``host:pid@start`` (the process start time, so a recycled pid is not taken
for its predecessor: the rule of ``flux_nb.owners``, which the history uses too). Leases and waiters of
a process of this host that no longer runs are deleted by whoever looks next, so a process killed while
holding slots gives them back at the next acquire elsewhere. Those of other hosts (a shared home folder)
cannot be checked and expire after ``FOREIGN_TTL_S``.

    <folder>/slots.sqlite    ``leases`` (lease_id, scope, owner, acquired_at) and ``waiters`` (ticket, ...)
    <folder>/wake/*.sock     the wake-up sockets of the processes waiting now

The scope is a truncated SHA-256 of the key and the endpoint: the key itself is never written.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import hashlib
import math
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from pathlib import Path
from urllib.parse import urlsplit

from flux_nb.errors import FluxTimeout, ValidationError
from flux_nb.http.slot_table import (
    DATABASE,
    FOLDER_ENV,
    POLL_FIRST_S,
    POLL_HEAD_S,
    POLL_LISTENING_S,
    POLL_MAX_S,
    TAKEN,
    Lease,
    SlotTable,
    default_folder,
    lease_owner,
    owner_is_gone,
    slot_table,
)
from flux_nb.protocol import MAX_ACTIVE_TASKS, is_bfl_hostname


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
        self._later: dict[asyncio.Future[None], Lease] = {}
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
        step: concurrent.futures.Future[int] | None = None
        listening = False
        try:
            while True:
                woken = self.table.room.enter()  # before looking, so a release during the look wakes us
                self.table.room.park(lease.lease_id, woken)  # a release of this process may hand us its slot directly
                try:
                    # The first try writes either way (the lease or a place in line): no need to look first.
                    step, leader = self.table.queue_look(lease, self.limit, look_first=step is not None)
                    if leader:
                        self.table.queue.start()
                    ahead = await asyncio.shield(asyncio.wrap_future(step))
                    if ahead == TAKEN:
                        return lease
                    left = math.inf if deadline is None else deadline - time.monotonic()
                    if left <= 0:
                        raise FluxTimeout(f"no free slot of {self.limit} active tasks within {timeout:g} s")
                    if not listening:
                        listening = True
                        if self.table.wakeups.hold():
                            continue  # listening only now: a release a moment ago sent nothing, look again
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(woken.wait(), min(pause * (0.5 + random.random()), left))
                    if self.table.room.granted(lease.lease_id):
                        return lease
                finally:
                    self.table.room.leave(woken)
                if self.table.wakeups.listening:
                    pause = min(pause * 2, POLL_LISTENING_S)
                else:
                    pause = min(pause * 2, POLL_HEAD_S if ahead == 0 else POLL_MAX_S)
        except asyncio.CancelledError:
            # The look may still be running in its thread: undo it (lease or place in line) once it ends.
            forget = functools.partial(_forget_in_background, self.table, lease.lease_id, self.limit)
            if step is None:
                forget()
            else:
                step.add_done_callback(lambda _: forget())
            raise
        except BaseException:
            await asyncio.to_thread(self.table.forget, lease.lease_id, self.limit)
            raise
        finally:
            self.table.room.unpark(lease.lease_id)
            if listening:
                self.table.wakeups.release()

    async def try_acquire(self) -> Lease | None:
        """A slot if one is free now (nobody waiting first), else None, leaving no place in line behind."""
        try:
            return await self.acquire(timeout=0)
        except FluxTimeout:
            return None

    async def release(self, lease: Lease) -> None:
        """Give ``lease`` back; releasing it twice, or after it was reclaimed, is no error.

        The delete runs in a thread that finishes even when the caller is cancelled meanwhile, in one
        transaction with the releases this process makes at the same moment (``SlotTable.queue_release``).
        """
        done, leader = self.table.queue_release(lease.lease_id, self.limit)
        if leader:
            self.table.queue.start()
        await asyncio.shield(asyncio.wrap_future(done))

    def release_later(self, lease: Lease, delay: float) -> asyncio.Task[None]:
        """Give ``lease`` back after ``delay`` seconds, not waiting here: for a task the API may still be running
        though this process stopped following it (a submit whose answer was lost, a cancelled wait)."""

        async def later() -> None:
            await asyncio.sleep(delay)
            await self.release(lease)

        task = asyncio.ensure_future(later())
        self._later[task] = lease  # held, or the loop could drop it half way
        task.add_done_callback(lambda done: self._later.pop(done, None))
        return task

    async def release_pending(self) -> int:
        """Give back now every lease ``release_later`` still holds (before its loop closes); how many."""
        later, self._later = self._later, {}
        for task in later:
            task.cancel()
        for lease in later.values():
            await self.release(lease)
        return len(later)

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


def _forget_in_background(table: SlotTable, lease_id: str, limit: int) -> None:
    threading.Thread(target=table.forget, args=(lease_id, limit), name="flux_nb-slots-forget", daemon=True).start()


__all__ = [
    "DATABASE",
    "FOLDER_ENV",
    "Lease",
    "SharedSlots",
    "SlotTable",
    "default_folder",
    "lease_owner",
    "owner_is_gone",
    "scope_of",
    "slot_table",
]
