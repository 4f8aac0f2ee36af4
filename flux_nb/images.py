"""Images in and out: anything image-like to what the API accepts, and checks on what comes back."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from PIL import Image

from flux_nb.errors import DeliveryError, ValidationError

# Formats the API takes as they are; anything else is re-encoded as PNG.
PASSTHROUGH_FORMATS = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ImageInput:
    """A reference image ready for the payload: a URL as given, or base64 of the image bytes.

    ``sha256`` identifies it in the history: the hash of the bytes, or of ``"url:" + URL``
    for a URL (whose content the API fetches, and we never see).
    """

    value: str
    sha256: str
    data: bytes | None = None
    size: tuple[int, int] | None = None
    format: str | None = None
    is_url: bool = False

    @property
    def megapixels(self) -> float:
        return self.size[0] * self.size[1] / (1024 * 1024) if self.size else 0.0

    def __repr__(self) -> str:
        if self.is_url:
            return f"ImageInput(url={self.value!r})"
        return f"ImageInput({self.format}, {self.size[0]}x{self.size[1]}, sha256={self.sha256[:12]})"  # type: ignore[index]


def open_image(data: bytes, name: str) -> Image.Image:
    """Decode fully (so truncated files fail), inside the decompression-bomb limit."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValidationError(f"{name}: image is too large to decode safely ({exc})") from None
    except Exception as exc:
        raise ValidationError(f"{name}: not a readable image ({type(exc).__name__}: {exc})") from None
    if image.width == 0 or image.height == 0:
        raise ValidationError(f"{name}: image has zero size")
    return image


def _encode_png(image: Image.Image) -> bytes:
    if image.mode not in ("RGB", "RGBA", "L"):
        image = image.convert("RGBA" if "A" in image.getbands() or "transparency" in image.info else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _from_bytes(data: bytes, name: str) -> ImageInput:
    if not data:
        raise ValidationError(f"{name}: empty bytes are not an image")
    image = open_image(data, name)
    fmt = PASSTHROUGH_FORMATS.get(image.format or "")
    if fmt is None:
        data, fmt = _encode_png(image), "png"
    return ImageInput(base64.b64encode(data).decode("ascii"), sha256_hex(data), data, image.size, fmt)


def _from_url(url: str, name: str) -> ImageInput:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValidationError(f"{name}: {url[:80]!r} is not an http(s) URL")
    if not parts.hostname:
        raise ValidationError(f"{name}: URL {url[:80]!r} has no host")
    return ImageInput(url, sha256_hex(f"url:{url}".encode()), is_url=True)


def _from_path(path: Path, name: str) -> ImageInput:
    path = path.expanduser()
    if not path.exists():
        raise ValidationError(f"{name}: no file at {str(path)!r}")
    if path.is_dir():
        raise ValidationError(f"{name}: {str(path)!r} is a folder, not an image file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValidationError(f"{name}: cannot read {str(path)!r} ({exc.strerror})") from None
    return _from_bytes(data, f"{name} ({path.name})")


def _from_array(array: Any, name: str) -> ImageInput:
    import numpy as np

    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ValidationError(f"{name}: array of shape {array.shape} is not HxW, HxWx3 or HxWx4")
    if array.size == 0:
        raise ValidationError(f"{name}: array is empty")
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise ValidationError(f"{name}: float array holds NaN or infinity")
        array = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ValidationError(f"{name}: array dtype {array.dtype} must be uint8 or float in 0..1")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return _from_bytes(_encode_png(Image.fromarray(array)), name)


def prepare_image(obj: Any, name: str = "image") -> ImageInput:
    """Turn a path, URL, bytes, PIL image or NumPy array into an ``ImageInput``.

    >>> prepare_image("https://example.com/cat.png").is_url
    True
    """
    if isinstance(obj, ImageInput):
        return obj
    if isinstance(obj, Image.Image):
        if obj.width == 0 or obj.height == 0:
            raise ValidationError(f"{name}: image has zero size")
        return _from_bytes(_encode_png(obj), name)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return _from_bytes(bytes(obj), name)
    if isinstance(obj, str) and ("://" in obj[:12] or obj.startswith(("javascript:", "data:"))):
        return _from_url(obj, name)
    if isinstance(obj, (str, os.PathLike)):
        return _from_path(Path(obj), name)
    if type(obj).__module__ == "numpy" and hasattr(obj, "ndim"):
        return _from_array(obj, name)
    raise ValidationError(
        f"{name}: {type(obj).__name__} is not an image; use a path, an http(s) URL, bytes, a PIL image or a NumPy array"
    )


def prepare_images(objs: Any, name: str = "images") -> tuple[ImageInput, ...]:
    """Prepare zero or more reference images; each error names its position (images[2])."""
    if objs is None:
        return ()
    if not isinstance(objs, (list, tuple)):
        objs = [objs]
    return tuple(prepare_image(obj, f"{name}[{i}]") for i, obj in enumerate(objs))


def decode_output(data: bytes) -> Image.Image:
    """Decode a downloaded result completely, or raise DeliveryError (corrupt or truncated)."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as exc:
        raise DeliveryError(f"downloaded image is corrupt or truncated: {type(exc).__name__}: {exc}") from None
    return image


def thumbnail(image: Image.Image, max_side: int, format: str = "jpeg", quality: int = 80) -> bytes:
    """A compact thumbnail (JPEG or WebP) whose longest side is ``max_side``."""
    thumb = image if image.mode in ("RGB", "L") else image.convert("RGB")
    scale = max_side / max(thumb.size)
    if scale < 1:
        size = (max(1, round(thumb.width * scale)), max(1, round(thumb.height * scale)))
        thumb = thumb.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)
    buffer = io.BytesIO()
    thumb.save(buffer, format.upper(), quality=quality)
    return buffer.getvalue()
