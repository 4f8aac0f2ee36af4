"""Labelled comparison grids (X/Y, and Z pages) from a history DataFrame or a sweep's results.

Layout is pure PIL: cells keep each image's aspect ratio inside a square box, long labels
wrap, failed and missing cells say so. ``df.flux.grid(x="seed", y="prompt")`` works too.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
CELL_BACKGROUND = (236, 236, 236)
TEXT = (20, 20, 20)
MUTED = (120, 120, 120)
FAILED = (176, 0, 32)
GAP = 6
LABEL_FONT = 14
DISPLAY_MAX_WIDTH = 1600

Box = tuple[int, int, int, int]


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def wrap_text(text: str, width: int, size: int = LABEL_FONT, max_lines: int = 6) -> list[str]:
    """Split ``text`` into lines no wider than ``width`` pixels (long words are cut)."""
    font = _font(size)
    lines: list[str] = []
    for paragraph in str(text).splitlines() or [""]:
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}".strip()
            if font.getlength(candidate) <= width or not line:
                line = candidate
                while font.getlength(line) > width and len(line) > 1:
                    cut = max(1, int(len(line) * width / font.getlength(line)) - 1)
                    lines.append(line[:cut])
                    line = line[cut:]
            else:
                lines.append(line)
                line = word
        lines.append(line)
    if len(lines) > max_lines:
        lines = [*lines[: max_lines - 1], lines[max_lines - 1][: max(1, len(lines[max_lines - 1]) - 1)] + "…"]
    return lines


def _label(value: Any) -> str:
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return f"{value[0]}×{value[1]}"
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "—"
    return str(value)


def _sort_key(value: Any) -> tuple[int, Any]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value)
    if isinstance(value, tuple):
        return (1, value)
    return (2, 0)


def ordered(values: Sequence[Any]) -> list[Any]:
    """Distinct values: numbers (and sizes) sorted, anything else in order of appearance."""
    seen: list[Any] = []
    for value in values:
        if value not in seen:
            seen.append(value)
    if all(isinstance(v, (int, float, tuple)) and not isinstance(v, bool) for v in seen):
        return sorted(seen, key=_sort_key)
    return seen


def _rows(data: Any) -> list[dict[str, Any]]:
    """Rows of plain values from a DataFrame or a list of Results."""
    if isinstance(data, pd.DataFrame):
        frame = data.astype(object).where(data.notna(), None)
        return frame.to_dict("records")
    rows = []
    for result in data:
        row = {
            "record_id": result.record_id,
            "prompt": result.prompt,
            "seed": result.seed,
            "width": result.width,
            "height": result.height,
            "model": result.model,
            "status": result.status,
            "tag": result.tag,
            "error": result.error_message,
            "image_path": str(result.path) if result.path else None,
        }
        row.update(result.labels)
        rows.append(row)
    return rows


def _value(row: dict[str, Any], name: str | None) -> Any:
    if name is None:
        return None
    if name == "size" and "size" not in row:
        return (row.get("out_width") or row.get("width"), row.get("out_height") or row.get("height"))
    if name not in row:
        raise KeyError(name)
    value = row[name]
    return tuple(value) if isinstance(value, list) else value


def _load_cell(path: str, cell: int) -> Image.Image | None:
    try:
        with Image.open(path) as image:
            image.draft("RGB", (cell, cell))
            image.thumbnail((cell, cell), Image.Resampling.BILINEAR, reducing_gap=2.0)
            return image.convert("RGB")
    except OSError:
        return None


@dataclass
class Grid:
    """One labelled grid page."""

    image: Image.Image
    x: str | None
    y: str | None
    cells: dict[tuple[Any, Any], str | None] = field(default_factory=dict)
    cell_boxes: dict[tuple[Any, Any], Box] = field(default_factory=dict)
    label_boxes: dict[str, Box] = field(default_factory=dict)
    title: str = ""

    def save(self, path: str | Path) -> Path:
        """Write the full-size grid as PNG."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        self.image.save(target, "PNG")
        return target

    def _display_jpeg(self) -> bytes:
        image = self.image
        if image.width > DISPLAY_MAX_WIDTH:
            ratio = DISPLAY_MAX_WIDTH / image.width
            image = image.resize((DISPLAY_MAX_WIDTH, round(image.height * ratio)), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=85)
        return buffer.getvalue()

    def _repr_html_(self) -> str:
        data = base64.b64encode(self._display_jpeg()).decode()
        alt = html.escape(self.title or "comparison grid")
        return f'<img class="flux-grid" src="data:image/jpeg;base64,{data}" alt="{alt}" style="max-width:100%"/>'


class GridPages(list[Grid]):
    """One grid per value of the Z axis."""

    def save(self, path: str | Path) -> list[Path]:
        """Write each page as PNG, the Z value in its name: grid.png -> grid_<z>.png."""
        target = Path(path)
        saved = []
        for page in self:
            safe = re.sub(r"[^\w.-]+", "_", page.title).strip("_")[:60]
            saved.append(page.save(target.with_name(f"{target.stem}_{safe}{target.suffix or '.png'}")))
        return saved

    def _repr_html_(self) -> str:
        return "".join(f"<h4>{html.escape(p.title)}</h4>{p._repr_html_()}" for p in self)

    def __iter__(self) -> Iterator[Grid]:
        return super().__iter__()


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

    >>> grid(flux.history(), x="seed", y="prompt").save("seeds.png")  # doctest: +SKIP
    """
    from flux_nb.errors import ValidationError

    rows = _rows(data)
    if not rows:
        raise ValidationError("nothing to draw: the data has no rows")
    try:
        for name in (x, y, z):
            for row in rows[:1]:
                _value(row, name)
    except KeyError as exc:
        raise ValidationError(f"grid axis {exc.args[0]!r} is not a column (columns: {', '.join(rows[0])})") from None
    if z is None:
        return _page(rows, x, y, cell, title)
    pages = GridPages()
    for value in ordered([_value(r, z) for r in rows]):
        subset = [r for r in rows if _value(r, z) == value]
        pages.append(_page(subset, x, y, cell, f"{z}: {_label(value)}"))
    return pages


def _page(rows: list[dict[str, Any]], x: str | None, y: str | None, cell: int, title: str | None) -> Grid:
    xs = ordered([_value(r, x) for r in rows])
    ys = ordered([_value(r, y) for r in rows])
    latest: dict[tuple[Any, Any], dict[str, Any]] = {}
    for row in rows:
        latest[(_value(row, x), _value(row, y))] = row
    header_lines = max((len(wrap_text(_label(v), cell)) for v in xs), default=1) if x else 0
    line_height = LABEL_FONT + 4
    title_text = title or " · ".join(f"{k}: {v}" for k, v in (("x", x), ("y", y)) if v)
    title_h = line_height + 2 * GAP if title_text else 0
    header_h = header_lines * line_height + GAP if x else 0
    label_w = min(cell, 220) if y else 0
    width = label_w + len(xs) * (cell + GAP) + GAP
    height = title_h + header_h + len(ys) * (cell + GAP) + GAP
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font(LABEL_FONT)
    page = Grid(canvas, x, y, title=title_text)
    if title_text:
        draw.text((GAP, GAP), title_text, fill=MUTED, font=font)
    for col, xv in enumerate(xs):
        left = label_w + GAP + col * (cell + GAP)
        if x:
            box = (left, title_h, left + cell, title_h + header_h)
            _draw_lines(draw, wrap_text(_label(xv), cell), box, centered=True)
            page.label_boxes[f"x:{_label(xv)}"] = box
    for row_i, yv in enumerate(ys):
        top = title_h + header_h + GAP + row_i * (cell + GAP)
        if y:
            box = (GAP, top, label_w, top + cell)
            _draw_lines(draw, wrap_text(_label(yv), label_w - GAP, max_lines=cell // line_height), box)
            page.label_boxes[f"y:{_label(yv)}"] = box
        for col, xv in enumerate(xs):
            left = label_w + GAP + col * (cell + GAP)
            box = (left, top, left + cell, top + cell)
            page.cell_boxes[(xv, yv)] = box
            row = latest.get((xv, yv))
            page.cells[(xv, yv)] = row.get("record_id") if row else None
            _draw_cell(canvas, draw, box, row, cell)
    return page


def _draw_lines(draw: ImageDraw.ImageDraw, lines: list[str], box: Box, centered: bool = False) -> None:
    font = _font(LABEL_FONT)
    for i, line in enumerate(lines):
        left = box[0]
        if centered:
            left = box[0] + max(0, int((box[2] - box[0] - font.getlength(line)) / 2))
        draw.text((left, box[1] + i * (LABEL_FONT + 4)), line, fill=TEXT, font=font)


def _draw_cell(canvas: Image.Image, draw: ImageDraw.ImageDraw, box: Box, row: dict[str, Any] | None, cell: int) -> None:
    draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=CELL_BACKGROUND)
    if row is None:
        _draw_lines(draw, ["missing"], (box[0] + GAP, box[1] + cell // 2 - LABEL_FONT, box[2], box[3]), centered=True)
        return
    path = row.get("image_path")
    image = _load_cell(path, cell) if path and row.get("status") in ("ready", None) else None
    if image is None:
        status = row.get("status") or "failed"
        reason = row.get("error") or ("image file missing" if status == "ready" else "no image")
        lines = wrap_text(f"{status}: {reason}", cell - 2 * GAP, max_lines=cell // (LABEL_FONT + 4) - 1)
        font = _font(LABEL_FONT)
        for i, line in enumerate(lines):
            draw.text((box[0] + GAP, box[1] + GAP + i * (LABEL_FONT + 4)), line, fill=FAILED, font=font)
        return
    canvas.paste(image, (box[0] + (cell - image.width) // 2, box[1] + (cell - image.height) // 2))


@pd.api.extensions.register_dataframe_accessor("flux")
class FluxAccessor:
    """``df.flux.grid(x=..., y=..., z=...)`` on any history DataFrame."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self._frame = frame

    def grid(
        self, x: str | None = None, y: str | None = None, z: str | None = None, **options: Any
    ) -> Grid | GridPages:
        return grid(self._frame, x=x, y=y, z=z, **options)
