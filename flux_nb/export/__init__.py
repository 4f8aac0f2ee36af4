"""Experiments that leave the notebook: bundles (zip), one-page HTML reports, and MLflow runs.

``export_bundle``/``open_bundle`` move selected history rows with their images between machines,
``write_report`` makes one self-contained HTML page, ``to_mlflow`` (extra ``mlflow``) logs runs.
"""
