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

    def __repr__(self) -> str:
        return f"HistoryView({self.store!r}, {len(self.frame)} rows, filters={self.filters!r})"

    def refresh(self) -> pd.DataFrame:
        """The frame, brought up to date; unchanged when nothing was written since the last read."""
        touched = self.store.changed_ids(self.token) if self.filters else None
        changed, self.token = self.store.frame_since(self.token, **self.filters)
        if len(changed) or touched:
            self.frame = merge(self.frame, changed, touched or [])
        return self.frame


def merge(frame: pd.DataFrame, changed: pd.DataFrame, touched: list[str]) -> pd.DataFrame:
    """``frame`` with ``changed`` rows put in (replacing rows of the same id) and ``touched`` rows that are
    not in ``changed`` (they no longer match the filters) taken out; oldest first, as a fresh frame."""
    ids = [*changed["record_id"], *touched]
    held = frame["record_id"].isin(ids)
    if not held.any() and (frame.empty or changed.empty or changed["created_at"].min() >= frame["created_at"].iloc[-1]):
        return pd.concat([frame, changed], ignore_index=True)  # the usual case: new rows, appended
    merged = pd.concat([frame[~held], changed], ignore_index=True)
    return merged.sort_values("created_at", kind="stable", ignore_index=True)
