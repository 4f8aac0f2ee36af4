"""How the panel watches a batch: a ``BatchObserver`` that words its events on the status line.

Everything it says comes from the events: how many requests the batch has (``started``), how far
each one is (``Progress``) and how each ended (``Finished``). Its handlers run on flux_nb's loop
thread; a failure in one is shown in the error area and never reaches the requests. Between events
a small timer thread redraws the line, so its elapsed time moves while requests run.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING

from flux_nb.core.events import Finished, Progress
from flux_nb.core.results import Result
from flux_nb.notebook.panel.messages import Messages
from flux_nb.notebook.progress import STATES

if TYPE_CHECKING:
    from flux_nb.core.batch import PreparedRequest

CANCELLED = "submitted requests are kept as pending (%flux resume finishes them)"
#: Seconds between redraws of the status line while a batch runs.
TICK_INTERVAL = 0.5


class PanelObserver:
    """Watches one batch for a panel: status and cost as it goes, each result to ``show`` as it ends."""

    def __init__(self, messages: Messages, show: Callable[[Result], None]) -> None:
        self.messages = messages
        self._show = show
        self.total = 0
        #: The requests that have ended, by their position in the batch.
        self.results: dict[int, Result] = {}
        self.started_at = time.monotonic()
        self._line = ""  # the status line's words for the newest event, without the elapsed time
        self._stop = threading.Event()
        self._lock = threading.Lock()  # a redraw never lands after the batch's last words
        self._ticker: threading.Thread | None = None

    @property
    def done(self) -> int:
        """How many requests have ended."""
        return len(self.results)

    @property
    def credits(self) -> float:
        """Credits the ended requests cost."""
        return sum(r.cost or 0.0 for r in self.results.values())

    # -- the BatchObserver protocol ------------------------------------------------------------

    def started(self, batch: Sequence[PreparedRequest]) -> None:
        self.total = len(batch)
        self.started_at = time.monotonic()
        self._line = "sending"
        self.messages.say(f"queued {self.total} request(s)…")
        if self.total:
            self._ticker = threading.Thread(target=self._run_ticks, name="flux-panel-ticks", daemon=True)
            self._ticker.start()

    def progress(self, event: Progress) -> None:
        self._guarded(lambda: self._progress(event))

    def finished(self, event: Finished) -> None:
        self._guarded(lambda: self._finished(event))

    def tick(self) -> None:
        """Between events: redraw the status line so its elapsed time moves."""
        with self._lock:
            if self._line and self.done < self.total and not self._stop.is_set():
                self._guarded(lambda: self.messages.say(f"{self._line} · {self.elapsed()}{self.tally()}"))

    def _run_ticks(self) -> None:
        while not self._stop.wait(TICK_INTERVAL):
            self.tick()

    def stop_ticks(self) -> None:
        """The batch is over: no more redraws."""
        with self._lock:
            self._stop.set()

    # -- wording -------------------------------------------------------------------------------

    def _guarded(self, handle: Callable[[], None]) -> None:
        try:
            handle()
        except Exception as exc:  # a display failure is shown, never raised into the request
            with contextlib.suppress(Exception):
                self.messages.report(exc)

    def _progress(self, event: Progress) -> None:
        stage = STATES.get(event.status, "generating")
        fraction = event.fraction
        percent = f" {fraction * 100:.0f}%" if fraction is not None and 0 < fraction < 1 else ""
        self._line = f"{stage}{percent}"
        self.messages.say(f"{self._line} · {self.elapsed()}{self.tally()}")

    def _finished(self, event: Finished) -> None:
        result = event.result
        self.results[event.index] = result
        self._line = "finished" if result.ok else result.status
        if self.done >= self.total:
            self.stop_ticks()
        self.messages.say(f"{'finished' if result.ok else result.status} · {self.elapsed()}{self.tally()}")
        self.messages.refresh_cost()
        self._show(result)

    def tally(self) -> str:
        """The batch so far: requests ended (for more than one) and credits spent."""
        done = f" · {self.done} of {self.total} done" if self.total > 1 else ""
        return f"{done} · {self.credits:.2f} credits so far"

    def elapsed(self) -> str:
        return f"{time.monotonic() - self.started_at:.1f} s"

    def ended(self, batch: Future[list[Result]]) -> list[Result]:
        """Word how the batch's future resolved; its results (those that ended, if it did not finish)."""
        self.stop_ticks()
        if batch.cancelled():
            self.messages.say(f"cancelled after {self.elapsed()}: {CANCELLED}")
            return list(self.results.values())
        error = batch.exception()
        if error is not None:
            self.messages.report(error)
            self.messages.say(f"stopped by an error after {self.elapsed()}{self.tally()}")
            return list(self.results.values())
        results = batch.result()
        failed = sum(not r.ok for r in results)
        spent = sum(r.cost or 0.0 for r in results)
        self.messages.say(
            f"done: {len(results) - failed} image(s){f', {failed} failed' if failed else ''} · "
            f"{self.elapsed()} · {spent:.2f} credits{self.messages.not_billed()}"
        )
        return results
