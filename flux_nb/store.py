"""Durable history: one SQLite database (WAL) and content-addressed image files in a folder.

A record is written before its request is sent and completed when it ends, so a crash
loses nothing. Several threads and several processes (two notebooks) may write the same
folder at once. Images are files named by their SHA-256; the database holds their paths.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

import pandas as pd

from flux_nb.api import FluxRequest
from flux_nb.images import ImageInput, sha256_hex

DATABASE = "history.sqlite"
BUSY_TIMEOUT_MS = 30_000


class RecordStatus(StrEnum):
    PENDING = "pending"  # written, not yet sent (or sent with no answer yet)
    SUBMITTED = "submitted"  # the API gave a task id; resumable from its polling URL
    READY = "ready"
    FAILED = "failed"
    MODERATED = "moderated"
    UNKNOWN = "unknown"  # the submit's outcome is unknown: never resent blindly
    CANCELLED = "cancelled"


COLUMNS: dict[str, str] = {
    "record_id": "TEXT PRIMARY KEY",
    "created_at": "REAL NOT NULL",
    "updated_at": "REAL NOT NULL",
    "notebook": "TEXT",
    "backend": "TEXT",
    "endpoint": "TEXT",
    "model": "TEXT NOT NULL",
    "prompt": "TEXT NOT NULL",
    "seed": "INTEGER",
    "width": "INTEGER",
    "height": "INTEGER",
    "safety_tolerance": "INTEGER",
    "output_format": "TEXT",
    "steps": "INTEGER",
    "guidance": "REAL",
    "webhook_url": "TEXT",
    "input_hashes": "TEXT NOT NULL DEFAULT '[]'",
    "request_key": "TEXT",
    "tag": "TEXT",
    "replay_of": "TEXT",
    "status": "TEXT NOT NULL",
    "task_id": "TEXT",
    "polling_url": "TEXT",
    "estimated_cost": "REAL",
    "cost": "REAL",
    "input_mp": "REAL",
    "output_mp": "REAL",
    "submitted_at": "REAL",
    "ready_at": "REAL",
    "finished_at": "REAL",
    "duration_s": "REAL",
    "error_kind": "TEXT",
    "error": "TEXT",
    "image_path": "TEXT",
    "image_sha256": "TEXT",
    "out_width": "INTEGER",
    "out_height": "INTEGER",
    "engine": "TEXT",
    "result_seed": "INTEGER",
}
TIME_COLUMNS = ["created_at", "updated_at", "submitted_at", "ready_at", "finished_at"]
INT_COLUMNS = ["seed", "width", "height", "safety_tolerance", "steps", "out_width", "out_height", "result_seed"]
FLOAT_COLUMNS = ["guidance", "estimated_cost", "cost", "input_mp", "output_mp", "duration_s"]


def request_key(request: FluxRequest, backend: str, input_hashes: list[str]) -> str:
    """The cache key of a request: every field that shapes the image, and the backend."""
    fields_ = request.describe()
    for private in ("webhook_url", "image_count"):
        fields_.pop(private, None)
    canonical = json.dumps({**fields_, "inputs": input_hashes, "backend": backend}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Record:
    """One history row."""

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
        names = ("prompt", "model", "seed", "width", "height", "safety_tolerance", "output_format", "steps", "guidance")
        return {name: getattr(self, name) for name in names}

    @property
    def image_file(self) -> Path | None:
        """The absolute path of the result image, if there is one."""
        return self.root / self.image_path if self.image_path and self.root else None


_RECORD_FIELDS = [f.name for f in fields(Record) if f.name != "root"]


class HistoryStore:
    """The history folder: ``history.sqlite``, ``images/`` and ``inputs/``."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.root = Path(directory).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / DATABASE
        self._local = threading.local()
        with self._write() as db:
            columns = ", ".join(f"{name} {kind}" for name, kind in COLUMNS.items())
            db.execute(f"CREATE TABLE IF NOT EXISTS records ({columns})")
            for column in ("request_key", "status", "created_at"):
                db.execute(f"CREATE INDEX IF NOT EXISTS records_{column} ON records ({column})")

    def __repr__(self) -> str:
        return f"HistoryStore({str(self.root)!r})"

    # -- connections ---------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            self._local.db = db
        return db

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A short IMMEDIATE transaction, retried while another writer holds the lock."""
        db = self._db()
        for attempt in range(50):
            try:
                db.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                time.sleep(min(0.5, 0.01 * 2**attempt))
        else:
            db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _update(self, record_id: str, **values: Any) -> None:
        values["updated_at"] = time.time()
        assignments = ", ".join(f"{name} = ?" for name in values)
        with self._write() as db:
            db.execute(f"UPDATE records SET {assignments} WHERE record_id = ?", [*values.values(), record_id])

    # -- files ---------------------------------------------------------------------------------

    def _write_file(self, target: Path, data: bytes) -> None:
        """Write atomically: a crash never leaves half a file under the final name."""
        if target.exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise

    def save_image(self, data: bytes, ext: str) -> tuple[str, str]:
        """Store a result image by content hash; returns (path relative to the folder, sha256)."""
        digest = sha256_hex(data)
        relative = f"images/{digest[:2]}/{digest}.{ext.lower().replace('jpg', 'jpeg')}"
        self._write_file(self.root / relative, data)
        return relative, digest

    def save_input(self, image: ImageInput) -> None:
        """Keep a reference image (or a URL's text) so its record can be replayed exactly."""
        if image.is_url:
            self._write_file(self.root / "inputs" / f"{image.sha256}.url", image.value.encode())
        elif image.data is not None:
            self._write_file(self.root / "inputs" / f"{image.sha256}.{image.format or 'png'}", image.data)

    def load_input(self, sha256: str) -> bytes | str:
        """A stored reference image's bytes (or its URL); KeyError when it is not stored."""
        for candidate in sorted((self.root / "inputs").glob(f"{sha256}.*")):
            if candidate.suffix == ".url":
                return candidate.read_text()
            return candidate.read_bytes()
        raise KeyError(sha256)

    # -- records -------------------------------------------------------------------------------

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
        """Write a pending record before the request is sent; returns its id."""
        record_id = uuid.uuid4().hex[:12]
        now = time.time()
        row = {
            "record_id": record_id,
            "created_at": now,
            "updated_at": now,
            "notebook": notebook,
            "backend": backend,
            "endpoint": endpoint,
            "model": request.model,
            "prompt": request.prompt,
            "seed": request.seed,
            "width": request.width,
            "height": request.height,
            "safety_tolerance": request.safety_tolerance,
            "output_format": request.output_format,
            "steps": request.steps,
            "guidance": request.guidance,
            "webhook_url": request.webhook_url,
            "input_hashes": json.dumps(input_hashes),
            "request_key": request_key(request, backend, input_hashes),
            "tag": tag,
            "replay_of": replay_of,
            "status": RecordStatus.PENDING.value,
            "estimated_cost": estimated_cost,
        }
        with self._write() as db:
            db.execute(
                f"INSERT INTO records ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values())
            )
        return record_id

    def mark_submitted(
        self,
        record_id: str,
        *,
        task_id: str,
        polling_url: str,
        cost: float | None,
        input_mp: float | None,
        output_mp: float | None,
        submitted_at: float,
    ) -> None:
        self._update(
            record_id,
            status=RecordStatus.SUBMITTED.value,
            task_id=task_id,
            polling_url=polling_url,
            cost=cost,
            input_mp=input_mp,
            output_mp=output_mp,
            submitted_at=submitted_at,
        )

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
        """Store the image, then complete the record; returns the image's absolute path."""
        relative, digest = self.save_image(image, ext)
        values: dict[str, Any] = {
            "status": RecordStatus.READY.value,
            "image_path": relative,
            "image_sha256": digest,
            "out_width": width,
            "out_height": height,
            "ready_at": ready_at,
            "finished_at": finished_at,
            "duration_s": duration_s,
            "engine": engine,
            "result_seed": result_seed,
            "error_kind": None,
            "error": None,
        }
        if cost is not None:
            values["cost"] = cost
        self._update(record_id, **values)
        return self.root / relative

    def mark_failed(
        self, record_id: str, *, status: RecordStatus, error_kind: str, error: str, finished_at: float
    ) -> None:
        self._update(record_id, status=status.value, error_kind=error_kind, error=error, finished_at=finished_at)

    def _records(self, where: str, params: tuple[Any, ...] = ()) -> list[Record]:
        cursor = self._db().execute(f"SELECT {', '.join(_RECORD_FIELDS)} FROM records {where}", params)
        records = []
        for row in cursor.fetchall():
            values = dict(zip(_RECORD_FIELDS, row, strict=True))
            values["input_hashes"] = json.loads(values["input_hashes"] or "[]")
            records.append(Record(**values, root=self.root))
        return records

    def get(self, record_id: str) -> Record | None:
        """A record by id, or by a unique prefix of it."""
        found = self._records("WHERE record_id = ?", (record_id,))
        if not found and record_id:
            found = self._records("WHERE record_id LIKE ? LIMIT 2", (f"{record_id}%",))
            found = found if len(found) == 1 else []
        return found[0] if found else None

    def resumable(self) -> list[Record]:
        """Records whose task was submitted and has not ended: ``resume`` can finish them."""
        return self._records("WHERE status = ? AND polling_url IS NOT NULL ORDER BY created_at", ("submitted",))

    def unsent(self) -> list[Record]:
        """Records written but with no task id: sent with no answer, or never sent."""
        return self._records("WHERE status = ? ORDER BY created_at", ("pending",))

    def find_cached(self, key: str) -> Record | None:
        """The newest ready record with this request key whose image file still exists."""
        for record in self._records("WHERE request_key = ? AND status = 'ready' ORDER BY created_at DESC", (key,)):
            if record.image_file is not None and record.image_file.exists():
                return record
        return None

    def count(self) -> int:
        return int(self._db().execute("SELECT COUNT(*) FROM records").fetchone()[0])

    def integrity_check(self) -> bool:
        return self._db().execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    # -- frames --------------------------------------------------------------------------------

    def to_frame(self) -> pd.DataFrame:
        """Every record as a typed DataFrame, oldest first; ``image_path`` made absolute."""
        cursor = self._db().execute(f"SELECT {', '.join(COLUMNS)} FROM records ORDER BY created_at, rowid")
        frame = pd.DataFrame.from_records(cursor.fetchall(), columns=list(COLUMNS))
        for column in TIME_COLUMNS:
            frame[column] = pd.to_datetime(frame[column].astype("Float64"), unit="s", utc=True)
        for column in INT_COLUMNS:
            frame[column] = frame[column].astype("Int64")
        for column in FLOAT_COLUMNS:
            frame[column] = frame[column].astype("Float64")
        frame["input_hashes"] = [[] if text == "[]" else json.loads(text) for text in frame["input_hashes"]]
        root = str(self.root) + os.sep
        frame["image_path"] = (root + frame["image_path"].astype("string")).astype("string")
        text_columns = [c for c in COLUMNS if c not in (*TIME_COLUMNS, *INT_COLUMNS, *FLOAT_COLUMNS, "input_hashes")]
        for column in text_columns:
            frame[column] = frame[column].astype("string")
        return frame

    def spent(self, notebook: str | None = None) -> pd.DataFrame:
        """Credits by model for ready records: in ``notebook`` (if given) and in the whole history."""
        query = """
            SELECT model, backend,
                   SUM(CASE WHEN notebook = ? THEN 1 ELSE 0 END), SUM(CASE WHEN notebook = ? THEN cost ELSE 0 END),
                   COUNT(*), SUM(cost)
            FROM records WHERE status = 'ready' GROUP BY model, backend ORDER BY model
        """
        rows = self._db().execute(query, (notebook, notebook)).fetchall()
        frame = pd.DataFrame(
            rows, columns=["model", "backend", "notebook_requests", "notebook_credits", "requests", "credits"]
        )
        frame["billed"] = frame["backend"] == "bfl"
        if notebook is None:
            frame = frame.drop(columns=["notebook_requests", "notebook_credits"])
        return frame
