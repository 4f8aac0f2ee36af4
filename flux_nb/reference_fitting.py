"""Reference images asked to fit the API's limits: ``shrink(image)`` downscales and re-encodes instead of refusing.

A reference over 4 MP or 20 MB is refused (``flux_nb.images``); wrapped in ``shrink``, it is scaled down to
4 MP and re-encoded (PNG, or JPEG when a PNG would still pass the byte limit). Only what is asked is changed:

>>> flux.generate("make it night", images=[shrink("photo_48mp.jpg")])  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from flux_nb.errors import ValidationError
from flux_nb.images import (
    REFERENCE_MAX_BYTES,
    REFERENCE_MAX_PIXELS,
    ImageInput,
    from_pil,
    looks_like_url,
    open_image,
    prepare_image,
    sha256_hex,
)


@dataclass(frozen=True)
class Shrink:
    """A reference to downscale and re-encode when it passes the API's limits."""

    image: Any

    def __flux_reference__(self, name: str) -> ImageInput:
        return shrunk(self.image, name)


def shrink(image: Any) -> Shrink:
    """Mark a reference (path, bytes, PIL image, array) to be downscaled to the API's limits rather than refused."""
    return Shrink(image)


def shrunk(inner: Any, name: str) -> ImageInput:
    """``inner`` within the limits: as it is when it fits, else downscaled to 4 MP and re-encoded."""
    if isinstance(inner, str) and looks_like_url(inner):
        raise ValidationError(f"{name}: a URL reference cannot be shrunk here (the API fetches it); download it first")
    if isinstance(inner, np.ndarray):
        inner = Image.fromarray(np.ascontiguousarray(inner))
    if isinstance(inner, Image.Image):
        image = inner
    elif isinstance(inner, (bytes, bytearray, memoryview, str, Path)):
        data = (
            bytes(inner) if isinstance(inner, (bytes, bytearray, memoryview)) else Path(inner).expanduser().read_bytes()
        )
        image = open_image(data, name)
        if len(data) <= REFERENCE_MAX_BYTES and image.width * image.height <= REFERENCE_MAX_PIXELS:
            return prepare_image(data, name)
    else:
        return prepare_image(inner, name)
    scale = min(1.0, (REFERENCE_MAX_PIXELS / (image.width * image.height)) ** 0.5)
    if scale < 1.0:
        size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    try:
        return from_pil(image, name)
    except ValidationError:  # a noisy 4 MP PNG can pass the byte limit: JPEG fits
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, "JPEG", quality=92)
        data = buffer.getvalue()
        return ImageInput(base64.b64encode(data).decode("ascii"), sha256_hex(data), data, image.size, "jpeg")


__all__ = ["Shrink", "shrink", "shrunk"]
