"""Experiments keep their identity: every image a call showed is a row of its experiment (cache hits and
duplicates are *uses*, costing 0), names and filters, reviews, bundles opened elsewhere, reports.

Everything runs through the Python API against a real local server on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from flux_nb.core.events import Finished
from flux_nb.core.results import SweepResult
from flux_nb.errors import ValidationError
from flux_nb.server import EmbeddedServer
from flux_nb.server.fault_injection import Fault, FaultPlan
from flux_nb.session import Flux

ROOT = Path(__file__).resolve().parent.parent
SIZE = {"width": 64, "height": 64}


class Recorder:
    """A batch observer keeping every Finished event, in order."""

    def __init__(self) -> None:
        self.ended: list[Finished] = []

    def started(self, batch: Any) -> None:
        pass

    def progress(self, event: Any) -> None:
        pass

    def finished(self, event: Finished) -> None:
        self.ended.append(event)

    def tick(self) -> None:
        pass


@pytest.mark.slow
def test_cache_hits_from_an_earlier_study_join_the_model_comparison(flux: Flux, server: EmbeddedServer) -> None:
    flux.sweep("a harbour", seed=[1, 2], model="flux-2-klein-4b", tag="earlier", **SIZE)
    assert server.stats()["submits"] == 2
    # As %%flux --seed 1,2 --model flux-2-klein-4b,flux-2-pro --tag models: the klein images are cache hits.
    shown = flux.sweep("a harbour", seed=[1, 2], model=["flux-2-klein-4b", "flux-2-pro"], tag="models", **SIZE)
    assert server.stats()["submits"] == 4
    frame = flux.history(tag="models")
    assert len(frame) == 4 and set(frame["record_id"]) == {r.record_id for r in shown}
    klein = frame[frame["model"] == "flux-2-klein-4b"]
    assert klein["cached"].all() and (klein["cost"] == 0).all() and klein["cached_from"].notna().all()
    assert not frame[frame["model"] == "flux-2-pro"]["cached"].any()
    grid = frame.flux.grid(x="model", y="seed")
    assert len(grid.cells) == 4 and None not in grid.cells.values()  # 2x2: what the call showed
    assert set(grid.cells.values()) == set(frame["record_id"])
    # The uses cost nothing: the tag's bill is the two pro images.
    assert flux.history(tag="earlier")["cached"].tolist() == [False, False]


def test_duplicates_in_one_batch_are_one_request_and_one_row_per_index(flux: Flux, server: EmbeddedServer) -> None:
    batch = flux.batch("a pot", seed=[5, 5, 5], **SIZE)
    recorder = Recorder()
    results = flux.run(batch, observer=recorder)
    assert server.stats()["submits"] == 1
    assert len({r.record_id for r in results}) == 3 and [r.cached for r in results] == [False, True, True]
    assert [r.cost for r in results][1:] == [0.0, 0.0] and len({r.path for r in results}) == 1
    assert sorted((e.index, e.result.record_id) for e in recorder.ended) == [
        (i, r.record_id) for i, r in enumerate(results)
    ]
    frame = flux.history().set_index("record_id")
    assert len(frame) == 3
    assert frame.loc[[r.record_id for r in results[1:]], "cached_from"].tolist() == [results[0].record_id] * 2
    assert flux.cost()["requests"].sum() == 1


def test_a_failed_shared_request_is_not_a_use(server_factory: Callable[..., EmbeddedServer], history_dir: Path) -> None:
    server = server_factory(faults=FaultPlan(content_moderated=Fault(on=frozenset({1}))))
    flux = Flux(endpoint=server.url, history_dir=history_dir)
    try:
        results = flux.run(flux.batch("a moderated pot", seed=[3, 3], **SIZE))
    finally:
        flux.close()
    assert [r.status for r in results] == ["moderated"] * 2 and results[0].record_id == results[1].record_id
    assert len(flux.history()) == 1


def test_the_experiment_trait_and_the_block_name_every_row(server: EmbeddedServer, history_dir: Path) -> None:
    flux = Flux(endpoint=server.url, history_dir=history_dir, experiment="baseline")
    try:
        first = flux.generate("a lamp", seed=1, **SIZE)
        with flux.experimenting("study-3") as same:
            assert same is flux and flux.experiment == "study-3"
            inside = flux.generate("a lamp", seed=2, **SIZE)
            hit = flux.generate("a lamp", seed=1, **SIZE)  # cached: a use recorded in study-3
        assert flux.experiment == "baseline"
        with pytest.raises(RuntimeError), flux.experimenting("broken"):
            raise RuntimeError("the block failed")
        assert flux.experiment == "baseline"
        with pytest.raises(ValidationError, match="not text"), flux.experimenting(3):  # type: ignore[arg-type]
            pass
        study = flux.history(experiment="study-3")
        assert study["record_id"].tolist() == [inside.record_id, hit.record_id]
        assert study["cached"].tolist() == [False, True]
        assert flux.history(experiment="baseline")["record_id"].tolist() == [first.record_id]
        cost = flux.cost(experiment="study-3")
        assert cost["requests"].sum() == 1 and cost["credits"].sum() == pytest.approx(inside.cost)
        assert flux.cost()["requests"].sum() == 2
    finally:
        flux.close()


def test_history_filters_combine_and_run_in_sql(flux: Flux) -> None:
    with flux.experimenting("e1"):
        flux.generate("a", seed=1, tag="t1", **SIZE)
        flux.generate("b", seed=1, tag="t2", **SIZE)
    flux.generate("c", seed=1, tag="t1", **SIZE)
    assert flux.history(experiment="e1", tag="t1")["prompt"].tolist() == ["a"]
    assert flux.history(tag="t1")["prompt"].tolist() == ["a", "c"]
    assert flux.history(notebook="elsewhere.ipynb").empty
    assert flux.history(tag="t1").attrs["history_dir"] == str(flux.history_dir)


def test_review_through_the_api_lands_on_the_image_and_notifies(flux: Flux) -> None:
    calls: list[int] = []
    flux.add_listener(lambda: calls.append(1))
    sweep = flux.sweep("a kite", seed=[1, 2, 3], **SIZE)
    again = flux.generate("a kite", seed=1, **SIZE)  # a use of sweep[0]
    calls.clear()
    assert flux.rate(again, 5) == [sweep[0].record_id]  # a use's review is its original's
    assert flux.rate(sweep[1:], 2) == [r.record_id for r in sweep[1:]]
    assert flux.note(sweep[2].record_id, "too dark") == [sweep[2].record_id]
    assert flux.tag([sweep[0], sweep[1]], add=["keep", "cover"]) == [sweep[0].record_id, sweep[1].record_id]
    flux.tag(sweep[1], remove="cover")
    frame = flux.history()
    flux.favourite(frame[frame["rating"] == 5])
    assert len(calls) == 6
    frame = flux.history().set_index("record_id")
    assert frame.loc[again.record_id, "rating"] == 5 and frame.loc[sweep[0].record_id, "rating"] == 5
    assert frame.loc[[r.record_id for r in sweep], "rating"].tolist() == [5, 2, 2]
    assert frame.loc[sweep[2].record_id, "note"] == "too dark"
    assert frame.loc[sweep[0].record_id, "tags"] == "cover,keep" and frame.loc[sweep[1].record_id, "tags"] == "keep"
    shown = [again.record_id, *(r.record_id for r in sweep)]
    assert frame.loc[shown, "favourite"].tolist() == [True, True, False, False]
    flux.favourite(SweepResult([sweep[0]]), on=False)
    assert not flux.history()["favourite"].any()
    with pytest.raises(ValidationError, match="0 to 5"):
        flux.rate(sweep[0], 6)
    with pytest.raises(ValidationError, match="cannot review a float"):
        flux.rate(1.5, 3)
    with pytest.raises(ValidationError, match="no record with id nope"):
        flux.note(["nope"], "x")
    with pytest.raises(ValidationError, match="no record_id column"):
        flux.rate(pd.DataFrame({"seed": [1]}), 3)


def _study(flux: Flux) -> SweepResult:
    with flux.experimenting("handover"):
        sweep = flux.sweep(["a fox", "a hare"], seed=[1, 2], **SIZE)
    flux.generate("not in the study", seed=9, **SIZE)
    flux.rate(sweep[0], 4)
    flux.note(sweep[3], "the best light")
    flux.tag(sweep[1], add="keep")
    return sweep


def test_an_exported_experiment_opens_in_a_fresh_folder_with_its_reviews(flux: Flux, tmp_path: Path) -> None:
    sweep = _study(flux)
    bundle = flux.export(experiment="handover", path=tmp_path / "out" / "handover.zip")
    with zipfile.ZipFile(bundle) as archive:
        names = set(archive.namelist())
    assert {"records.parquet", "records.csv", "history.sqlite", "manifest.json"} <= names
    assert len([n for n in names if n.startswith("images/")]) == 4
    opened = flux.open_bundle(bundle)
    try:
        assert Path(opened.history_dir) == tmp_path / "out" / "handover"
        assert opened.endpoint == flux.endpoint and opened.experiment == ""
        frame = opened.history().set_index("record_id")
        assert sorted(frame.index) == sorted(r.record_id for r in sweep)
        assert (
            frame.loc[sweep[0].record_id, "rating"] == 4 and frame.loc[sweep[3].record_id, "note"] == "the best light"
        )
        assert frame.loc[sweep[1].record_id, "tags"] == "keep"
        assert all(Path(p).is_file() and Path(p).is_relative_to(tmp_path / "out") for p in frame["image_path"])
        assert opened.cost()["requests"].sum() == 4
    finally:
        opened.close()
    with pytest.raises(ValidationError, match="not empty"):
        flux.open_bundle(bundle)  # the default folder is taken now: say where instead
    second = flux.open_bundle(bundle, into=tmp_path / "second")
    second.close()
    assert len(second.history()) == 4


@pytest.mark.slow
def test_a_bundle_rebuilds_a_byte_identical_grid_in_a_fresh_process(flux: Flux, tmp_path: Path) -> None:
    _study(flux)
    study = flux.history(experiment="handover")
    here = study.flux.grid(x="seed", y="prompt").save(tmp_path / "here.png")
    bundle = flux.export(study, tmp_path / "study.zip")  # a frame and a path
    code = (
        "import sys\nfrom flux_nb import Flux\n"
        "session = Flux().open_bundle(sys.argv[1], into=sys.argv[2])\n"
        "session.history().flux.grid(x='seed', y='prompt').save(sys.argv[3])\n"
    )
    there = tmp_path / "there.png"
    done = subprocess.run(
        [sys.executable, "-c", code, str(bundle), str(tmp_path / "elsewhere"), str(there)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert hashlib.sha256(there.read_bytes()).hexdigest() == hashlib.sha256(here.read_bytes()).hexdigest()


def test_export_and_report_take_a_frame_or_filters_and_say_what_is_missing(flux: Flux, tmp_path: Path) -> None:
    _study(flux)
    page = flux.report(tmp_path / "study.html", experiment="handover", title="Fox and hare")
    text = page.read_text()
    assert "<title>Fox and hare</title>" in text and "the best light" in text and text.count("data:image/") >= 4
    assert "http://" not in text.replace("http://www.w3.org", "")  # self-contained
    with pytest.raises(ValidationError, match="frame or filters, not both"):
        flux.export(flux.history(), tmp_path / "x.zip", experiment="handover")
    with pytest.raises(ValidationError, match="give the bundle file"):
        flux.export(experiment="handover")
    with pytest.raises(ValidationError, match="no rows to export"):
        flux.export(experiment="no such study", path=tmp_path / "empty.zip")
    with pytest.raises(ValidationError, match="cannot filter on 'colour'"):
        flux.export({"colour": "red"}, tmp_path / "x.zip")
    assert not (tmp_path / "x.zip").exists() and not (tmp_path / "empty.zip").exists()
