"""The pictures a comparison shows: a slider split, a difference, images side by side, as PNG bytes or data URLs."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

from PIL import Image, ImageChops, ImageDraw

MODES = ("slider", "flip", "side by side", "difference")
STATIC_HEIGHT = 256  # px of each image in the static view
DIFFERENCE_GAIN = 4  # small differences made visible


def _fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)


def difference(a: Image.Image, b: Image.Image) -> Image.Image:
    """|a - b| per channel, brightened (b fitted to a's size first): black where the images agree."""
    return ImageChops.difference(a, _fit(b, a.size)).point(lambda v: min(255, v * DIFFERENCE_GAIN))


def slider_view(a: Image.Image, b: Image.Image, position: float) -> Image.Image:
    """``a`` left of ``position`` (0 to 100 % of the width), ``b`` right of it, split by a line."""
    b = _fit(b, a.size)
    split = round(a.width * min(100.0, max(0.0, position)) / 100)
    out = b.copy()
    out.paste(a.crop((0, 0, split, a.height)), (0, 0))
    ImageDraw.Draw(out).line([(split, 0), (split, a.height)], fill=(255, 255, 255), width=max(1, a.width // 256))
    return out


def side_by_side(images: Sequence[Image.Image], height: int) -> Image.Image:
    """The images scaled to one height, in a row with a small gap."""
    scaled = [_fit(i, (max(1, round(i.width * height / i.height)), height)) for i in images]
    gap = 8
    out = Image.new("RGB", (sum(i.width for i in scaled) + gap * (len(scaled) - 1), height), (128, 128, 128))
    x = 0
    for image in scaled:
        out.paste(image, (x, 0))
        x += image.width + gap
    return out


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def data_url(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(png(image)).decode()
