"""Batches: the rows one ``%%flux`` cell, one ``sweep``/``generate`` call or one panel click wrote.

Every row keeps its batch's id (``batch``) and the names of the axes that batch varied (``batch_axes``,
a JSON list), so a report draws one grid per batch with that batch's own axes. A re-run shows the
rows it already showed (see ``HistoryStore.record_use``), so its batch writes nothing new.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class Batch:
    """One batch being run: its id, its axes, and the earlier rows it has shown again (never shown twice)."""

    id: str
    axes: list[str]
    shown_again: set[str] = field(default_factory=set)

    @property
    def axes_json(self) -> str:
        return json.dumps(self.axes)


def new_batch(labels: Iterable[Mapping[str, Any]]) -> Batch:
    """A batch with a fresh id and the axes its points' ``labels`` vary (seed first, then sweep order)."""
    return Batch(uuid.uuid4().hex[:12], varying_axes(list(labels)))


def varying_axes(labels: list[Mapping[str, Any]]) -> list[str]:
    """The label names whose values differ between points, seed first, the rest in sweep order.

    >>> varying_axes([{"prompt": "a", "seed": 1}, {"prompt": "a", "seed": 2}])
    ['seed']
    """
    order = list(dict.fromkeys(name for label in labels for name in label))
    varying = [n for n in order if len({json.dumps(label.get(n), default=str) for label in labels}) > 1]
    return sorted(varying, key=lambda name: name != "seed")


def axes_of(text: Any) -> list[str]:
    """A row's ``batch_axes`` as a list of names (empty where it is missing or not a JSON list of text)."""
    if not isinstance(text, str):
        return []
    try:
        value = json.loads(text)
    except ValueError:
        return []
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def labels_of(text: Any) -> dict[str, Any]:
    """A row's ``labels`` as a dict (empty where it is missing or not a JSON object)."""
    if not isinstance(text, str):
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _shown(row: Mapping[str, Any]) -> tuple[Any, str]:
    """What a row shows: its image and its place (labels) in its batch."""
    return row.get("image_sha256"), json.dumps(labels_of(row.get("labels")), sort_keys=True, default=str)


def batch_frames(frame: pd.DataFrame) -> list[tuple[str, list[str], pd.DataFrame]]:
    """Each batch of ``frame`` that varied an axis, in the order of its first row: its id, its axes, and its
    rows with every axis as a column (read from the labels) and cached repeats folded away.

    A cached repeat is a cache hit showing an image at a place its batch already shows it, or a whole
    batch of cache hits showing what an earlier batch showed (a notebook re-run before re-runs were
    folded at the source). Rows of no batch (older histories) are one batch, ``""``, varying seed and prompt.
    """
    import pandas as pd

    if frame.empty:
        return []
    ids = frame["batch"].astype(object).where(frame["batch"].notna(), "") if "batch" in frame else [""] * len(frame)
    out: list[tuple[str, list[str], pd.DataFrame]] = []
    seen: list[set[tuple[Any, str]]] = []
    for batch_id, rows in frame.groupby(pd.Series(list(ids), index=frame.index), sort=False):
        records = rows.to_dict("records")
        keep, shown = [], set()
        for position, row in enumerate(records):
            if not (bool(row.get("cached")) and _shown(row) in shown):
                keep.append(position)
            shown.add(_shown(row))
        all_cached = "cached" in rows and bool(rows["cached"].all())
        if all_cached and any(shown <= earlier for earlier in seen):
            continue
        seen.append(shown)
        axes = axes_of(records[0].get("batch_axes")) if batch_id else _old_axes(rows)
        if not axes:
            continue
        kept = rows.iloc[keep].copy()
        labels = [labels_of(text) for text in kept["labels"]] if "labels" in kept else [{} for _ in keep]
        for axis in axes:
            column = kept[axis].astype(object) if axis in kept else pd.Series([None] * len(kept), index=kept.index)
            kept[axis] = [label.get(axis, value) for label, value in zip(labels, column, strict=True)]
        out.append((str(batch_id), axes, kept.reset_index(drop=True)))
    return out


def _old_axes(rows: pd.DataFrame) -> list[str]:
    return [name for name in ("seed", "prompt") if name in rows and rows[name].nunique(dropna=False) > 1]


def grid_axes_of(axes: list[str]) -> tuple[str | None, str | None, str | None]:
    """Grid axes (x, y, z) for a batch's axes: the first across, the second down, the rest paged (as a+b)."""
    x = axes[0] if axes else None
    y = axes[1] if len(axes) > 1 else None
    return x, y, "+".join(axes[2:]) or None
