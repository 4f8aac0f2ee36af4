"""Fast reads into Arrow, from a helper process.

The ADBC SQLite driver reads rows straight into Arrow columns, but it carries its own copy of
SQLite. Two copies of SQLite in one process break each other's POSIX locks (closing one's file
releases the other's locks, and the second copy resets the WAL index the first one uses), which
can hide fresh rows and risks the database. So the driver runs in a helper process of its own
(``arrow_worker``), started on the first large read and reused; answers come back as Arrow IPC.
Anything that goes wrong there is raised, and the caller reads through ``sqlite3`` instead.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

WORKER = Path(__file__).with_name("arrow_worker.py")


class ReaderError(Exception):
    """The helper process answered with an error (its text), or could not answer."""


class ArrowReader:
    """One helper process per Python process (a forked child starts its own); requests go one at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._pid = 0

    def _worker(self) -> subprocess.Popen[bytes]:
        if self._process is None or self._pid != os.getpid() or self._process.poll() is not None:
            self._process = subprocess.Popen(
                [sys.executable, "-I", str(WORKER)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            self._pid = os.getpid()
        return self._process

    def read(self, target: str, queries: Sequence[tuple[str, Sequence[Any]]]) -> list[pa.Table]:
        """Run ``queries`` on the database ``target`` side by side; their results, in order."""
        request = json.dumps({"target": target, "queries": [[sql, list(params)] for sql, params in queries]})
        with self._lock:
            process = self._worker()
            assert process.stdin is not None and process.stdout is not None
            try:
                process.stdin.write(request.encode() + b"\n")
                process.stdin.flush()
                header = json.loads(process.stdout.readline() or b"null")
                if not header:
                    raise ReaderError("the reading process ended")
                if not header["ok"]:
                    raise ReaderError(header["error"])
                return [pa.ipc.open_stream(process.stdout).read_all() for _ in range(header["count"])]
            except (OSError, ValueError, pa.ArrowException) as exc:
                self.close()
                raise ReaderError(str(exc)) from exc

    def close(self) -> None:
        """Stop the helper process (the next read starts another)."""
        process, self._process = self._process, None
        if process is not None and self._pid == os.getpid():
            with contextlib.suppress(OSError):
                process.kill()
                process.wait(timeout=5)


READER = ArrowReader()
atexit.register(READER.close)
