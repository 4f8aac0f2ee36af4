"""Durable history: one SQLite database (WAL) and content-addressed image files in a folder.

A record is written before its request is sent and completed when it ends, so a crash
loses nothing. Several threads and several processes (two notebooks) may write the same
folder at once: each thread has its own connection, writes are short IMMEDIATE
transactions, and a writer waits (and retries) while another holds the lock.

    <folder>/history.sqlite                  the ``records`` table
    <folder>/images/<sha[:2]>/<sha>.<ext>    result images, named by their SHA-256
    <folder>/inputs/<sha>.<ext>              reference images (``.url`` holds a URL's text)
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import random
import re
import socket
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from flux_nb.images import ImageInput, sha256_hex
from flux_nb.protocol import FluxRequest

DATABASE = "history.sqlite"
# SQLite's own wait for a lock; then, for the few cases where it answers "locked" at once, we retry this long.
BUSY_TIMEOUT_S = 30.0
LOCK_RETRY_S = 30.0

T = TypeVar("T")


def _start_time(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from /proc), or None where that is unknown."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


def process_owner() -> str:
    """This process, as a record's ``owner``: ``host:pid``, plus ``@start`` where the start time is
    known, so that a later process given the same pid (a restarted container) is not taken for it."""
    return _owner_of(os.getpid())


@functools.cache
def _owner_of(pid: int) -> str:
    start = _start_time(pid)
    return f"{socket.gethostname()}:{pid}" + (f"@{start}" if start else "")


def owner_is_gone(owner: str | None) -> bool:
    """True when ``owner`` is a process of this host that no longer runs (other hosts: not known, False)."""
    host, _, process = (owner or "").rpartition(":")
    pid, _, start = process.partition("@")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if start and _start_time(int(pid)) not in (start, None):
        return True  # that pid now belongs to another process
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


class RecordStatus(StrEnum):
    """Where a record stands. ``pending`` and ``submitted`` may still change; the rest are final."""

    PENDING = "pending"  # written before the request is sent (waiting for a free slot)
    SENDING = "sending"  # the submit is going out: if its process dies now, the outcome is unknown
    SUBMITTED = "submitted"  # the API gave a task id; resumable from its polling URL
    READY = "ready"
    FAILED = "failed"
    MODERATED = "moderated"  # not charged
    UNKNOWN = "unknown"  # the submit's outcome is unknown: never resent blindly
    CANCELLED = "cancelled"


# The request fields that shape the image: the cache key and a replay are built from these.
KEY_FIELDS = ("prompt", "model", "seed", "width", "height", "safety_tolerance", "output_format", "steps", "guidance")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def request_key(request: FluxRequest, backend: str, input_hashes: Sequence[str]) -> str:
    """The cache key of a request: the fields that shape the image, the inputs' hashes and the backend.

    Leaves out the webhook (where a result goes, not what it is) and the endpoint URL, whose
    port changes whenever the embedded server starts.
    """
    values: dict[str, Any] = {name: getattr(request, name) for name in KEY_FIELDS}
    if values["guidance"] is not None:
        values["guidance"] = float(values["guidance"])  # guidance=5 and guidance=5.0 are one request
    canonical = json.dumps({**values, "inputs": list(input_hashes), "backend": backend}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Record:
    """One history row, as stored; ``root`` is the history folder that paths are relative to."""

    record_id: str
    created_at: float
    updated_at: float
    notebook: str | None
    backend: str | None
    endpoint: str | None
    model: str
    prompt: str
    seed: int | None
    width: int | None
    height: int | None
    safety_tolerance: int | None
    output_format: str | None
    steps: int | None
    guidance: float | None
    webhook_url: str | None
    input_hashes: list[str]
    request_key: str | None
    tag: str | None
    replay_of: str | None
    owner: str | None  # "host:pid" of the process that sends it: tells a crashed run's rows from a live one's
    status: str
    task_id: str | None
    polling_url: str | None
    estimated_cost: float | None
    cost: float | None
    input_mp: float | None
    output_mp: float | None
    submitted_at: float | None
    ready_at: float | None
    finished_at: float | None
    duration_s: float | None
    error_kind: str | None
    error: str | None
    image_path: str | None
    image_sha256: str | None
    out_width: int | None
    out_height: int | None
    engine: str | None
    result_seed: int | None
    root: Path | None = None

    def request_fields(self) -> dict[str, Any]:
        """The fields that rebuild this record's request (reference images aside)."""
        return {name: getattr(self, name) for name in KEY_FIELDS}

    @property
    def image_file(self) -> Path | None:
        """The absolute path of the result image, if there is one."""
        return self.root / self.image_path if self.image_path and self.root else None


# The table mirrors ``Record``: one column per field, its SQL type read from the annotation.
_SQL_TYPES = {
    "str": "TEXT NOT NULL",
    "str | None": "TEXT",
    "int | None": "INTEGER",
    "float": "REAL NOT NULL",
    "float | None": "REAL",
    "list[str]": "TEXT NOT NULL DEFAULT '[]'",
}
_RECORD_FIELDS = [f.name for f in fields(Record) if f.name != "root"]
COLUMNS: dict[str, str] = {f.name: _SQL_TYPES[str(f.type)] for f in fields(Record) if f.name != "root"}
COLUMNS["record_id"] = "TEXT PRIMARY KEY"
INDEXED = ("request_key", "status", "created_at")
TIME_COLUMNS = ["created_at", "updated_at", "submitted_at", "ready_at", "finished_at"]
INT_COLUMNS = [name for name, kind in COLUMNS.items() if kind.startswith("INTEGER")]
FLOAT_COLUMNS = [name for name, kind in COLUMNS.items() if kind.startswith("REAL") and name not in TIME_COLUMNS]


def _is_lock_error(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # extended codes (BUSY_RECOVERY, ...) share the low byte
    return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in str(exc)


def _retrying(work: Callable[[], T]) -> T:
    """Run ``work``; run it again, with jittered backoff, while another connection holds a lock."""
    deadline = time.monotonic() + LOCK_RETRY_S
    delay = 0.005
    while True:
        try:
            return work()
        except sqlite3.OperationalError as exc:
            if not _is_lock_error(exc) or time.monotonic() > deadline:
                raise
        time.sleep(delay * (1 + random.random()))
        delay = min(delay * 2, 0.25)


def _write_file(target: Path, data: bytes) -> None:
    """Write atomically (temp file, fsync, rename): a crash never leaves half a file under the final name."""
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


class HistoryStore:
    """The history folder: ``history.sqlite`` (WAL), ``images/`` (results) and ``inputs/`` (references).

    >>> store = HistoryStore(".flux")  # doctest: +SKIP
    >>> store.to_frame().tail()  # doctest: +SKIP
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.root = Path(directory).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / DATABASE
        self._local = threading.local()
        self._write(self._create_schema)

    def __repr__(self) -> str:
        return f"HistoryStore({str(self.root)!r})"

    @staticmethod
    def _create_schema(db: sqlite3.Connection) -> None:
        columns = ", ".join(f"{name} {kind}" for name, kind in COLUMNS.items())
        db.execute(f"CREATE TABLE IF NOT EXISTS records ({columns})")
        existing = {row[1] for row in db.execute("PRAGMA table_info(records)")}
        for name, kind in COLUMNS.items():
            if name not in existing:  # a history written by an older flux_nb: add the new, nullable columns
                db.execute(f"ALTER TABLE records ADD COLUMN {name} {kind.replace(' NOT NULL', '')}")
        for column in INDEXED:
            db.execute(f"CREATE INDEX IF NOT EXISTS records_{column} ON records ({column})")

    # -- connections ---------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        """This thread's connection (a forked child opens its own: SQLite handles must not cross a fork)."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None or self._local.pid != os.getpid():
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            _retrying(lambda: db.execute("PRAGMA journal_mode = WAL"))
            db.execute("PRAGMA synchronous = NORMAL")  # in WAL: durable at checkpoints, never corrupt
            self._local.db, self._local.pid = db, os.getpid()
        return db

    def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` in one short IMMEDIATE transaction (write lock taken up front), retried when locked."""

        def attempt() -> T:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
                result = work(db)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise
            return result

        return _retrying(attempt)

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return _retrying(lambda: self._db().execute(sql, params).fetchall())

    def _update(self, record_id: str, values: dict[str, Any], keep: tuple[str, ...] = ()) -> None:
        """Set ``values`` on a record, unless its status is in ``keep``; KeyError if there is no such record."""
        values = {**values, "updated_at": time.time()}
        assignments = ", ".join(f"{name} = ?" for name in values)

        def work(db: sqlite3.Connection) -> None:
            row = db.execute("SELECT status FROM records WHERE record_id = ?", (record_id,)).fetchone()
            if row is None:
                raise KeyError(record_id)
            if row[0] not in keep:
                db.execute(f"UPDATE records SET {assignments} WHERE record_id = ?", [*values.values(), record_id])

        self._write(work)

    # -- files ---------------------------------------------------------------------------------

    def save_image(self, data: bytes, ext: str) -> tuple[str, str]:
        """Store a result image by content hash; returns (path relative to the folder, sha256)."""
        ext = ext.lower().lstrip(".").replace("jpg", "jpeg")
        if not ext.isalnum():
            raise ValueError(f"image extension {ext!r} is not a plain file extension such as jpeg")
        digest = sha256_hex(data)
        relative = f"images/{digest[:2]}/{digest}.{ext}"
        _write_file(self.root / relative, data)
        return relative, digest

    def save_input(self, image: ImageInput) -> None:
        """Keep a reference image (or a URL's text) so its record can be replayed exactly."""
        if image.is_url:
            _write_file(self.root / "inputs" / f"{image.sha256}.url", image.value.encode())
        elif image.data is not None:
            _write_file(self.root / "inputs" / f"{image.sha256}.{image.format or 'png'}", image.data)

    def load_input(self, sha256: str) -> bytes | str:
        """A stored reference image's bytes, or the URL (a str) for a URL input; KeyError when not stored."""
        if _SHA256.fullmatch(sha256):
            for candidate in sorted((self.root / "inputs").glob(f"{sha256}.*")):
                return candidate.read_text() if candidate.suffix == ".url" else candidate.read_bytes()
        raise KeyError(sha256)

    # -- writing records -----------------------------------------------------------------------

    def create(
        self,
        request: FluxRequest,
        *,
        backend: str,
        endpoint: str,
        notebook: str,
        input_hashes: list[str],
        estimated_cost: float,
        tag: str | None = None,
        replay_of: str | None = None,
    ) -> str:
        """Write a pending record before the request is sent; returns its id (12 hex digits)."""
        now = time.time()
        row: dict[str, Any] = {name: getattr(request, name) for name in KEY_FIELDS}
        row.update(
            record_id=uuid.uuid4().hex[:12],
            created_at=now,
            updated_at=now,
            notebook=notebook,
            backend=backend,
            endpoint=endpoint,
            webhook_url=request.webhook_url,
            input_hashes=json.dumps(list(input_hashes)),
            request_key=request_key(request, backend, input_hashes),
            tag=tag,
            replay_of=replay_of,
            owner=process_owner(),
            status=RecordStatus.PENDING.value,
            estimated_cost=estimated_cost,
        )
        sql = f"INSERT INTO records ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})"

        def insert(db: sqlite3.Connection) -> None:
            while db.execute("SELECT 1 FROM records WHERE record_id = ?", (row["record_id"],)).fetchone():
                row["record_id"] = uuid.uuid4().hex[:12]  # 48 random bits: rare, but a clash must not lose a row
            db.execute(sql, list(row.values()))

        self._write(insert)
        return str(row["record_id"])

    def mark_sending(self, record_id: str) -> None:
        """The submit is about to go out: from now on a crash leaves its outcome unknown."""
        values = {"status": RecordStatus.SENDING.value, "owner": process_owner()}
        self._update(record_id, values, keep=tuple(s for s in RecordStatus if s != RecordStatus.PENDING))

    def mark_submitted(
        self,
        record_id: str,
        *,
        task_id: str,
        polling_url: str | None,
        cost: float | None,
        input_mp: float | None,
        output_mp: float | None,
        submitted_at: float,
    ) -> None:
        """The API accepted the request: keep its task id and polling URL, so ``resume`` can finish it."""
        values = {"task_id": task_id, "polling_url": polling_url, "cost": cost, "input_mp": input_mp}
        values.update(status=RecordStatus.SUBMITTED.value, output_mp=output_mp, submitted_at=submitted_at)
        self._update(record_id, values, keep=(RecordStatus.READY,))

    def mark_ready(
        self,
        record_id: str,
        *,
        image: bytes,
        ext: str,
        width: int,
        height: int,
        ready_at: float,
        finished_at: float,
        duration_s: float,
        engine: str | None,
        result_seed: int | None,
        cost: float | None = None,
    ) -> Path:
        """Store the image by hash, then complete the record; returns the image's absolute path."""
        relative, digest = self.save_image(image, ext)
        values: dict[str, Any] = dict(status=RecordStatus.READY.value, image_path=relative, image_sha256=digest)
        values.update(out_width=width, out_height=height, ready_at=ready_at, finished_at=finished_at)
        values.update(duration_s=duration_s, engine=engine, result_seed=result_seed, error_kind=None, error=None)
        if cost is not None:
            values["cost"] = cost
        self._update(record_id, values)
        return self.root / relative

    def mark_failed(
        self, record_id: str, *, status: RecordStatus, error_kind: str, error: str, finished_at: float
    ) -> None:
        """End a record without an image. A record already ready stays ready (another process finished it)."""
        values = {"status": RecordStatus(status).value, "error_kind": error_kind, "error": error}
        self._update(record_id, {**values, "finished_at": finished_at}, keep=(RecordStatus.READY,))

    def note_error(self, record_id: str, *, error_kind: str, error: str) -> None:
        """Keep why an open record is still open (e.g. its download failed: resume will finish it)."""
        self._update(record_id, {"error_kind": error_kind, "error": error}, keep=(RecordStatus.READY,))

    # -- reading records -----------------------------------------------------------------------

    def _records(self, where: str, params: Sequence[Any] = ()) -> list[Record]:
        rows = self._read(f"SELECT {', '.join(_RECORD_FIELDS)} FROM records {where}", params)
        records = []
        for row in rows:
            values = dict(zip(_RECORD_FIELDS, row, strict=True))
            values["input_hashes"] = json.loads(values["input_hashes"] or "[]")
            records.append(Record(**values, root=self.root))
        return records

    def get(self, record_id: str) -> Record | None:
        """A record by id, or by a unique prefix of it; None when there is no such record."""
        found = self._records("WHERE record_id = ?", (record_id,))
        if not found and record_id:
            found = self._records("WHERE substr(record_id, 1, ?) = ? LIMIT 2", (len(record_id), record_id))
        return found[0] if len(found) == 1 else None

    def resumable(self) -> list[Record]:
        """Submitted records with a polling URL, oldest first: ``resume`` can finish them."""
        where = "WHERE status = ? AND polling_url IS NOT NULL ORDER BY created_at, rowid"
        return self._records(where, (RecordStatus.SUBMITTED.value,))

    def orphans(self) -> list[Record]:
        """Pending and sending records whose process has died (a crash, a kernel restart), oldest first.

        A pending one was never sent; a sending one may have created a task: its outcome is unknown.
        """
        where = "WHERE status IN (?, ?) ORDER BY created_at, rowid"
        found = self._records(where, (RecordStatus.PENDING.value, RecordStatus.SENDING.value))
        return [r for r in found if owner_is_gone(r.owner)]

    def find_cached(self, key: str) -> Record | None:
        """The newest ready record with this request key whose image file still exists."""
        where = "WHERE request_key = ? AND status = ? ORDER BY created_at DESC, rowid DESC"
        for record in self._records(where, (key, RecordStatus.READY.value)):
            if record.image_file is not None and record.image_file.is_file():
                return record
        return None

    def count(self) -> int:
        """How many records the history holds."""
        return int(self._read("SELECT COUNT(*) FROM records")[0][0])

    def integrity_check(self) -> bool:
        """True when SQLite finds the database sound (``PRAGMA integrity_check``)."""
        return self._read("PRAGMA integrity_check")[0][0] == "ok"

    # -- frames --------------------------------------------------------------------------------

    def to_frame(self) -> pd.DataFrame:
        """Every record as a typed DataFrame, oldest first; ``image_path`` made absolute.

        Built column by column from one SELECT: integers go straight to Int64 (a float detour
        would round 64-bit seeds), times to UTC datetimes, text to the ``string`` dtype.
        """
        rows = self._read(f"SELECT {', '.join(COLUMNS)} FROM records ORDER BY created_at, rowid")
        columns = list(zip(*rows, strict=True)) if rows else [()] * len(COLUMNS)
        data: dict[str, Any] = {}
        for name, values in zip(COLUMNS, columns, strict=True):
            if name in TIME_COLUMNS:
                seconds = np.array(values, dtype=float)  # None becomes NaN, then NaT
                data[name] = pd.to_datetime(seconds, unit="s", utc=True).as_unit("ns")
            elif name in INT_COLUMNS:
                data[name] = pd.array(values, dtype="Int64")
            elif name in FLOAT_COLUMNS:
                data[name] = pd.array(np.array(values, dtype=float), dtype="Float64")
            elif name == "input_hashes":
                hashes = json.loads("[" + ",".join(values) + "]")  # one parse for every row
                data[name] = np.fromiter(hashes, dtype=object, count=len(hashes))  # a list per row, never 2-D
            else:
                data[name] = pd.array(values, dtype="string")
        frame = pd.DataFrame(data, copy=False)
        frame["image_path"] = str(self.root) + os.sep + frame["image_path"]
        return frame

    def spent(self, notebook: str | None = None, *, owner: str | None = None) -> pd.DataFrame:
        """Credits by model and backend over ready records (failed and moderated ones are not charged).

        A record's credits are the cost the API reported, else its estimate. With ``notebook``
        (or, where the notebook's name is not known, ``owner``: this process), ``notebook_requests``
        and ``notebook_credits`` count that notebook's share.
        """
        column, value = ("notebook", notebook) if notebook is not None else ("owner", owner)
        query = f"""
            SELECT model, backend,
                   SUM({column} IS ?), TOTAL(CASE WHEN {column} IS ? THEN COALESCE(cost, estimated_cost) END),
                   COUNT(*), TOTAL(COALESCE(cost, estimated_cost))
            FROM records WHERE status = ? GROUP BY model, backend ORDER BY model, backend
        """
        rows = self._read(query, (value, value, RecordStatus.READY.value))
        names = ["model", "backend", "notebook_requests", "notebook_credits", "requests", "credits"]
        frame = pd.DataFrame(rows, columns=names)
        frame["billed"] = frame["backend"] == "bfl"
        if value is None:
            frame = frame.drop(columns=["notebook_requests", "notebook_credits"])
        return frame
