"""This process's waiters for a shared slot: the events that wake them, and those parked for a hand-over.

Thread-safe: the slot table's thread and other processes' wake-ups (``slot_wakeups``) call in from
their own threads; each event is set on its own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from dataclasses import dataclass


@dataclass
class _Parked:
    """A waiter of this process in line: the event that wakes it, and whether a release granted it the slot."""

    event: asyncio.Event
    loop: asyncio.AbstractEventLoop
    granted: bool = False


class WaitingRoom:
    """Where this process's waiters wait: ``enter`` for a wake-up, ``park`` for a slot handed over."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._wakers: dict[asyncio.Event, asyncio.AbstractEventLoop] = {}
        self._parked: dict[str, _Parked] = {}

    def _mine(self) -> None:
        """Forget a parent's waiters in a forked child (under the lock): they wait in another process."""
        if self._pid != os.getpid():
            self._pid, self._wakers, self._parked = os.getpid(), {}, {}

    def enter(self) -> asyncio.Event:
        """An event that is set (from any thread) at the next ``wake``."""
        event = asyncio.Event()
        with self._lock:
            self._mine()
            self._wakers[event] = asyncio.get_running_loop()
        return event

    def leave(self, event: asyncio.Event) -> None:
        with self._lock:
            self._mine()
            self._wakers.pop(event, None)

    def wake(self) -> None:
        """Set every event entered and not left since the last wake: each of those waiters looks again."""
        with self._lock:
            self._mine()
            wakers, self._wakers = self._wakers, {}
        for event, loop in wakers.items():
            _set(event, loop)

    def park(self, lease_id: str, event: asyncio.Event) -> None:
        """Stand the waiter of ``lease_id`` (in line, or about to be) where a release may hand it a slot;
        ``event`` (its current one) is set when one does. ``unpark`` when its acquire ends."""
        with self._lock:
            self._mine()
            parked = self._parked.get(lease_id)
            if parked is None:
                self._parked[lease_id] = _Parked(event, asyncio.get_running_loop())
            else:
                parked.event = event

    def granted(self, lease_id: str) -> bool:
        """True once a release handed the parked ``lease_id`` a slot (it is a lease now)."""
        with self._lock:
            self._mine()
            parked = self._parked.get(lease_id)
            return parked is not None and parked.granted

    def unpark(self, lease_id: str) -> None:
        with self._lock:
            self._mine()
            self._parked.pop(lease_id, None)

    def parked(self) -> set[str]:
        """The lease ids parked now and not yet granted."""
        with self._lock:
            self._mine()
            return {lease_id for lease_id, parked in self._parked.items() if not parked.granted}

    def grant(self, lease_ids: list[str]) -> None:
        """Mark ``lease_ids`` as handed a slot, and wake their waiters (those still parked)."""
        with self._lock:
            self._mine()
            woken = [self._parked[lease_id] for lease_id in lease_ids if lease_id in self._parked]
            for parked in woken:
                parked.granted = True
        for parked in woken:
            _set(parked.event, parked.loop)


def _set(event: asyncio.Event, loop: asyncio.AbstractEventLoop) -> None:
    with contextlib.suppress(RuntimeError):  # its loop has closed
        loop.call_soon_threadsafe(event.set)
