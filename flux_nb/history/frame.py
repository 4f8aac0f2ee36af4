"""Typed DataFrames of the records table, read through ``sqlite3`` straight into pandas.

One query on this process's own connection (one SQLite in the process, no helper), then each column
is converted once: integers to ``Int64`` (no float detour that would round 64-bit seeds), numbers to
``Float64``, times to UTC datetimes, text to pandas' ``string`` dtype (Arrow-backed where pyarrow is
installed, Python strings otherwise: the same values either way). A value of the wrong kind (text in
a number column) is read as missing, so one bad value never breaks a read.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flux_nb.history.database import Database
from flux_nb.history.files import IMAGE_PATH
from flux_nb.history.records import seed_from_sql
from flux_nb.history.schema import COLUMNS, FLOAT_COLUMNS, INT_COLUMNS, TIME_COLUMNS, select_list

STRING = pd.StringDtype()
SEED_COLUMNS = ("seed", "result_seed")
NAMES = ["_rowid", *COLUMNS]
Columns = dict[str, Sequence[Any]]


def read_table(database: Database, where: str = "", params: Sequence[Any] = ()) -> Columns:
    """The matching records as one sequence per column (plus ``_rowid``), oldest first."""
    columns = select_list(COLUMNS, database.columns, clean=False)
    rows = database.read(f"SELECT rowid, {columns} FROM records {'WHERE ' + where if where else ''}", params)
    values = list(zip(*rows, strict=True)) if rows else [()] * len(NAMES)
    table = {name: _of_kind(name, column) for name, column in zip(NAMES, values, strict=True)}
    times = np.array(table["created_at"], dtype=float)
    if len(times) > 1 and not (times[1:] >= times[:-1]).all():  # usually written in order already: no sort
        order = np.lexsort((np.array(table["_rowid"], dtype=np.int64), times))
        table = {name: [column[i] for i in order] for name, column in table.items()}
    return table


def _of_kind(name: str, values: Sequence[Any]) -> Sequence[Any]:
    """``values`` with any value of another kind than the column's (text in a number column) made None."""
    kinds: tuple[type, ...] = (int,) if name in INT_COLUMNS or name == "_rowid" else (str,)
    if name in FLOAT_COLUMNS or name in TIME_COLUMNS:
        kinds = (float, int)
    if set(map(type, values)) <= {*kinds, type(None)}:
        return values
    return [v if type(v) in kinds else None for v in values]


def _floats(values: Sequence[Any]) -> pd.arrays.FloatingArray:
    data = np.array(values, dtype=float)  # None becomes NaN; SQLite stores no NaN of its own
    mask = np.isnan(data)
    data[mask] = 0.0
    return pd.arrays.FloatingArray(data, mask)


def _times(values: Sequence[Any]) -> pd.DatetimeIndex:
    """Seconds since the epoch as UTC datetimes (ns); NULL becomes NaT."""
    seconds = np.array(values, dtype=float)
    missing = np.isnan(seconds) | (np.abs(seconds) > 9.2e9)  # NULL, or past what datetime64[ns] holds
    nanos = np.where(missing, 0.0, np.round(seconds * 1e9)).astype(np.int64)
    nanos[missing] = np.iinfo(np.int64).min  # NaT
    return pd.DatetimeIndex(nanos.view("M8[ns]")).tz_localize("UTC")


def _hash_list(text: str | None) -> list[Any]:
    """``input_hashes`` of one row as a list (empty where it is missing or not a JSON list)."""
    if text is None or text == "[]":
        return []
    try:
        value = json.loads(text)
    except ValueError:
        return []
    return value if isinstance(value, list) else []


def _hash_lists(values: Sequence[Any]) -> np.ndarray:
    """A list per row (never a 2-D array)."""
    out = np.empty(len(values), dtype=object)
    out[:] = [_hash_list(text) for text in values]
    return out


def _column(name: str, values: Sequence[Any]) -> Any:
    if name in TIME_COLUMNS:
        return _times(values)
    if name in SEED_COLUMNS:  # stored signed (``seed_to_sql``): shown as the unsigned seeds they are
        return pd.array([seed_from_sql(v) for v in values], dtype="UInt64")
    if name in INT_COLUMNS:
        return pd.array(values, dtype="Int64")
    if name in FLOAT_COLUMNS:
        return _floats(values)
    if name == "input_hashes":
        return _hash_lists(values)
    return pd.array(values, dtype=STRING)


def to_pandas(table: Columns, root: Path, reviews: list[tuple[Any, ...]] | None) -> pd.DataFrame:
    """The frame of ``table``: typed columns, absolute ``image_path``, ``cached``, and the review columns.

    A stored image path that would leave the history folder (see ``files.IMAGE_PATH``) is left out (NA).
    """
    inside = re.compile(IMAGE_PATH).fullmatch
    prefix = str(root) + os.sep
    paths = [prefix + p if p is not None and inside(p) else None for p in table["image_path"]]
    data: dict[str, Any] = {name: _column(name, paths if name == "image_path" else table[name]) for name in COLUMNS}
    data["cached"] = np.array([v is not None for v in table["cached_from"]], dtype=bool)
    data.update(_review_columns(table, reviews or []))
    return pd.DataFrame(data, copy=False)


def _review_columns(table: Columns, reviews: list[tuple[Any, ...]]) -> dict[str, Any]:
    """Each row's review, found by its experiment and the image it shows (see ``schema.REVIEW_KEY``).

    ``reviews`` are rows of (experiment, image, rating, note, favourite, comma-joined tags).
    """
    by_key = {(row[0], row[1]): row[2:] for row in reviews}
    none = (None, None, 0, None)
    columns = ("experiment", "image_sha256", "cached_from", "record_id")
    keys = zip(*(table[name] for name in columns), strict=True)
    shown = [by_key.get((e or "", sha or cached or record), none) for e, sha, cached, record in keys]
    rating, note, favourite, tags = zip(*shown, strict=True) if shown else ((), (), (), ())
    return {
        "rating": pd.array(rating, dtype="Int64"),
        "note": pd.array(note, dtype=STRING),
        "tags": pd.array(tags, dtype=STRING),
        "favourite": np.array([bool(v) for v in favourite], dtype=bool),
    }
