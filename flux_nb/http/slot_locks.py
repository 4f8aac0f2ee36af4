"""Byte-range locks on one file, the operating system's side of shared slots.

POSIX record locks (``fcntl``): they belong to a process, not to a thread or a descriptor, the kernel drops them
when the process ends however it ends, and a forked child does not inherit them. Where ``fcntl`` is missing
(Windows) there is no file and every lock is granted: the caller's own count is then the only limit.
"""

from __future__ import annotations

import contextlib
import os
import struct
import sys
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

# ``struct flock`` as F_GETLK fills it: Linux; macOS and the BSDs (which start with the offsets).
LINUX = sys.platform.startswith("linux")
FLOCK = "hhqqi" if LINUX else "qqihh"


def open_file(path: Path) -> int | None:
    """A descriptor on the lock file at ``path`` (created empty if missing), or None where there are no locks."""
    if fcntl is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)


def try_lock(fd: int | None, offset: int, *, shared: bool = False) -> bool:
    """Lock the byte at ``offset`` without waiting (a write lock, or a read lock with ``shared``); True if taken."""
    if fd is None:
        return True
    try:
        fcntl.lockf(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB, 1, offset)
    except OSError:
        return False
    return True


def unlock(fd: int | None, offset: int) -> None:
    """Drop this process's lock on the byte at ``offset`` (none held: no error)."""
    if fd is not None:
        with contextlib.suppress(OSError):
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, offset)


def holder(fd: int | None, offset: int) -> int | None:
    """The pid of another process holding a lock on the byte at ``offset`` (-1: the OS does not say), or None."""
    if fd is None:
        return None
    fields = (fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0) if LINUX else (offset, 1, 0, fcntl.F_WRLCK, os.SEEK_SET)
    try:
        answer = struct.unpack(FLOCK, fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack(FLOCK, *fields)))
    except (OSError, struct.error):
        return -1
    kind, pid = (answer[0], answer[4]) if LINUX else (answer[3], answer[2])
    if kind == fcntl.F_UNLCK:
        return None
    return pid if pid > 0 else -1
