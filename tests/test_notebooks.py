"""Every notebook runs top to bottom in a real kernel against the embedded server, with no key."""

from __future__ import annotations

import base64
import importlib.util
import os
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


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


@pytest.mark.parametrize("source", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_without_errors_and_shows_images(source: Path, tmp_path: Path) -> None:
    executed, page = runner().run_notebook(source, tmp_path)
    notebook = nbformat.read(executed, as_version=4)
    errors = [o for c in notebook.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == []
    failures = [c.source for c in notebook.cells for o in c.get("outputs", []) if "flux-error" in str(o)]
    assert failures == []
    assert images_in(notebook) >= 3
    assert "preview" in page.read_text()
    assert (tmp_path / ".flux" / "history.sqlite").exists()


def test_quickstart_records_every_request_with_the_notebook_name(tmp_path: Path) -> None:
    from flux_nb.store import HistoryStore

    runner().run_notebook(ROOT / "notebooks" / "01_quickstart.ipynb", tmp_path)
    frame = HistoryStore(tmp_path / ".flux").to_frame()
    assert len(frame) >= 5 and set(frame["status"]) == {"ready"}
    assert set(frame["notebook"]) == {"01_quickstart.ipynb"}


def test_a_notebook_with_fifty_1024px_images_stays_small(tmp_path: Path) -> None:
    cells = [new_code_cell("%load_ext flux_nb")]
    cells += [new_code_cell(f"%%flux --seed {i} --size 1024x1024\na harbour at dawn, seed study") for i in range(50)]
    source = tmp_path / "fifty.ipynb"
    nbformat.write(
        new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}}), source
    )
    executed, _ = runner().run_notebook(source, tmp_path / "out")
    notebook = nbformat.read(executed, as_version=4)
    assert images_in(notebook) == 50
    saved = executed.stat().st_size
    full = sum(p.stat().st_size for p in (tmp_path / "out" / ".flux" / "images").rglob("*.jpeg"))
    print(f"\nnotebook with 50 images: {saved / 1e6:.2f} MB saved; full images {full / 1e6:.2f} MB on disk")
    assert saved < 2_000_000
    assert saved < full * 4 / 3  # far below embedding the full images as base64
    thumbs = [o for c in notebook.cells for o in c.get("outputs", []) if "data:image/jpeg" in str(o)]
    payload = str(thumbs[0]["data"]["text/html"]).split("base64,", 1)[1].split('"', 1)[0]
    assert len(base64.b64decode(payload)) < 40_000
    assert os.environ.get("BFL_API_KEY") is None
