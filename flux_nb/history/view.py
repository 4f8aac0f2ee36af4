"""A frame of the history that refreshes by reading only what changed since it was last read."""

from __future__ import annotations

from typing import Any, Protocol

import pandas as pd


class Rows(Protocol):
    """What a view reads from: a ``HistoryStore``."""

    def query(self, **equals: Any) -> pd.DataFrame: ...
    def change_token(self) -> int: ...
    def frame_since(self, token: int, **equals: Any) -> tuple[pd.DataFrame, int]: ...
    def changed_ids(self, token: int) -> list[str]: ...


class HistoryView:
    """Keeps ``frame`` (the rows matching ``filters``) current: ``refresh()`` reads the rows written or
    reviewed since the last read, updates the rows it holds in place, appends new ones, and drops
    rows that no longer match.

    >>> view = store.view(experiment="lighting")  # doctest: +SKIP
    >>> view.refresh().tail()  # doctest: +SKIP
    """

    def __init__(self, store: Rows, **filters: Any) -> None:
        self.store = store
        self.filters = filters
        self.token = store.change_token()  # taken first: a write during the read is read again next time
        self._set(store.query(**filters))

    def __repr__(self) -> str:
        return f"HistoryView({self.store!r}, {len(self.frame)} rows, filters={self.filters!r})"

    # After this many appends the frame is read afresh: each append adds a chunk to every Arrow-backed column.
    REREAD_AFTER = 256

    def _set(self, frame: pd.DataFrame) -> None:
        self.frame = frame
        self._appends = 0
        self._at = {record_id: i for i, record_id in enumerate(frame["record_id"])}  # id -> row position

    def refresh(self) -> pd.DataFrame:
        """The frame, brought up to date; unchanged when nothing was written since the last read."""
        touched = self.store.changed_ids(self.token) if self.filters else []
        changed, self.token = self.store.frame_since(self.token, **self.filters)
        ids = list(changed["record_id"])
        gone = set(touched) - set(ids)
        if gone & self._at.keys():
            self._set(rebuilt(self.frame, changed, gone))
            return self.frame
        held = [i for i, record_id in enumerate(ids) if record_id in self._at]
        new = [i for i, record_id in enumerate(ids) if record_id not in self._at]
        if held and not self._update(changed.iloc[held]):
            self._set(rebuilt(self.frame, changed, gone))
            return self.frame
        if new:
            self._append(changed.iloc[new])
        return self.frame

    def _update(self, rows: pd.DataFrame) -> bool:
        """Overwrite held rows in place; False when one moved (its creation time changed)."""
        positions = [self._at[record_id] for record_id in rows["record_id"]]
        if not (self.frame["created_at"].iloc[positions].to_numpy() == rows["created_at"].to_numpy()).all():
            return False
        for j, name in enumerate(self.frame.columns):
            before = self.frame[name].iloc[positions].reset_index(drop=True)
            if before.equals(rows[name].reset_index(drop=True)):
                continue  # unchanged: Arrow-backed text columns are rebuilt whole when set, so skip them
            if self.frame[name].dtype == object:  # lists: one cell at a time, never broadcast
                for position, value in zip(positions, rows[name], strict=True):
                    self.frame.iat[position, j] = value
            else:
                self.frame.iloc[positions, j] = rows[name].array
        return True

    def _append(self, rows: pd.DataFrame) -> None:
        if len(self.frame) and rows["created_at"].min() < self.frame["created_at"].iloc[-1]:
            self._set(rebuilt(self.frame, rows, set()))
            return
        self._appends += 1
        if self._appends > self.REREAD_AFTER:
            self._set(self.store.query(**self.filters))  # the token was taken before: nothing is missed
            return
        start = len(self.frame)
        self.frame = pd.concat([self.frame, rows], ignore_index=True)
        self._at.update((record_id, start + i) for i, record_id in enumerate(rows["record_id"]))


def rebuilt(frame: pd.DataFrame, changed: pd.DataFrame, gone: set[str]) -> pd.DataFrame:
    """``frame`` without ``gone`` rows and with ``changed`` rows put in, oldest first (the slow, general way)."""
    drop = frame["record_id"].isin([*changed["record_id"], *gone])
    merged = pd.concat([frame[~drop], changed], ignore_index=True)
    return merged.sort_values("created_at", kind="stable", ignore_index=True)
