"""Live progress of a batch: a line redrawn in place (in a notebook or a terminal), results as they arrive.

It is a ``BatchObserver``: the session hands it typed events on the caller's thread, and a
``tick`` between events so the elapsed time keeps moving while requests run. Once a few requests
of a kind (server, model and size) have finished, the line also says about how long the rest will take,
and the bar fills by that expected time: durations are learned from the events themselves, so no extra
polls are made. When the batch ends (finished, interrupted, failed) the line is drawn once more, in its
final state; a spinner turns only while the kernel redraws it.
"""

from __future__ import annotations

import html
import math
import statistics
import sys
import time
from collections import defaultdict, deque
from collections.abc import Sequence
from typing import Any, TextIO

from IPython.display import HTML, display

from flux_nb.core.events import Finished, Progress
from flux_nb.core.results import Result
from flux_nb.notebook import render
from flux_nb.notebook.render import (
    FILL,
    STYLE,
    TEXT,
    TRACK,
    caption,
    failure_html,
    is_rich,
    shown_path,
    spinner,
    thumb_img,
)

UPDATE_INTERVAL = 0.1  # seconds between live progress redraws
#: Thumbnails in the gallery that fills while a batch runs.
PROGRESS_THUMB = 128

#: How a task status reads in the live line of a single request.
STATES = {"Submitted": "generating", "Pending": "generating", "Downloading": "downloading"}
#: The most a waiting request counts towards the bar, however long it has run: only a result fills it.
WAITING_SHARE = 0.95

Kind = tuple[str, str, int | None, int | None]  # server, model, width, height


class Durations:
    """Recent seconds from submit to result, per kind of request, as this process saw them."""

    def __init__(self, window: int = 16) -> None:
        self._recent: dict[Kind, deque[float]] = defaultdict(lambda: deque(maxlen=window))

    def observe(self, kind: Kind, seconds: float) -> None:
        self._recent[kind].append(seconds)

    def expected(self, kind: Kind) -> float | None:
        """The median of recent durations of ``kind``, or None when none has finished yet."""
        recent = self._recent.get(kind)
        return statistics.median(recent) if recent else None


#: What the live lines have learned so far (shared by every batch of this kernel).
DURATIONS = Durations()


#: A request past its expected time is given this share of it (at least a second) still to go.
LATE_SHARE = 0.2


def kind_of(prepared: Any, server: str = "") -> Kind:
    """The kind of a prepared request: the server it goes to, its model and requested size."""
    request = getattr(prepared, "request", prepared)
    model = str(getattr(request, "model", ""))
    return (server, model, getattr(request, "width", None), getattr(request, "height", None))


def remaining_words(seconds: float | None) -> str:
    """ "about 12 s left", "about 3 min left"; "" when unknown or about done."""
    if seconds is None or seconds < 0.5:
        return ""
    if seconds < 90:
        return f"about {math.ceil(seconds)} s left"
    return f"about {math.ceil(seconds / 60)} min left"


class BatchProgress:
    """Live progress for a batch: a line updated in place, results as they arrive.

    In a notebook the line is an HTML output updated in place (for one request, the result
    replaces it); in a terminal it is a ``\\r``-redrawn line on ``stream`` (stderr) when that is a tty.
    """

    def __init__(
        self, show_results: bool = True, rich: bool | None = None, stream: TextIO | None = None, server: str = ""
    ) -> None:
        self.show_results = show_results
        self.server = server  # durations are learned per server: another one's never sets expectations here
        self.rich = is_rich() if rich is None else rich
        self.stream = stream
        self.total = 0
        self.results: dict[int, Result] = {}
        self.running: set[int] = set()
        self.states: dict[int, tuple[str, float | None]] = {}
        self.kinds: list[Kind] = []
        self.began: dict[int, float] = {}  # when each request was first reported submitted
        self.lanes = 0  # the most requests seen running at once
        self.durations = DURATIONS
        self.started_at = time.monotonic()
        self.stopped_at: float | None = None
        self._last_draw = 0.0
        self._line: Any = None
        self._gallery: Any = None
        self._drawn = 0  # characters of the terminal line now on screen

    @property
    def failed(self) -> int:
        return sum(not r.ok for r in self.results.values())

    @property
    def credits(self) -> float:
        return sum((r.cost or 0.0) for r in self.results.values() if r.ok)

    def status_line(self) -> str:
        """Counts, time, time left (when known) and credits; for a single request in flight, its state."""
        done = len(self.results)
        now = time.monotonic() if self.stopped_at is None else self.stopped_at
        elapsed = f"{now - self.started_at:.1f} s"
        if self.stopped_at is not None and done < self.total:
            parts = [f"stopped: {done}/{self.total} done", f"{self.failed} failed" if self.failed else "", elapsed]
            return " · ".join(p for p in [*parts, f"{self.credits:.2f} credits"] if p)
        left = remaining_words(self.remaining(now))
        if self.total == 1 and not done:
            state, fraction = self.states.get(0, ("sending", None))
            percent = f"{fraction:.0%}" if fraction is not None and 0.0 < fraction < 1.0 else ""
            return " · ".join(p for p in (state, percent, elapsed, left) if p)
        parts = [f"{done}/{self.total} done"]
        if self.failed:
            parts.append(f"{self.failed} failed")
        pending = self.total - done
        if pending:
            parts.append(f"{len(self.running)} running, {pending - len(self.running)} queued")
        parts += [elapsed, left, f"{self.credits:.2f} credits"]
        return " · ".join(p for p in parts if p)

    def remaining(self, now: float | None = None) -> float | None:
        """Seconds until the batch ends, from learned durations (None while any kind is unknown)."""
        now = time.monotonic() if now is None else now
        waiting = [i for i in range(self.total) if i not in self.results]
        if not waiting:
            return None
        ahead: list[float] = []
        queued: list[float] = []
        for index in waiting:
            expected = self.durations.expected(self.kinds[index]) if index < len(self.kinds) else None
            if expected is None:
                return None
            if index in self.began:  # one running late is taken to need a little longer, not to be done
                ahead.append(max(expected - (now - self.began[index]), LATE_SHARE * expected, 1.0))
            else:
                queued.append(expected)
        # queued requests wait for the slots the running ones hold: as many as ever ran at once in this batch,
        # so the estimate does not jump when one slot frees before the next request starts
        self.lanes = max(self.lanes, len(ahead))
        return (max(ahead) if ahead else 0.0) + sum(queued) / max(1, self.lanes)

    def done_fraction(self, now: float | None = None) -> float:
        """How far the batch is: each result counts 1, each running request its share of its expected time."""
        if not self.total:
            return 1.0
        now = time.monotonic() if now is None else now
        done = float(len(self.results))
        for index, began in self.began.items():
            expected = self.durations.expected(self.kinds[index]) if index < len(self.kinds) else None
            if index not in self.results and expected:
                done += min(WAITING_SHARE, (now - began) / expected)
        return done / self.total

    def started(self, batch: Sequence[Any]) -> None:
        self.total = len(batch)
        self.kinds = [kind_of(prepared, self.server) for prepared in batch]
        self.started_at = time.monotonic()
        self.stopped_at = None
        if not self.total:
            return
        if self.rich:
            self._line = display(HTML(self._line_html()), display_id=True)
            if self.total > 1:
                self._gallery = display(HTML(""), display_id=True)
        else:
            self._draw_terminal()

    def progress(self, event: Progress) -> None:
        self.running.add(event.index)
        self.began.setdefault(event.index, time.monotonic())
        self.states[event.index] = (STATES.get(event.status, event.status.lower()), event.fraction)
        self._redraw()

    def tick(self) -> None:
        """Between events: redraw so the elapsed time moves."""
        if self.total and len(self.results) < self.total:
            self._redraw()

    def stopped(self) -> None:
        """The batch ended (all done, interrupted, or failed): draw the final line, with nothing left turning."""
        if self.stopped_at is not None or not self.total or len(self.results) == self.total:
            return
        self.stopped_at = time.monotonic()
        if not self.rich:
            stream = self._terminal()
            if stream is not None and self._drawn:  # the final line stays; what follows starts below it
                self._draw_terminal()
                stream.write("\n")
                self._drawn = 0
            return
        if self._line is not None:
            self._line.update(HTML(self._line_html()))

    def finished(self, event: Finished) -> None:
        index, result = event.index, event.result
        self.running.discard(index)
        self.results[index] = result
        began = self.began.get(index)
        if began is not None and result.ok and not result.cached and index < len(self.kinds):
            self.durations.observe(self.kinds[index], time.monotonic() - began)
        if self.total == 1 or not self.rich:
            self._show_single(result)
        else:
            self._redraw(force=True)
        if len(self.results) == self.total and not self.rich and self.total > 1:
            print(f"flux_nb: {self.status_line()}")

    def _show_single(self, result: Result) -> None:
        if self.rich:
            if self._line is not None:
                self._line.update(result)  # the result replaces the status line: no stale output is kept
                self._line = None
            else:
                display(result)
            return
        self._clear_terminal()
        if result.ok and result.path is not None:
            print(f"saved {shown_path(result.path)} ({caption(result)})")
        else:
            print(f"flux_nb: {result.status}: {result.error_message} (record {result.record_id})")
        if len(self.results) < self.total:
            self._draw_terminal()

    def _line_html(self) -> str:
        style = f"font-size:12px;color:{TEXT}"
        text = html.escape(self.status_line())
        waiting = self.stopped_at is None and len(self.results) < self.total
        turning = spinner(time.monotonic() - self.started_at) if waiting else ""
        if self.total == 1:
            return f'{STYLE}<div class="flux-progress" style="{style}">{turning}{text}</div>'
        if len(self.results) == self.total:  # the sweep's own summary gives the totals: said once, below it
            took = f"finished in {time.monotonic() - self.started_at:.1f} s"
            return f'<div class="flux-progress" style="{style}">{took}</div>'
        done = self.done_fraction()
        bar = (
            f'<div style="width:240px;height:6px;background:{TRACK};display:inline-block;vertical-align:middle">'
            f'<div style="width:{done * 100:.0f}%;height:6px;background:{FILL}"></div></div>'
        )
        return f'{STYLE}<div class="flux-progress" style="{style}">{turning}{bar} {text}</div>'

    def _gallery_html(self) -> str:
        cells = []
        for index in sorted(self.results):
            result = self.results[index]
            if result.ok and result.path is not None:
                label = html.escape(f"seed {result.seed}")
                img = thumb_img(result.path, PROGRESS_THUMB, render.settings.thumbnail_format, alt=result.prompt)
                cells.append(
                    f'<figure style="margin:2px;display:inline-block">{img}'
                    f'<figcaption class="flux-caption" style="font-size:11px;color:{TEXT}">{label}</figcaption>'
                    "</figure>"
                )
            else:
                cells.append(f'<div style="display:inline-block;width:{PROGRESS_THUMB}px">{failure_html(result)}</div>')
        return f'<div class="flux-gallery">{"".join(cells)}</div>'

    def _redraw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_draw < UPDATE_INTERVAL:
            return
        self._last_draw = now
        if not self.rich:
            self._draw_terminal()
            return
        if self._line is None:
            return
        self._line.update(HTML(self._line_html()))
        if force and self.show_results and self._gallery is not None:
            done = len(self.results) == self.total
            # The final grid replaces the gallery; until then thumbnails flow in as they arrive.
            self._gallery.update(HTML("" if done else self._gallery_html()))

    def _terminal(self) -> TextIO | None:
        stream = self.stream or sys.stderr
        try:
            return stream if stream.isatty() else None
        except (AttributeError, ValueError):  # no isatty, or a closed stream
            return None

    def _draw_terminal(self) -> None:
        stream = self._terminal()
        if stream is None:
            return
        text = f"flux_nb: {self.status_line()}"
        stream.write("\r" + text.ljust(self._drawn))
        stream.flush()
        self._drawn = len(text)

    def _clear_terminal(self) -> None:
        stream = self._terminal()
        if stream is None or not self._drawn:
            return
        stream.write("\r" + " " * self._drawn + "\r")
        stream.flush()
        self._drawn = 0
