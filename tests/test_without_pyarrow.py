"""Without pyarrow (it is the ``arrow`` extra): the history reads, refreshes and bundles the same way."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from flux_nb.export.bundle import export_bundle
from flux_nb.history.store import HistoryStore, RecordStatus
from tests.test_store import complete, create

ROOT = Path(__file__).resolve().parent.parent

# Runs with pyarrow hidden from every import (pandas included), then does what a notebook does.
WITHOUT = """
import json, pickle, sys
sys.modules["pyarrow"] = None
from pathlib import Path
from flux_nb.export.bundle import export_bundle, open_bundle
from flux_nb.history.store import HistoryStore
from tests.test_store import create

history, scratch, bundled = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
store = HistoryStore(history)
frame = store.to_frame()
(scratch / "frame.pickle").write_bytes(pickle.dumps(frame))
view = store.view()
added = create(store, prompt="one more", seed=9)
refreshed = view.refresh()
zipped = export_bundle(refreshed, history, scratch / "plain.zip")
opened = HistoryStore(open_bundle(zipped, scratch / "plain")).to_frame()
theirs = open_bundle(bundled, scratch / "theirs")
print(json.dumps({
    "pyarrow": sorted(m for m in sys.modules if m.split(".")[0] == "pyarrow" and sys.modules[m] is not None),
    "refreshed": refreshed["record_id"].tolist()[-1] == added and len(refreshed) == len(frame) + 1,
    "opened": opened["record_id"].tolist() == refreshed["record_id"].tolist(),
    "theirs": sorted(p.name for p in theirs.iterdir() if p.is_file()),
    "theirs_rows": len(HistoryStore(theirs).to_frame()),
}))
"""


def make_history(folder: Path) -> HistoryStore:
    store = HistoryStore(folder)
    first = create(store, tag="t", input_hashes=["a" * 64])
    complete(store, first, cost=1.5)
    moderated = create(store, seed=2**64 - 1)
    store.mark_failed(moderated, status=RecordStatus.MODERATED, error_kind="M", error="no", finished_at=4)
    store.record_use(first, notebook="b.ipynb")
    store.rate(first, 4)
    store.tag(first, ["keep", "best"])
    return store


@pytest.mark.slow
def test_history_reads_refreshes_and_bundles_without_pyarrow(tmp_path: Path) -> None:
    store = make_history(tmp_path / "history")
    frame = store.to_frame()
    bundled = export_bundle(frame, store.root, tmp_path / "with-parquet.zip")
    assert "records.parquet" in zipfile.ZipFile(bundled).namelist()  # this process has pyarrow
    run = subprocess.run(
        [sys.executable, "-c", WITHOUT, str(store.root), str(tmp_path), str(bundled)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout)
    assert found["pyarrow"] == [] and found["refreshed"] and found["opened"]
    # A bundle made with pyarrow opens; its Parquet table, which cannot be checked here, is not kept.
    assert found["theirs"] == ["history.sqlite", "manifest.json", "records.csv"] and found["theirs_rows"] == 3
    assert "records.parquet" not in zipfile.ZipFile(tmp_path / "plain.zip").namelist()
    plain = pickle.loads((tmp_path / "frame.pickle").read_bytes())
    assert {c: str(t) for c, t in plain.dtypes.items()} == {c: str(t) for c, t in frame.dtypes.items()}
    # Text is stored as Python strings there, in Arrow here (pandas labels its columns the same way).
    pd.testing.assert_frame_equal(plain, frame, check_dtype=False, check_column_type=False)
    assert plain["seed"].tolist()[1] == 2**64 - 1 and plain["tags"].tolist() == ["best,keep", pd.NA, "best,keep"]
