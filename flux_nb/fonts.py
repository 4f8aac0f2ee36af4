"""Text drawn on images with Pillow's bundled font: the same look on every machine, offline.

The bundled font lacks many characters (é, ×, —, CJK); ``drawable`` folds text to what it can
draw, so no label or caption ever shows "missing glyph" boxes.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

# Stand-ins for symbols the bundled font lacks; accented letters fold to their base letter.
STAND_INS = {"×": "x", "—": "-", "–": "-", "•": "·", "→": "->", "’": "'", "‘": "'", "…": "..."}
PROBE_SIZE = 14


@lru_cache(maxsize=8)
def font(size: int = PROBE_SIZE) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """The bundled font at ``size`` pixels (scalable since Pillow 10.1)."""
    return ImageFont.load_default(size=size)


@lru_cache(maxsize=4096)
def _glyph(char: str) -> bytes:
    """How the bundled font draws ``char``: its "missing glyph" box for characters it lacks."""
    image = Image.new("L", (2 * PROBE_SIZE, 2 * PROBE_SIZE))
    ImageDraw.Draw(image).text((2, 2), char, fill=255, font=font())
    return image.tobytes()


@lru_cache(maxsize=4096)
def _drawable_char(char: str) -> str:
    folded = unicodedata.normalize("NFKD", STAND_INS.get(char, char))
    for candidate in (char, "".join(c for c in folded if not unicodedata.combining(c))):
        if candidate and all(c.isspace() or _glyph(c) != _glyph("\ufffe") for c in candidate):
            return candidate
    return "?"


def drawable(text: str) -> str:
    """``text`` with every character the bundled font lacks folded: "café × 2" -> "cafe x 2"."""
    return "".join(c if c.isascii() else _drawable_char(c) for c in str(text))
