"""Saved grids that remember what they show: every cell's record id and request, inside the PNG."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from flux_nb.grids import Grid, GridPages
from flux_nb.metadata.provenance import write_grid_provenance


def grid_cells(page: Grid, frame: pd.DataFrame) -> list[dict[str, Any]]:
    """A grid page's cells in drawing order (row by row): ``x``, ``y``, ``record_id`` and that row's fields.

    A missing cell has ``record_id`` None; ``frame`` is the data the grid was drawn from.
    """
    rows = frame.drop_duplicates("record_id", keep="last").set_index("record_id", drop=False) if len(frame) else frame
    cells = []
    for (x, y), record_id in page.cells.items():
        row = rows.loc[record_id].to_dict() if record_id is not None and record_id in rows.index else {}
        cells.append({**row, "x": x, "y": y, "record_id": record_id})
    return cells


def save_grid(grid: Grid | GridPages, frame: pd.DataFrame, path: str | os.PathLike[str]) -> list[Path]:
    """Save a grid as PNG (one file per page) with its provenance written in; returns the paths.

    >>> save_grid(flux.history().flux.grid(x="seed", y="prompt"), flux.history(), "seeds.png")  # doctest: +SKIP
    """
    pages = list(grid) if isinstance(grid, GridPages) else [grid]
    saved = grid.save(path) if isinstance(grid, GridPages) else [grid.save(path)]
    for page, target in zip(pages, saved, strict=True):
        details = {"x": page.x, "y": page.y, "title": page.title}
        if page.z is not None:
            details.update(z=page.z, z_value=page.z_value)
        write_grid_provenance(target, grid_cells(page, frame), **details)
    return saved
