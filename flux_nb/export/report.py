"""One self-contained HTML page for an experiment: its grids, a sortable table of its rows, what it cost.

Every image is inline (a data URI: thumbnails of about 256 px, grids at display size); the page
loads nothing from anywhere, so it can be mailed, archived or opened offline. Sorting is a few
lines of inline script: click a column header, click again to reverse. By default it draws one grid
per batch (a ``%%flux`` cell, a ``sweep`` call, a panel click) on that batch's own axes, with cached
repeats folded; numbers read as in the notebook, backends in words; the page follows the reader's
light or dark preference and fits a narrow screen.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from flux_nb.core.backend import label_in_words
from flux_nb.core.made_from import with_references
from flux_nb.errors import ValidationError
from flux_nb.grids import Grid, GridPages, grid
from flux_nb.history.batches import batch_frames, grid_axes_of
from flux_nb.history.files import image_file
from flux_nb.history.records import is_billed_label
from flux_nb.images import thumbnail
from flux_nb.metadata.provenance import version

THUMBNAIL = 256
# (column, header, numeric): shown when the frame has the column ("size" and "credits" are derived).
SHOWN = (
    ("created_at", "created (UTC)", False),
    ("record_id", "record", False),
    ("prompt", "prompt", False),
    ("model", "model", False),
    ("seed", "seed", True),
    ("size", "size", False),
    ("status", "status", False),
    ("backend", "backend", False),
    ("credits", "credits", True),
    ("duration_s", "seconds", True),
    ("rating", "rating", True),
    ("favourite", "favourite", False),
    ("note", "note", False),
    ("notes", "notes", False),
    ("tags", "tags", False),
    ("tag", "tag", False),
)
# Shown with two decimals, as the notebook's history table shows them.
TWO_DECIMALS = ("credits", "duration_s", "cost", "estimated_cost")
STYLE = """
:root{color-scheme:light dark}
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#141414;background:#fff}
h1{font-size:22px;margin:0 0 4px}.muted{color:#666}
.summary{display:flex;gap:24px;flex-wrap:wrap;margin:12px 0 20px}
.summary div{background:#f3f3f3;border-radius:6px;padding:8px 12px}
figure{margin:0 0 24px}figure img{max-width:100%;height:auto;border:1px solid #ddd}
table{border-collapse:collapse;width:100%}th,td{border-bottom:1px solid #e4e4e4;padding:6px;text-align:left;
vertical-align:top}th button{font:inherit;font-weight:600;background:none;border:0;padding:0;cursor:pointer}
th[aria-sort=ascending] button::after{content:" ▲"}th[aria-sort=descending] button::after{content:" ▼"}
img.thumb{max-width:128px;height:auto}td.prompt{max-width:360px}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.failed,td.moderated,td.unknown,td.cancelled{color:#b00020}
.rows{overflow-x:auto}
@media (prefers-color-scheme: dark){body{color:#e8e8e8;background:#161616}.muted{color:#a0a0a0}
.summary div{background:#262626}figure img{border-color:#3a3a3a}th,td{border-bottom-color:#333}
td.failed,td.moderated,td.unknown,td.cancelled{color:#ff6b81}}
@media (max-width: 640px){body{margin:8px}td.prompt{max-width:180px}img.thumb{max-width:72px}
.summary{gap:8px}}
"""
SCRIPT = """
document.querySelectorAll("table.records th button").forEach((button) => {
  button.addEventListener("click", () => {
    const th = button.parentElement, col = th.cellIndex, body = th.closest("table").tBodies[0];
    const asc = th.getAttribute("aria-sort") !== "ascending", numeric = th.dataset.type === "number";
    th.parentElement.querySelectorAll("th").forEach((h) => h.removeAttribute("aria-sort"));
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    const key = (row) => row.cells[col].dataset.sort ?? "";
    const value = (row) => (numeric ? (key(row) === "" ? -Infinity : Number(key(row))) : key(row));
    const order = (a, b) => (numeric ? value(a) - value(b) : value(a).localeCompare(value(b)));
    body.append(...[...body.rows].sort((a, b) => (asc ? order(a, b) : order(b, a))));
  });
});
"""


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value))


def _data_uri(data: bytes, mime: str = "image/jpeg") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _image_path(row: Mapping[str, Any], root: Path) -> Path | None:
    value = row.get("image_path")
    if _missing(value) or not value:
        return None
    path = Path(str(value))
    return path if path.is_absolute() else image_file(root, str(value))


def _thumbnail_uri(path: Path | None, size: int) -> str | None:
    if path is None or not path.is_file():
        return None
    try:
        with Image.open(path) as image:
            image.draft("RGB", (size, size))
            return _data_uri(thumbnail(image, size, "jpeg", quality=80))
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def _credits(row: Mapping[str, Any]) -> float | None:
    """A row's credits as the history counts them: the reported cost, else the estimate."""
    for name in ("cost", "estimated_cost"):
        if not _missing(row.get(name)):
            return float(row[name])
    return None


def _cell(name: str, row: Mapping[str, Any]) -> tuple[str, str]:
    """(shown text, sort key) for one column of a row."""
    if name == "size":
        width: Any
        height: Any
        width, height = (row.get("width"), row.get("height"))
        if _missing(width) or _missing(height):
            width, height = row.get("out_width"), row.get("out_height")
        if _missing(width) or _missing(height):
            return "", ""
        return f"{width}×{height}", str(int(width) * int(height))
    value = _credits(row) if name == "credits" else row.get(name)
    if name == "backend" and not _missing(value):
        return label_in_words(str(value)), label_in_words(str(value)).lower()
    if name == "favourite":
        return ("★", "1") if not _missing(value) and bool(value) else ("", "0")
    if _missing(value):
        return "", ""
    if isinstance(value, datetime):
        text = value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
        return text, text
    if isinstance(value, float):
        return (f"{value:.2f}" if name in TWO_DECIMALS else f"{value:.4g}"), repr(value)
    return str(value), str(value).lower() if isinstance(value, str) else str(value)


def _summary(frame: pd.DataFrame) -> str:
    ready = frame[frame["status"] == "ready"] if "status" in frame.columns else frame
    credits = [_credits(row) or 0.0 for row in ready.to_dict("records")]
    billed_mask = [is_billed_label(str(b)) for b in ready.get("backend", pd.Series([""] * len(ready)))]
    billed = sum(c for c, b in zip(credits, billed_mask, strict=True) if b)
    not_billed = sum(c for c, b in zip(credits, billed_mask, strict=True) if not b)
    parts = [
        ("rows", f"{len(frame)}"),
        ("ready", f"{len(ready)}"),
        ("not ready", f"{len(frame) - len(ready)}"),
        ("credits billed (BFL API)", f"{billed:.2f} over {sum(billed_mask)} images"),
        ("credits not billed (local)", f"{not_billed:.2f} over {len(billed_mask) - sum(billed_mask)} images"),
    ]
    items = "".join(
        f'<div><span class="muted">{html.escape(k)}</span><br><b>{html.escape(v)}</b></div>' for k, v in parts
    )
    return f'<section class="summary" aria-label="summary">{items}</section>'


Grids = str | Iterable[Grid | GridPages | Mapping[str, Any] | str] | None


def batch_grids(frame: pd.DataFrame, only: Iterable[str] | None = None) -> list[Grid]:
    """One grid per batch of ``frame`` (or per batch id in ``only``, in that order) on the batch's own axes."""
    batches = {batch_id: (axes, rows) for batch_id, axes, rows in batch_frames(frame)}
    wanted = list(batches) if only is None else list(only)
    unknown = [b for b in wanted if b not in batches]
    if unknown:
        known = ", ".join(b for b in batches if b) or "none"
        raise ValidationError(f"no batch {unknown[0]!r} with axes in these rows (batches: {known})")
    pages: list[Grid] = []
    for batch_id in wanted:
        axes, rows = batches[batch_id]
        title = f"batch {batch_id} · {len(rows)} images" if batch_id else f"{len(rows)} images"
        built = grid(rows, *grid_axes_of(axes), title=title)
        pages.extend(built if isinstance(built, GridPages) else [built])
    return pages


def _grids(frame: pd.DataFrame, grids: Grids, root: Path) -> list[Grid]:
    """The grid pages to show: one per batch (None or "batches"), those of the batch ids given, grids given,
    or grids built from dicts of ``grid`` arguments; "none" (or an empty list) draws none. An edit's cell shows
    its references (found in the history at ``root``)."""
    if grids == "none":
        return []
    frame = with_references(frame, root)
    if grids is None or grids == "batches":
        return batch_grids(frame)
    items = [grids] if isinstance(grids, str | Mapping | Grid) else list(grids)
    pages: list[Grid] = []
    for item in items:
        if isinstance(item, str):
            pages.extend(batch_grids(frame, [item]))
            continue
        built = grid(frame, **item) if isinstance(item, Mapping) else item
        pages.extend(built if isinstance(built, GridPages) else [built])
    return pages


def _figure(page: Grid) -> str:
    buffer = io.BytesIO()
    page.preview().convert("RGB").save(buffer, "JPEG", quality=85)
    caption = html.escape(page.title or "grid")
    return (
        f'<figure><img class="grid" src="{_data_uri(buffer.getvalue())}" alt="{caption}">'
        f"<figcaption class=muted>{caption}</figcaption></figure>"
    )


def _table(frame: pd.DataFrame, root: Path, size: int) -> str:
    columns = [(n, h, num) for n, h, num in SHOWN if n in frame.columns or n in ("size", "credits")]
    head = '<th scope="col">image</th>' + "".join(
        f'<th scope="col"{" data-type=number" if num else ""}><button type="button">{html.escape(h)}</button></th>'
        for _, h, num in columns
    )
    body = []
    for row in frame.to_dict("records"):
        uri = _thumbnail_uri(_image_path(row, root), size) if row.get("status", "ready") == "ready" else None
        alt = html.escape(str(row.get("prompt") or "image"), quote=True)
        cells = [f'<td><img class="thumb" src="{uri}" alt="{alt}"></td>' if uri else "<td></td>"]
        for name, _, numeric in columns:
            text, key = _cell(name, row)
            css = "num" if numeric else {"prompt": "prompt", "status": str(row.get("status"))}.get(name, "")
            klass = f' class="{html.escape(css)}"' if css else ""
            cells.append(f'<td{klass} data-sort="{html.escape(key, quote=True)}">{html.escape(text)}</td>')
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f'<table class="records"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def write_report(
    frame: pd.DataFrame,
    history_dir: str | os.PathLike[str],
    path_html: str | os.PathLike[str],
    *,
    title: str = "flux_nb experiment",
    grids: Grids = None,
    thumbnail_size: int = THUMBNAIL,
) -> Path:
    """Write one self-contained HTML page for ``frame``'s rows; returns its path.

    ``grids``: None or "batches" draws one grid per batch on its own axes (see ``history.batches``);
    "none" draws none; else grids to show: batch ids, ``Grid``, ``GridPages``, or dicts of ``grid``
    arguments such as ``{"x": "seed", "y": "prompt"}``.
    Relative ``image_path`` values (a bundle's tables) are read from ``history_dir``.

    >>> write_report(flux.history().tail(40), ".flux", "sweep.html", title="Fox sweep")  # doctest: +SKIP
    """
    if not isinstance(frame, pd.DataFrame):
        raise ValidationError(f"write_report takes a history DataFrame, got a {type(frame).__name__}")
    if thumbnail_size < 16:
        raise ValidationError(f"thumbnail_size {thumbnail_size} is too small; use 16 pixels or more (default 256)")
    root = Path(history_dir).expanduser().resolve()
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    figures = "".join(_figure(page) for page in _grids(frame, grids, root))
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f'<h1>{html.escape(title)}</h1><p class="muted">{len(frame)} rows · written {stamp} by flux_nb '
        f"{html.escape(version())}</p>{_summary(frame)}"
        f"{'<h2>Grids</h2>' + figures if figures else ''}<h2>Rows</h2>"
        f'<div class="rows">{_table(frame, root, thumbnail_size)}</div>'
        f"<script>{SCRIPT}</script></body></html>"
    )
    target = Path(path_html).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(page, encoding="utf-8")
    return target
