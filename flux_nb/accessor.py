"""``frame.flux``: grids, bundles, reports, MLflow runs and W&B tables straight from a history DataFrame.

Registered when a session hands out a history frame (``Flux.history()``, ``flux_history``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from flux_nb.core.made_from import with_references
from flux_nb.grids import Grid, GridPages, grid


@pd.api.extensions.register_dataframe_accessor("flux")
class FluxAccessor:
    """``df.flux.grid(x=..., y=..., z=...)`` and friends on any history DataFrame."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self._obj = frame

    def grid(
        self, x: str | None = None, y: str | None = None, z: str | None = None, **options: Any
    ) -> Grid | GridPages:
        """A labelled comparison grid of this frame's rows (an edit's cell shows its references); see
        ``flux_nb.grids.grid``."""
        return grid(with_references(self._obj), x=x, y=y, z=z, **options)

    def to_mlflow(self, experiment: str = "flux_nb", *, history_dir: str | Path | None = None, **options: Any) -> str:
        """Log each row (parameters, cost, image) to MLflow; the parent run's id. Needs ``flux-nb[mlflow]``."""
        from flux_nb.export.mlflow import to_mlflow

        return to_mlflow(self._obj, _history_dir(self._obj, history_dir), experiment=experiment, **options)

    def to_wandb(self, project: str = "flux_nb", *, history_dir: str | Path | None = None, **options: Any) -> Any:
        """Log the rows (images, request, cost, review) as a Weights & Biases table. Needs ``flux-nb[wandb]``."""
        from flux_nb.export.wandb import to_wandb

        return to_wandb(self._obj, _history_dir(self._obj, history_dir), project=project, **options)


def _history_dir(frame: pd.DataFrame, given: str | Path | None) -> Path:
    """The history folder a frame's rows came from (its ``attrs``), unless given."""
    if given is not None:
        return Path(given)
    folder = frame.attrs.get("history_dir")
    if folder is None:
        raise ValueError("this frame does not say which history it came from: pass history_dir=")
    return Path(folder)
