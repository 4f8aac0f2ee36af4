"""Watching a batch that runs on flux_nb's loop thread, from the caller's thread.

``relay`` runs a batch and hands its events to an observer on the calling thread (with a tick
between events, so a live line's clock moves); ``guarded`` wraps an observer for callers that let
events arrive on the loop thread (widgets). A failing observer is dropped, never raised into a request.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Coroutine
from typing import Any

from flux_nb.core.events import BatchEvent, BatchObserver, Emit, deliver
from flux_nb.core.loop import LoopRunner
from flux_nb.core.results import Result

#: Seconds between an observer's ticks while a batch runs (the live line's clock).
TICK_INTERVAL = 0.25


def relay(
    runner: LoopRunner,
    start: Callable[[Emit], Coroutine[Any, Any, list[Result]]],
    observer: BatchObserver | None,
) -> list[Result]:
    """Run a batch on ``runner``'s loop and relay its events to ``observer`` on this thread."""
    events: queue.SimpleQueue[BatchEvent | None] = queue.SimpleQueue()
    future = runner.submit(start(events.put))
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
            watcher = _safely(watcher, lambda w, e=event: deliver(w, e))
        return future.result()
    except KeyboardInterrupt:
        future.cancel()
        raise


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
