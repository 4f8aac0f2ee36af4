"""History rows logged to MLflow, read back through MLflow's own API from a local file store.

Skipped with the reason when mlflow is not installed (the ``mlflow`` extra; CI installs it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flux_nb.errors import ValidationError
from flux_nb.export.mlflow import to_mlflow
from flux_nb.history.store import HistoryStore
from flux_nb.metadata import pixel_hash, read_provenance
from tests.experiments import make_experiment

mlflow = pytest.importorskip("mlflow", reason="mlflow is not installed (pip install 'flux-nb[mlflow]')")


@pytest.fixture
def tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # what mlflow.search_runs reads
    return uri


@pytest.fixture
def store(tmp_path: Path) -> HistoryStore:
    return make_experiment(tmp_path / "history", count=6, failed=1)


def test_each_row_becomes_a_child_run_with_params_metrics_and_its_image(
    store: HistoryStore, tracking: str, tmp_path: Path
) -> None:
    frame = store.to_frame()
    parent = to_mlflow(frame, store.root, experiment="fox sweep", tracking_uri=tracking, run_name="sweep-1")
    runs = mlflow.search_runs(experiment_names=["fox sweep"], output_format="pandas")
    assert len(runs) == 7
    children = runs[runs["tags.mlflow.parentRunId"] == parent].set_index("tags.flux_nb.record_id")
    assert sorted(children.index) == sorted(frame["record_id"])
    for row in frame.to_dict("records"):
        child = children.loc[row["record_id"]]
        assert child["params.prompt"] == row["prompt"] and child["params.seed"] == str(row["seed"])
        assert child["params.width"] == str(row["width"]) and child["params.backend"] == row["backend"]
        assert child["metrics.credits"] == pytest.approx(row["cost"])
        assert child["metrics.billed"] == (1.0 if row["backend"] == "bfl" and row["status"] == "ready" else 0.0)
        assert child["status"] == ("FINISHED" if row["status"] == "ready" else "FAILED")
    with_reference = frame[frame["input_hashes"].map(len) > 0].iloc[0]
    assert children.loc[with_reference["record_id"], "params.input_hashes"] == with_reference["input_hashes"][0]

    client = mlflow.MlflowClient(tracking_uri=tracking)
    ready = frame[frame["status"] == "ready"].iloc[0]
    run_id = children.loc[ready["record_id"], "run_id"]
    listed = [a.path for a in client.list_artifacts(run_id, "image")]
    assert listed == [f"image/{ready['record_id']}.png"]
    local = Path(client.download_artifacts(run_id, listed[0], str(tmp_path / "down")))
    assert pixel_hash(local) == pixel_hash(Path(ready["image_path"]))
    assert read_provenance(local)["record_id"] == ready["record_id"]  # type: ignore[index]
    failed = frame[frame["status"] == "failed"].iloc[0]
    assert client.list_artifacts(children.loc[failed["record_id"], "run_id"]) == []


def test_the_parent_run_holds_totals_and_a_table_of_the_rows(
    store: HistoryStore, tracking: str, tmp_path: Path
) -> None:
    frame = store.to_frame()
    parent = to_mlflow(frame, store.root, experiment="totals", tracking_uri=tracking)
    client = mlflow.MlflowClient(tracking_uri=tracking)
    run = client.get_run(parent)
    assert run.data.metrics == {
        "rows": 6.0,
        "ready": 5.0,
        "credits_billed": pytest.approx(4.2),
        "credits_not_billed": 0.0,
    }
    assert run.data.params["history_rows"] == "6" and run.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(parent)] == ["records.json"]
    table = json.loads(Path(client.download_artifacts(parent, "records.json", str(tmp_path))).read_text())
    records = [dict(zip(table["columns"], line, strict=True)) for line in table["data"]]
    assert [r["record_id"] for r in records] == list(frame["record_id"])
    assert [r["seed"] for r in records] == [int(s) for s in frame["seed"]]
    children = mlflow.search_runs(experiment_names=["totals"], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(r["run_id"] for r in records) == sorted(children["run_id"])


def test_logging_twice_to_one_experiment_logs_nothing_new(store: HistoryStore, tracking: str) -> None:
    frame = store.to_frame().iloc[:2]
    first = to_mlflow(frame, store.root, experiment="again", tracking_uri=tracking)
    second = to_mlflow(frame, store.root, experiment="again", tracking_uri=tracking)
    runs = mlflow.search_runs(experiment_names=["again"])
    assert first == second and len(runs) == 3


def test_bad_input_and_a_locked_file_store_get_clear_errors(
    store: HistoryStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = (tmp_path / "locked").as_uri()
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(ValidationError, match="MLFLOW_ALLOW_FILE_STORE=true"):
        to_mlflow(store.to_frame(), store.root, tracking_uri=uri)
    assert not (tmp_path / "locked").exists()
    with pytest.raises(ValidationError, match="no rows to log"):
        to_mlflow(store.to_frame().iloc[:0], store.root, tracking_uri=uri)
    with pytest.raises(ValidationError, match="takes a history DataFrame"):
        to_mlflow(store.to_frame().drop(columns="record_id"), store.root, tracking_uri=uri)
