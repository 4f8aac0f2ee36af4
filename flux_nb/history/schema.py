"""The tables of ``history.sqlite``, how older histories are brought up to date, and safe column lists.

records       one row per request (or per use of an earlier image), mirroring ``Record``;
              ``seq`` is the change number of its last write (see ``changes``)
reviews       a person's rating, note and favourite mark on an image within one experiment, keyed by
              (experiment, image): ``experiment`` is "" for none, ``image`` the image's SHA-256 (a row without
              an image: the record it shows); the records stay as they were
review_tags   a person's tags on an image within one experiment, one row per tag
changes       one counter: every write takes the next number, so a reader asks "what changed since n?"
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import fields

from flux_nb.history.records import Record

DATABASE = "history.sqlite"

# The table mirrors ``Record``: one column per field, its SQL type read from the annotation.
_SQL_TYPES = {
    "str": "TEXT NOT NULL",
    "str | None": "TEXT",
    "int | None": "INTEGER",
    "float": "REAL NOT NULL",
    "float | None": "REAL",
    "list[str]": "TEXT NOT NULL DEFAULT '[]'",
}
RECORD_FIELDS = [f.name for f in fields(Record) if f.name != "root"]
COLUMNS: dict[str, str] = {f.name: _SQL_TYPES[str(f.type)] for f in fields(Record) if f.name != "root"}
COLUMNS["record_id"] = "TEXT PRIMARY KEY"
INDEXED = ("request_key", "status", "created_at", "seq", "cached_from", "image_sha256")
# Filters that read the newest rows first (``%flux history 20 --tag T``): an index on (column, created_at)
# hands over the newest matches without sorting every match.
NEWEST_FIRST = ("notebook", "tag", "experiment")
TIME_COLUMNS = ["created_at", "updated_at", "submitted_at", "ready_at", "finished_at"]
INT_COLUMNS = [name for name, kind in COLUMNS.items() if kind.startswith("INTEGER")]
FLOAT_COLUMNS = [name for name, kind in COLUMNS.items() if kind.startswith("REAL") and name not in TIME_COLUMNS]
TEXT_COLUMNS = [name for name, kind in COLUMNS.items() if kind.startswith("TEXT")]
# Columns a frame adds to the stored ones: whether a row is a use, and the review of its record.
REVIEW_COLUMNS = ["rating", "note", "tags", "favourite"]
FRAME_COLUMNS = [*COLUMNS, "cached", *REVIEW_COLUMNS]

# The review a row shows: the one of its experiment and its image.
REVIEW_EXPERIMENT = "IFNULL({r}.experiment, '')"
REVIEW_IMAGE = "COALESCE({r}.image_sha256, {r}.cached_from, {r}.record_id)"
REVIEW_KEY = f"{REVIEW_EXPERIMENT}, {REVIEW_IMAGE}"

_TABLES = [
    "CREATE TABLE IF NOT EXISTS reviews (experiment TEXT NOT NULL, image TEXT NOT NULL, rating INTEGER, "
    "note TEXT, favourite INTEGER NOT NULL DEFAULT 0, seq INTEGER, PRIMARY KEY (experiment, image))",
    "CREATE TABLE IF NOT EXISTS review_tags (experiment TEXT NOT NULL, image TEXT NOT NULL, tag TEXT NOT NULL, "
    "PRIMARY KEY (experiment, image, tag)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS reviews_seq ON reviews (seq)",
    "CREATE INDEX IF NOT EXISTS review_tags_tag ON review_tags (tag)",
    "CREATE TABLE IF NOT EXISTS changes (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO changes VALUES (1, 0)",
]


def create_schema(db: sqlite3.Connection) -> None:
    """Create the tables, or add what an older flux_nb's history lacks (new columns are nullable)."""
    columns = ", ".join(f"{name} {kind}" for name, kind in COLUMNS.items())
    db.execute(f"CREATE TABLE IF NOT EXISTS records ({columns}, seq INTEGER)")
    existing = table_columns(db, "records")
    for name, kind in [*COLUMNS.items(), ("seq", "INTEGER")]:
        if name not in existing:
            db.execute(f"ALTER TABLE records ADD COLUMN {name} {kind.replace(' NOT NULL', '')}")
    for column in INDEXED:
        db.execute(f"CREATE INDEX IF NOT EXISTS records_{column} ON records ({column})")
    for column in NEWEST_FIRST:
        db.execute(f"CREATE INDEX IF NOT EXISTS records_{column}_newest ON records ({column}, created_at)")
    old_reviews = "reviews" in tables(db) and "record_id" in table_columns(db, "reviews")
    if old_reviews:
        for name in ("reviews_seq", "review_tags_tag"):
            db.execute(f"DROP INDEX IF EXISTS {name}")
        db.execute("ALTER TABLE reviews RENAME TO reviews_by_record")
        db.execute("ALTER TABLE review_tags RENAME TO review_tags_by_record")
    for statement in _TABLES:
        db.execute(statement)
    if old_reviews:
        _move_reviews(db)
    create_spent_totals(db)


def _move_reviews(db: sqlite3.Connection) -> None:
    """Give every (experiment, image) that showed a reviewed record the record's review (the newest
    review wins where two records showed one image), then drop the old tables keyed by record."""
    shown = "JOIN records r ON (r.record_id = o.record_id OR r.cached_from = o.record_id)"
    key = REVIEW_KEY.format(r="r")
    db.execute(
        f"INSERT OR REPLACE INTO reviews SELECT DISTINCT {key}, o.rating, o.note, o.favourite, o.seq "
        f"FROM reviews_by_record o {shown} ORDER BY o.seq"
    )
    db.execute(f"INSERT OR IGNORE INTO review_tags SELECT DISTINCT {key}, o.tag FROM review_tags_by_record o {shown}")
    db.execute("DROP TABLE reviews_by_record")
    db.execute("DROP TABLE review_tags_by_record")


# A ready record that is not a use is a billed (or would-be billed) request; its credits are the cost
# the API reported, else the estimate. NULL keys are stored as char(0): key columns are never NULL.
_BILLED = "{r}.status = 'ready' AND {r}.cached_from IS NULL"
_KEY = (
    "{r}.model, IFNULL({r}.backend, char(0)), IFNULL({r}.notebook, char(0)), IFNULL({r}.owner, char(0)), "
    "IFNULL({r}.experiment, char(0))"
)
_CREDITS = (
    "COALESCE(CASE WHEN typeof({r}.cost) IN ('real', 'integer') THEN {r}.cost END, "
    "CASE WHEN typeof({r}.estimated_cost) IN ('real', 'integer') THEN {r}.estimated_cost END, 0)"
)
_KEY_NAMES = "model, backend, notebook, owner, experiment"
_ADD = (
    "INSERT INTO spent_totals SELECT {key}, 1, {credits} WHERE {billed} ON CONFLICT ("
    + _KEY_NAMES
    + ") DO UPDATE SET requests = requests + 1, credits = credits + excluded.credits;"
)
_REMOVE = (
    "UPDATE spent_totals SET requests = requests - 1, credits = credits - {credits} "
    "WHERE {billed} AND (" + _KEY_NAMES + ") = ({key});"
)


def _for(template: str, row: str) -> str:
    return template.format(key=_KEY.format(r=row), credits=_CREDITS.format(r=row), billed=_BILLED.format(r=row))


def create_spent_totals(db: sqlite3.Connection) -> None:
    """The running totals behind ``spent``, filled from the records once, then kept by triggers."""
    if "spent_totals" not in tables(db):
        db.execute(
            "CREATE TABLE spent_totals (model TEXT, backend TEXT, notebook TEXT, owner TEXT, experiment TEXT, "
            f"requests INTEGER NOT NULL, credits REAL NOT NULL, PRIMARY KEY ({_KEY_NAMES})) WITHOUT ROWID"
        )
        key, credits, billed = _KEY.format(r="records"), _CREDITS.format(r="records"), _BILLED.format(r="records")
        db.execute(f"INSERT INTO spent_totals SELECT {key}, COUNT(*), TOTAL({credits}) FROM records WHERE {billed} "
                   f"GROUP BY {key}")  # fmt: skip
    db.execute(f"CREATE TRIGGER IF NOT EXISTS spent_insert AFTER INSERT ON records BEGIN {_for(_ADD, 'new')} END")
    db.execute(f"CREATE TRIGGER IF NOT EXISTS spent_delete AFTER DELETE ON records BEGIN {_for(_REMOVE, 'old')} END")
    db.execute(
        "CREATE TRIGGER IF NOT EXISTS spent_update AFTER UPDATE ON records "
        f"WHEN ({_BILLED.format(r='old')}) OR ({_BILLED.format(r='new')}) "
        f"BEGIN {_for(_REMOVE, 'old')} {_for(_ADD, 'new')} END"
    )


def table_columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def tables(db: sqlite3.Connection) -> set[str]:
    return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def needs_migration(db: sqlite3.Connection) -> bool:
    """True when the history lacks a table, column or index this version writes."""
    indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    return (
        not {"records", "reviews", "review_tags", "changes"} <= tables(db)
        or not {*COLUMNS, "seq"} <= table_columns(db, "records")
        or "record_id" in table_columns(db, "reviews")
        or not {f"records_{c}" for c in INDEXED} | {f"records_{c}_newest" for c in NEWEST_FIRST} <= indexes
        or "spent_update" not in {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    )


def select_list(names: Iterable[str], present: set[str], *, clean: bool, table: str = "") -> str:
    """A SELECT list for ``names``: NULL for a column an old read-only history lacks and, with ``clean``,
    NULL for any value of the wrong kind (text in a number column), so one bad value never breaks a read."""
    prefix = f"{table}." if table else ""
    parts = []
    for name in names:
        column = prefix + name
        if name not in present:
            parts.append(f"NULL AS {name}")
        elif not clean:
            parts.append(column)
        elif name in INT_COLUMNS:
            parts.append(f"CASE typeof({column}) WHEN 'integer' THEN {column} END AS {name}")
        elif name in FLOAT_COLUMNS or name in TIME_COLUMNS:
            parts.append(f"CASE WHEN typeof({column}) IN ('real', 'integer') THEN {column} * 1.0 END AS {name}")
        else:
            parts.append(f"CASE typeof({column}) WHEN 'text' THEN {column} END AS {name}")
    return ", ".join(parts)
