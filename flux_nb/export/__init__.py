"""Experiments that leave the notebook: bundles (zip), one-page HTML reports, MLflow runs, grids with provenance.

``export_bundle``/``open_bundle`` move selected history rows with their images between machines,
``write_report`` makes one self-contained HTML page, ``to_mlflow`` (extra ``mlflow``) logs runs and
``save_grid`` saves a grid whose file names every cell's record and request.
"""

from flux_nb.export.bundle import export_bundle, open_bundle
from flux_nb.export.grids import grid_cells, save_grid
from flux_nb.export.mlflow import to_mlflow
from flux_nb.export.report import write_report

__all__ = ["export_bundle", "grid_cells", "open_bundle", "save_grid", "to_mlflow", "write_report"]
