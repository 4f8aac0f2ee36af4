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
from typing import Any


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
