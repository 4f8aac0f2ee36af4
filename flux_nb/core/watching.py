"""Watching a batch that runs on flux_nb's loop thread, from the caller's thread.

``relay`` runs a batch and hands its events to an observer on the calling thread (with a tick
between events, so a live line's clock moves); ``guarded`` wraps an observer for callers that let
events arrive on the loop thread (widgets). A failing observer is dropped, never raised into a request.

However the batch ends, an observer with a ``stopped()`` method is told, so a live line can draw its final state.
An interrupt (Ctrl-C, a kernel interrupt) cancels the batch, waits for its records to settle (never-sent
ones stay pending, submitted ones stay submitted) and raises ``BatchInterrupted`` with what was sent.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from flux_nb.core.events import BatchEvent, BatchObserver, Emit, Finished, deliver
from flux_nb.core.loop import LoopRunner
from flux_nb.core.results import Result
from flux_nb.errors import BatchInterrupted

#: Seconds between an observer's ticks while a batch runs (the live line's clock).
TICK_INTERVAL = 0.25
#: Longest wait, after an interrupt, for the cancelled requests to settle their records.
SETTLE_S = 30.0


@dataclass
class Tally:
    """Where each request of a batch got to, from its events: sent (a task id came back) or finished."""

    size: int
    sent: set[int] = field(default_factory=set)
    ended: dict[int, str] = field(default_factory=dict)  # index -> the result's status

    def note(self, event: BatchEvent) -> None:
        if isinstance(event, Finished):
            self.ended[event.index] = event.result.status
        else:
            self.sent.add(event.index)

    def interrupted(self) -> BatchInterrupted:
        """The one-line report of an interrupted batch."""
        running = {i for i in self.sent if self.ended.get(i, "submitted") == "submitted"}
        running |= {i for i, status in self.ended.items() if status == "submitted"}
        unknown = sum(status == "unknown" for status in self.ended.values())
        finished = len(self.ended) - unknown - sum(status == "submitted" for status in self.ended.values())
        unsent = self.size - finished - unknown - len(running)
        parts = [f"{finished} of {self.size} request(s) finished", f"{len(running)} sent and still running"]
        if unknown:
            parts.append(f"{unknown} cut off mid-send (outcome unknown, not resent)")
        parts.append(f"{unsent} never sent")
        return BatchInterrupted(
            "interrupted: " + ", ".join(parts), finished=finished, running=len(running), unsent=unsent
        )


def relay(
    runner: LoopRunner,
    start: Callable[[Emit], Coroutine[Any, Any, list[Result]]],
    observer: BatchObserver | None,
    size: int = 0,
) -> list[Result]:
    """Run a batch of ``size`` requests on ``runner``'s loop and relay its events to ``observer`` on this thread.

    An interrupt raises ``BatchInterrupted`` once the cancelled requests have settled their records.
    """
    events: queue.SimpleQueue[BatchEvent | None] = queue.SimpleQueue()
    tally, noted = Tally(size), threading.Lock()
    begun, settled = threading.Event(), threading.Event()

    def emit(event: BatchEvent) -> None:
        # Noted here, on the loop's thread, which no Ctrl-C reaches: an interrupt landing on the caller's thread
        # just as it takes an event off the queue must not lose that event from the report.
        with noted:
            tally.note(event)
        events.put(event)

    async def watched() -> list[Result]:
        begun.set()
        try:
            return await start(emit)
        finally:
            settled.set()

    future = runner.submit(watched())
    future.add_done_callback(lambda _: events.put(None))
    watcher = observer
    try:
        # Events and the end arrive through the queue; the timeout keeps Ctrl-C and the live line moving.
        while True:
            try:
                event = events.get(timeout=TICK_INTERVAL)
            except queue.Empty:
                watcher = _safely(watcher, lambda w: w.tick())
                continue
            if event is None:
                break
            watcher = _safely(watcher, partial(deliver, event=event))
        return future.result()
    except KeyboardInterrupt:
        if not future.cancel() and future.done() and not future.cancelled():
            return future.result()  # it had just ended: nothing was interrupted
        if begun.is_set():
            settled.wait(SETTLE_S)
        with noted:
            raise tally.interrupted() from None
    finally:
        _safely(watcher, _stop)


def _stop(observer: BatchObserver) -> None:
    """Tell an observer that has a ``stopped`` method that the batch is over (however it ended)."""
    stop = getattr(observer, "stopped", None)
    if callable(stop):
        stop()


def _safely(observer: BatchObserver | None, call: Callable[[BatchObserver], None]) -> BatchObserver | None:
    """Call ``observer``; a display failure must never break generation, so a failing one is dropped."""
    if observer is None:
        return None
    try:
        call(observer)
    except Exception:
        return None
    return observer


def guarded(observer: BatchObserver) -> Emit:
    """An ``Emit`` delivering to ``observer``; after its first failure it is dropped."""
    alive = [True]

    def emit(event: BatchEvent) -> None:
        if alive[0]:
            try:
                deliver(observer, event)
            except Exception:
                alive[0] = False

    return emit
