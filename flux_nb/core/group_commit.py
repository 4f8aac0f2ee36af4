"""Blocking writes that arrive together, made in one call from a thread of their own (a group commit).

Each caller awaits its own item's outcome; the items queued while a call runs share the next one. The
thread is not the loop's pool, so a write on the path to a submit never queues behind slower work there.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

#: What ``write_many`` answers per item, in order: None when written, else the error for that item alone.
Outcomes = list[BaseException | None]


class GroupCommit(Generic[T]):
    """``await commit.write(item)``: ``write_many(items)`` runs for every item queued at the same moment.

    >>> marks = GroupCommit(store.mark_sending_many, "sending marks")  # doctest: +SKIP
    >>> await marks.write(record_id)  # doctest: +SKIP
    """

    def __init__(self, write_many: Callable[[list[T]], Outcomes], name: str) -> None:
        self._write_many = write_many
        self._name = f"flux_nb-{name.replace(' ', '-')}"
        self._lock = threading.Lock()
        self._queued: list[tuple[T, concurrent.futures.Future[None]]] = []
        self._running = 0  # the pid whose thread drains the queue (0: none)
        #: Calls of ``write_many`` so far (each a transaction, for the history).
        self.calls = 0

    async def write(self, item: T) -> None:
        """Queue ``item``; return once it is written, or raise what writing it raised.

        A cancelled caller stops waiting; the write itself still happens (as with ``asyncio.to_thread``).
        """
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self._lock:
            if self._running not in (0, os.getpid()):  # a forked child: the parent's queue is not ours
                self._queued, self._running = [], 0
            self._queued.append((item, done))
            leader = not self._running
            self._running = os.getpid()
        if leader:
            threading.Thread(target=self.drain, name=self._name, daemon=True).start()
        await asyncio.shield(asyncio.wrap_future(done))  # a cancel must not reach ``done``, which the thread sets

    def drain(self) -> None:
        """Write what is queued, round after round, until nothing is left (the leader's thread)."""
        while True:
            with self._lock:
                queued, self._queued = self._queued, []
                if not queued:
                    self._running = 0
                    return
            self.calls += 1
            try:
                outcomes = self._write_many([item for item, _ in queued])
            except BaseException as exc:
                outcomes = [exc] * len(queued)
            for (_, done), error in zip(queued, outcomes, strict=True):
                if done.done():
                    continue
                if error is None:
                    done.set_result(None)
                else:
                    done.set_exception(error)
