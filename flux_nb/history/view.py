"""A frame of the history that refreshes by reading only what changed since it was last read."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from flux_nb.history.store import HistoryStore


class HistoryView:
    """Keeps ``frame`` (the rows matching ``filters``) current: ``refresh()`` reads the rows written or
    reviewed since the last read, replaces those it holds, drops those that no longer match, appends new ones.

    >>> view = store.view(experiment="lighting")  # doctest: +SKIP
    >>> view.refresh().tail()  # doctest: +SKIP
    """

    def __init__(self, store: HistoryStore, **filters: Any) -> None:
        self.store = store
        self.filters = filters
        self.token = store.change_token()  # taken first: a write during the read is read again next time
        self.frame = store.query(**filters)
        self._ids = set(self.frame["record_id"])

    def __repr__(self) -> str:
        return f"HistoryView({self.store!r}, {len(self.frame)} rows, filters={self.filters!r})"

    def refresh(self) -> pd.DataFrame:
        """The frame, brought up to date; unchanged when nothing was written since the last read."""
        touched = self.store.changed_ids(self.token) if self.filters else None
        changed, self.token = self.store.frame_since(self.token, **self.filters)
        if len(changed) or touched:
            self.frame, appended = merge(self.frame, changed, touched or [], self._ids)
            if not appended:
                self._ids = set(self.frame["record_id"])
        return self.frame


def merge(frame: pd.DataFrame, changed: pd.DataFrame, touched: list[str], held: set[str]) -> tuple[pd.DataFrame, bool]:
    """``frame`` with ``changed`` rows put in (replacing rows of the same id) and ``touched`` rows that are
    not in ``changed`` (they no longer match the filters) taken out; oldest first, as a fresh frame.
    ``held`` is the set of ids in ``frame``: in the usual case (only new rows, appended: True) it is updated."""
    ids = [*changed["record_id"], *touched]
    newest = frame["created_at"].iloc[-1] if len(frame) else None
    if held.isdisjoint(ids) and (newest is None or changed.empty or changed["created_at"].min() >= newest):
        held.update(changed["record_id"])
        return pd.concat([frame, changed], ignore_index=True), True
    merged = pd.concat([frame[~frame["record_id"].isin(ids)], changed], ignore_index=True)
    return merged.sort_values("created_at", kind="stable", ignore_index=True), False
