"""Images in and out: anything image-like to what the API accepts, and checks on what comes back.

A reference image becomes an ``ImageInput``: an http(s) URL passed on as given, or the image's
bytes as raw base64. Files already in a format the API takes (PNG, JPEG, WebP) are sent as
they are; everything else is decoded and re-encoded as PNG. Every image is decoded fully
before it is accepted, so no credits go to a request the API would refuse.

References are held to the API's limits before anything is stored or sent: at most
``REFERENCE_MAX_BYTES`` (20 MB; BFL documents no byte limit, so flux_nb keeps one that every
request body can carry) and ``REFERENCE_MAX_PIXELS`` (4 MP, the API's own pixel limit). A larger
image is refused with the limit; wrapped in ``flux_nb.shrink(...)`` it is downscaled and
re-encoded instead.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from PIL import Image

if TYPE_CHECKING:
    import numpy as np

from flux_nb.errors import DeliveryError, ValidationError
from flux_nb.protocol import MAX_PIXELS, SIDE_STEP

# Formats the API takes as they are; anything else is re-encoded as PNG.
PASSTHROUGH_FORMATS = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}
THUMBNAIL_FORMATS = {"jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP"}
PIXELS_PER_MP = 1024 * 1024
# A URI scheme of two or more letters: "C:/x.png" (a Windows drive) stays a path.
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]+:")
_DATA_URI = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")
_FIX = "use a PNG, JPEG or WebP image"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the empty IEND chunk with its fixed CRC
_JPEG_END = b"\xff\xd9"  # the end-of-image marker (Pillow writes nothing after it)
REFERENCE_MAX_BYTES = 20 * 1000 * 1000
REFERENCE_MAX_PIXELS = MAX_PIXELS
_SHRINK_FIX = "downscale it, or wrap it in flux_nb.shrink(...) to have it re-encoded within the limits"


def check_reference_bytes(size: int, name: str, subject: str) -> None:
    """Refuse a reference of more than ``REFERENCE_MAX_BYTES``, before it is read or decoded."""
    if size > REFERENCE_MAX_BYTES:
        raise ValidationError(
            f"{name}: {subject} is {size / 1e6:.1f} MB, over the reference limit of "
            f"{REFERENCE_MAX_BYTES / 1e6:g} MB; {_SHRINK_FIX}"
        )


def check_reference_pixels(size: tuple[int, int], name: str, subject: str) -> None:
    """Refuse a reference of more than ``REFERENCE_MAX_PIXELS`` (the API's 4 MP)."""
    if size[0] * size[1] > REFERENCE_MAX_PIXELS:
        raise ValidationError(
            f"{name}: {subject} is {size[0]}x{size[1]} ({size[0] * size[1] / PIXELS_PER_MP:.1f} MP), over the API's "
            f"limit of {REFERENCE_MAX_PIXELS / PIXELS_PER_MP:g} MP; {_SHRINK_FIX}"
        )


def sha256_hex(data: bytes) -> str:
    """The SHA-256 of ``data`` as 64 hex digits: how images are named in the history."""
    return hashlib.sha256(data).hexdigest()


def url_sha256(url: str) -> str:
    """How a URL reference is named in the history: the SHA-256 of ``"url:" + url``."""
    return sha256_hex(f"url:{url}".encode())


@dataclass(frozen=True)
class ImageInput:
    """A reference image ready for the payload: a URL as given, or raw base64 of the image bytes.

    ``sha256`` names it in the history: the hash of the bytes, or, for a URL (whose content
    the API fetches and flux_nb never sees), the hash of ``"url:" + URL``.
    """

    value: str
    sha256: str
    data: bytes | None = None
    size: tuple[int, int] | None = None
    format: str | None = None
    is_url: bool = False

    @property
    def megapixels(self) -> float:
        """Width x height in megapixels as the API prices them (0.0 when unknown, as for URLs)."""
        return self.size[0] * self.size[1] / PIXELS_PER_MP if self.size else 0.0

    def __repr__(self) -> str:
        if self.is_url:
            return f"ImageInput(url={_shorten(self.value)!r})"
        size = f"{self.size[0]}x{self.size[1]}" if self.size else "size unknown"
        return f"ImageInput({self.format or 'image'} {size}, sha256={self.sha256[:12]}…)"


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def open_image(data: bytes, name: str, subject: str = "the data") -> Image.Image:
    """Decode ``data`` fully (so truncated files fail), within Pillow's decompression-bomb limit.

    Raises ValidationError naming ``name`` (the argument) and ``subject`` (what was read).
    """
    try:
        with warnings.catch_warnings():
            # Pillow only warns between the limit and twice the limit; here both are refused.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        found = _BOMB_PIXELS.search(str(exc))
        pixels = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        raise ValidationError(
            f"{name}: {subject} is too large to decode safely: {pixels}, over Pillow's limit of "
            f"{Image.MAX_IMAGE_PIXELS or 0:,} (PIL.Image.MAX_IMAGE_PIXELS); downscale it first"
        ) from None
    except Image.UnidentifiedImageError:
        raise ValidationError(f"{name}: {subject} is not a readable image (unknown format); {_FIX}") from None
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        raise ValidationError(f"{name}: {subject} is not a readable image ({reason}); {_FIX}") from None
    if image.width == 0 or image.height == 0:
        raise ValidationError(f"{name}: {subject} has zero size")
    return image


def _encode_png(image: Image.Image) -> bytes:
    """PNG bytes in a mode every decoder takes: RGB, RGBA or L."""
    if image.mode.startswith("I;16"):
        # convert() would clip 16-bit tones to white; keep the top 8 bits instead.
        import numpy as np

        image = Image.fromarray((np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8))
    elif image.mode not in ("RGB", "RGBA", "L"):
        has_alpha = "A" in image.getbands() or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def from_pil(image: Image.Image, name: str) -> ImageInput:
    if image.width == 0 or image.height == 0:
        raise ValidationError(f"{name}: the image has zero size ({image.width}x{image.height})")
    check_reference_pixels(image.size, name, "the image")
    data = _encode_png(image)
    check_reference_bytes(len(data), name, "the image, encoded as PNG,")
    return ImageInput(base64.b64encode(data).decode("ascii"), sha256_hex(data), data, image.size, "png")


def _from_bytes(data: bytes, name: str, subject: str) -> ImageInput:
    check_reference_bytes(len(data), name, subject)
    image = open_image(data, name, subject)
    check_reference_pixels(image.size, name, subject)
    fmt = PASSTHROUGH_FORMATS.get(image.format or "")
    if fmt is None or image.mode == "CMYK":  # CMYK JPEGs decode differently from one library to the next
        return from_pil(image, name)
    return ImageInput(base64.b64encode(data).decode("ascii"), sha256_hex(data), data, image.size, fmt)


def _from_url(url: str, name: str) -> ImageInput:
    shown = _shorten(url)
    if _DATA_URI.match(url):
        try:
            data = base64.b64decode(url.split(",", 1)[1], validate=True)
        except (binascii.Error, ValueError):
            raise ValidationError(f"{name}: data URI {shown!r} does not hold valid base64") from None
        return _from_bytes(data, name, "the data URI")
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise ValidationError(
            f"{name}: {shown!r} is not an http(s) URL; the API fetches only http:// and https:// "
            "addresses (pass a local file as a path)"
        )
    if not parts.hostname:
        raise ValidationError(f"{name}: URL {shown!r} has no host (expected e.g. https://example.com/cat.png)")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise ValidationError(f"{name}: URL {shown!r} contains spaces or control characters; percent-encode them")
    try:
        _ = parts.port  # urlsplit checks the port only when asked
    except ValueError:
        raise ValidationError(f"{name}: URL {shown!r} has an invalid port") from None
    return ImageInput(url, url_sha256(url), is_url=True)


def _from_path(path: Path, name: str) -> ImageInput:
    shown = str(path)
    path = path.expanduser()
    if not path.exists():
        where = "" if path.is_absolute() else f" (relative to {os.getcwd()})"
        raise ValidationError(f"{name}: no file at {shown!r}{where}; check the path, or pass an http(s) URL")
    if path.is_dir():
        raise ValidationError(f"{name}: {shown!r} is a folder, not an image file")
    if not path.is_file():
        raise ValidationError(f"{name}: {shown!r} is not a regular file")
    check_reference_bytes(path.stat().st_size, name, repr(shown))  # before reading it into memory
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValidationError(f"{name}: cannot read {shown!r} ({exc.strerror or exc}); check its permissions") from None
    if not data:
        raise ValidationError(f"{name}: {shown!r} is an empty file (0 bytes), not an image")
    return _from_bytes(data, name, repr(shown))


def _is_array(obj: Any) -> bool:
    """A NumPy array (numpy is only looked at when something has loaded it: only then can obj be one)."""
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(obj, numpy.ndarray)


def _from_array(array: np.ndarray, name: str) -> ImageInput:
    import numpy as np

    shape = tuple(array.shape)
    if array.ndim not in (2, 3) or (array.ndim == 3 and shape[2] not in (1, 3, 4)):
        hint = " (channels first? try array.transpose(1, 2, 0))" if array.ndim == 3 and shape[0] in (3, 4) else ""
        raise ValidationError(f"{name}: array of shape {shape} is not HxW, HxWx3 or HxWx4{hint}")
    if array.size == 0:
        raise ValidationError(f"{name}: array of shape {shape} is empty (zero size)")
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise ValidationError(f"{name}: float array holds NaN or infinity")
        low, high = float(array.min()), float(array.max())
        if low < -1e-6 or high > 1 + 1e-6:
            raise ValidationError(
                f"{name}: float array values run from {low:g} to {high:g}; floats must be in 0..1 "
                "(divide by 255, or pass a uint8 array)"
            )
        array = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ValidationError(f"{name}: array dtype {array.dtype} is not supported; use uint8 (0..255) or float (0..1)")
    if array.ndim == 3 and shape[2] == 1:
        array = array[:, :, 0]
    return from_pil(Image.fromarray(np.ascontiguousarray(array)), name)


def looks_like_url(text: str) -> bool:
    """A scheme ("https:", "ftp:", "javascript:") that is not the start of an existing file name."""
    return bool(_SCHEME.match(text)) and ("://" in text or not Path(text).expanduser().exists())


def prepare_image(obj: Any, name: str = "image") -> ImageInput:
    """Turn a path, URL, bytes, PIL image or NumPy array into an ``ImageInput``.

    ``name`` is how errors refer to the argument (e.g. ``images[2]``).

    >>> prepare_image("https://example.com/cat.png").is_url
    True
    """
    if isinstance(obj, ImageInput):
        return obj
    if hasattr(obj, "__flux_reference__"):  # e.g. flux_nb.shrink(image)
        return obj.__flux_reference__(name)
    if isinstance(obj, Image.Image):
        return from_pil(obj, name)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        data = bytes(obj)
        if not data:
            raise ValidationError(f"{name}: empty bytes are not an image")
        return _from_bytes(data, name, "the data")
    if isinstance(obj, str) and looks_like_url(obj):
        return _from_url(obj, name)
    if isinstance(obj, (str, os.PathLike)):
        return _from_path(Path(obj), name)
    if _is_array(obj):
        return _from_array(obj, name)
    raise ValidationError(
        f"{name}: {type(obj).__name__} is not an image; use a path, an http(s) URL, bytes, a PIL image or a NumPy array"
    )


def prepare_images(objs: Any, name: str = "images") -> tuple[ImageInput, ...]:
    """Prepare zero (None), one, or a list/tuple of reference images; errors name each as images[i].

    >>> prepare_images(None)
    ()
    """
    if objs is None:
        return ()
    if not isinstance(objs, (list, tuple)):
        objs = [objs]
    return tuple(prepare_image(obj, f"{name}[{i}]") for i, obj in enumerate(objs))


def md5_base64(data: bytes) -> str:
    """The ``Content-MD5`` header value of ``data``: base64 of its MD5 digest (as Azure Blob storage sends it)."""
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")


def _check_md5(data: bytes, expected: str) -> None:
    """Raise DeliveryError unless ``expected`` (a base64 Content-MD5) is the MD5 of ``data``."""
    try:
        digest = base64.b64decode(expected.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise DeliveryError(
            f"downloaded image is corrupt or truncated: Content-MD5 {_shorten(expected, 40)!r} is not base64"
        ) from None
    if len(digest) != 16 or digest != hashlib.md5(data, usedforsecurity=False).digest():
        raise DeliveryError(
            f"downloaded image is corrupt or truncated: its MD5 {md5_base64(data)} does not match "
            f"Content-MD5 {_shorten(expected, 40)} ({len(data)} bytes)"
        )


# Formats the API delivers; nothing else is parsed from a downloaded body.
OUTPUT_FORMATS = ("PNG", "JPEG", "WEBP")
# The largest image a delivery may hold: the API's 4 MP limit, with room for its rounding.
OUTPUT_MAX_PIXELS = int(MAX_PIXELS * 1.1)


def check_output_size(size: tuple[int, int], expected: tuple[int, int] | None, max_pixels: int) -> None:
    """Raise DeliveryError when a delivered ``size`` is absurd, or differs from ``expected`` by more than rounding.

    ``expected`` None (the size was left to the API) checks only the ``max_pixels`` cap.
    """
    width, height = size
    if width * height > max_pixels:
        raise DeliveryError(
            f"the delivered image is {width}x{height} ({width * height:,} pixels), over the limit of "
            f"{max_pixels:,} pixels: refused before decoding"
        )
    if expected is not None and any(abs(got - asked) > SIDE_STEP for got, asked in zip(size, expected, strict=True)):
        raise DeliveryError(
            f"the delivered image is {width}x{height} but {expected[0]}x{expected[1]} was asked: "
            "refused before decoding"
        )


def decode_output(
    data: bytes,
    content_md5: str | None = None,
    *,
    expected_size: tuple[int, int] | None = None,
    max_pixels: int = OUTPUT_MAX_PIXELS,
) -> Image.Image:
    """Decode a downloaded result completely (every pixel), or raise DeliveryError.

    ``content_md5`` is the response's ``Content-MD5`` header (base64), checked first when given.
    The size in the header is checked next, before any pixel is decoded (see ``check_output_size``).
    Structural checks follow: a PNG's chunk CRCs and closing IEND chunk, a JPEG's end-of-image marker.
    """
    if content_md5 is not None:
        _check_md5(data, content_md5)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own cap is far lower
            image = Image.open(io.BytesIO(data), formats=OUTPUT_FORMATS)
        check_output_size(image.size, expected_size, max_pixels)
        if image.format == "PNG":
            if not data.endswith(_PNG_END):
                raise DeliveryError(
                    f"downloaded image is corrupt or truncated: the PNG does not end with its IEND chunk "
                    f"({len(data)} bytes)"
                )
            image.verify()  # every chunk's CRC; a verified image cannot be loaded, so open it again
            image = Image.open(io.BytesIO(data), formats=OUTPUT_FORMATS)
        elif image.format == "JPEG" and not data.endswith(_JPEG_END):
            raise DeliveryError(
                f"downloaded image is corrupt or truncated: the JPEG has no end-of-image marker ({len(data)} bytes)"
            )
        image.load()
    except DeliveryError:
        raise
    except Image.DecompressionBombError:
        raise DeliveryError(f"the delivered image declares too many pixels ({len(data)} bytes): refused") from None
    except Image.UnidentifiedImageError:
        raise DeliveryError(f"downloaded image is corrupt or truncated: unknown format ({len(data)} bytes)") from None
    except Exception as exc:
        raise DeliveryError(f"downloaded image is corrupt or truncated: {type(exc).__name__}: {exc}") from None
    return image


def thumbnail(image: Image.Image, max_side: int, format: str = "jpeg", quality: int = 80) -> bytes:
    """A compact JPEG or WebP whose longest side is at most ``max_side`` (aspect kept, never enlarged).

    >>> len(thumbnail(Image.new("RGB", (800, 600)), 64)) < 2000
    True
    """
    pil_format = THUMBNAIL_FORMATS.get(format.lower())
    if pil_format is None:
        raise ValueError(f"thumbnail format {format!r} is not one of jpeg, webp")
    if max_side < 1:
        raise ValueError(f"thumbnail max_side must be at least 1, got {max_side}")
    has_alpha = "A" in image.getbands() or "transparency" in image.info
    thumb = image if image.mode in ("RGB", "L") else image.convert("RGBA" if has_alpha else "RGB")
    scale = max_side / max(thumb.size)
    if scale < 1:
        size = (max(1, round(thumb.width * scale)), max(1, round(thumb.height * scale)))
        thumb = thumb.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)
    if pil_format == "JPEG" and thumb.mode == "RGBA":
        # JPEG has no alpha: lay transparent parts on white rather than letting them turn black.
        canvas = Image.new("RGB", thumb.size, "white")
        canvas.paste(thumb, mask=thumb.getchannel("A"))
        thumb = canvas
    buffer = io.BytesIO()
    thumb.save(buffer, pil_format, quality=quality)
    return buffer.getvalue()
