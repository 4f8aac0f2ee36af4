"""Durable history: one SQLite database (WAL) and content-addressed image files in a folder.

A record is written before its request is sent and completed when it ends, so a crash
loses nothing. Several threads and several processes (two notebooks) may write the same
folder at once (see ``database``). A cache hit is written too, as a *use*: a row pointing at
the record whose image it showed (``cached_from``), costing 0, so that a notebook's, a tag's
or an experiment's rows list every image its cells displayed. Reviews (stars, notes, tags,
favourites) live beside the records (see ``review``); frames are read by ``queries``, pandas imported
only when a frame is built. The store holds both parts, on its one database.

    <folder>/history.sqlite                  records, reviews, change counter
    <folder>/images/<sha[:2]>/<sha>.<ext>    result images, named by their SHA-256
    <folder>/inputs/<sha>.<ext>              reference images (``.url`` holds a URL's text)
"""

from __future__ import annotations

import json
import os
import socket as socket
import sqlite3
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flux_nb.errors import HistoryError, RecordTakenError
from flux_nb.history import storage_errors
from flux_nb.history.batches import Batch
from flux_nb.history.database import BUSY_TIMEOUT_S, Database, next_seq
from flux_nb.history.files import url_reference, write_file
from flux_nb.history.queries import Queries
from flux_nb.history.records import (
    KEY_FIELDS,
    SHA256,
    Record,
    RecordStatus,
    as_float,
    as_int,
    as_text,
    labels_json,
    request_key,
    seed_from_sql,
    seed_to_sql,
)
from flux_nb.history.review import Reviews
from flux_nb.history.schema import COLUMNS, DATABASE, FRAME_COLUMNS, RECORD_FIELDS, select_list
from flux_nb.images import ImageInput, sha256_hex
from flux_nb.owners import owner_is_gone, process_owner
from flux_nb.protocol import FluxRequest

if TYPE_CHECKING:
    import pandas as pd

    from flux_nb.history.view import HistoryView

__all__ = [
    "BUSY_TIMEOUT_S",
    "COLUMNS",
    "DATABASE",
    "FRAME_COLUMNS",
    "HistoryError",
    "HistoryStore",
    "Record",
    "RecordStatus",
    "owner_is_gone",
    "process_owner",
    "request_key",
]

_FINAL = tuple(s for s in RecordStatus if s != RecordStatus.PENDING)
# A use copies its original's request and result; these columns say what is new about it.
_USE_OWN = ("record_id", "created_at", "updated_at", "notebook", "tag", "experiment", "owner", "labels",
            "cached_from", "cost", "estimated_cost", "ready_at", "finished_at", "duration_s", "seq")  # fmt: skip
# The row of an earlier batch that already shows an image here (same notebook, experiment, tag and labels).
_SHOWN_HERE = (
    "SELECT record_id FROM records WHERE image_sha256 = ? AND request_key IS ? AND status = 'ready' "
    "AND notebook IS ? AND experiment IS ? AND tag IS ? AND labels IS ? AND batch IS NOT ? "
    "ORDER BY created_at, rowid"
)
_USE_EMPTY = ("webhook_url", "replay_of", "task_id", "polling_url", "submitted_at", "input_mp", "output_mp",
              "error_kind", "error", "batch", "batch_axes")  # fmt: skip


def _taken(record_id: str, status: str) -> RecordTakenError:
    return RecordTakenError(
        f"record {record_id} is already {status}: another request took it up, so it is not sent again",
        record_status=status,
    )


class HistoryStore:
    """The history folder: ``history.sqlite`` (WAL), ``images/`` (results) and ``inputs/`` (references).

    A folder this process cannot write is opened read-only: every read works, every write
    raises ``HistoryError``. Storage faults (a damaged or foreign file, a full disk) are
    ``HistoryError`` too, naming the file and the fix.

    >>> store = HistoryStore(".flux")  # doctest: +SKIP
    >>> store.to_frame(experiment="lighting").tail()  # doctest: +SKIP
    """

    def __init__(self, directory: str | os.PathLike[str], *, readonly: bool = False) -> None:
        self.root = Path(directory).expanduser().resolve()
        self.path = self.root / DATABASE
        if not readonly:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                if not self.root.is_dir():
                    raise storage_errors.translate(exc, self.root, "create the history folder") from exc
        self._db = Database(self.path, readonly=readonly)
        self._queries = Queries(self._db, self.root)
        self._reviews = Reviews(self._db)

    def __repr__(self) -> str:
        return f"HistoryStore({str(self.root)!r}{', readonly=True' if self.readonly else ''})"

    def close(self) -> None:
        """Write what the WAL holds into ``history.sqlite`` and close the connections (a later call reopens)."""
        self._db.close()

    @property
    def readonly(self) -> bool:
        """True when this store only reads (its folder or file cannot be written here)."""
        return self._db.readonly

    # -- frames and reviews (its parts) -------------------------------------------------------

    def to_frame(
        self, experiment: str | None = None, tag: str | None = None, notebook: str | None = None
    ) -> pd.DataFrame:
        """Every record (and use) as a typed DataFrame, oldest first (``Queries.to_frame``)."""
        return self._queries.to_frame(experiment=experiment, tag=tag, notebook=notebook)

    def query(self, **equals: Any) -> pd.DataFrame:
        """The rows where each ``column == value`` (``Queries.query``).

        >>> store.query(model="flux-2-pro", status="ready", tags="best")  # doctest: +SKIP
        """
        return self._queries.query(**equals)

    def tail(self, n: int = 10, **equals: Any) -> pd.DataFrame:
        """The newest ``n`` matching rows, oldest of them first (``Queries.tail``)."""
        return self._queries.tail(n, **equals)

    def charged(self, *, experiment: str | None = None, tag: str | None = None) -> pd.DataFrame:
        """Estimate against charge by model and backend (``Queries.charged``)."""
        return self._queries.charged(experiment=experiment, tag=tag)

    def change_token(self) -> int:
        """The number of the newest change (``Queries.change_token``)."""
        return self._queries.change_token()

    def frame_since(self, token: int, **equals: Any) -> tuple[pd.DataFrame, int]:
        """Rows added or changed after change ``token``, and the next token (``Queries.frame_since``)."""
        return self._queries.frame_since(token, **equals)

    def changed_ids(self, token: int) -> list[str]:
        """Ids of the rows written or reviewed after change ``token`` (``Queries.changed_ids``)."""
        return self._queries.changed_ids(token)

    def spent(
        self,
        notebook: str | None = None,
        *,
        owner: str | None = None,
        experiment: str | None = None,
        tag: str | None = None,
    ) -> pd.DataFrame:
        """Credits by model and backend over ready records (``Queries.spent``)."""
        return self._queries.spent(notebook, owner=owner, experiment=experiment, tag=tag)

    def view(self, **equals: Any) -> HistoryView:
        """A frame of the matching rows that ``refresh()`` keeps up to date cheaply."""
        from flux_nb.history.view import HistoryView

        return HistoryView(self, **equals)

    def rate(self, ids: str | Iterable[str], stars: int | None) -> list[str]:
        """Give records 0 to 5 stars (None clears); the ids of the records reviewed (``Reviews.rate``)."""
        return self._reviews.rate(ids, stars)

    def note(self, ids: str | Iterable[str], text: str | None) -> list[str]:
        """Set a note on records (None or "" clears it); the ids of the records reviewed."""
        return self._reviews.note(ids, text)

    def tag(
        self, ids: str | Iterable[str], add: Iterable[str] | str = (), remove: Iterable[str] | str = ()
    ) -> list[str]:
        """Add and remove review tags (words without commas); the ids of the records reviewed."""
        return self._reviews.tag(ids, add=add, remove=remove)

    def favourite(self, ids: str | Iterable[str], on: bool = True) -> list[str]:
        """Mark records as favourites (``on=False`` unmarks); the ids of the records reviewed."""
        return self._reviews.favourite(ids, on=on)

    # -- writing -------------------------------------------------------------------------------

    def _update(self, record_id: str, values: dict[str, Any], keep: tuple[str, ...] = (), doing: str = "") -> None:
        """Set ``values`` on a record, unless its status is in ``keep``; KeyError if there is no such record."""
        (missing,) = self._update_many([record_id], values, keep, doing or f"update record {record_id}")
        if missing is not None:
            raise missing

    def _update_many(
        self, record_ids: list[str], values: dict[str, Any], keep: tuple[str, ...], doing: str, *, refuse: bool = False
    ) -> list[Exception | None]:
        """``_update`` for several records in one transaction: a KeyError for each one missing, None for the rest;
        with ``refuse``, a RecordTakenError for each one kept (its status is in ``keep``)."""
        values = {**values, "updated_at": time.time()}
        sql = f"UPDATE records SET {', '.join(f'{name} = ?' for name in values)}, seq = ? WHERE record_id = ?"

        def work(db: sqlite3.Connection) -> list[Exception | None]:
            outcomes: list[Exception | None] = []
            for record_id in record_ids:
                row = db.execute("SELECT status FROM records WHERE record_id = ?", (record_id,)).fetchone()
                if row is None:
                    outcomes.append(KeyError(record_id))
                elif row[0] in keep:
                    outcomes.append(_taken(record_id, row[0]) if refuse else None)
                else:
                    db.execute(sql, [*values.values(), next_seq(db), record_id])
                    outcomes.append(None)
            return outcomes

        return self._db.write(work, doing)

    # -- files ---------------------------------------------------------------------------------

    def _write_file(self, target: Path, data: bytes) -> None:
        try:
            write_file(target, data)
        except OSError as exc:
            raise storage_errors.translate(exc, target, f"write {target.name}") from exc

    def save_image(self, data: bytes, ext: str) -> tuple[str, str]:
        """Store a result image by content hash; returns (path relative to the folder, sha256)."""
        ext = ext.lower().lstrip(".").replace("jpg", "jpeg")
        if not ext.isalnum():
            raise ValueError(f"image extension {ext!r} is not a plain file extension such as jpeg")
        digest = sha256_hex(data)
        relative = f"images/{digest[:2]}/{digest}.{ext}"
        self._write_file(self.root / relative, data)
        return relative, digest

    def save_input(self, image: ImageInput) -> None:
        """Keep a reference image (or a URL's text) so its record can be replayed exactly."""
        if image.is_url:
            self._write_file(self.root / "inputs" / f"{image.sha256}.url", image.value.encode())
        elif image.data is not None:
            self._write_file(self.root / "inputs" / f"{image.sha256}.{image.format or 'png'}", image.data)

    def load_input(self, sha256: str) -> bytes | str:
        """A stored reference image's bytes, or the URL (a str) for a URL input; KeyError when not stored.

        A ``.url`` file is only ever an http(s) URL of its own name (``files.url_reference``), else ValidationError.
        """
        if SHA256.fullmatch(sha256):
            for candidate in sorted((self.root / "inputs").glob(f"{sha256}.*")):
                if candidate.suffix == ".url":
                    return url_reference(candidate.read_text(errors="replace"), sha256)
                return candidate.read_bytes()
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
        experiment: str | None = None,
        labels: dict[str, Any] | None = None,
        batch: Batch | None = None,
    ) -> str:
        """Write a pending record before the request is sent; returns its id (12 hex digits)."""
        fields: dict[str, Any] = dict(backend=backend, endpoint=endpoint, notebook=notebook, input_hashes=input_hashes)
        fields.update(estimated_cost=estimated_cost, tag=tag, replay_of=replay_of, experiment=experiment, labels=labels)
        fields.update(batch=batch)
        return self.create_many([{"request": request, **fields}])[0]

    def create_many(self, requests: list[dict[str, Any]]) -> list[str]:
        """``create`` for several requests (each a dict of its arguments) in one transaction; their ids in order."""
        rows: list[dict[str, Any]] = []
        for fields in requests:  # each its own creation time, in order: the history sorts by it
            now = max(time.time(), rows[-1]["created_at"] + 1e-6) if rows else time.time()
            rows.append(self._pending_row(now, fields))

        def insert(db: sqlite3.Connection) -> None:
            for row in rows:
                self._insert_row(db, row)

        self._db.write(insert, "add a record" if len(rows) == 1 else f"add {len(rows)} records")
        return [str(row["record_id"]) for row in rows]

    @staticmethod
    def _pending_row(now: float, fields: dict[str, Any]) -> dict[str, Any]:
        """The row of a request about to be sent (``fields``: the arguments of ``create``)."""
        request: FluxRequest = fields["request"]
        row: dict[str, Any] = {name: getattr(request, name) for name in KEY_FIELDS}
        row["seed"] = seed_to_sql(row["seed"])
        row.update(
            record_id=uuid.uuid4().hex[:12],
            created_at=now,
            updated_at=now,
            notebook=fields["notebook"],
            backend=fields["backend"],
            endpoint=fields["endpoint"],
            webhook_url=request.webhook_url,
            input_hashes=json.dumps(list(fields["input_hashes"])),
            request_key=request_key(request, fields["backend"], fields["input_hashes"]),
            tag=fields.get("tag"),
            replay_of=fields.get("replay_of"),
            owner=process_owner(),
            status=RecordStatus.PENDING.value,
            estimated_cost=as_float(fields["estimated_cost"]),
            experiment=as_text(fields.get("experiment")),
            labels=labels_json(fields.get("labels")),
        )
        if (batch := fields.get("batch")) is not None:
            row.update(batch=batch.id, batch_axes=batch.axes_json)
        return row

    def _insert(self, row: dict[str, Any], doing: str, copy_of: str | None = None) -> str:
        """Insert ``row`` (or, with ``copy_of``, that record with ``row``'s columns replaced) under a fresh id."""
        self._db.write(lambda db: self._insert_row(db, row, copy_of), doing)
        return str(row["record_id"])

    @staticmethod
    def _insert_row(db: sqlite3.Connection, row: dict[str, Any], copy_of: str | None = None) -> None:
        names = list(row) if copy_of is None else [*COLUMNS]
        values_sql = (
            ", ".join("?" * len(row)) if copy_of is None else ", ".join("?" if name in row else name for name in names)
        )
        source = "" if copy_of is None else " FROM records WHERE record_id = ?"
        sql = f"INSERT INTO records ({', '.join(names)}, seq) SELECT {values_sql}, ?{source}"
        while db.execute("SELECT 1 FROM records WHERE record_id = ?", (row["record_id"],)).fetchone():
            row["record_id"] = uuid.uuid4().hex[:12]  # 48 random bits: rare, but a clash must not lose a row
        ordered = list(row.values()) if copy_of is None else [row[n] for n in names if n in row]
        db.execute(sql, [*ordered, next_seq(db), *([copy_of] if copy_of else [])])

    def record_use(
        self,
        original_record_id: str,
        *,
        notebook: str,
        tag: str | None = None,
        experiment: str | None = None,
        owner: str | None = None,
        labels: dict[str, Any] | None = None,
        batch: Batch | None = None,
    ) -> str:
        """Record that a cell showed a ready record's image again (a cache hit); returns the use's id.

        The use copies the request and the result, costs 0, and points at the original in
        ``cached_from`` (a use of a use points at the first original). KeyError for an unknown
        record, ValueError for one without an image.

        With ``batch``, a row of an earlier batch that already shows this image here (same notebook,
        experiment, tag and labels; one not shown again by this batch yet) is returned instead and
        nothing is written: re-running a notebook leaves its history as it was.
        """
        original = self.get(original_record_id)
        if original is None or original.record_id != original_record_id:
            raise KeyError(f"no record {original_record_id!r} in {self.path}")
        if original.status != RecordStatus.READY:
            raise ValueError(f"record {original_record_id} is {original.status}, not ready: it has no image to show")
        now = time.time()
        row: dict[str, Any] = dict.fromkeys(_USE_EMPTY)
        row.update(record_id=uuid.uuid4().hex[:12], created_at=now, updated_at=now, notebook=as_text(notebook))
        row.update(tag=as_text(tag), experiment=as_text(experiment), owner=as_text(owner) or process_owner())
        row.update(labels=labels_json(labels), cached_from=original.cached_from or original.record_id, cost=0.0)
        row.update(estimated_cost=0.0, ready_at=now, finished_at=now, duration_s=0.0)
        if batch is None:
            return self._insert(row, "record a cached image's use", copy_of=original.record_id)
        row.update(batch=batch.id, batch_axes=batch.axes_json)
        same = (original.image_sha256, original.request_key, row["notebook"], row["experiment"], row["tag"])

        def show(db: sqlite3.Connection) -> str:
            for (earlier,) in db.execute(_SHOWN_HERE, (*same, row["labels"], batch.id)).fetchall():
                if earlier not in batch.shown_again:
                    batch.shown_again.add(earlier)
                    return str(earlier)
            self._insert_row(db, row, original.record_id)
            return str(row["record_id"])

        return self._db.write(show, "record a cached image's use")

    def mark_sending(self, record_id: str) -> None:
        """The submit is about to go out: from now on a crash leaves its outcome unknown.

        Only a pending record is marked: one another request took up first (sending, or further) raises
        RecordTakenError, and must not be sent again.
        """
        (refused,) = self.mark_sending_many([record_id])
        if refused is not None:
            raise refused

    def mark_sending_many(self, record_ids: list[str]) -> list[Exception | None]:
        """``mark_sending`` for several records in one transaction: a KeyError for each one missing, a
        RecordTakenError for each one no longer pending, None for each one marked."""
        values = {"status": RecordStatus.SENDING.value, "owner": process_owner()}
        return self._update_many(record_ids, values, _FINAL, "mark a request as sending", refuse=True)

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
        """The API accepted the request: keep its task id and polling URL, so ``resume`` can finish it.

        The task id is always kept; a value of the wrong kind (a cost of "abc") is stored as missing.
        """
        values = {"task_id": str(task_id), "polling_url": as_text(polling_url), "cost": as_float(cost)}
        values.update(status=RecordStatus.SUBMITTED.value, input_mp=as_float(input_mp), output_mp=as_float(output_mp))
        values.update(submitted_at=as_float(submitted_at))
        self._update(record_id, values, keep=(RecordStatus.READY,), doing="keep a submitted task's id")

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
        """Store the image by hash, then complete the record; returns the image's absolute path.

        A request that left its size to the API (an edit without one) records the output's size as its own.
        """
        relative, digest = self.save_image(image, ext)
        values: dict[str, Any] = dict(status=RecordStatus.READY.value, image_path=relative, image_sha256=digest)
        values.update(out_width=as_int(width), out_height=as_int(height), ready_at=as_float(ready_at))
        values.update(finished_at=as_float(finished_at), duration_s=as_float(duration_s), engine=as_text(engine))
        values.update(result_seed=as_int(seed_to_sql(result_seed)), error_kind=None, error=None)
        if as_float(cost) is not None:
            values["cost"] = as_float(cost)
        record = self.get(record_id)
        if record is not None and record.width is None and record.height is None:
            values.update(width=values["out_width"], height=values["out_height"])
        self._update(record_id, values, doing="complete a record")
        return self.root / relative

    def mark_failed(
        self, record_id: str, *, status: RecordStatus, error_kind: str, error: str, finished_at: float
    ) -> None:
        """End a record without an image. A record already ready stays ready (another process finished it)."""
        values: dict[str, Any] = dict(status=RecordStatus(status).value, error_kind=str(error_kind), error=str(error))
        values["finished_at"] = as_float(finished_at)
        self._update(record_id, values, keep=(RecordStatus.READY,), doing="end a record")

    def note_error(self, record_id: str, *, error_kind: str, error: str) -> None:
        """Keep why an open record is still open (e.g. its download failed: resume will finish it)."""
        values = {"error_kind": str(error_kind), "error": str(error)}
        self._update(record_id, values, keep=(RecordStatus.READY,), doing="note an error")

    # -- reading records -----------------------------------------------------------------------

    def _records(self, where: str, params: Sequence[Any] = ()) -> list[Record]:
        columns = select_list(RECORD_FIELDS, self._db.columns, clean=True)
        rows = self._db.read(f"SELECT {columns} FROM records {where}", params)
        records = []
        for row in rows:
            values = dict(zip(RECORD_FIELDS, row, strict=True))
            try:
                hashes = json.loads(values["input_hashes"] or "[]")
            except ValueError:
                hashes = []
            values["input_hashes"] = hashes if isinstance(hashes, list) else []
            values["seed"], values["result_seed"] = seed_from_sql(values["seed"]), seed_from_sql(values["result_seed"])
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

    def unsettled(self) -> list[Record]:
        """Pending and sending records of any owner, oldest first.

        A pending one was never sent; a sending one may have created a task: its outcome is unknown.
        """
        where = "WHERE status IN (?, ?) ORDER BY created_at, rowid"
        return self._records(where, (RecordStatus.PENDING.value, RecordStatus.SENDING.value))

    def orphans(self) -> list[Record]:
        """Pending and sending records whose process has died (a crash, a kernel restart), oldest first."""
        return [r for r in self.unsettled() if owner_is_gone(r.owner)]

    def find_cached(self, key: str) -> Record | None:
        """The newest ready record (not a use) with this request key whose image file still exists."""
        where = "WHERE request_key = ? AND status = ? AND cached_from IS NULL ORDER BY created_at DESC, rowid DESC"
        if "cached_from" not in self._db.columns:
            where = where.replace(" AND cached_from IS NULL", "")
        for record in self._records(where, (key, RecordStatus.READY.value)):
            if record.image_file is not None and record.image_file.is_file():
                return record
        return None

    def count(self) -> int:
        """How many rows the history holds (records and uses)."""
        return int(self._db.read("SELECT COUNT(*) FROM records")[0][0])

    def integrity_check(self) -> bool:
        """True when SQLite finds the database sound (``PRAGMA integrity_check``)."""
        return self._db.read("PRAGMA integrity_check")[0][0] == "ok"
