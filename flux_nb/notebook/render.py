"""How results, failures, progress and history look in a notebook (and in a terminal).

The notebook gets compact thumbnails (the full image stays on disk) so a notebook with a
hundred images stays a few MB. Display problems never break generation.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from IPython.display import HTML, display

from flux_nb.errors import FluxError
from flux_nb.images import thumbnail
from flux_nb.metadata import source_sha256
from flux_nb.notebook.hints import in_notebook_words

if TYPE_CHECKING:
    from flux_nb.core.results import Result, SweepResult

NOT_BILLED = " (not billed: local server)"  # after credits, where the backend is not BFL's API


@dataclass
class DisplaySettings:
    """How results show in notebooks (``%load_ext`` keeps it in step with ``Flux.thumbnail_*``)."""

    thumbnail_size: int = 384
    thumbnail_format: str = "jpeg"


settings = DisplaySettings()
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
    img = thumb_img(result.path, settings.thumbnail_size, settings.thumbnail_format, alt=result.prompt)
    text = html.escape(caption(result))
    path = html.escape(str(result.path))
    return (
        f'<div class="flux-result">{img}<div class="flux-caption" style="font-size:12px;color:#444">'
        f'{_badge(result)}{text}<br/><span style="color:#888">{path}</span></div></div>'
    )


def failure_html(result: Result) -> str:
    icon = ICONS.get(result.status, "⚠")
    reason = in_notebook_words(result.error) if result.error else f"status {result.status}"
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
    text = in_notebook_words(error)
    kind = f"{error.kind}: " if isinstance(error, FluxError) else ""
    return f'<div class="flux-error" style="color:#b00020">⚠ {html.escape(kind + text)}</div>'


def show_error(error: FluxError | str) -> None:
    """Show an error as one clear line, no traceback."""
    if is_rich():
        display(HTML(error_html(error)))
    else:
        print(f"flux_nb: {in_notebook_words(error)}")


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
        return source_sha256(result.path) if result.ok and result.path else None  # the API's bytes

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
