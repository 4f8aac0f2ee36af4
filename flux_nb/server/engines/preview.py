"""The preview engine: fast, deterministic, honest stand-in images.

The palette follows the prompt and the composition follows the seed, so seeds and
prompts differ visibly; reference images show through (the first as the base, the
others as insets). Every image carries a small "preview" mark. Rendering happens at a
quarter of the size and is upscaled smoothly, so 1024x1024 takes milliseconds.
"""

from __future__ import annotations

import colorsys
import hashlib

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from flux_nb import fonts
from flux_nb.server.engines.base import RenderJob

WORK_SCALE = 4  # render at 1/4 size, then upscale: the shapes are soft anyway
BLOBS = 7


def _digest(*parts: object) -> bytes:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()


def _palette(prompt: str) -> np.ndarray:
    """Five colours from the prompt: related hues, so a prompt has a recognisable mood."""
    seed = int.from_bytes(_digest("palette", prompt)[:8], "big")
    rng = np.random.default_rng(seed)
    base = rng.random()
    colours = []
    for i in range(5):
        hue = (base + i * rng.uniform(0.06, 0.22)) % 1.0
        sat = rng.uniform(0.45, 0.9)
        val = rng.uniform(0.55, 0.98)
        colours.append(colorsys.hsv_to_rgb(hue, sat, val))
    return np.array(colours, dtype=np.float32)


def _composition(prompt: str, seed: int, width: int, height: int) -> np.ndarray:
    """A smooth field of gradient and soft blobs, HxWx3 float32 in 0..1."""
    palette = _palette(prompt)
    rng = np.random.default_rng(int.from_bytes(_digest("layout", prompt, seed)[:8], "big"))
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    xs = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    angle = rng.uniform(0, 2 * np.pi)
    t = np.clip(0.5 + (xs - 0.5) * np.cos(angle) + (ys - 0.5) * np.sin(angle), 0, 1)[..., None]
    image = palette[0] * (1 - t) + palette[1] * t
    aspect = width / height
    for _ in range(BLOBS):
        cx, cy = rng.uniform(-0.1, 1.1), rng.uniform(-0.1, 1.1)
        radius = rng.uniform(0.08, 0.35)
        colour = palette[rng.integers(2, 5)]
        strength = rng.uniform(0.35, 0.85)
        dist = ((xs - cx) * aspect) ** 2 + (ys - cy) ** 2
        weight = (strength * np.exp(-dist / (2 * radius * radius)))[..., None]
        image = image * (1 - weight) + colour * weight
    return image


def _cover(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    return ImageOps.fit(image.convert("RGB"), size, Image.Resampling.BILINEAR)


def _stamp(canvas: Image.Image, prompt: str, seed: int) -> None:
    """The honest mark: "preview" in a corner, and the prompt's start along the bottom."""
    draw = ImageDraw.Draw(canvas)
    size = max(10, min(canvas.width, canvas.height) // 32)
    font = fonts.font(size)
    label = "preview"
    box = draw.textbbox((0, 0), label, font=font)
    pad = size // 2
    x0, y0 = canvas.width - (box[2] - box[0]) - 3 * pad, pad
    draw.rounded_rectangle((x0, y0, canvas.width - pad, y0 + (box[3] - box[1]) + 2 * pad), radius=pad, fill=(0, 0, 0))
    draw.text((x0 + pad, y0 + pad - box[1]), label, fill=(255, 255, 255), font=font)
    caption = fonts.drawable(f"{prompt[:60]}{'...' if len(prompt) > 60 else ''} · seed {seed}")
    draw.text((pad + 1, canvas.height - size - pad + 1), caption, fill=(0, 0, 0), font=font)
    draw.text((pad, canvas.height - size - pad), caption, fill=(255, 255, 255), font=font)


class PreviewEngine:
    """Deterministic in (prompt, seed, size, references); milliseconds per image."""

    name = "preview"

    def render(self, job: RenderJob) -> Image.Image:
        small = (max(16, job.width // WORK_SCALE), max(16, job.height // WORK_SCALE))
        field = _composition(job.prompt, job.seed, small[0], small[1])
        if job.references:
            base = np.asarray(_cover(job.references[0], small), dtype=np.float32) / 255.0
            field = 0.6 * base + 0.4 * field
        pixels = (np.clip(field, 0, 1) * 255).astype(np.uint8)
        canvas = Image.fromarray(pixels, "RGB").resize((job.width, job.height), Image.Resampling.BILINEAR)
        self._insets(canvas, job.references[1:])
        _stamp(canvas, job.prompt, job.seed)
        return canvas

    @staticmethod
    def _insets(canvas: Image.Image, references: tuple[Image.Image, ...]) -> None:
        """Further references as framed tiles along the bottom right."""
        side = max(16, min(canvas.width, canvas.height) // 5)
        margin = max(4, side // 10)
        for i, reference in enumerate(references):
            tile = ImageOps.expand(_cover(reference, (side, side)), border=max(1, margin // 3), fill=(255, 255, 255))
            x = canvas.width - (i + 1) * (tile.width + margin)
            y = canvas.height - tile.height - 3 * margin
            if x >= 0 and y >= 0:
                canvas.paste(tile, (x, y))
