"""Metadata inside PNG, JPEG and WebP files, written without re-encoding a single pixel.

PNG: ``iTXt`` chunks go in just before the first ``IDAT`` (so readers see them without decoding).
JPEG: an EXIF and an XMP ``APP1`` segment go in after ``SOI`` (after a JFIF ``APP0`` if there is one).
WebP: a simple file becomes an extended one (a ``VP8X`` chunk), ``EXIF`` and ``XMP `` chunks go last.
Chunks and segments of the same kind already there are replaced, so writing twice leaves one copy;
every other byte (the compressed pixels above all) is kept as it was.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass, field

from PIL import Image

from flux_nb.errors import ValidationError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
XMP_KEYWORD = "XML:com.adobe.xmp"
JPEG_EXIF = b"Exif\x00\x00"
JPEG_XMP = b"http://ns.adobe.com/xap/1.0/\x00"
JPEG_SEGMENT_MAX = 65533  # a segment's length field counts itself: 65535 - 2
JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}
WEBP_EXIF_FLAG, WEBP_XMP_FLAG, WEBP_ALPHA_FLAG = 0x08, 0x04, 0x10
TEXT_LIMIT = 16 * 1024 * 1024  # the text of one chunk (or XMP packet), inflated
FILE_TEXT_LIMIT = 32 * 1024 * 1024  # the text of all of a file's chunks together, inflated


@dataclass
class Embedded:
    """What a file carries: PNG text chunks by keyword, an XMP packet, and EXIF (TIFF bytes)."""

    format: str
    texts: dict[str, str] = field(default_factory=dict)
    xmp: str | None = None
    exif: bytes | None = None


def image_format(data: bytes) -> str:
    """ "png", "jpeg" or "webp" from the file's first bytes; ValidationError for anything else."""
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(b"\xff\xd8"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    raise ValidationError("the file is not a PNG, JPEG or WebP image; provenance is kept in those three formats")


def read_embedded(data: bytes) -> Embedded:
    """The text, XMP and EXIF a PNG, JPEG or WebP file carries (nothing is decoded)."""
    kind = image_format(data)
    found = Embedded(kind)
    try:
        if kind == "png":
            left = FILE_TEXT_LIMIT
            for chunk_type, body, _ in _png_chunks(data):
                keyword = body.partition(b"\x00")[0].decode("latin-1") if chunk_type in PNG_TEXT_CHUNKS else None
                if keyword is not None and keyword not in found.texts:  # the first chunk of a keyword counts
                    text, encoding = _png_text(chunk_type, body, min(TEXT_LIMIT, left))
                    left -= len(text)
                    found.texts[keyword] = text.decode(encoding, "replace")
            found.xmp = found.texts.pop(XMP_KEYWORD, None)
        elif kind == "jpeg":
            for marker, payload in _jpeg_segments(data)[0]:
                if marker == 0xE1 and payload.startswith(JPEG_EXIF) and found.exif is None:
                    found.exif = payload
                elif marker == 0xE1 and payload.startswith(JPEG_XMP) and found.xmp is None:
                    found.xmp = payload[len(JPEG_XMP) :].decode("utf-8", "replace")
        else:
            for fourcc, body in _webp_chunks(data):
                if fourcc == b"EXIF":
                    found.exif = body
                elif fourcc == b"XMP ":
                    found.xmp = _capped(body, TEXT_LIMIT).decode("utf-8", "replace")
    except _TextTooLarge:
        raise ValidationError(
            f"the {kind.upper()} file's metadata is too large: flux_nb reads at most {TEXT_LIMIT:,} bytes of text "
            f"from one chunk and {FILE_TEXT_LIMIT:,} from one file"
        ) from None
    except (struct.error, zlib.error, IndexError, ValueError) as exc:
        raise ValidationError(f"the {kind.upper()} file is damaged: its metadata cannot be read ({exc})") from None
    return found


def write_embedded(data: bytes, *, texts: dict[str, str], xmp: str, exif: dict[str, str]) -> bytes:
    """``data`` with these texts (PNG), XMP packet (all) and EXIF fields (JPEG, WebP) put in.

    ``exif`` holds ``description`` (ImageDescription, ASCII), ``comment`` (UserComment, Unicode)
    and ``software``; fields already in the file's EXIF are kept unless overwritten.
    """
    kind = image_format(data)
    if kind == "png":
        return _png_write(data, {**texts, XMP_KEYWORD: xmp})
    exif_bytes = _exif_bytes(read_embedded(data).exif, exif)
    if kind == "jpeg":
        return _jpeg_write(data, exif_bytes, xmp.encode("utf-8"))
    return _webp_write(data, exif_bytes[len(JPEG_EXIF) :], xmp.encode("utf-8"))


# -- EXIF ------------------------------------------------------------------------------------------


def _exif_bytes(existing: bytes | None, values: dict[str, str]) -> bytes:
    """EXIF as ``Exif\\0\\0`` + TIFF: the file's own tags, with ours set on top."""
    exif = Image.Exif()
    if existing:
        exif.load(existing)
    exif[0x010E] = values["description"].encode("ascii", "replace").decode("ascii")
    exif[0x0131] = values["software"]
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + values["comment"].encode("utf-16-be")
    return exif.tobytes()


def exif_comment(exif: bytes | None) -> str | None:
    """The EXIF UserComment as text (the UNICODE, ASCII and unmarked encodings), or None."""
    if not exif:
        return None
    loaded = Image.Exif()
    loaded.load(exif)
    raw = loaded.get_ifd(0x8769).get(0x9286)
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, bytes) or not raw:
        return None
    head, body = raw[:8], raw[8:]
    if head == b"UNICODE\x00":
        little = len(body) > 1 and body[0] != 0 and body[1] == 0  # a writer that used UTF-16-LE
        return body.decode("utf-16-le" if little else "utf-16-be", "replace").rstrip("\x00")
    if head in (b"ASCII\x00\x00\x00", b"\x00" * 8):
        return body.decode("utf-8", "replace").rstrip("\x00")
    return raw.decode("utf-8", "replace").rstrip("\x00")


# -- PNG -------------------------------------------------------------------------------------------


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """(type, body, raw bytes with length and CRC) for each chunk, in order."""
    chunks, pos = [], len(PNG_SIGNATURE)
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        end = pos + 12 + length
        if end > len(data):
            raise ValueError("a chunk runs past the end of the file")
        chunks.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length], data[pos:end]))
        pos = end
    return chunks


class _TextTooLarge(ValueError):
    """Metadata text past a size cap (a chunk's, or a whole file's)."""


def _capped(text: bytes, limit: int) -> bytes:
    if len(text) > limit:
        raise _TextTooLarge
    return text


def _inflate(data: bytes, limit: int) -> bytes:
    """``data`` inflated; _TextTooLarge past ``limit`` bytes, having inflated no more than one byte past it."""
    return _capped(zlib.decompressobj().decompress(data, limit + 1), limit)


def _png_text(chunk_type: bytes, body: bytes, limit: int) -> tuple[bytes, str]:
    """A text chunk's text, at most ``limit`` bytes, and its encoding (tEXt and zTXt: Latin-1, iTXt: UTF-8)."""
    rest = body.partition(b"\x00")[2]
    if chunk_type == b"tEXt":
        return _capped(rest, limit), "latin-1"
    if chunk_type == b"zTXt":
        return _inflate(rest[1:], limit), "latin-1"
    compressed, rest = rest[0], rest[2:]
    _language, _, rest = rest.partition(b"\x00")
    _translated, _, text = rest.partition(b"\x00")
    return (_inflate(text, limit) if compressed else _capped(text, limit)), "utf-8"


def _png_chunk(chunk_type: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(chunk_type + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + chunk_type + body + struct.pack(">I", crc)


def _itxt(keyword: str, text: str) -> bytes:
    """An uncompressed iTXt chunk (readable as plain text by any tool)."""
    return _png_chunk(b"iTXt", keyword.encode("latin-1") + b"\x00\x00\x00\x00\x00" + text.encode("utf-8"))


def _png_write(data: bytes, texts: dict[str, str]) -> bytes:
    out = [PNG_SIGNATURE]
    placed = False
    for chunk_type, body, raw in _png_chunks(data):
        if chunk_type in PNG_TEXT_CHUNKS and body.partition(b"\x00")[0].decode("latin-1") in texts:
            continue
        if chunk_type in (b"IDAT", b"IEND") and not placed:
            out.extend(_itxt(keyword, text) for keyword, text in texts.items())
            placed = True
        out.append(raw)
    return b"".join(out)


# -- JPEG ------------------------------------------------------------------------------------------


def _jpeg_segments(data: bytes) -> tuple[list[tuple[int, bytes]], int]:
    """The marker segments before the first scan as (marker, payload), and where the scan starts."""
    segments: list[tuple[int, bytes]] = []
    pos = 2
    while pos < len(data):
        if data[pos] != 0xFF:
            raise ValueError(f"no JPEG marker at byte {pos}")
        while data[pos + 1] == 0xFF:  # fill bytes
            pos += 1
        marker = data[pos + 1]
        if marker in (0xDA, 0xD9):
            return segments, pos
        if marker in JPEG_STANDALONE:
            segments.append((marker, b""))
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        segments.append((marker, data[pos + 4 : pos + 2 + length]))
        pos += 2 + length
    raise ValueError("the JPEG has no image data (no start-of-scan marker)")


def _jpeg_segment(marker: int, payload: bytes) -> bytes:
    if len(payload) > JPEG_SEGMENT_MAX:
        raise ValidationError(
            f"metadata of {len(payload):,} bytes does not fit a JPEG segment ({JPEG_SEGMENT_MAX:,} bytes); "
            "shorten the prompt or export as PNG"
        )
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


def _jpeg_write(data: bytes, exif: bytes, xmp: bytes) -> bytes:
    try:
        segments, scan = _jpeg_segments(data)
    except (struct.error, IndexError, ValueError) as exc:
        raise ValidationError(f"the JPEG file is damaged: its segments cannot be read ({exc})") from None
    kept = [
        (marker, payload)
        for marker, payload in segments
        if not (marker == 0xE1 and payload.startswith((JPEG_EXIF, JPEG_XMP)))
    ]
    ours = [(0xE1, exif), (0xE1, JPEG_XMP + xmp)]
    at = 1 if kept and kept[0][0] == 0xE0 and kept[0][1].startswith(b"JFIF\x00") else 0
    ordered = [*kept[:at], *ours, *kept[at:]]
    head = b"".join(bytes((0xFF, m)) if m in JPEG_STANDALONE else _jpeg_segment(m, p) for m, p in ordered)
    return b"\xff\xd8" + head + data[scan:]


# -- WebP ------------------------------------------------------------------------------------------


def _webp_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, pos = [], 12
    while pos + 8 <= len(data):
        fourcc, (size,) = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])
        if pos + 8 + size > len(data):
            raise ValueError(f"the {fourcc!r} chunk runs past the end of the file")
        chunks.append((fourcc, data[pos + 8 : pos + 8 + size]))
        pos += 8 + size + (size & 1)
    return chunks


def _webp_chunk(fourcc: bytes, body: bytes) -> bytes:
    return fourcc + struct.pack("<I", len(body)) + body + (b"\x00" if len(body) & 1 else b"")


def _vp8x(data: bytes, chunks: list[tuple[bytes, bytes]]) -> bytes:
    """The VP8X header a simple (VP8 or VP8L) WebP needs before it may carry EXIF and XMP."""
    with Image.open(io.BytesIO(data)) as image:  # reads the header only
        width, height = image.size
    flags = 0
    fourcc, body = chunks[0]
    if fourcc == b"VP8L" and len(body) >= 5 and (struct.unpack("<I", body[1:5])[0] >> 28) & 1:
        flags |= WEBP_ALPHA_FLAG
    return bytes((flags, 0, 0, 0)) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")


def _webp_write(data: bytes, exif: bytes, xmp: bytes) -> bytes:
    try:
        chunks = _webp_chunks(data)
        kept = [(fourcc, body) for fourcc, body in chunks if fourcc not in (b"EXIF", b"XMP ")]
        if not kept:
            raise ValueError("no image chunk")
        if kept[0][0] != b"VP8X":
            kept.insert(0, (b"VP8X", _vp8x(data, kept)))
    except (struct.error, IndexError, ValueError) as exc:
        raise ValidationError(f"the WebP file is damaged: its chunks cannot be read ({exc})") from None
    header = bytearray(kept[0][1])
    header[0] |= WEBP_EXIF_FLAG | WEBP_XMP_FLAG
    kept[0] = (b"VP8X", bytes(header))
    body = b"WEBP" + b"".join(_webp_chunk(f, b) for f, b in [*kept, (b"EXIF", exif), (b"XMP ", xmp)])
    return b"RIFF" + struct.pack("<I", len(body)) + body
