"""Trackers carry the judgement: MLflow runs with the review as searchable tags, logged once per record;
a Weights & Biases table with the same fields, written offline (``WANDB_MODE=offline``) into tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import flux_nb.accessor  # noqa: F401  (registers frame.flux)
from flux_nb.export.mlflow import to_mlflow
from flux_nb.history.store import HistoryStore
from tests.experiments import make_experiment

mlflow = pytest.importorskip("mlflow", reason="mlflow is not installed (pip install 'flux-nb[mlflow]')")


@pytest.fixture
def tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture
def store(tmp_path: Path) -> HistoryStore:
    """Six records in experiment 'fox', one of them also shown again as a use (a cache hit); reviews on two."""
    store = make_experiment(tmp_path / "history", count=6, failed=1)
    first, second = list(store.to_frame()["record_id"])[:2]
    store.record_use(first, notebook="fox.ipynb", tag="cell-3", experiment="fox")
    store.rate(first, 4)
    store.note(first, "sharp, keep")
    store.favourite(second)
    store.tag(second, add=["best", "dusk"])
    return store


def _children(experiment: str) -> object:
    runs = mlflow.search_runs(experiment_names=[experiment], filter_string="tags.`flux_nb.record_id` LIKE '%'")
    return runs.set_index("tags.flux_nb.record_id")


def test_runs_carry_the_review_and_where_it_was_made_as_searchable_tags(store: HistoryStore, tracking: str) -> None:
    frame = store.to_frame()
    to_mlflow(frame, store.root, experiment="judged", tracking_uri=tracking)
    runs = _children("judged")
    first, second = frame["record_id"].iloc[0], frame["record_id"].iloc[1]
    use = frame[frame["cached"]].iloc[0]["record_id"]
    assert runs.loc[first, "tags.flux_nb.rating"] == "4" and runs.loc[first, "metrics.rating"] == 4.0
    assert runs.loc[first, "tags.flux_nb.note"] == "sharp, keep"
    assert runs.loc[second, "tags.flux_nb.favourite"] == "true" and runs.loc[first, "tags.flux_nb.favourite"] == "false"
    assert runs.loc[second, "tags.flux_nb.review_tags"] == "best,dusk"
    assert runs.loc[first, "tags.flux_nb.cell_tag"] == "sweep-1" and runs.loc[use, "tags.flux_nb.cell_tag"] == "cell-3"
    assert runs.loc[use, "tags.flux_nb.experiment"] == "fox" and runs.loc[use, "tags.flux_nb.cached"] == "true"
    assert runs.loc[first, "tags.flux_nb.cached"] == "false"
    # a use in another experiment shows that experiment's review of the image: none here
    assert pd.isna(runs.loc[use].get("tags.flux_nb.rating")) and pd.isna(runs.loc[use, "metrics.rating"])
    favourites = mlflow.search_runs(experiment_names=["judged"], filter_string="tags.`flux_nb.favourite` = 'true'")
    assert list(favourites["tags.flux_nb.record_id"]) == [second]
    good = mlflow.search_runs(experiment_names=["judged"], filter_string="metrics.rating >= 4")
    assert list(good["tags.flux_nb.record_id"]) == [first]


def test_logging_again_logs_only_new_rows_and_brings_reviews_up_to_date(store: HistoryStore, tracking: str) -> None:
    frame = store.to_frame()
    first_parent = to_mlflow(frame.iloc[:4], store.root, experiment="twice", tracking_uri=tracking)
    assert len(mlflow.search_runs(experiment_names=["twice"])) == 5
    record = frame["record_id"].iloc[0]
    store.rate(record, 2)
    store.note(record, None)
    second_parent = to_mlflow(store.to_frame(), store.root, experiment="twice", tracking_uri=tracking)
    assert second_parent != first_parent
    runs = mlflow.search_runs(experiment_names=["twice"])
    assert len(runs) == 1 + 4 + 1 + 3  # a second parent holds only the three rows not logged before
    children = _children("twice")
    assert sorted(children.index) == sorted(frame["record_id"]) and children.index.is_unique
    assert children.loc[record, "tags.flux_nb.rating"] == "2" and children.loc[record, "metrics.rating"] == 2.0
    assert "tags.flux_nb.note" not in children.columns or children["tags.flux_nb.note"].isna().all()
    again = to_mlflow(store.to_frame(), store.root, experiment="twice", tracking_uri=tracking)
    assert again == first_parent and len(mlflow.search_runs(experiment_names=["twice"])) == 9
    other = to_mlflow(frame.iloc[:1], store.root, experiment="elsewhere", tracking_uri=tracking)
    assert other not in (first_parent, second_parent)  # another MLflow experiment logs it afresh


def test_a_wandb_table_holds_images_and_the_same_fields_offline(
    store: HistoryStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wandb = pytest.importorskip("wandb", reason="wandb is not installed (pip install 'flux-nb[wandb]')")
    monkeypatch.setenv("WANDB_MODE", "offline")
    for name, folder in {"DIR": "", "DATA_DIR": "data", "CACHE_DIR": "cache", "CONFIG_DIR": "config"}.items():
        monkeypatch.setenv(f"WANDB_{name}", str(tmp_path / folder))
    monkeypatch.setenv("WANDB_SILENT", "true")
    frame = store.to_frame()
    frame.attrs["history_dir"] = str(store.root)
    table = frame.flux.to_wandb(project="fox")
    assert isinstance(table, wandb.Table) and len(table.data) == len(frame)
    rows = [dict(zip(table.columns, line, strict=True)) for line in table.data]
    by_id = {r["record_id"]: r for r in rows}
    first, second = frame["record_id"].iloc[0], frame["record_id"].iloc[1]
    assert (by_id[first]["rating"], by_id[first]["note"], by_id[first]["favourite"]) == (4, "sharp, keep", False)
    assert (by_id[second]["favourite"], by_id[second]["review_tags"]) == (True, "best,dusk")
    assert sum(r["cached"] for r in rows) == 1 and {r["experiment"] for r in rows} == {None, "fox"}
    assert sum(r["image"] is not None for r in rows) == (frame["status"] == "ready").sum()
    assert by_id[first]["credits"] == pytest.approx(1.4) and by_id[first]["seed"] == int(frame["seed"].iloc[0])
    written = list(tmp_path.glob("wandb/offline-run-*/files/media/table/flux_nb_*.table.json"))
    assert len(written) == 1
    saved = json.loads(written[0].read_text())
    assert saved["columns"] == list(table.columns) and len(saved["data"]) == len(frame)
    images = [line[1] for line in saved["data"] if line[1] is not None]
    assert len(images) == sum(r["image"] is not None for r in rows)
    staged = [p for p in (tmp_path / "data").rglob("*") if p.is_file()]  # the table's images, kept with it
    assert len(staged) == len(images) + 1
