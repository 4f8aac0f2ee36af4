"""Every notebook runs top to bottom in a real kernel against the embedded server, with no key."""

from __future__ import annotations

import base64
import importlib.util
import os
import re
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

pytestmark = pytest.mark.slow  # each notebook runs in a real kernel

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# Requests each notebook sends, all "ready"; its cache hits are rows too (uses, cached, cost 0), not requests.
RECORDS = {
    "01_quickstart.ipynb": 5,  # the repeated lighthouse cell is a cache hit
    "02_sweeps_and_grids.ipynb": 8 + 3 + 4 + 6,
    "03_reproducible_experiment.ipynb": 12 + 2 + 2 + 1,  # study, edits, pro models, one replay
    "04_local_gpu.ipynb": 1 + 1 + 4,
}
# Uses each notebook shows, where it promises them: 03's model comparison reuses 2 klein images of the
# study; its re-run from the top shows every image again from the cache and adds no row.
USES = {"03_reproducible_experiment.ipynb": 2}
# Text an output must show, where a notebook promises it.
PROMISED = {
    "03_reproducible_experiment.ipynb": [
        "byte-identical images",
        "0 rows added, history unchanged: True, 0.00 credits spent",
        "the same image in the style study: [4]",
        "the rebuilt grid is pixel-identical: True",
    ],
}


def runner():  # notebooks/run.py is a script, not part of the package
    spec = importlib.util.spec_from_file_location("notebook_runner", ROOT / "notebooks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BFL_API_KEY", raising=False)
    monkeypatch.delenv("FLUX_NB_ENDPOINT", raising=False)


def images_in(notebook: nbformat.NotebookNode) -> int:
    count = 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            count += str(output.get("data", {}).get("text/html", "")).count("data:image/")
    return count


def problems(notebook: nbformat.NotebookNode) -> list[str]:
    """What a saved notebook must not show: errors, refused cells, failed requests, stale progress lines."""
    found = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            markup = str(output.get("data", {}).get("text/html", ""))
            if output.get("output_type") == "error":
                found.append(f"error in {cell.source!r}: {output.get('ename')}: {output.get('evalue')}")
            if "flux-error" in markup or "flux-failure" in markup:  # a refused cell; a failed or moderated request
                found.append(f"failure shown by {cell.source!r}: {markup[:300]}")
            done = re.search(r"(\d+)/(\d+) done", markup)
            over = "finished in " in markup or (done and done.group(1) == done.group(2))
            if 'class="flux-progress"' in markup and not over:
                found.append(f"stale progress line left by {cell.source!r}: {markup[:300]}")
    return found


def test_the_committed_notebooks_show_final_lines_and_name_no_folder_of_a_machine() -> None:
    """What a reader sees on GitHub before running anything: finished lines (no spinner), relative paths."""
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        text = "".join(str(o) for c in notebook.cells for o in c.get("outputs", []))
        assert problems(notebook) == [], path.name
        assert "flux-spin" not in text, path.name
        assert re.findall(r"(?:/tmp/|/home/|/root/|/Users/)[^'\"\\ ]*", text) == [], path.name


def test_the_notebook_check_catches_failures_and_stale_progress() -> None:
    def notebook(*markups: str) -> nbformat.NotebookNode:
        outputs = [nbformat.v4.new_output("display_data", data={"text/html": m}) for m in markups]
        return new_notebook(cells=[new_code_cell("%%flux\nx", outputs=outputs)])

    assert (
        problems(notebook('<div class="flux-result"><img/></div>', '<div class="flux-progress">3/3 done</div>')) == []
    )
    assert problems(notebook('<div class="flux-progress">finished in 2.5 s</div>')) == []
    assert len(problems(notebook('<div class="flux-failure">⚠ failed: boom (record r1, seed 1)</div>'))) == 1
    assert len(problems(notebook('<div class="flux-error">⚠ ValidationError: bad</div>'))) == 1
    assert len(problems(notebook('<div class="flux-progress">⏳ generating · 3.1 s</div>'))) == 1
    assert len(problems(notebook('<div class="flux-progress">2/3 done · 1 running, 0 queued</div>'))) == 1


@pytest.mark.parametrize("source", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_cleanly_shows_images_and_records_every_request(source: Path, tmp_path: Path) -> None:
    from flux_nb.history.store import HistoryStore

    executed, page = runner().run_notebook(source, tmp_path)
    notebook = nbformat.read(executed, as_version=4)
    assert problems(notebook) == []
    assert images_in(notebook) >= 3
    assert "preview" in page.read_text()
    history = HistoryStore(tmp_path / ".flux").to_frame()
    assert int((~history["cached"]).sum()) == RECORDS[source.name]
    if source.name in USES:
        assert int(history["cached"].sum()) == USES[source.name]
    assert set(history["status"]) == {"ready"}, history[["record_id", "status", "error"]]
    assert set(history["notebook"]) == {source.name}
    text = "".join(str(o) for c in notebook.cells for o in c.get("outputs", []))
    assert [promise for promise in PROMISED.get(source.name, []) if promise not in text] == []
    assert str(tmp_path) not in text  # a saved notebook names no folder of the machine it ran on


def test_a_notebook_with_fifty_1024px_images_stays_small(tmp_path: Path) -> None:
    cells = [new_code_cell("%load_ext flux_nb")]
    cells += [new_code_cell(f"%%flux --seed {i} --size 1024x1024\na harbour at dawn, seed study") for i in range(50)]
    source = tmp_path / "fifty.ipynb"
    nbformat.write(
        new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}}), source
    )
    executed, _ = runner().run_notebook(source, tmp_path / "out")
    notebook = nbformat.read(executed, as_version=4)
    assert problems(notebook) == []  # each cell's status line was replaced by its result
    assert images_in(notebook) == 50
    shown = [sum(o.output_type == "display_data" for o in c.get("outputs", [])) for c in notebook.cells[1:]]
    assert shown == [1] * 50  # one display per cell: the result took the place of its status line
    saved = executed.stat().st_size
    full = sum(p.stat().st_size for p in (tmp_path / "out" / ".flux" / "images").rglob("*.jpeg"))
    print(f"\nnotebook with 50 images: {saved / 1e6:.2f} MB saved; full images {full / 1e6:.2f} MB on disk")
    assert saved < 2_000_000
    assert saved < full * 4 / 3  # far below embedding the full images as base64
    thumbs = [o for c in notebook.cells for o in c.get("outputs", []) if "data:image/jpeg" in str(o)]
    payload = str(thumbs[0]["data"]["text/html"]).split("base64,", 1)[1].split('"', 1)[0]
    assert len(base64.b64decode(payload)) < 40_000
    assert os.environ.get("BFL_API_KEY") is None
