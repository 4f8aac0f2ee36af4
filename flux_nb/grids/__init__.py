"""Labelled comparison grids (X/Y, and Z pages) from a history DataFrame or a sweep's results.

Layout is pure PIL: ``x`` values run across as column headers, ``y`` values down as row
headers, one page per ``z`` value (or all pages in one image, ``combined=True``). Cells keep each
image's aspect ratio inside a square box, labels are sized to be read where the grid is shown and
say only what varies (words every value shares are said once, in the title), failed and missing
cells say so. Grids follow a theme (``theme="dark"``; by default the notebook's when known).
``df.flux.grid(x="seed", y="prompt")`` works on any history DataFrame (``flux_nb.accessor``).
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image, ImageDraw

from flux_nb.core.axes import COMBINED
from flux_nb.core.results import Result
from flux_nb.errors import ValidationError
from flux_nb.grids.draw import GAP, LABEL_FONT, LINE, Box, Row, Style, draw_cell, draw_lines, font_size, wrap_text
from flux_nb.grids.labels import axis_label, cell_label, file_part, header, heading, label, ordered, plain, varying
from flux_nb.grids.theme import DARK, LIGHT, Theme, notebook_theme, theme_named

BACKGROUND, CELL_BACKGROUND, TEXT, MUTED, FAILED = LIGHT.background, LIGHT.cell, LIGHT.text, LIGHT.muted, LIGHT.failed
ROW_LABEL_MAX = 220
DISPLAY_MAX_WIDTH = 1600
# Columns every row needs besides the axes: identity, outcome, the size fallbacks and an edit's references.
ROW_COLUMNS = ("record_id", "status", "error", "image_path", "width", "height", "out_width", "out_height", "references")
# Fields a page says something about when they are not on an axis: shared (once, in the title) or differing.
DESCRIBED = ("prompt", "model", "width", "height", "steps", "guidance")
#: Most lines a page's title wraps to (a shared prompt is said whole, never cut mid-phrase).
TITLE_MAX_LINES = 12
# Result attributes that are not fields of the request or its outcome.
_RESULT_SKIP = ("error", "labels", "path", "thumbnail_size", "thumbnail_format")


def _rows(data: Any, names: set[str]) -> tuple[list[Row], set[str]]:
    """Rows of plain values from a DataFrame, a list of Results, or a list of dicts; and every field name."""
    if isinstance(data, pd.DataFrame):
        wanted = [c for c in data.columns if c in names or c in ROW_COLUMNS or c in DESCRIBED]  # of many
        frame = data[wanted].astype(object)
        return frame.where(frame.notna(), None).to_dict("records"), {str(c) for c in data.columns}
    rows = []
    for item in data:
        if isinstance(item, Result):
            row = {f.name: getattr(item, f.name) for f in fields(item) if f.name not in _RESULT_SKIP}
            row["image_path"] = str(item.path) if item.path is not None else None
            row["error"] = item.error_message
            row.update(item.labels)  # a sweep's labels come first: they are what was varied
        elif isinstance(item, Mapping):
            row = dict(item)
        else:
            raise ValidationError(
                f"grid takes a DataFrame or a list of Results, got a {type(item).__name__} in the list"
            )
        rows.append(row)
    return rows, {key for row in rows for key in row}


def _getter(name: str | None, known: set[str]) -> Callable[[Row], Any]:
    """Read one axis from a row; "size" falls back to width × height, "a+b" reads a pair."""
    if name is None:
        return lambda row: None
    if name in known:
        return lambda row: plain(row.get(name))
    if name == "size" and known & {"width", "out_width"}:
        return lambda row: plain((row.get("width") or row.get("out_width"), row.get("height") or row.get("out_height")))
    parts = name.split(COMBINED)
    if len(parts) > 1 and all(p in known or p == "size" for p in parts):
        getters = [_getter(p, known) for p in parts]
        return lambda row: tuple(g(row) for g in getters)
    raise ValidationError(f"grid axis {name!r} is not a column (columns: {', '.join(sorted(known))})")


@dataclass(repr=False)
class Grid:
    """One labelled grid page: the full-size image, and where each cell and label was drawn.

    A combined grid (``combined=True``) holds every Z page in one image: its cells are keyed by
    ``(x, (z, y))`` and ``pages`` keeps the pages it was made of.
    """

    image: Image.Image
    x: str | None
    y: str | None
    title: str = ""
    z: str | None = None
    z_value: Any = None
    cells: dict[tuple[Any, Any], str | None] = field(default_factory=dict)
    cell_boxes: dict[tuple[Any, Any], Box] = field(default_factory=dict)
    label_boxes: dict[str, Box] = field(default_factory=dict)
    #: The lines drawn in each label box (headers say only what varies), and each cell's caption.
    label_text: dict[str, list[str]] = field(default_factory=dict)
    cell_text: dict[tuple[Any, Any], str] = field(default_factory=dict)
    theme: str = "light"
    pages: list[Grid] = field(default_factory=list)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the full-size grid as PNG; returns the path."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        self.image.save(target, "PNG")
        return target

    def preview(self, max_width: int = DISPLAY_MAX_WIDTH) -> Image.Image:
        """The grid scaled down to at most ``max_width`` pixels wide, for display."""
        if self.image.width <= max_width:
            return self.image
        height = round(self.image.height * max_width / self.image.width)
        return self.image.resize((max_width, height), Image.Resampling.LANCZOS, reducing_gap=2.0)

    def _repr_html_(self) -> str:
        # One compact JPEG: a PNG repr beside it would store the grid twice in the notebook.
        buffer = io.BytesIO()
        self.preview().save(buffer, "JPEG", quality=85)
        data = base64.b64encode(buffer.getvalue()).decode()
        alt = html.escape(self.title or "comparison grid")
        return f'<img class="flux-grid" src="data:image/jpeg;base64,{data}" alt="{alt}" style="max-width:100%"/>'

    def __repr__(self) -> str:
        missing = sum(record is None for record in self.cells.values())
        shape = f"{len({k[0] for k in self.cells})}×{len({k[1] for k in self.cells})}"
        return f"Grid({self.title!r}, {shape} cells, {missing} missing, {self.image.width}×{self.image.height} px)"


class GridPages(list[Grid]):
    """One grid per value of the Z axis; displays every page, saves one PNG per page."""

    def save(self, path: str | os.PathLike[str]) -> list[Path]:
        """Write each page as PNG, its Z value in the name: grid.png -> grid_width_512.png, ..."""
        target = Path(path)
        saved: list[Path] = []
        for page in self:
            stem = f"{target.stem}_{file_part(axis_label(page.z or 'z', page.z_value))}"
            name = f"{stem}{target.suffix or '.png'}"
            if any(p.name == name for p in saved):
                name = f"{stem}_{len(saved) + 1}{target.suffix or '.png'}"
            saved.append(page.save(target.with_name(name)))
        return saved

    def _repr_html_(self) -> str:
        return "".join(f"<div>{page._repr_html_()}</div>" for page in self)

    def __repr__(self) -> str:
        return f"GridPages({len(self)} pages: {', '.join(repr(p.title) for p in self)})"


@dataclass(frozen=True)
class _Options:
    """What every page of one ``grid`` call shares."""

    cell: int
    theme: Theme
    labels: tuple[str, ...] = ()
    sort: str | None = None


def grid(
    data: Any,
    x: str | None = None,
    y: str | None = None,
    z: str | None = None,
    *,
    cell: int = 256,
    title: str | None = None,
    theme: str | None = None,
    combined: bool = False,
    label: str | Sequence[str] | None = None,
    sort: str | None = None,
    min_rating: float | None = None,
) -> Grid | GridPages:
    """A labelled grid: ``x`` values across, ``y`` values down, one page per ``z`` value.

    ``data`` is a history DataFrame (any column can be an axis) or a sweep's Results
    (their labels, then their attributes). Several records for one cell: the last wins, and the
    cell says how many met there ("2 rows: newest shown").
    ``theme``: "light" or "dark" (None: the notebook's theme when known, else light);
    ``combined``: every Z page in one image; ``label``: column(s) written on each cell
    (``label="rating"``); ``sort``: rows and columns ordered by their best value of a column,
    highest first (``sort="rating"``); ``min_rating``: only rows rated at least that.

    >>> grid(flux.history(), x="seed", y="prompt").save("seeds.png")  # doctest: +SKIP
    """
    if cell < 32:
        raise ValidationError(f"cell {cell} is too small to draw; use 32 pixels or more (default 256)")
    given = [axis for axis in (x, y, z) if axis]
    if len(set(given)) < len(given):
        raise ValidationError(f"grid axes must differ; got x={x!r}, y={y!r}, z={z!r}")
    labels = (label,) if isinstance(label, str) else tuple(label or ())
    extra = {*labels, *([sort] if sort else []), *(["rating"] if min_rating is not None else [])}
    rows, known = _rows(data, {name for axis in given for name in (axis, *axis.split(COMBINED))} | extra)
    for name in sorted(extra - known):
        raise ValidationError(f"grid column {name!r} is not in the data (columns: {', '.join(sorted(known))})")
    if min_rating is not None:
        rows = [r for r in rows if plain(r.get("rating")) is not None and r["rating"] >= min_rating]
    if not rows:
        raise ValidationError("nothing to draw: the data has no rows" + (" rated that high" if min_rating else ""))
    options = _Options(cell, theme_named(theme), labels, sort)
    get_x, get_y, get_z = (_getter(axis, known) for axis in (x, y, z))
    if z is None:
        return _page(rows, x, y, get_x, get_y, options, title or _axes_title(x, y), _join(title, _axes_title(x, y)))
    by_z: dict[Any, list[Row]] = {}
    for row in rows:
        by_z.setdefault(get_z(row), []).append(row)
    pages = GridPages()
    for value in ordered(by_z):
        page_title = _join(title, axis_label(z, value))
        page = _page(by_z[value], x, y, get_x, get_y, options, page_title, _join(page_title, _axes_title(x, y)))
        page.z, page.z_value = z, value
        pages.append(page)
    return _combine(pages, _join(title, _axes_title(x, y), f"z: {z}"), options.theme) if combined else pages


def _join(*parts: str | None) -> str:
    return " · ".join(part for part in parts if part)


def _axes_title(x: str | None, y: str | None) -> str:
    return _join(*(f"{k}: {v}" for k, v in (("x", x), ("y", y)) if v))


def _best_first(values: list[Any], cells: dict[Any, list[Row]], column: str) -> list[Any]:
    """Axis values ordered by the highest ``column`` among their cells, highest first (none last, stable)."""

    def best(value: Any) -> float:
        found = [plain(r.get(column)) for r in cells.get(value, [])]
        numbers = [float(v) for v in found if v is not None]
        return -max(numbers) if numbers else float("inf")

    return sorted(values, key=best)


def _page(
    rows: list[Row],
    x: str | None,
    y: str | None,
    get_x: Callable[[Row], Any],
    get_y: Callable[[Row], Any],
    options: _Options,
    title: str,
    caption: str,
) -> Grid:
    """Lay out and draw one page; images are opened only for the cells that show them."""
    # rows run oldest first: the newest wins, values come in the order the newest rows were made (as typed),
    # and a cell several rows met in says so
    keys = [(get_x(r), get_y(r)) for r in rows]
    latest: dict[tuple[Any, Any], Row] = {}
    for key, made in zip(keys, rows, strict=True):
        latest.pop(key, None)
        latest[key] = made
    met = Counter(keys)
    xs, ys = ordered(k[0] for k in latest), ordered(k[1] for k in latest)
    if options.sort:
        xs = _best_first(xs, {v: [r for k, r in latest.items() if k[0] == v] for v in xs}, options.sort)
        ys = _best_first(ys, {v: [r for k, r in latest.items() if k[1] == v] for v in ys}, options.sort)
    cell = options.cell
    label_w = min(cell, ROW_LABEL_MAX) if y else 0
    width = label_w + len(xs) * (cell + GAP) + GAP
    style = Style(options.theme, font_size(width, cell))
    label_w = min(cell, round(ROW_LABEL_MAX * style.size / LABEL_FONT)) if y else 0
    width = label_w + len(xs) * (cell + GAP) + GAP
    shared_x, own_x = varying(xs) if x else ("", {})
    shared_y, own_y = varying(ys) if y else ("", {})
    said = [f"{axis}: {shared}" for axis, shared in ((x, shared_x), (y, shared_y)) if shared]
    said += _off_axes(list(latest.values()), {n for a in (x, y) if a for n in (a, *a.split(COMBINED))})
    title_text = _join(caption, *said)
    caption_lines = wrap_text(title_text, width - 2 * GAP, TITLE_MAX_LINES, style.size) if title_text else []
    headers = {xv: wrap_text(own_x.get(xv) or heading(x, xv), cell, size=style.size) for xv in xs} if x else {}
    line, theme = style.line, options.theme
    title_h = len(caption_lines) * line + 2 * GAP if caption_lines else 0
    header_h = max(len(lines) for lines in headers.values()) * line + GAP if headers else 0
    height = title_h + header_h + len(ys) * (cell + GAP) + GAP
    canvas = Image.new("RGB", (width, height), theme.background)
    draw = ImageDraw.Draw(canvas)
    page = Grid(canvas, x, y, title=title, theme=theme.name)
    if caption_lines:
        page.label_text["title"] = caption_lines
        page.label_boxes["title"] = draw_lines(
            draw, caption_lines, (GAP, GAP, width - GAP, title_h), theme.muted, style
        )
    lefts = [label_w + GAP + col * (cell + GAP) for col in range(len(xs))]
    for left, (xv, lines) in zip(lefts, headers.items(), strict=False):
        box = (left, title_h, left + cell, title_h + header_h)
        page.label_text[f"x:{header(x or '', xv)}"] = lines
        page.label_boxes[f"x:{header(x or '', xv)}"] = draw_lines(draw, lines, box, theme.text, style, True)
    for row_index, yv in enumerate(ys):
        top = title_h + header_h + GAP + row_index * (cell + GAP)
        if y:
            lines = wrap_text(own_y.get(yv) or heading(y, yv), label_w - GAP, cell // line, style.size)
            box = (GAP, top, label_w, top + cell)
            page.label_text[f"y:{header(y, yv)}"] = lines
            page.label_boxes[f"y:{header(y, yv)}"] = draw_lines(draw, lines, box, theme.text, style)
        for left, xv in zip(lefts, xs, strict=True):
            box = (left, top, left + cell, top + cell)
            row = latest.get((xv, yv))
            page.cell_boxes[(xv, yv)] = box
            page.cells[(xv, yv)] = row.get("record_id") if row else None
            words = " · ".join(cell_label(n, plain(row.get(n))) for n in options.labels) if row else ""
            if row and row.get("references"):
                words = _join(words, "made from " + ", ".join(r.name for r in row["references"]))
            if met[(xv, yv)] > 1:
                words = _join(words, f"{met[(xv, yv)]} rows: newest shown")
            if words:
                page.cell_text[(xv, yv)] = words
            draw_cell(canvas, draw, box, row, style, words)
    return page


def _off_axes(shown: list[Row], on_axes: set[str]) -> list[str]:
    """What the shown cells share or not, off the axes: "prompt: <the whole prompt>" once, or that they differ."""
    if "size" in on_axes:
        on_axes |= {"width", "height"}
    said = []
    for name in DESCRIBED:
        values = {plain(row.get(name)) for row in shown if name in row} - {None}
        if name in on_axes or not values:
            continue
        if len(values) > 1:
            said.append(f"cells differ in {name} ({len(values)} values, not on an axis)")
        elif name == "prompt":
            said.append(f"prompt: {label(values.pop())}")
    return said


def _combine(pages: GridPages, title: str, theme: Theme) -> Grid:
    """Every page in one image, one under the other (each keeps its own title and headers)."""
    width = max(p.image.width for p in pages)
    height = sum(p.image.height for p in pages) + GAP * (len(pages) - 1)
    canvas = Image.new("RGB", (width, height), theme.background)
    first = pages[0]
    combined = Grid(canvas, first.x, first.y, title=title, z=first.z, theme=theme.name, pages=list(pages))
    top = 0
    for page in pages:
        canvas.paste(page.image, (0, top))
        for (xv, yv), record in page.cells.items():
            left, upper, right, lower = page.cell_boxes[(xv, yv)]
            combined.cells[(xv, (page.z_value, yv))] = record
            combined.cell_boxes[(xv, (page.z_value, yv))] = (left, upper + top, right, lower + top)
            if (xv, yv) in page.cell_text:
                combined.cell_text[(xv, (page.z_value, yv))] = page.cell_text[(xv, yv)]
        for key, (left, upper, right, lower) in page.label_boxes.items():
            combined.label_boxes[f"{page.title} | {key}"] = (left, upper + top, right, lower + top)
            combined.label_text[f"{page.title} | {key}"] = page.label_text.get(key, [])
        top += page.image.height + GAP
    return combined


__all__ = [
    "BACKGROUND",
    "CELL_BACKGROUND",
    "DARK",
    "DISPLAY_MAX_WIDTH",
    "FAILED",
    "GAP",
    "LABEL_FONT",
    "LIGHT",
    "LINE",
    "MUTED",
    "TEXT",
    "Grid",
    "GridPages",
    "Theme",
    "grid",
    "notebook_theme",
    "wrap_text",
]
