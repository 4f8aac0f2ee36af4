"""Drawing a grid page with PIL: labels sized to be read where the grid is shown, cells, failures.

A grid is usually seen scaled down to a notebook's width (about 1000 pixels), so its label font
grows with the page: ``font_size`` keeps labels about 14 pixels high there, and never more than a
sixth of a cell (a header still fits several words).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from flux_nb import fonts
from flux_nb.grids.theme import LIGHT, Theme

GAP = 6
LABEL_FONT = 14
LINE = LABEL_FONT + 4  # the bundled font's ascent plus descent at 14 px
HEADER_MAX_LINES = 6
#: The width a grid is typically shown at; labels are sized to read at this scale.
SHOWN_WIDTH = 1000

Box = tuple[int, int, int, int]
Row = dict[str, Any]


def font_size(page_width: int, cell: int) -> int:
    """Label pixels for a page ``page_width`` wide: about 14 px when shown SHOWN_WIDTH wide, at most cell/6."""
    return max(LABEL_FONT, min(cell // 6, round(LABEL_FONT * page_width / SHOWN_WIDTH)))


def line_height(size: int) -> int:
    return size + max(4, round(size * 2 / 7))


@dataclass(frozen=True)
class Style:
    """How one page draws: its theme and label size."""

    theme: Theme = LIGHT
    size: int = LABEL_FONT

    @property
    def line(self) -> int:
        return line_height(self.size)

    @property
    def font(self) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
        return fonts.font(self.size)


def wrap_text(text: str, width: int, max_lines: int = HEADER_MAX_LINES, size: int = LABEL_FONT) -> list[str]:
    """Split ``text`` into lines at most ``width`` pixels wide (long words are cut; "…" marks a cut-off end).

    Characters the bundled font lacks are folded first ("café" reads "cafe"), so no line shows boxes.
    """
    font, max_lines = fonts.font(size), max(1, max_lines)
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


def draw_lines(
    draw: ImageDraw.ImageDraw,
    lines: list[str],
    box: Box,
    fill: tuple[int, int, int],
    style: Style,
    centered: bool = False,
) -> Box:
    """Draw lines from the top of ``box`` (centred across it if asked); returns the box."""
    font = style.font
    for i, line in enumerate(lines):
        left = box[0] + max(0, int((box[2] - box[0] - font.getlength(line)) / 2)) if centered else box[0]
        draw.text((left, box[1] + i * style.line), line, fill=fill, font=font)
    return box


def load_cell(path: str, cell: int) -> Image.Image | None:
    """The image at ``path`` scaled to fit inside cell × cell (aspect kept), or None if unreadable."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (cell, cell))  # JPEG: decode at a reduced scale, much faster
            if image.width > cell or image.height > cell:
                image.thumbnail((cell, cell), Image.Resampling.BILINEAR, reducing_gap=2.0)
                fitted: Image.Image = image
            else:  # small images grow to the box too, so every cell compares at one scale
                scale = min(cell / image.width, cell / image.height)
                size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
                fitted = image.resize(size, Image.Resampling.BICUBIC)
            alpha = fitted.mode in ("RGBA", "LA", "PA") or "transparency" in fitted.info
            return fitted.convert("RGBA" if alpha else "RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def draw_cell(
    canvas: Image.Image, draw: ImageDraw.ImageDraw, box: Box, row: Row | None, style: Style, caption: str = ""
) -> None:
    """One cell: its image fitted in, or why there is none; ``caption`` in a band along its bottom."""
    left, top, right, bottom = box
    cell, line, theme = right - left, style.line, style.theme
    draw.rectangle((left, top, right - 1, bottom - 1), fill=theme.cell)
    if row is None:
        draw_lines(draw, ["missing"], (left, top + (cell - line) // 2, right, bottom), theme.muted, style, True)
        return
    status, path = row.get("status"), row.get("image_path")
    image = load_cell(str(path), cell) if path and status in ("ready", None) else None
    if image is not None:
        offset = (left + (cell - image.width) // 2, top + (cell - image.height) // 2)
        canvas.paste(image, offset, image if image.mode == "RGBA" else None)
        image.close()
        draw_references(canvas, box, row.get("references") or ())
    else:
        reason = row.get("error") or ("image file not found" if status in ("ready", None) else "no image")
        lines = wrap_text(f"{status or 'failed'}: {reason}", cell - 2 * GAP, (cell - 2 * GAP) // line, style.size)
        draw_lines(draw, lines, (left + GAP, top + GAP, right - GAP, bottom - GAP), theme.failed, style)
    if caption:
        band = (left, bottom - line - GAP, right - 1, bottom - 1)
        draw.rectangle(band, fill=theme.background)
        text = wrap_text(caption, cell - 2 * GAP, 1, style.size)
        draw_lines(draw, text, (left + GAP, band[1] + GAP // 2, right - GAP, bottom), theme.text, style)


def draw_references(canvas: Image.Image, box: Box, references: Sequence[Any]) -> None:
    """Small thumbnails of an edit's reference images along the top of its cell (a ``Reference``'s ``path``)."""
    left, top, right, _ = box
    side = max(16, (right - left) // 5)
    for index, reference in enumerate(references):
        x = left + GAP + index * (side + GAP)
        path = getattr(reference, "path", None)
        if x + side > right or path is None:
            continue
        thumb = load_cell(str(path), side)
        if thumb is not None:
            canvas.paste(thumb.convert("RGB"), (x, top + GAP))
            thumb.close()
