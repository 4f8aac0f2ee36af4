"""Content-addressed files of the history, written atomically, and the one rule for reading them back:
a path a row names is read only when it stays inside the row's history folder."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from flux_nb.errors import ValidationError
from flux_nb.images import url_sha256

# An image path a history row may hold: under images/, each part a plain name (no "..", no hidden or odd names).
IMAGE_PATH = r"images(/[A-Za-z0-9_-][A-Za-z0-9._-]*)+"


def image_file(root: Path, relative: str) -> Path:
    """``root / relative`` when it is an image path staying inside ``root`` (links followed); else ValidationError."""
    path = root / relative
    if not re.fullmatch(IMAGE_PATH, relative) or not path.resolve().is_relative_to(root.resolve()):
        raise ValidationError(
            f"a history row names the image {relative!r}, outside the history folder {str(root)!r}; "
            "it is not read (the row may come from a damaged or crafted history)"
        )
    return path


def url_reference(text: str, sha256: str) -> str:
    """The URL a stored ``inputs/<sha256>.url`` holds, when it is an http(s) URL of that name; else ValidationError.

    Anything else (a local path, a data: URI, another scheme, edited text) is never read, fetched or sent.
    """
    try:
        parts = urlsplit(text)
        web = parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
    except ValueError:
        web = False
    if not web or url_sha256(text) != sha256:
        raise ValidationError(
            f"the stored reference {sha256[:12]}.url does not hold the http(s) URL it is named after; "
            "it is not read, fetched or sent"
        )
    return text


def write_file(target: Path, data: bytes) -> None:
    """Write atomically (temp file, fsync, rename): a crash or a full disk never leaves half a file
    under the final name, and the temp file is removed whatever happened."""
    if target.exists():  # content-addressed: the same name holds the same bytes
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, 0o644)  # mkstemp makes files private; history files are shared like any others
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
