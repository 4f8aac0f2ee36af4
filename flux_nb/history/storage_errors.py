"""Storage faults, said plainly: SQLite's and the file system's errors become one ``HistoryError``.

SQLite answers a damaged file, a folder it cannot write or a full disk with terse messages
("database disk image is malformed", "unable to open database file", "database or disk is full").
``HistoryError`` names the file and what to do; ``retryable`` says whether the same call can
simply be made again once the cause is gone (a full disk: free space, then resume).
"""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

from flux_nb.errors import HistoryError

DISK_FULL_HINT = "free space on that disk, then resume: nothing already written was lost"


def is_lock_error(exc: sqlite3.OperationalError) -> bool:
    """True when another connection holds a lock (worth waiting for), whatever the extended code."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # extended codes (BUSY_RECOVERY, ...) share the low byte
    return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in str(exc)


def is_disk_full(exc: BaseException) -> bool:
    """True for a full disk (or quota), from SQLite or from the file system."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        return code == sqlite3.SQLITE_FULL or "disk is full" in str(exc)
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full(path: Path, doing: str) -> HistoryError:
    message = f"the disk holding {path} is full: could not {doing}"
    return HistoryError(message, path=path, retryable=True, hint=DISK_FULL_HINT)


def read_only(path: Path, doing: str) -> HistoryError:
    return HistoryError(
        f"the history {path} is read-only here: could not {doing}",
        path=path,
        hint="reading works; to write, open a history in a writable folder (history_dir)",
    )


def not_a_history(path: Path, why: str) -> HistoryError:
    return HistoryError(
        f"{path} is not a flux_nb history ({why}); it was left untouched",
        path=path,
        hint="move it aside (or restore it from a backup) to start a new history there, or choose another history_dir",
    )


def translate(exc: BaseException, path: Path, doing: str) -> BaseException:
    """The ``HistoryError`` for a storage fault met while ``doing`` something to ``path``, else ``exc`` itself."""
    if isinstance(exc, HistoryError):
        return exc
    if is_disk_full(exc):
        return disk_full(path, doing)
    message = str(exc)
    if isinstance(exc, sqlite3.DatabaseError):
        if "malformed" in message or getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_CORRUPT:
            return HistoryError(
                f"the history {path} is damaged (database disk image is malformed): could not {doing}",
                path=path,
                hint=f"copy it aside, then rebuild it with: sqlite3 {path.name} .recover | sqlite3 recovered.sqlite",
            )
        if "not a database" in message:
            return not_a_history(path, "file is not a database")
        if "unable to open" in message:
            return HistoryError(
                f"cannot open the history {path}: the file or its folder cannot be opened (unable to open "
                f"database file) while trying to {doing}",
                path=path,
                hint="check that the folder exists and that this user may read it (and write it, to add records)",
            )
        if "readonly" in message or "read-only" in message:
            return read_only(path, doing)
    if isinstance(exc, PermissionError):
        return read_only(path, doing)
    if isinstance(exc, OSError) and exc.errno == errno.EROFS:
        return read_only(path, doing)
    return exc
