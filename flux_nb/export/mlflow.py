"""History rows as MLflow runs: one parent run for the experiment, one child run per row.

Each child run carries the request as params, the credits and duration as metrics, the record's
id, status and task as tags, and its image as an artifact: the history's bytes with the record's
provenance written in (pixels untouched). The judgement travels as searchable tags: ``flux_nb.rating``
(also the ``rating`` metric), ``flux_nb.favourite``, ``flux_nb.note``, ``flux_nb.review_tags``,
``flux_nb.experiment``, ``flux_nb.cell_tag`` and ``flux_nb.cached``, e.g. ``mlflow.search_runs(
filter_string="tags.`flux_nb.favourite` = 'true'")``. The parent run holds the totals and a table of its rows.

Logging is by record: a row whose record id is already a run of the MLflow experiment is not logged
again (its review tags are brought up to date instead), so logging a re-run notebook adds only what's new.

Needs the ``mlflow`` extra (``pip install 'flux-nb[mlflow]'``, which installs ``mlflow-skinny``).
mlflow-skinny talks to a tracking server (``http://...``) or a local file store; MLflow keeps its file
store behind ``MLFLOW_ALLOW_FILE_STORE=true``, and a ``sqlite:///`` store needs the full ``mlflow`` package.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from flux_nb.errors import ValidationError
from flux_nb.history.files import image_file
from flux_nb.history.records import is_billed_label
from flux_nb.metadata.provenance import REQUEST_FIELDS, embed_provenance, version

PARAM_MAX = 6000  # MLflow's limit on a param value
TAG_MAX = 5000  # of a note kept in a tag (MLflow keeps 8,000 characters)
RECORD_TAG = "flux_nb.record_id"
FINAL_FAILED = {"failed", "moderated", "unknown", "cancelled"}


def _mlflow() -> Any:
    try:
        import mlflow
    except ImportError:
        raise ValidationError("mlflow is not installed; pip install 'flux-nb[mlflow]' (mlflow-skinny)") from None
    return mlflow


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and value != value)


def _millis(value: Any) -> int | None:
    if _missing(value):
        return None
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return int(float(value) * 1000)


def _file_store(uri: str) -> bool:
    return uri.startswith("file:") or ("://" not in uri and not uri.startswith(("databricks", "sqlite:", "uc:")))


def _client(tracking_uri: str | None) -> Any:
    mlflow = _mlflow()
    uri = tracking_uri or mlflow.get_tracking_uri()
    if _file_store(uri) and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true"):
        raise ValidationError(
            f"tracking_uri {uri!r} is an MLflow file store, which MLflow only opens with "
            "MLFLOW_ALLOW_FILE_STORE=true; set it, or give a tracking server URL"
        )
    return mlflow.MlflowClient(tracking_uri=uri)


def _credits(row: Mapping[str, Any]) -> float | None:
    for name in ("cost", "estimated_cost"):
        if not _missing(row.get(name)):
            return float(row[name])
    return None


def _params(row: Mapping[str, Any]) -> dict[str, str]:
    params = {name: row.get(name) for name in (*REQUEST_FIELDS, "backend", "record_id")}
    hashes = row.get("input_hashes")
    if hashes is not None and len(hashes):
        params["input_hashes"] = ",".join(hashes)
    return {k: str(v)[:PARAM_MAX] for k, v in params.items() if not _missing(v)}


def _metrics(row: Mapping[str, Any]) -> dict[str, float]:
    metrics: dict[str, Any] = {"credits": _credits(row), "duration_s": row.get("duration_s")}
    metrics["billed"] = 1.0 if is_billed_label(str(row.get("backend"))) and row.get("status") == "ready" else 0.0
    return {k: float(v) for k, v in metrics.items() if not _missing(v)}


def _flag(value: Any) -> str:
    return "true" if not _missing(value) and bool(value) else "false"


def review_tags(row: Mapping[str, Any]) -> dict[str, str]:
    """The row's judgement and where it was made, as MLflow tags (absent values left out)."""
    values = {
        "flux_nb.rating": None if _missing(row.get("rating")) else str(int(row["rating"])),
        "flux_nb.favourite": _flag(row.get("favourite")),
        "flux_nb.note": None if _missing(row.get("note")) else str(row["note"])[:TAG_MAX],
        "flux_nb.review_tags": None if _missing(row.get("tags")) else str(row["tags"]),
        "flux_nb.experiment": None if _missing(row.get("experiment")) else str(row["experiment"]),
        "flux_nb.cell_tag": None if _missing(row.get("tag")) else str(row["tag"]),
        "flux_nb.cached": _flag(row.get("cached")),
    }
    return {k: v for k, v in values.items() if v}


def logged_runs(client: Any, experiment_id: str) -> dict[str, Any]:
    """The runs of an MLflow experiment that log a history record, by record id."""
    runs: dict[str, Any] = {}
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string=f"tags.`{RECORD_TAG}` LIKE '%'", max_results=1000, page_token=token
        )
        runs.update((run.data.tags[RECORD_TAG], run) for run in page)
        token = page.token
        if not token:
            return runs


def _update_review(client: Any, run: Any, row: Mapping[str, Any]) -> bool:
    """Bring an already logged run's review tags up to date; True when one changed."""
    from mlflow.entities import Metric, RunTag

    wanted = review_tags(row)
    stale = [k for k in run.data.tags if k in REVIEW_TAG_NAMES and k not in wanted]
    changed = {k: v for k, v in wanted.items() if run.data.tags.get(k) != v}
    for name in stale:
        client.delete_tag(run.info.run_id, name)
    if changed:
        metrics = [Metric("rating", float(wanted.get("flux_nb.rating", "nan")), int(time.time() * 1000), 1)]
        client.log_batch(
            run.info.run_id,
            tags=[RunTag(k, v) for k, v in changed.items()],
            metrics=metrics if "flux_nb.rating" in changed else [],
        )
    return bool(changed or stale)


REVIEW_TAG_NAMES = ("flux_nb.rating", "flux_nb.note", "flux_nb.review_tags")


def _image(row: Mapping[str, Any], root: Path) -> Path | None:
    value = row.get("image_path")
    if _missing(value) or not value or row.get("status") != "ready":
        return None
    path = Path(str(value))
    path = path if path.is_absolute() else image_file(root, str(value))
    return path if path.is_file() else None


def _log_row(client: Any, experiment_id: str, parent_id: str, row: Mapping[str, Any], root: Path, scratch: Path) -> str:
    """One child run for one row; returns its id."""
    from mlflow.entities import Metric, Param

    record_id = str(row.get("record_id"))
    tags = {"mlflow.parentRunId": parent_id, RECORD_TAG: record_id, "flux_nb.status": str(row.get("status"))}
    tags.update(review_tags(row))
    if not _missing(row.get("task_id")):
        tags["flux_nb.task_id"] = str(row["task_id"])
    run = client.create_run(experiment_id, start_time=_millis(row.get("created_at")), tags=tags, run_name=record_id)
    run_id = run.info.run_id
    stamp = _millis(row.get("finished_at")) or run.info.start_time
    values = _metrics(row)
    if not _missing(row.get("rating")):
        values["rating"] = float(row["rating"])
    metrics = [Metric(k, v, stamp, 0) for k, v in values.items()]
    client.log_batch(run_id, metrics=metrics, params=[Param(k, v) for k, v in _params(row).items()])
    image = _image(row, root)
    if image is not None:
        copy = scratch / f"{record_id}{image.suffix}"
        copy.write_bytes(embed_provenance(image.read_bytes(), row))
        client.log_artifact(run_id, str(copy), artifact_path="image")
    status = "FAILED" if row.get("status") in FINAL_FAILED else "FINISHED"
    client.set_terminated(run_id, status=status, end_time=_millis(row.get("finished_at")))
    return run_id


def _table(rows: list[dict[str, Any]], run_ids: list[str]) -> dict[str, list[Any]]:
    """The parent's table: one line per row, with its child run's id."""
    columns = ("record_id", "prompt", "model", "seed", "width", "height", "status", "backend")
    table: dict[str, list[Any]] = {c: [None if _missing(r.get(c)) else r.get(c) for r in rows] for c in columns}
    table["seed"] = [None if s is None else int(s) for s in table["seed"]]
    table["width"] = [None if s is None else int(s) for s in table["width"]]
    table["height"] = [None if s is None else int(s) for s in table["height"]]
    table["credits"] = [_credits(r) for r in rows]
    table["run_id"] = run_ids
    return table


def to_mlflow(
    frame: pd.DataFrame,
    history_dir: str | os.PathLike[str],
    *,
    experiment: str = "flux_nb",
    tracking_uri: str | None = None,
    run_name: str | None = None,
) -> str:
    """Log the frame's rows to MLflow: a parent run with one child run per row; returns the parent's id.

    Rows already logged to this MLflow experiment (by record id) are not logged again: their review
    tags are updated. When every row was logged before, no run is made and the id of the parent that
    holds the first row is returned.

    >>> flux.history().tail(20).flux.to_mlflow(experiment="fox sweep")  # doctest: +SKIP
    """
    if not isinstance(frame, pd.DataFrame) or "record_id" not in frame.columns:
        raise ValidationError("to_mlflow takes a history DataFrame (with a record_id column)")
    if frame.empty:
        raise ValidationError("the frame has no rows to log; select some rows of the history first")
    client = _client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    root = Path(history_dir).expanduser().resolve()
    earlier = logged_runs(client, experiment_id)
    rows, seen = [], set(earlier)
    for row in frame.to_dict("records"):
        record_id = str(row.get("record_id"))
        if record_id in earlier:
            _update_review(client, earlier[record_id], row)
        elif record_id not in seen:
            seen.add(record_id)
            rows.append(row)
    if not rows:
        first = earlier[str(frame["record_id"].iloc[0])]
        return str(first.data.tags.get("mlflow.parentRunId", first.info.run_id))
    parent = client.create_run(experiment_id, tags={"flux_nb.version": version()}, run_name=run_name).info.run_id
    with tempfile.TemporaryDirectory(prefix="flux-mlflow-") as scratch:
        run_ids = [_log_row(client, experiment_id, parent, row, root, Path(scratch)) for row in rows]
    ready = [r for r in rows if r.get("status") == "ready"]
    billed = sum(_credits(r) or 0.0 for r in ready if is_billed_label(str(r.get("backend"))))
    unbilled = sum(_credits(r) or 0.0 for r in ready if not is_billed_label(str(r.get("backend"))))
    from mlflow.entities import Metric, Param

    stamp = client.get_run(parent).info.start_time
    totals = {"rows": len(rows), "ready": len(ready), "credits_billed": billed, "credits_not_billed": unbilled}
    client.log_batch(
        parent,
        metrics=[Metric(k, float(v), stamp, 0) for k, v in totals.items()],
        params=[Param("history_rows", str(len(rows))), Param("flux_nb", version())],
    )
    client.log_table(parent, data=_table(rows, run_ids), artifact_file="records.json")
    client.set_terminated(parent, status="FINISHED")
    return str(parent)
