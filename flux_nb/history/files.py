"""Content-addressed files of the history, written atomically."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


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
