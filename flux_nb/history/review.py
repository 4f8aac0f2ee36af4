"""A person's review of records: stars, a note, tags, a favourite mark, kept beside the records.

A review belongs to the experiment it was made in and the image a row shows: reviewing a row reviews
its image in its experiment, so every row of that experiment showing that image (the original, a cache
hit, a replay that made the same bytes, a bundle's copy) shows the same review, and another experiment's
review of the same image stays its own. The records themselves never change; each review write takes a
change number, so refreshes see it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

from flux_nb.errors import ValidationError
from flux_nb.history.database import Database, next_seq
from flux_nb.history.schema import REVIEW_KEY

MAX_TAG = 64
MAX_NOTE = 10_000


def as_ids(ids: str | Iterable[str]) -> list[str]:
    """One id or several, as a list without repeats (order kept)."""
    items = [ids] if isinstance(ids, str) else list(ids)
    bad = [i for i in items if not isinstance(i, str) or not i]
    if bad or not items:
        raise ValidationError(f"record ids must be non-empty strings, got {bad or items!r}")
    return list(dict.fromkeys(items))


def check_stars(stars: int | None) -> int | None:
    if stars is None:
        return None
    if isinstance(stars, bool) or not isinstance(stars, int) or not 0 <= stars <= 5:
        raise ValidationError(f"rating {stars!r} is not a whole number of stars from 0 to 5 (or None to clear it)")
    return stars


def check_note(text: str | None) -> str | None:
    if text is not None and not isinstance(text, str):
        raise ValidationError(f"note {text!r} is not text (give a str, or None to clear it)")
    if text is not None and len(text) > MAX_NOTE:
        raise ValidationError(f"note of {len(text)} characters is longer than {MAX_NOTE}: shorten it")
    return text or None


def check_tags(tags: Iterable[str] | str | None) -> list[str]:
    """Tags as a clean list: words without commas (the frame joins them with commas)."""
    items = [tags] if isinstance(tags, str) else list(tags or [])
    clean = []
    for tag in items:
        if not isinstance(tag, str) or not tag.strip() or "," in tag or len(tag) > MAX_TAG:
            raise ValidationError(
                f"tag {tag!r} is not a tag: give non-empty text of at most {MAX_TAG} characters without commas"
            )
        clean.append(tag.strip())
    return clean


def originals(db: sqlite3.Connection, ids: Sequence[str]) -> list[str]:
    """The records ``ids`` show (a use's original), in order; ValidationError naming unknown ids."""
    found: dict[str, str] = {}
    for chunk in range(0, len(ids), 500):
        part = ids[chunk : chunk + 500]
        marks = ", ".join("?" * len(part))
        sql = f"SELECT record_id, COALESCE(cached_from, record_id) FROM records WHERE record_id IN ({marks})"
        found.update(db.execute(sql, part).fetchall())
    unknown = [i for i in ids if i not in found]
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise ValidationError(f"no record with id {shown} in this history: use full ids from the history frame")
    return list(dict.fromkeys(found[i] for i in ids))


def review_keys(db: sqlite3.Connection, ids: Sequence[str]) -> list[tuple[str, str]]:
    """The (experiment, image) reviews the rows ``ids`` show, in order, without repeats."""
    keys: list[tuple[str, str]] = []
    for chunk in range(0, len(ids), 500):
        part = ids[chunk : chunk + 500]
        sql = f"SELECT {REVIEW_KEY.format(r='records')} FROM records WHERE record_id IN ({', '.join('?' * len(part))})"
        keys.extend(db.execute(sql, part).fetchall())
    return list(dict.fromkeys(keys))


def _touch(db: sqlite3.Connection, key: tuple[str, str], seq: int) -> None:
    db.execute(
        "INSERT INTO reviews (experiment, image, seq) VALUES (?, ?, ?) "
        "ON CONFLICT (experiment, image) DO UPDATE SET seq = excluded.seq",
        (*key, seq),
    )


def set_field(database: Database, ids: Sequence[str], column: str, value: object, doing: str) -> list[str]:
    """Set one review column (rating, note or favourite) on the images the rows ``ids`` show, each in its
    row's experiment; returns the records those rows show."""

    def work(db: sqlite3.Connection) -> list[str]:
        targets = originals(db, ids)
        seq = next_seq(db)
        for key in review_keys(db, ids):
            _touch(db, key, seq)
            db.execute(f"UPDATE reviews SET {column} = ? WHERE experiment = ? AND image = ?", (value, *key))
        return targets

    return database.write(work, doing)


def change_tags(database: Database, ids: Sequence[str], add: Sequence[str], remove: Sequence[str]) -> list[str]:
    def work(db: sqlite3.Connection) -> list[str]:
        targets = originals(db, ids)
        seq = next_seq(db)
        for key in review_keys(db, ids):
            _touch(db, key, seq)
            db.executemany("INSERT OR IGNORE INTO review_tags VALUES (?, ?, ?)", [(*key, t) for t in add])
            db.executemany(
                "DELETE FROM review_tags WHERE experiment = ? AND image = ? AND tag = ?", [(*key, t) for t in remove]
            )
        return targets

    return database.write(work, "change tags")


REVIEWS_SQL = """
    SELECT r.experiment, r.image, r.rating, r.note, r.favourite,
           (SELECT group_concat(tag, ',') FROM (SELECT tag FROM review_tags t
                                                WHERE t.experiment = r.experiment AND t.image = r.image ORDER BY tag))
    FROM reviews r
"""


class Reviews:
    """The reviews of one history database (a part of ``HistoryStore``): each method takes one id or several
    and returns the records reviewed."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def rate(self, ids: str | Iterable[str], stars: int | None) -> list[str]:
        """Give records 0 to 5 stars (None clears); returns the ids of the records reviewed."""
        return set_field(self._db, as_ids(ids), "rating", check_stars(stars), "rate records")

    def note(self, ids: str | Iterable[str], text: str | None) -> list[str]:
        """Set a note on records (None or "" clears it); returns the ids of the records reviewed."""
        return set_field(self._db, as_ids(ids), "note", check_note(text), "note records")

    def tag(
        self, ids: str | Iterable[str], add: Iterable[str] | str = (), remove: Iterable[str] | str = ()
    ) -> list[str]:
        """Add and remove review tags (words without commas); returns the ids of the records reviewed."""
        added, removed = check_tags(add), check_tags(remove)
        return change_tags(self._db, as_ids(ids), added, removed)

    def favourite(self, ids: str | Iterable[str], on: bool = True) -> list[str]:
        """Mark records as favourites (``on=False`` unmarks); returns the ids of the records reviewed."""
        return set_field(self._db, as_ids(ids), "favourite", int(bool(on)), "mark favourites")
