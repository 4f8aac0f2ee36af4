"""Labelled comparison grids (X/Y, and Z pages) from a history DataFrame or a sweep's results.

Layout is pure PIL: ``x`` values run across as column headers, ``y`` values down as row
headers, one page per ``z`` value. Cells keep each image's aspect ratio inside a square box,
long labels wrap and the header grows to fit, failed and missing cells say so.
``df.flux.grid(x="seed", y="prompt")`` works on any history DataFrame (``flux_nb.accessor``).
"""

from __future__ import annotations

import base64
import html
import io
import math
import numbers
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from flux_nb import fonts
from flux_nb.core.axes import COMBINED
from flux_nb.core.results import Result
from flux_nb.errors import ValidationError

BACKGROUND = (255, 255, 255)
CELL_BACKGROUND = (236, 236, 236)
TEXT = (20, 20, 20)
MUTED = (110, 110, 110)
FAILED = (176, 0, 32)
GAP = 6
LABEL_FONT = 14
LINE = LABEL_FONT + 4  # the bundled font's ascent plus descent at 14 px
ROW_LABEL_MAX = 220
HEADER_MAX_LINES = 6
DISPLAY_MAX_WIDTH = 1600
# Columns every row needs besides the axes: identity, outcome and the size fallbacks.
ROW_COLUMNS = ("record_id", "status", "error", "image_path", "width", "height", "out_width", "out_height")
# Result attributes that are not fields of the request or its outcome.
_RESULT_SKIP = ("error", "labels", "path", "thumbnail_size", "thumbnail_format")

Box = tuple[int, int, int, int]
Row = dict[str, Any]


def _font(size: int = LABEL_FONT) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return fonts.font(size)


def wrap_text(text: str, width: int, max_lines: int = HEADER_MAX_LINES) -> list[str]:
    """Split ``text`` into lines at most ``width`` pixels wide (long words are cut; "…" marks a cut-off end).

    Characters the bundled font lacks are folded first ("café" reads "cafe"), so no line shows boxes.
    """
    font, max_lines = _font(), max(1, max_lines)
    lines: list[str] = []
    text = fonts.drawable(text)
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split(" "):
            line = f"{line} {word}" if line else word
            if font.getlength(line) > width and " " in line:  # the last word starts a new line
                head, line = line.rsplit(" ", 1)
                lines.append(head)
            while font.getlength(line) > width and len(line) > 1:  # a word wider than the box is cut
                cut = max(1, int(len(line) * width / font.getlength(line)))
                while cut > 1 and font.getlength(line[:cut]) > width:
                    cut -= 1
                lines.append(line[:cut])
                line = line[cut:]
        lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        while lines[-1] and font.getlength(lines[-1] + "…") > width:
            lines[-1] = lines[-1][:-1]
        lines[-1] += "…"
    return lines


def _label(value: Any) -> str:
    """How a value reads in a header: sizes as 1024×768, whole floats without ".0", paths by name."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:.6g}"
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return f"{value[0]}×{value[1]}"
    if isinstance(value, (tuple, list)):
        return ", ".join(_label(v) for v in value)
    if isinstance(value, Image.Image):
        return f"image {value.width}×{value.height}"
    if isinstance(value, Path):
        return value.name
    return str(value)


def _axis_label(name: str, value: Any) -> str:
    """A value with its axis name, as in titles: "seed: 42", or "model: pro · steps: 4" for folded axes."""
    parts = name.split(COMBINED)
    if len(parts) > 1 and isinstance(value, tuple) and len(value) == len(parts):
        return " · ".join(f"{n}: {_label(v)}" for n, v in zip(parts, value, strict=True))
    return f"{name}: {_label(value)}"


def _header(axis: str, value: Any) -> str:
    """A header: the bare value, or "name: value" pairs for a folded axis like "model+steps"."""
    return _axis_label(axis, value) if COMBINED in axis else _label(value)


def _plain(value: Any) -> Any:
    """A hashable cell key for a value: lists become tuples, NA becomes None, images their label."""
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    try:
        hash(value)
    except TypeError:
        return _label(value)
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)  # NumPy numbers too


def ordered(values: Iterable[Any]) -> list[Any]:
    """Distinct values: numbers (and sizes) sorted, anything else in order of first appearance; None last."""
    distinct = list(dict.fromkeys(values))
    seen = [v for v in distinct if v is not None]
    numeric = all(_is_number(v) for v in seen) or all(
        isinstance(v, tuple) and all(_is_number(p) for p in v) for v in seen
    )
    if seen and numeric:
        seen.sort()
    return [*seen, None] if None in distinct else seen


def _rows(data: Any, names: set[str]) -> tuple[list[Row], set[str]]:
    """Rows of plain values from a DataFrame, a list of Results, or a list of dicts; and every field name."""
    if isinstance(data, pd.DataFrame):
        wanted = [c for c in data.columns if c in names or c in ROW_COLUMNS]  # a long history has many columns
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
        return lambda row: _plain(row.get(name))
    if name == "size" and known & {"width", "out_width"}:
        return lambda row: _plain(
            (row.get("width") or row.get("out_width"), row.get("height") or row.get("out_height"))
        )
    parts = name.split(COMBINED)
    if len(parts) > 1 and all(p in known or p == "size" for p in parts):
        getters = [_getter(p, known) for p in parts]
        return lambda row: tuple(g(row) for g in getters)
    raise ValidationError(f"grid axis {name!r} is not a column (columns: {', '.join(sorted(known))})")


@dataclass(repr=False)
class Grid:
    """One labelled grid page: the full-size image, and where each cell and label was drawn."""

    image: Image.Image
    x: str | None
    y: str | None
    title: str = ""
    z: str | None = None
    z_value: Any = None
    cells: dict[tuple[Any, Any], str | None] = field(default_factory=dict)
    cell_boxes: dict[tuple[Any, Any], Box] = field(default_factory=dict)
    label_boxes: dict[str, Box] = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
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

    def save(self, path: str | Path) -> list[Path]:
        """Write each page as PNG, its Z value in the name: grid.png -> grid_width_512.png, ..."""
        target = Path(path)
        saved: list[Path] = []
        for page in self:
            stem = f"{target.stem}_{_file_part(_axis_label(page.z or 'z', page.z_value))}"
            name = f"{stem}{target.suffix or '.png'}"
            if any(p.name == name for p in saved):
                name = f"{stem}_{len(saved) + 1}{target.suffix or '.png'}"
            saved.append(page.save(target.with_name(name)))
        return saved

    def _repr_html_(self) -> str:
        return "".join(f"<div>{page._repr_html_()}</div>" for page in self)

    def __repr__(self) -> str:
        return f"GridPages({len(self)} pages: {', '.join(repr(p.title) for p in self)})"


def _file_part(text: str) -> str:
    """Text made safe for a file name: "prompt: a cat" -> "prompt_a_cat"."""
    return re.sub(r"[^\w.-]+", "_", text).strip("_")[:100]


def grid(
    data: Any,
    x: str | None = None,
    y: str | None = None,
    z: str | None = None,
    *,
    cell: int = 256,
    title: str | None = None,
) -> Grid | GridPages:
    """A labelled grid: ``x`` values across, ``y`` values down, one page per ``z`` value.

    ``data`` is a history DataFrame (any column can be an axis) or a sweep's Results
    (their labels, then their attributes). Several records for one cell: the last wins.

    >>> grid(flux.history(), x="seed", y="prompt").save("seeds.png")  # doctest: +SKIP
    """
    if cell < 32:
        raise ValidationError(f"cell {cell} is too small to draw; use 32 pixels or more (default 256)")
    given = [axis for axis in (x, y, z) if axis]
    if len(set(given)) < len(given):
        raise ValidationError(f"grid axes must differ; got x={x!r}, y={y!r}, z={z!r}")
    rows, known = _rows(data, {name for axis in given for name in (axis, *axis.split(COMBINED))})
    if not rows:
        raise ValidationError("nothing to draw: the data has no rows")
    get_x, get_y, get_z = (_getter(axis, known) for axis in (x, y, z))
    if z is None:
        return _page(rows, x, y, get_x, get_y, cell, title or _axes_title(x, y), _join(title, _axes_title(x, y)))
    by_z: dict[Any, list[Row]] = {}
    for row in rows:
        by_z.setdefault(get_z(row), []).append(row)
    pages = GridPages()
    for value in ordered(by_z):
        page_title = _join(title, _axis_label(z, value))
        page = _page(by_z[value], x, y, get_x, get_y, cell, page_title, _join(page_title, _axes_title(x, y)))
        page.z, page.z_value = z, value
        pages.append(page)
    return pages


def _join(*parts: str | None) -> str:
    return " · ".join(part for part in parts if part)


def _axes_title(x: str | None, y: str | None) -> str:
    return _join(*(f"{k}: {v}" for k, v in (("x", x), ("y", y)) if v))


def _page(
    rows: list[Row],
    x: str | None,
    y: str | None,
    get_x: Callable[[Row], Any],
    get_y: Callable[[Row], Any],
    cell: int,
    title: str,
    caption: str,
) -> Grid:
    """Lay out and draw one page; images are opened only for the cells that show them."""
    latest: dict[tuple[Any, Any], Row] = {}
    for row in rows:
        latest[(get_x(row), get_y(row))] = row  # rows run oldest first: the newest wins
    xs, ys = ordered(k[0] for k in latest), ordered(k[1] for k in latest)
    label_w = min(cell, ROW_LABEL_MAX) if y else 0
    width = label_w + len(xs) * (cell + GAP) + GAP
    caption_lines = wrap_text(caption, width - 2 * GAP, max_lines=3) if caption else []
    headers = {xv: wrap_text(_header(x, xv), cell) for xv in xs} if x else {}
    title_h = len(caption_lines) * LINE + 2 * GAP if caption_lines else 0
    header_h = max(len(lines) for lines in headers.values()) * LINE + GAP if headers else 0
    height = title_h + header_h + len(ys) * (cell + GAP) + GAP
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    page = Grid(canvas, x, y, title=title)
    if caption_lines:
        page.label_boxes["title"] = _draw_lines(draw, caption_lines, (GAP, GAP, width - GAP, title_h), MUTED)
    lefts = [label_w + GAP + col * (cell + GAP) for col in range(len(xs))]
    for left, (xv, lines) in zip(lefts, headers.items(), strict=False):
        box = (left, title_h, left + cell, title_h + header_h)
        page.label_boxes[f"x:{_header(x or '', xv)}"] = _draw_lines(draw, lines, box, TEXT, centered=True)
    for row_index, yv in enumerate(ys):
        top = title_h + header_h + GAP + row_index * (cell + GAP)
        if y:
            lines = wrap_text(_header(y, yv), label_w - GAP, max_lines=cell // LINE)
            page.label_boxes[f"y:{_header(y, yv)}"] = _draw_lines(draw, lines, (GAP, top, label_w, top + cell), TEXT)
        for left, xv in zip(lefts, xs, strict=True):
            box = (left, top, left + cell, top + cell)
            row = latest.get((xv, yv))
            page.cell_boxes[(xv, yv)] = box
            page.cells[(xv, yv)] = row.get("record_id") if row else None
            _draw_cell(canvas, draw, box, row)
    return page


def _draw_lines(
    draw: ImageDraw.ImageDraw, lines: list[str], box: Box, fill: tuple[int, int, int], centered: bool = False
) -> Box:
    """Draw lines from the top of ``box`` (centred across it if asked); returns the box."""
    font = _font()
    for i, line in enumerate(lines):
        left = box[0] + max(0, int((box[2] - box[0] - font.getlength(line)) / 2)) if centered else box[0]
        draw.text((left, box[1] + i * LINE), line, fill=fill, font=font)
    return box


def _load_cell(path: str, cell: int) -> Image.Image | None:
    """The image at ``path`` scaled to fit inside cell × cell (aspect kept), or None if unreadable."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (cell, cell))  # JPEG: decode at a reduced scale, much faster
            if image.width > cell or image.height > cell:
                image.thumbnail((cell, cell), Image.Resampling.BILINEAR, reducing_gap=2.0)
                fitted = image
            else:  # small images grow to the box too, so every cell compares at one scale
                scale = min(cell / image.width, cell / image.height)
                size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
                fitted = image.resize(size, Image.Resampling.BICUBIC)
            alpha = fitted.mode in ("RGBA", "LA", "PA") or "transparency" in fitted.info
            return fitted.convert("RGBA" if alpha else "RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def _draw_cell(canvas: Image.Image, draw: ImageDraw.ImageDraw, box: Box, row: Row | None) -> None:
    left, top, right, bottom = box
    cell = right - left
    draw.rectangle((left, top, right - 1, bottom - 1), fill=CELL_BACKGROUND)
    if row is None:
        _draw_lines(draw, ["missing"], (left, top + (cell - LINE) // 2, right, bottom), MUTED, centered=True)
        return
    status, path = row.get("status"), row.get("image_path")
    image = _load_cell(str(path), cell) if path and status in ("ready", None) else None
    if image is not None:
        offset = (left + (cell - image.width) // 2, top + (cell - image.height) // 2)
        canvas.paste(image, offset, image if image.mode == "RGBA" else None)
        image.close()
        return
    reason = row.get("error") or ("image file not found" if status in ("ready", None) else "no image")
    lines = wrap_text(f"{status or 'failed'}: {reason}", cell - 2 * GAP, max_lines=(cell - 2 * GAP) // LINE)
    _draw_lines(draw, lines, (left + GAP, top + GAP, right - GAP, bottom - GAP), FAILED)
