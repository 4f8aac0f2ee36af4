"""Typed DataFrames of the records table, read as Arrow.

The fast path reads through the ADBC SQLite driver straight into Arrow (in a helper process, see
``arrow_reader``), several row ranges at once on separate connections, then converts each column once:
integers to ``Int64`` (no float detour that would round 64-bit seeds), numbers to ``Float64``,
times to UTC datetimes, text to the ``string`` dtype. A value of the wrong kind (text in a number
column) makes the driver refuse the column, so the read is repeated with such values turned to
NULL in SQL; without the driver, the same cleaned query runs through ``sqlite3``.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from flux_nb.history.arrow_reader import READER, ReaderError
from flux_nb.history.database import Database
from flux_nb.history.files import IMAGE_PATH
from flux_nb.history.schema import COLUMNS, FLOAT_COLUMNS, INT_COLUMNS, TIME_COLUMNS, select_list

# Below this many rows one connection reads everything; above, READERS connections read a range each.
PARALLEL_MIN_ROWS = 40_000
READERS = max(1, min(4, os.cpu_count() or 1))
ARROW_TYPES = {
    name: pa.int64() if name in INT_COLUMNS else pa.float64() if name in FLOAT_COLUMNS + TIME_COLUMNS else pa.string()
    for name in COLUMNS
}
TARGET = pa.schema([("_rowid", pa.int64()), *ARROW_TYPES.items()])


class _WrongKind(Exception):
    """A column holds a value of another kind than its type (the driver refuses such a column)."""


def _conform(table: pa.Table) -> pa.Table:
    """``table`` with the stored types (an all-NULL column comes back as int64, whatever it holds)."""
    try:
        return table.rename_columns(TARGET.names).cast(TARGET)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise _WrongKind(str(exc)) from exc


def _ranges(database: Database) -> list[tuple[int, int]]:
    """Row-id ranges to read side by side (one for a small history); each range applies ``where`` itself."""
    top = database.read("SELECT MAX(rowid) FROM records")[0][0] or 0
    if top < PARALLEL_MIN_ROWS or READERS == 1:
        return [(-(2**63), 2**63 - 1)]
    bounds = [top * i // READERS for i in range(READERS + 1)]
    bounds[0] = -(2**63)
    return list(itertools.pairwise(bounds))


def _sql(database: Database, where: str, *, clean: bool) -> str:
    columns = select_list(COLUMNS, database.columns, clean=clean)
    condition = f"({where}) AND" if where else ""
    return f"SELECT rowid AS _rowid, {columns} FROM records WHERE {condition} rowid > ? AND rowid <= ?"


def _sqlite_read(database: Database, where: str, params: Sequence[Any]) -> pa.Table:
    rows = database.read(_sql(database, where, clean=True), [*params, -(2**63), 2**63 - 1])
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(TARGET)
    return pa.table([pa.array(values, type=field.type) for values, field in zip(columns, TARGET, strict=True)], TARGET)


def read_table(database: Database, where: str = "", params: Sequence[Any] = (), *, small: bool = False) -> pa.Table:
    """The matching records as one Arrow table (plus ``_rowid``), oldest first.

    ``small`` (a few rows expected: the newest rows, recent changes) reads through ``sqlite3`` here,
    which for a handful of rows is quicker than a round trip to the reading process.
    """
    if small:
        return _oldest_first(_sqlite_read(database, where, params))
    try:
        table = _read_ranges(database, where, params, clean=False)
    except _WrongKind:
        try:
            table = _read_ranges(database, where, params, clean=True)
        except (_WrongKind, ReaderError):
            table = _sqlite_read(database, where, params)
    except ReaderError:
        table = _sqlite_read(database, where, params)
    return _oldest_first(table)


def _read_ranges(database: Database, where: str, params: Sequence[Any], *, clean: bool) -> pa.Table:
    sql = _sql(database, where, clean=clean)
    queries = [(sql, [*params, *bounds]) for bounds in _ranges(database)]
    try:
        parts = READER.read(database.adbc_target(), queries)
    except ReaderError as exc:
        if "type mismatch" in str(exc).lower():
            raise _WrongKind(str(exc)) from exc
        raise
    return pa.concat_tables([_conform(part) for part in parts])


def _oldest_first(table: pa.Table) -> pa.Table:
    """Order by ``created_at`` then row id; rows usually arrive in that order already (then: no copy)."""
    created = table.column("created_at")
    if len(created) < 2 or (
        created.null_count == 0
        and pc.all(pc.greater_equal(created.slice(1), created.slice(0, len(created) - 1))).as_py()
    ):
        return table
    return table.take(pc.sort_indices(table, [("created_at", "ascending"), ("_rowid", "ascending")]))


# -- Arrow to pandas ------------------------------------------------------------------------------


def _hash_lists(column: pa.ChunkedArray) -> np.ndarray:
    """``input_hashes`` as a list per row (never a 2-D array); only non-empty JSON is parsed."""
    out = np.fromiter(map(list, itertools.repeat((), len(column))), dtype=object, count=len(column))
    empty = pc.fill_null(pc.equal(column, "[]"), True).to_numpy(zero_copy_only=False)
    where = np.flatnonzero(~empty)
    if len(where):
        for index, text in zip(where, column.take(pa.array(where)).to_pylist(), strict=True):
            try:
                value = json.loads(text)
            except ValueError:
                value = []
            out[index] = value if isinstance(value, list) else []
    return out


def _times(column: pa.ChunkedArray) -> pd.DatetimeIndex:
    """Seconds since the epoch as UTC datetimes (ns); NULL becomes NaT."""
    seconds = column.to_numpy(zero_copy_only=False).astype(float)
    missing = np.isnan(seconds) | (np.abs(seconds) > 9.2e9)  # NULL, or past what datetime64[ns] holds
    nanos = np.where(missing, 0.0, np.round(seconds * 1e9)).astype(np.int64)
    nanos[missing] = np.iinfo(np.int64).min  # NaT
    return pd.DatetimeIndex(nanos.view("M8[ns]")).tz_localize("UTC")


def _column(name: str, column: pa.ChunkedArray) -> Any:
    if name in TIME_COLUMNS:
        return _times(column)
    if name in INT_COLUMNS:
        return pd.Int64Dtype().__from_arrow__(column)
    if name in FLOAT_COLUMNS:
        return pd.Float64Dtype().__from_arrow__(column)
    if name == "input_hashes":
        return _hash_lists(column)
    return pd.StringDtype("pyarrow").__from_arrow__(column)


def to_pandas(table: pa.Table, root: Path, reviews: pa.Table | None) -> pd.DataFrame:
    """The frame of ``table``: typed columns, absolute ``image_path``, ``cached``, and the review columns.

    A stored image path that would leave the history folder (see ``files.IMAGE_PATH``) is left out (NA).
    """
    stored = table.column("image_path")
    inside = pc.match_substring_regex(stored, f"^{IMAGE_PATH}$")
    image_path = pc.if_else(inside, pc.binary_join_element_wise(pa.scalar(str(root) + os.sep), stored, ""), None)
    table = table.set_column(table.schema.get_field_index("image_path"), "image_path", image_path)
    data: dict[str, Any] = {name: _column(name, table.column(name)) for name in COLUMNS}
    data["cached"] = pc.is_valid(table.column("cached_from")).to_numpy(zero_copy_only=False)
    data.update(_review_columns(table, reviews))
    return pd.DataFrame(data, copy=False)


REVIEW_SCHEMA = pa.schema(
    [("record_id", pa.string()), ("rating", pa.int64()), ("note", pa.string()), ("favourite", pa.bool_()),
     ("tags", pa.string())]
)  # fmt: skip


def _review_columns(table: pa.Table, reviews: pa.Table | None) -> dict[str, Any]:
    """Each row's review, found by the record it shows (a use shares its original's review)."""
    rows = table.num_rows
    if reviews is None or reviews.num_rows == 0:
        return {
            "rating": pd.Int64Dtype().__from_arrow__(pa.nulls(rows, pa.int64())),
            "note": pd.StringDtype("pyarrow").__from_arrow__(pa.nulls(rows, pa.string())),
            "tags": pd.StringDtype("pyarrow").__from_arrow__(pa.nulls(rows, pa.string())),
            "favourite": np.zeros(rows, dtype=bool),
        }
    shown = pc.coalesce(table.column("cached_from"), table.column("record_id"))
    at = pc.index_in(shown, value_set=reviews.column("record_id"))
    return {
        "rating": pd.Int64Dtype().__from_arrow__(reviews.column("rating").take(at)),
        "note": pd.StringDtype("pyarrow").__from_arrow__(reviews.column("note").take(at)),
        "tags": pd.StringDtype("pyarrow").__from_arrow__(reviews.column("tags").take(at)),
        "favourite": pc.fill_null(reviews.column("favourite").take(at), False).to_numpy(zero_copy_only=False),
    }


def reviews_table(rows: list[tuple[Any, ...]]) -> pa.Table:
    """Review rows (record_id, rating, note, favourite, comma-joined tags) as an Arrow table."""
    rows = [(record_id, rating, note, bool(favourite), tags) for record_id, rating, note, favourite, tags in rows]
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(REVIEW_SCHEMA)
    arrays = [pa.array(values, type=field.type) for values, field in zip(columns, REVIEW_SCHEMA, strict=True)]
    return pa.table(arrays, REVIEW_SCHEMA)
