"""Batches are first-class: every row records its batch (one %%flux cell, one sweep/generate call, one panel
click) and that batch's axes; the report draws one grid per batch on its own axes, folds cached repeats,
shows numbers as the notebook does, backends in words, follows light/dark and fits a narrow screen.
Also: every row records its output size, ``%flux history`` shows the review, ``%flux grid`` takes ``--label``
and ``--sort`` and its saved PNG carries each cell's request.

Sessions and kernels run against a real local server on 127.0.0.1.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from IPython.utils.capture import capture_output

from flux_nb.core.backend import label_in_words
from flux_nb.errors import ValidationError
from flux_nb.export.report import batch_grids
from flux_nb.history.batches import axes_of, batch_frames, grid_axes_of, labels_of, new_batch, varying_axes
from flux_nb.metadata import read_provenance
from flux_nb.session import Flux
from tests.test_report import browser  # noqa: F401  (the fixture)

SIZE = {"width": 64, "height": 64}


def run(shell: Any, code: str) -> str:
    with capture_output() as captured:
        assert shell.run_cell(code).success
    return captured.stdout + "\n".join(o.data.get("text/plain", "") for o in captured.outputs)


def test_every_row_records_its_batch_and_that_batchs_axes(ipython: Any) -> None:
    flux: Flux = ipython.user_ns["flux"]
    run(ipython, "%%flux --seed 1:2 --size 64x64 -o cell\na boat\n---\na car")
    flux.sweep("a kite", seed=[3, 4], width=[64, 96], height=64)
    flux.generate("a heron", seed=5, **SIZE)
    clicked = flux.start(flux.batch(["a fox", "a hare"], seed=6, **SIZE)).result(timeout=60)  # one panel click
    frame = flux.history()
    groups = list(dict.fromkeys(frame["batch"]))
    assert len(groups) == 4 and not frame["batch"].isna().any()
    axes = [json.loads(frame.loc[frame["batch"] == g, "batch_axes"].iloc[0]) for g in groups]
    assert axes == [["seed", "prompt"], ["seed", "width"], [], ["prompt"]]
    assert frame.groupby("batch", sort=False).size().tolist() == [4, 4, 1, 2]
    assert set(frame.loc[frame["batch"] == groups[3], "record_id"]) == {r.record_id for r in clicked}


def test_a_cache_hit_in_a_new_batch_keeps_that_batch(flux: Flux) -> None:
    flux.generate("a kite", seed=1, **SIZE)
    hit = flux.sweep("a kite", seed=[1, 2], tag="again", **SIZE)[0]
    frame = flux.history().set_index("record_id")
    assert hit.cached and frame.loc[hit.record_id, "batch"] == frame.iloc[-1]["batch"]
    assert json.loads(frame.loc[hit.record_id, "batch_axes"]) == ["seed"]


def test_the_report_draws_one_grid_per_batch_on_its_own_axes(flux: Flux, tmp_path: Path) -> None:
    with flux.experimenting("study"):
        seeds = flux.sweep(["a fox", "a hare"], seed=[1, 2, 3], **SIZE)
        sizes = flux.sweep("a kite", seed=7, width=[64, 96], height=[64, 96])
        flux.generate("a heron", seed=5, **SIZE)  # no axis: in the table, not a grid
        flux.sweep(["a fox", "a hare"], seed=[1, 2, 3], tag="repeat", **SIZE)  # all cached repeats: folded
    frame = flux.history(experiment="study")
    pages = batch_grids(frame)
    assert [(p.x, p.y) for p in pages] == [("seed", "prompt"), ("width", "height")]
    assert len(pages[0].cells) == 6 and len(pages[1].cells) == 4
    assert set(pages[0].cells.values()) == {r.record_id for r in seeds}
    assert set(pages[1].cells.values()) == {r.record_id for r in sizes}
    page = flux.report(experiment="study", path=tmp_path / "r.html").read_text()
    assert page.count('class="grid"') == 2
    assert "batch " in page and "missing" not in page
    first = frame["batch"].iloc[0]
    only = flux.report(experiment="study", path=tmp_path / "one.html", grids=[first]).read_text()
    assert only.count('class="grid"') == 1
    assert 'class="grid"' not in flux.report(experiment="study", path=tmp_path / "n.html", grids="none").read_text()
    with pytest.raises(ValidationError, match="no batch 'nope'"):
        flux.report(experiment="study", path=tmp_path / "x.html", grids=["nope"])


def test_cached_repeats_fold_within_a_batch_and_across_batches(flux: Flux) -> None:
    flux.sweep("an owl", seed=[4, 4, 5], **SIZE)  # one request twice in one batch: two rows, one cell
    flux.sweep("an owl", seed=[4, 5], tag="again", **SIZE)  # every row a cached repeat of the first batch
    frame = flux.history()
    assert len(frame) == 5
    (batch_id, axes, rows), *rest = batch_frames(frame)
    assert rest == [] and axes == ["seed"] and rows["seed"].tolist() == [4, 5]
    assert batch_id == frame["batch"].iloc[0]


def test_report_numbers_read_as_in_the_notebook_and_backends_in_words(flux: Flux, tmp_path: Path) -> None:
    flux.sweep("a fox", seed=[1, 2], **SIZE)
    frame = flux.history().assign(duration_s=pd.array([0.321187, 12.0], dtype="Float64"))
    page = flux.report(frame, tmp_path / "r.html").read_text()
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", page)
    assert "0.32" in cells and "12.00" in cells and "0.321187" not in cells
    backend = str(frame["backend"].iloc[0])
    assert backend.startswith("endpoint:") and backend not in page  # the label, in words only
    assert backend.replace("endpoint:", "endpoint ").rstrip(":") in cells


def test_the_report_follows_dark_mode_and_fits_a_narrow_screen(
    flux: Flux,
    tmp_path: Path,
    browser: Any,  # noqa: F811
) -> None:
    flux.sweep(["a fox with a very long description " * 4, "a hare"], seed=[1, 2, 3, 4, 5, 6], **SIZE)
    path = flux.report(experiment=None, path=tmp_path / "r.html")
    colours = {}
    for scheme in ("light", "dark"):
        context = browser.new_context(viewport={"width": 360, "height": 740}, color_scheme=scheme, offline=True)
        page = context.new_page()
        page.goto(path.as_uri())
        colours[scheme] = page.evaluate("getComputedStyle(document.body).backgroundColor")
        widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1]  # nothing wider than the screen: the table scrolls in its own box
        context.close()
    assert colours == {"light": "rgb(255, 255, 255)", "dark": "rgb(22, 22, 22)"}


def test_an_edit_without_a_size_records_its_output_size(ipython: Any) -> None:
    run(ipython, "%%flux --seed 5 --size 64x96 -o s1\na bowl")
    run(ipython, "%%flux --seed 6 -i s1 -o edit\nmake it blue")
    row = ipython.user_ns["flux"].history().set_index("record_id").loc[ipython.user_ns["edit"].record_id]
    assert (row["width"], row["height"]) == (row["out_width"], row["out_height"]) == (64, 96)


def test_flux_history_shows_the_review_columns(ipython: Any) -> None:
    run(ipython, "%%flux --seed 5 --size 64x64 -o pic\na bowl")
    flux: Flux = ipython.user_ns["flux"]
    flux.rate(ipython.user_ns["pic"], 4)
    flux.favourite(ipython.user_ns["pic"])
    flux.note(ipython.user_ns["pic"], "warm light")
    header, row = run(ipython, "%flux history 1").splitlines()[:2]
    assert header.split()[-4:] == ["rating", "fav", "note", "image"]
    assert re.search(r"\b4\s+★\s+warm light\s", row)


def test_flux_grid_takes_label_and_sort_and_saves_each_cells_request(ipython: Any, tmp_path: Path) -> None:
    flux: Flux = ipython.user_ns["flux"]
    sweep = flux.sweep("a kite", seed=[1, 2, 3], **SIZE)
    flux.rate(sweep[2], 5)
    flux.rate(sweep[0], 2)
    target = tmp_path / "g.png"
    run(ipython, f"%flux grid --label rating --sort rating --save {target}")
    document = read_provenance(target)
    assert document is not None and document["kind"] == "grid"
    assert document["record_ids"] == [sweep[2].record_id, sweep[0].record_id, sweep[1].record_id]
    assert [cell["request"]["seed"] for cell in document["cells"]] == [3, 1, 2]


def test_batch_values_read_safely() -> None:
    assert varying_axes([{"prompt": "a", "seed": 1, "w": [1]}, {"prompt": "b", "seed": 2, "w": [1]}]) == [
        "seed",
        "prompt",
    ]
    assert varying_axes([{"seed": 1}]) == [] and varying_axes([]) == []
    assert re.fullmatch(r"[0-9a-f]{12}", new_batch([{"seed": 1}, {"seed": 2}]).id)
    assert axes_of('["seed", 3, "prompt"]') == ["seed", "prompt"]
    assert axes_of("{bad") == axes_of('{"a": 1}') == axes_of(None) == []
    assert labels_of('{"seed": 1}') == {"seed": 1} and labels_of("[1]") == labels_of("x") == labels_of(None) == {}
    assert grid_axes_of([]) == (None, None, None) and grid_axes_of(["seed"]) == ("seed", None, None)
    assert grid_axes_of(["a", "b", "c", "d"]) == ("a", "b", "c+d")
    words = [label_in_words(b) for b in ("local:preview", "bfl", "endpoint:h:1:", "")]
    assert words == ["local preview server", "BFL API", "endpoint h:1", "unknown backend"]


def _row(batch: str | None, seed: int, image: str, cached: bool, axes: str = '["seed"]', **more: Any) -> dict[str, Any]:
    labels = json.dumps({"seed": seed}) if batch else None
    return dict(batch=batch, batch_axes=axes if batch else None, labels=labels, image_sha256=image, cached=cached,
                seed=seed, prompt=more.get("prompt", "p"))  # fmt: skip


def test_batch_frames_fold_only_cached_repeats_and_keep_every_batch_in_order() -> None:
    rows = [
        _row("zz", 1, "x", False),
        _row("zz", 2, "x", True),  # the same image at another place: kept
        _row("zz", 2, "x", True),  # the same image at the same place, cached: folded
        _row("zz", 3, "y", False),
        _row("bb", 1, "x", True),  # a whole batch of cached repeats of zz: folded
        _row("bb", 2, "x", True),
        _row("cc", 1, "z", True),  # cached, but images zz never showed: kept
        _row("cc", 2, "z", True),
        _row("dd", 1, "x", False, axes="[]"),  # no axis: no grid
        _row(None, 7, "v", False, prompt="p"),  # rows of no batch: one batch varying seed and prompt
        _row(None, 8, "w", False, prompt="q"),
        _row("aa", 1, "x", False),  # sent again (not cached), showing an image zz showed: kept
    ]
    frame = pd.DataFrame(rows, index=range(100, 100 + len(rows)))
    found = [(batch_id, axes, rows["seed"].tolist()) for batch_id, axes, rows in batch_frames(frame)]
    assert found == [
        ("zz", ["seed"], [1, 2, 3]),
        ("cc", ["seed"], [1, 2]),
        ("", ["seed", "prompt"], [7, 8]),
        ("aa", ["seed"], [1]),
    ]
    for _, _, rows in batch_frames(frame):
        assert list(rows.index) == list(range(len(rows))) and list(rows.columns) == list(frame.columns)
    old = frame[frame["batch"].isna()].drop(columns=["batch", "batch_axes", "labels"])
    assert [(b, a, r["prompt"].tolist()) for b, a, r in batch_frames(old)] == [("", ["seed", "prompt"], ["p", "q"])]
    assert batch_frames(frame.iloc[:0]) == []


def test_a_batch_axis_is_read_from_the_labels_where_the_row_has_no_such_column() -> None:
    rows = [_row("b", 1, "x", False), _row("b", 2, "y", False)]
    for row, light in zip(rows, ("dawn", "dusk"), strict=True):
        row.update(labels=json.dumps({"seed": 1, "light": light}), batch_axes='["light"]')
    [(_, axes, frame)] = batch_frames(pd.DataFrame(rows))
    assert axes == ["light"] and frame["light"].tolist() == ["dawn", "dusk"]
    rows[1]["labels"] = None  # no labels: the axis reads as missing
    [(_, _, frame)] = batch_frames(pd.DataFrame(rows))
    assert frame["light"].iloc[0] == "dawn" and pd.isna(frame["light"].iloc[1])
