"""Re-running changes nothing: a cache hit of an image this notebook already shows, in the same experiment,
adds no row, so the history, exports and reports of a re-run notebook are those of its first run. A grid
that still meets two rows in one cell says so.

Sessions and kernels run against a real local server on 127.0.0.1.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import pandas as pd
from IPython.utils.capture import capture_output

from flux_nb.grids import grid
from flux_nb.server import EmbeddedServer
from flux_nb.session import Flux

SIZE = {"width": 64, "height": 64}


def _study(flux: Flux) -> list[str]:
    """A small notebook's calls: a sweep, a single image, and a sweep showing one request twice."""
    with flux.experimenting("study"):
        sweep = flux.sweep(["a fox", "a hare"], seed=[1, 2], **SIZE)
        single = flux.generate("a heron", seed=3, **SIZE)
        twice = flux.sweep("an owl", seed=[4, 4], **SIZE)
    return [*(r.record_id for r in sweep), single.record_id, *(r.record_id for r in twice)]


def _rows(path: Path) -> int:
    with zipfile.ZipFile(path) as archive:
        return archive.read("records.csv").decode().count("\n") - 1


def test_re_running_a_notebook_leaves_its_history_exports_and_report_as_they_were(
    flux: Flux, server: EmbeddedServer, tmp_path: Path
) -> None:
    first = _study(flux)
    before = flux.history()
    token = flux.store.change_token()
    exported = _rows(flux.export(experiment="study", path=tmp_path / "first.zip"))
    report = flux.report(experiment="study", path=tmp_path / "first.html").read_text()
    submits = server.stats()["submits"]

    again = _study(flux)

    assert again == first  # every call shows the rows it showed before
    assert len(set(first)) == 7 and len(before) == 7
    pd.testing.assert_frame_equal(flux.history(), before)
    assert flux.store.change_token() == token  # not a single write
    assert server.stats()["submits"] == submits
    assert _rows(flux.export(experiment="study", path=tmp_path / "again.zip")) == exported == 7
    stamp = re.compile(r"written [^<]* by flux_nb")
    again_report = flux.report(experiment="study", path=tmp_path / "again.html").read_text()
    assert stamp.sub("", again_report) == stamp.sub("", report)


def test_a_hit_shown_under_another_experiment_tag_or_place_is_a_row_of_its_own(flux: Flux) -> None:
    with flux.experimenting("a"):
        original = flux.generate("a kite", seed=1, **SIZE)
        assert flux.generate("a kite", seed=1, **SIZE).record_id == original.record_id
        tagged = flux.generate("a kite", seed=1, tag="keep", **SIZE)
        swept = flux.sweep("a kite", seed=[1, 2], **SIZE)[0]  # a grid's cell: labelled by its seed
    with flux.experimenting("b"):
        elsewhere = flux.generate("a kite", seed=1, **SIZE)
    ids = [original.record_id, tagged.record_id, swept.record_id, elsewhere.record_id]
    assert len(set(ids)) == 4 and tagged.cached and swept.cached and elsewhere.cached
    assert set(ids[:3]) < set(flux.history(experiment="a")["record_id"])  # and the sweep's seed 2
    assert len(flux.history(experiment="a")) == 4 and len(flux.history(experiment="b")) == 1


def test_a_re_run_flux_cell_adds_no_row(ipython: Any) -> None:
    cell = "%%flux --seed 1:2 --size 64x64 -o pics\na boat\n---\na car"
    with capture_output():
        assert ipython.run_cell(cell).success
    before = ipython.user_ns["flux"].history()
    first = [r.record_id for r in ipython.user_ns["pics"]]
    with capture_output():
        assert ipython.run_cell(cell).success
    assert [r.record_id for r in ipython.user_ns["pics"]] == first
    assert all(r.cached for r in ipython.user_ns["pics"])
    pd.testing.assert_frame_equal(ipython.user_ns["flux"].history(), before)


def test_a_grid_cell_that_meets_two_rows_says_so(flux: Flux) -> None:
    flux.generate("a kite", seed=1, tag="first", **SIZE)
    flux.generate("a kite", seed=1, tag="second", **SIZE)  # another tag: a row of its own, one cell
    flux.generate("a kite", seed=2, **SIZE)
    page = grid(flux.history(), x="seed", y="prompt", label="tag")
    assert page.cell_text[(1, "a kite")] == "tag second · 2 rows: newest shown"  # type: ignore[union-attr]
    assert page.cell_text[(2, "a kite")] == "tag —"  # type: ignore[union-attr]
