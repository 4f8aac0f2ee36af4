"""Fast reads into Arrow, from a helper process.

The ADBC SQLite driver reads rows straight into Arrow columns, but it carries its own copy of
SQLite. Two copies of SQLite in one process break each other's POSIX locks (closing one's file
releases the other's locks, and the second copy resets the WAL index the first one uses), which
can hide fresh rows and risks the database. So the driver runs in a helper process of its own
(``arrow_worker``), started on the first large read and reused; answers come back as Arrow IPC
files in shared memory (/dev/shm where there is one), mapped here without a copy and unlinked at once.
Anything that goes wrong there is raised, and the caller reads through ``sqlite3`` instead.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

WORKER = Path(__file__).with_name("arrow_worker.py")
SHARED = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


class ReaderError(Exception):
    """The helper process answered with an error (its text), or could not answer."""


class ArrowReader:
    """One helper process per Python process (a forked child starts its own); requests go one at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._pid = 0
        self._silent = 0  # helper processes that ended without answering (the driver may be missing)

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
        if self._silent >= 2:
            raise ReaderError("the reading process cannot run here")
        out = os.path.join(SHARED, f"flux-history-{os.getpid()}-{uuid.uuid4().hex[:12]}")
        paths = [f"{out}-{i}.arrow" for i in range(len(queries))]
        request = {"target": target, "queries": [[sql, list(params)] for sql, params in queries], "out": out}
        with self._lock:
            try:
                self._ask(request)
                return [pa.ipc.open_file(pa.memory_map(path)).read_all() for path in paths]
            except (OSError, ValueError, pa.ArrowException) as exc:
                self.close()
                raise ReaderError(str(exc)) from exc
            finally:
                for path in paths:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)  # a mapped file stays readable until its table is gone

    def _ask(self, request: dict[str, Any]) -> None:
        process = self._worker()
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(json.dumps(request).encode() + b"\n")
        process.stdin.flush()
        header = json.loads(process.stdout.readline() or b"null")
        if not header:
            self._silent += 1
            raise ReaderError("the reading process ended")
        if not header["ok"]:
            raise ReaderError(header["error"])

    def close(self) -> None:
        """Stop the helper process (the next read starts another)."""
        process, self._process = self._process, None
        if process is not None and self._pid == os.getpid():
            with contextlib.suppress(OSError):
                process.kill()
                process.wait(timeout=5)


READER = ArrowReader()
atexit.register(READER.close)
