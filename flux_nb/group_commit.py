"""Blocking work that arrives together, done in one call from a thread of its own (a group commit).

Each caller gets its own item's outcome; the items queued while a call runs share the next one. The
thread is not the loop's pool, so work on the path to a submit never queues behind slower work there.
The history's sending marks go through it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """``await commit.write(item)``: ``run(items)`` runs once for every item queued at the same moment.

    ``run`` answers an outcome per item, in order: its result, or the exception for that item alone.

    >>> marks = GroupCommit(store.mark_sending_many, "sending marks")  # doctest: +SKIP
    >>> await marks.write(record_id)  # doctest: +SKIP
    """

    def __init__(self, run: Callable[[list[T]], Sequence[R | BaseException]], name: str) -> None:
        self._run = run
        self._name = f"flux_nb-{name.replace(' ', '-')}"
        self._lock = threading.Lock()
        self._queued: list[tuple[T, concurrent.futures.Future[R]]] = []
        self._running = 0  # the pid whose thread drains the queue (0: none)
        #: Calls of ``run`` so far (each a transaction, for the history).
        self.calls = 0

    def submit(self, item: T) -> tuple[concurrent.futures.Future[R], bool]:
        """Queue ``item``: its outcome's future, and whether the caller leads (then it must ``start``)."""
        done: concurrent.futures.Future[R] = concurrent.futures.Future()
        with self._lock:
            if self._running not in (0, os.getpid()):  # a forked child: the parent's queue is not ours
                self._queued, self._running = [], 0
            self._queued.append((item, done))
            leader = not self._running
            self._running = os.getpid()
        return done, leader

    def start(self) -> None:
        """Drain the queue in a thread of its own (the leader calls this once)."""
        threading.Thread(target=self.drain, name=self._name, daemon=True).start()

    async def write(self, item: T) -> R:
        """Queue ``item`` and return its outcome, or raise what it raised.

        A cancelled caller stops waiting; the work itself still happens (as with ``asyncio.to_thread``).
        """
        done, leader = self.submit(item)
        if leader:
            self.start()
        return await asyncio.shield(asyncio.wrap_future(done))  # a cancel must not reach ``done``

    def drain(self) -> None:
        """Run what is queued, round after round, until nothing is left (the leader's thread)."""
        while True:
            with self._lock:
                queued, self._queued = self._queued, []
                if not queued:
                    self._running = 0
                    return
            self.calls += 1
            outcomes: Sequence[R | BaseException]
            try:
                outcomes = self._run([item for item, _ in queued])
            except BaseException as exc:
                outcomes = [exc] * len(queued)
            for (_, done), outcome in zip(queued, outcomes, strict=True):
                if done.done():
                    continue
                if isinstance(outcome, BaseException):
                    done.set_exception(outcome)
                else:
                    done.set_result(outcome)
