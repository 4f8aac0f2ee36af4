"""How results, failures, progress and history look in a notebook (and in a terminal).

The notebook gets compact thumbnails (the full image stays on disk) so a notebook with a
hundred images stays a few MB. Display problems never break generation.
"""

from __future__ import annotations

import base64
import html
import sys
import time
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import pandas as pd
from IPython.display import HTML, display

from flux_nb.errors import FluxError
from flux_nb.images import sha256_hex, thumbnail

if TYPE_CHECKING:
    from flux_nb.core.results import Result, SweepResult

UPDATE_INTERVAL = 0.1  # seconds between live progress redraws
NOT_BILLED = " (not billed: local server)"  # after credits, where the backend is not BFL's API
GALLERY_THUMB = 128
ICONS = {"failed": "⚠", "moderated": "⛔", "unknown": "❓", "submitted": "⏳", "pending": "⏳", "cancelled": "✋"}


@lru_cache(maxsize=512)
def _thumb_uri(path: str, mtime: float, size: int, fmt: str) -> tuple[str, int, int]:
    from PIL import Image

    with Image.open(path) as image:
        image.draft("RGB", (size, size))
        data = thumbnail(image, size, fmt)
        scale = min(1.0, size / max(image.size))
        w, h = round(image.width * scale), round(image.height * scale)
    return f"data:image/{fmt};base64,{base64.b64encode(data).decode()}", w, h


def thumb_img(path: Path | str, size: int, fmt: str = "jpeg", alt: str = "", css: str = "") -> str:
    """An <img> holding a thumbnail of the image at ``path`` (cached per file and size)."""
    path = str(path)
    uri, w, h = _thumb_uri(path, Path(path).stat().st_mtime, size, fmt)
    return (
        f'<img src="{uri}" width="{w}" height="{h}" alt="{html.escape(alt, quote=True)}" '
        f'title="{html.escape(path, quote=True)}" style="{css}"/>'
    )


def caption(result: Result) -> str:
    """One line: seed · size · model · cost · time · id."""
    size = f"{result.width}×{result.height}" if result.width and result.height else "auto size"
    if result.cached:
        cost, took = "0 credits (cached)", "cached"
    else:
        credits = result.cost if result.cost is not None else result.estimated_cost
        cost = f"{credits:.2f} credits" + ("" if result.billed else NOT_BILLED)
        took = f"{result.elapsed:.2f} s" if result.elapsed is not None else ""
    parts = [f"seed {result.seed}", size, result.model, cost, took, f"id {result.record_id}"]
    if result.tag:
        parts.append(f"tag {result.tag}")
    return " · ".join(p for p in parts if p)


def _badge(result: Result) -> str:
    if result.engine == "preview":
        return '<span style="background:#333;color:#fff;border-radius:3px;padding:0 4px;font-size:10px">preview</span> '
    return ""


def result_html(result: Result) -> str:
    """A ready result as thumbnail + caption; anything else as one clear line."""
    if not result.ok or result.path is None or not Path(result.path).exists():
        return failure_html(result)
    img = thumb_img(result.path, result.thumbnail_size, result.thumbnail_format, alt=result.prompt)
    text = html.escape(caption(result))
    path = html.escape(str(result.path))
    return (
        f'<div class="flux-result">{img}<div class="flux-caption" style="font-size:12px;color:#444">'
        f'{_badge(result)}{text}<br/><span style="color:#888">{path}</span></div></div>'
    )


def failure_html(result: Result) -> str:
    icon = ICONS.get(result.status, "⚠")
    reason = result.error_message or f"status {result.status}"
    text = html.escape(f"{result.status}: {reason} (record {result.record_id}, seed {result.seed})")
    return f'<div class="flux-failure" style="color:#b00020">{icon} {text}</div>'


def result_bundle(result: Result) -> dict[str, Any]:
    return {"text/plain": repr(result), "text/html": result_html(result)}


def sweep_bundle(sweep: SweepResult) -> dict[str, Any]:
    """A sweep shows as its grid, with a summary line."""
    done = len(sweep) - len(sweep.failed)
    summary = f"{done} of {len(sweep)} images · {sweep.cost:.2f} credits"
    try:
        body = sweep.grid()._repr_html_()
    except FluxError as exc:
        body = error_html(exc)
    return {"text/plain": repr(sweep), "text/html": f'{body}<div style="font-size:12px;color:#444">{summary}</div>'}


def error_html(error: FluxError | str) -> str:
    text = error.one_line() if isinstance(error, FluxError) else str(error)
    kind = f"{error.kind}: " if isinstance(error, FluxError) else ""
    return f'<div class="flux-error" style="color:#b00020">⚠ {html.escape(kind + text)}</div>'


def show_error(error: FluxError | str) -> None:
    """Show an error as one clear line, no traceback."""
    if is_rich():
        display(HTML(error_html(error)))
    else:
        text = error.one_line() if isinstance(error, FluxError) else str(error)
        print(f"flux_nb: {text}")


def is_rich() -> bool:
    """True where HTML is rendered (notebook front ends), False in terminal IPython or plain Python."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    formatter = getattr(shell, "display_formatter", None)
    return formatter is not None and "text/html" in formatter.active_types


def result_text(result: Result) -> str:
    """A result as one plain line: its caption and image path, or why it has no image."""
    if result.ok:
        return f"{caption(result)} · {result.path}"
    return f"{result.status}: {result.error_message or 'no image'} (record {result.record_id}, seed {result.seed})"


#: How a task status reads in the live line of a single request.
STATES = {"Submitted": "queued", "Pending": "generating", "Downloading": "downloading"}


class BatchProgress:
    """Live progress for a batch: a line updated in place, results as they arrive.

    In a notebook the line is an HTML output updated in place (for one request, the result
    replaces it); in a terminal it is a ``\\r``-redrawn line on ``stream`` (stderr) when that is a tty.
    """

    def __init__(self, show_results: bool = True, rich: bool | None = None, stream: TextIO | None = None) -> None:
        self.show_results = show_results
        self.rich = is_rich() if rich is None else rich
        self.stream = stream
        self.total = 0
        self.results: dict[int, Result] = {}
        self.running: set[int] = set()
        self.states: dict[int, tuple[str, float | None]] = {}
        self.started_at = time.monotonic()
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
        """Counts, time and credits of the batch; for a single request in flight, its state and time."""
        done = len(self.results)
        elapsed = time.monotonic() - self.started_at
        if self.total == 1 and not done:
            state, fraction = self.states.get(0, ("sending", None))
            percent = f"{fraction:.0%}" if fraction is not None and 0.0 < fraction < 1.0 else ""
            return " · ".join(p for p in (state, percent, f"{elapsed:.1f} s") if p)
        parts = [f"{done}/{self.total} done"]
        if self.failed:
            parts.append(f"{self.failed} failed")
        pending = self.total - done
        if pending:
            parts.append(f"{len(self.running)} running, {pending - len(self.running)} queued")
        parts += [f"{elapsed:.1f} s", f"{self.credits:.2f} credits"]
        return " · ".join(parts)

    def started(self, batch: Sequence[Any]) -> None:
        self.total = len(batch)
        self.started_at = time.monotonic()
        if not self.total:
            return
        if self.rich:
            self._line = display(HTML(self._line_html()), display_id=True)
            if self.total > 1:
                self._gallery = display(HTML(""), display_id=True)
        else:
            self._draw_terminal()

    def progress(self, index: int, status: str, fraction: float | None) -> None:
        self.running.add(index)
        self.states[index] = (STATES.get(status, status.lower()), fraction)
        self._redraw()

    def finished(self, index: int, result: Result) -> None:
        self.running.discard(index)
        self.results[index] = result
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
        if result.ok:
            print(f"saved {result.path} ({caption(result)})")
        else:
            print(f"flux_nb: {result.status}: {result.error_message} (record {result.record_id})")
        if len(self.results) < self.total:
            self._draw_terminal()

    def _line_html(self) -> str:
        if self.total == 1:
            return f'<div class="flux-progress" style="font-size:12px">⏳ {html.escape(self.status_line())}</div>'
        done = len(self.results) / self.total if self.total else 1.0
        bar = (
            f'<div style="width:240px;height:6px;background:#ddd;display:inline-block;vertical-align:middle">'
            f'<div style="width:{done * 100:.0f}%;height:6px;background:#4a7"></div></div>'
        )
        return f'<div class="flux-progress" style="font-size:12px">{bar} {html.escape(self.status_line())}</div>'

    def _gallery_html(self) -> str:
        cells = []
        for index in sorted(self.results):
            result = self.results[index]
            if result.ok and result.path is not None:
                label = html.escape(f"seed {result.seed}")
                img = thumb_img(result.path, GALLERY_THUMB, result.thumbnail_format, alt=result.prompt)
                cells.append(
                    f'<figure style="margin:2px;display:inline-block">{img}'
                    f'<figcaption style="font-size:10px">{label}</figcaption></figure>'
                )
            else:
                cells.append(f'<div style="display:inline-block;width:{GALLERY_THUMB}px">{failure_html(result)}</div>')
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


HISTORY_COLUMNS = ("id", "time", "status", "prompt", "seed", "size", "model", "credits", "s", "tag")


def _history_rows(frame: pd.DataFrame, limit: int, prompt_width: int = 80) -> list[tuple[Any, list[str]]]:
    """The newest ``limit`` rows, newest first: (image path or None, one text cell per HISTORY_COLUMNS)."""
    rows = []
    for _, row in frame.tail(limit).iloc[::-1].iterrows():
        path = row.get("image_path")
        w, h = (row["out_width"], row["out_height"]) if not pd.isna(row["out_width"]) else (row["width"], row["height"])
        prompt = " ".join(str(row["prompt"]).split())
        values = [
            row["record_id"],
            row["created_at"].strftime("%Y-%m-%d %H:%M:%S") if not pd.isna(row["created_at"]) else "",
            row["status"],
            prompt[:prompt_width] + ("…" if len(prompt) > prompt_width else ""),
            row["seed"],
            f"{w}×{h}" if not pd.isna(w) and not pd.isna(h) else "auto",
            row["model"],
            "" if pd.isna(row["cost"]) else f"{row['cost']:.2f}",
            "" if pd.isna(row["duration_s"]) else f"{row['duration_s']:.2f}",
            "" if pd.isna(row["tag"]) else row["tag"],
        ]
        rows.append((path if isinstance(path, str) else None, [str(v) for v in values]))
    return rows


def history_html(frame: pd.DataFrame, limit: int = 20, thumbnail_size: int = 96) -> str:
    """The newest ``limit`` history rows as a table with small thumbnails."""
    head = "".join(f"<th>{h}</th>" for h in ("", *HISTORY_COLUMNS))
    body = []
    for path, values in _history_rows(frame, limit):
        img = thumb_img(path, thumbnail_size) if path and Path(path).exists() else ""
        cells = [img] + [html.escape(v) for v in values]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f'<table class="flux-history"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def history_text(frame: pd.DataFrame, limit: int = 20) -> str:
    """The newest ``limit`` history rows as a plain text table, with each image's path."""
    rows = _history_rows(frame, limit, prompt_width=40)
    if not rows:
        return "no history yet: run a %%flux cell"
    table = pd.DataFrame([[*values, path or ""] for path, values in rows], columns=[*HISTORY_COLUMNS, "image"])
    return table.to_string(index=False)


def side_by_side_html(left: Result, right: Result, left_title: str, right_title: str) -> str:
    """Two results next to each other, saying whether their images are byte-identical."""
    cells = "".join(
        f'<td style="vertical-align:top"><b>{html.escape(title)}</b><br/>{result_html(result)}</td>'
        for title, result in ((left_title, left), (right_title, right))
    )
    verdict = _verdict(left, right)
    return f'<table class="flux-replay"><tr>{cells}</tr></table><div style="font-size:12px">{verdict}</div>'


def side_by_side_text(left: Result, right: Result, left_title: str, right_title: str) -> str:
    """Two results as caption lines with their image paths, then whether the images are byte-identical."""
    return f"{left_title}: {result_text(left)}\n{right_title}: {result_text(right)}\n{_verdict(left, right)}"


def _verdict(left: Result, right: Result) -> str:
    def digest(result: Result) -> str | None:
        return sha256_hex(Path(result.path).read_bytes()) if result.ok and result.path else None

    a, b = digest(left), digest(right)
    return "byte-identical images" if a and a == b else "the images differ"


def _cost_rows(summary: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and text rows of the credits table (without the backend column), the last row the totals."""
    columns = [c for c in summary.columns if c != "backend"]
    rows = [
        [f"{v:.2f}" if isinstance(v, float) else str(v) for v in (row[c] for c in columns)]
        for _, row in summary.iterrows()
    ]
    totals = ["total"] + [
        f"{summary[c].sum():.2f}"
        if summary[c].dtype.kind == "f"
        else (str(summary[c].sum()) if summary[c].dtype.kind == "i" else "")
        for c in columns[1:]
    ]
    return [c.replace("_", " ") for c in columns], [*rows, totals]


def cost_html(summary: pd.DataFrame) -> str:
    """Credits by model, with a total row."""
    columns, rows = _cost_rows(summary)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows[:-1]]
    body.append("<tr style='font-weight:bold'>" + "".join(f"<td>{html.escape(t)}</td>" for t in rows[-1]) + "</tr>")
    return f'<table class="flux-cost"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def cost_text(summary: pd.DataFrame) -> str:
    """Credits by model as a plain text table, with a total row."""
    columns, rows = _cost_rows(summary)
    return pd.DataFrame(rows, columns=columns).to_string(index=False)
