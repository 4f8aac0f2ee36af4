"""Reading the history as frames: filters, the newest rows, changes since a token, credits by model.

Filters and sums run in SQL; pandas is imported only when a frame is built, so
importing the store stays light. ``HistoryStore`` holds a ``Queries`` on its database.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flux_nb.history import review
from flux_nb.history.database import Database
from flux_nb.history.filters import where_clause
from flux_nb.history.records import RecordStatus, is_billed_label

if TYPE_CHECKING:
    import pandas as pd


class Queries:
    """Frame-returning reads of a history (the part of ``HistoryStore`` that needs pandas).

    ``root`` is the history folder, against which stored image paths are made absolute.
    """

    def __init__(self, db: Database, root: Path) -> None:
        self._db = db
        self.root = root

    def to_frame(
        self, experiment: str | None = None, tag: str | None = None, notebook: str | None = None
    ) -> pd.DataFrame:
        """Every record (and use) as a typed DataFrame, oldest first; ``image_path`` made absolute.

        ``experiment``, ``tag`` and ``notebook`` keep the rows with that value (filtered in SQL).
        Columns: those of ``COLUMNS``, then ``cached`` (a use of an earlier image), and the review:
        ``rating`` (Int64), ``note``, ``tags`` (comma-joined, sorted), ``favourite`` (bool).
        """
        filters = {"experiment": experiment, "tag": tag, "notebook": notebook}
        return self.query(**{name: value for name, value in filters.items() if value is not None})

    def query(self, **equals: Any) -> pd.DataFrame:
        """The rows where each ``column == value`` (a list: any of them; None: missing), as a typed frame.

        >>> store.query(model="flux-2-pro", status="ready", tags="best")  # doctest: +SKIP
        """
        where, params = where_clause(equals)
        return self._frame(where, params)

    def tail(self, n: int = 10, **equals: Any) -> pd.DataFrame:
        """The newest ``n`` matching rows (oldest of them first), read without reading the rest."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"tail needs a row count of 0 or more, got {n!r}")
        where, params = where_clause(equals)
        newest = f"SELECT rowid FROM records {'WHERE ' + where if where else ''} "
        newest += "ORDER BY created_at DESC, rowid DESC LIMIT ?"
        return self._frame(f"rowid IN ({newest})", [*params, n])

    def change_token(self) -> int:
        """The number of the newest change: ``frame_since`` of it returns what changed after it."""
        if not self._db.has("changes"):
            return 0
        return int(self._db.read("SELECT seq FROM changes WHERE id = 1")[0][0])

    def frame_since(self, token: int, **equals: Any) -> tuple[pd.DataFrame, int]:
        """Rows added or changed after change ``token`` (a review counts), and the token to ask with next."""
        new_token = self.change_token()
        if new_token == token:
            return self._frame("0", []), token
        where, params = where_clause(equals)
        changed = f"records.rowid IN ({self._changed_rowids()})"
        params = [token] * (4 if self._db.has("reviews") else 1) + params
        changed_rows = self._frame(f"{changed}{' AND ' + where if where else ''}", params)
        return changed_rows, new_token

    def _changed_rowids(self) -> str:
        """SQL of the rowids written, or whose image was reviewed, after a token (one ``?`` per part);
        each part is an indexed lookup, so asking costs little however long the history is."""
        sql = "SELECT rowid FROM records WHERE seq > ?"
        if self._db.has("reviews"):
            reviewed = "SELECT image FROM reviews WHERE seq > ?"
            sql += f" UNION SELECT rowid FROM records WHERE image_sha256 IN ({reviewed})"
            sql += f" UNION SELECT rowid FROM records WHERE record_id IN ({reviewed})"
            sql += f" UNION SELECT rowid FROM records WHERE cached_from IN ({reviewed})"
        return sql

    def changed_ids(self, token: int) -> list[str]:
        """Ids of the rows written (or whose image was reviewed) after change ``token``, whatever their values."""
        params = [token] * (4 if self._db.has("reviews") else 1)
        rows = self._db.read(f"SELECT record_id FROM records WHERE rowid IN ({self._changed_rowids()})", params)
        return [row[0] for row in rows]

    def _frame(self, where: str, params: Sequence[Any]) -> pd.DataFrame:
        from flux_nb.history import frame

        table = frame.read_table(self._db, where, params)
        reviews = None
        if self._db.has("reviews") and table["record_id"]:
            reviews = self._db.read(review.REVIEWS_SQL)
        return frame.to_pandas(table, self.root, reviews)

    def charged(self, *, experiment: str | None = None, tag: str | None = None) -> pd.DataFrame:
        """Estimate against charge by model and backend: the ready requests whose answer said what they cost
        (columns model, backend, requests, estimated, charged)."""
        import pandas as pd

        only = "".join(f" AND {name} IS ?" for name, v in (("experiment", experiment), ("tag", tag)) if v is not None)
        query = f"""
            SELECT model, backend, COUNT(*), TOTAL(estimated_cost), TOTAL(cost) FROM records
            WHERE status = ? AND cached_from IS NULL AND typeof(cost) IN ('real', 'integer')
                  AND typeof(estimated_cost) IN ('real', 'integer'){only}
            GROUP BY model, backend ORDER BY model, backend
        """
        params = [RecordStatus.READY.value, *(v for v in (experiment, tag) if v is not None)]
        rows = self._db.read(query, params)
        return pd.DataFrame(rows, columns=["model", "backend", "requests", "estimated", "charged"])

    def spent(
        self,
        notebook: str | None = None,
        *,
        owner: str | None = None,
        experiment: str | None = None,
        tag: str | None = None,
    ) -> pd.DataFrame:
        """Credits by model and backend over ready records (failed and moderated ones are not charged).

        A record's credits are the cost the API reported, else its estimate; uses (cache hits) cost
        nothing and are not requests. With ``notebook`` (or, where the notebook's name is not known,
        ``owner``: this process), ``notebook_requests`` and ``notebook_credits`` count that notebook's
        share. ``experiment`` counts only that experiment's records. Read from running totals kept
        in the database (see ``schema``), so it costs the same at a million rows as at ten; ``tag``
        (not in the totals) sums that tag's records through its index.
        """
        import pandas as pd

        column, value = ("notebook", notebook) if notebook is not None else ("owner", owner)
        if self._db.has("spent_totals") and tag is None:  # running totals: a few rows however long the history
            only = " WHERE experiment = IFNULL(?, char(0))" if experiment is not None else ""
            query = f"""
                SELECT model, NULLIF(backend, char(0)), SUM(CASE WHEN {column} = IFNULL(?, char(0)) THEN requests END),
                       TOTAL(CASE WHEN {column} = IFNULL(?, char(0)) THEN credits END), SUM(requests), TOTAL(credits)
                FROM spent_totals{only} GROUP BY model, backend HAVING SUM(requests) > 0 ORDER BY model, backend
            """
            params = [value, value, *([experiment] if experiment is not None else [])]
        else:  # an older history opened read-only: sum the records themselves
            credits = "COALESCE(CASE WHEN typeof(cost) IN ('real', 'integer') THEN cost END, estimated_cost)"
            only = " AND experiment IS ?" if experiment is not None else ""
            only += " AND tag IS ? AND cached_from IS NULL" if tag is not None else ""
            query = f"""
                SELECT model, backend, SUM({column} IS ?), TOTAL(CASE WHEN {column} IS ? THEN {credits} END),
                       COUNT(*), TOTAL({credits})
                FROM records WHERE status = ?{only} GROUP BY model, backend ORDER BY model, backend
            """
            filters = [f for f in (experiment, tag) if f is not None]
            params = [value, value, RecordStatus.READY.value, *filters]
        rows = [(m, b, n or 0, c, r, t) for m, b, n, c, r, t in self._db.read(query, params)]
        names = ["model", "backend", "notebook_requests", "notebook_credits", "requests", "credits"]
        frame = pd.DataFrame(rows, columns=names)
        frame["billed"] = frame["backend"].map(is_billed_label).astype(bool)
        if value is None:
            frame = frame.drop(columns=["notebook_requests", "notebook_credits"])
        return frame
