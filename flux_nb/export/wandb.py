"""History rows as a Weights & Biases table: each row's image with its request, cost and review.

Needs the ``wandb`` extra (``pip install 'flux-nb[wandb]'``). The columns are those of the MLflow export
(``flux_nb.export.mlflow``): the request, the record's id, status and backend, the credits, and the
judgement (rating, note, favourite, review tags), with the experiment, the cell's tag and whether the
row was a cache hit. ``WANDB_MODE=offline`` writes the run to disk only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from flux_nb.errors import ValidationError
from flux_nb.export.mlflow import _credits, _image, _missing

COLUMNS = (
    *("record_id", "image", "prompt", "model", "seed", "width", "height", "status", "backend", "credits"),
    *("rating", "note", "favourite", "review_tags", "experiment", "cell_tag", "cached"),
)
_FROM_FRAME = {"review_tags": "tags", "cell_tag": "tag"}


def _wandb() -> Any:
    try:
        import wandb
    except ImportError:
        raise ValidationError("wandb is not installed; pip install 'flux-nb[wandb]'") from None
    return wandb


def _value(row: dict[str, Any], column: str) -> Any:
    value: Any = row.get(_FROM_FRAME.get(column, column))
    if _missing(value):
        return None
    if column in ("seed", "width", "height", "rating"):
        return int(value)
    if column in ("favourite", "cached"):
        return bool(value)
    return str(value)


def wandb_table(frame: pd.DataFrame, history_dir: str | os.PathLike[str]) -> Any:
    """A ``wandb.Table`` of the frame's rows: one line per row, its image (where it has one) a ``wandb.Image``."""
    wandb = _wandb()
    if not isinstance(frame, pd.DataFrame) or "record_id" not in frame.columns:
        raise ValidationError("to_wandb takes a history DataFrame (with a record_id column)")
    if frame.empty:
        raise ValidationError("the frame has no rows to log; select some rows of the history first")
    root = Path(history_dir).expanduser().resolve()
    table = wandb.Table(columns=list(COLUMNS))
    for row in frame.to_dict("records"):
        image = _image(row, root)
        line = {c: _value(row, c) for c in COLUMNS if c not in ("image", "credits")}
        line["image"] = wandb.Image(str(image), caption=str(row.get("prompt") or "")[:200]) if image else None
        line["credits"] = _credits(row)
        table.add_data(*(line[c] for c in COLUMNS))
    return table


def to_wandb(
    frame: pd.DataFrame,
    history_dir: str | os.PathLike[str],
    *,
    project: str = "flux_nb",
    key: str = "flux_nb",
    run: Any = None,
    **init: Any,
) -> Any:
    """Log the frame's rows as a table under ``key``: into ``run``, else into a new run of ``project``
    (``init`` goes to ``wandb.init``; the run is finished after). Returns the table.

    >>> flux.history(experiment="lighting").flux.to_wandb(project="lighting")  # doctest: +SKIP
    """
    table = wandb_table(frame, history_dir)
    if run is not None:
        run.log({key: table})
        return table
    started = _wandb().init(project=project, **init)
    try:
        started.log({key: table})
    finally:
        started.finish()
    return table
