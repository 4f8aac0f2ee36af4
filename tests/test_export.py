"""Bundles: rows, images and references leave in one zip and come back as a history folder elsewhere."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from flux_nb.errors import ValidationError
from flux_nb.export.bundle import export_bundle, open_bundle
from flux_nb.export.grids import save_grid
from flux_nb.grids import grid
from flux_nb.history.store import HistoryStore
from flux_nb.metadata import pixel_hash, read_provenance
from tests.experiments import make_experiment

ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter: nothing of the exporting process (caches, open connections) helps it.
REOPEN = """
import json, sys
from flux_nb.export.bundle import open_bundle
from flux_nb.history.store import HistoryStore
from flux_nb.grids import grid
folder = open_bundle(sys.argv[1], sys.argv[2])
frame = HistoryStore(folder).to_frame()
grid(frame, x="seed", y="prompt", cell=64).save(sys.argv[3])
print(json.dumps({"rows": len(frame), "ready": int((frame["status"] == "ready").sum())}))
"""


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> HistoryStore:
    return make_experiment(tmp_path_factory.mktemp("experiment") / "history", count=100, failed=2)


def test_a_hundred_rows_reopen_in_a_fresh_process_and_rebuild_the_same_grid(
    experiment: HistoryStore, tmp_path: Path
) -> None:
    frame = experiment.to_frame()
    bundle = export_bundle(frame, experiment.root, tmp_path / "out" / "sweep.zip")
    original = grid(frame, x="seed", y="prompt", cell=64).save(tmp_path / "original.png")
    rebuilt = tmp_path / "rebuilt.png"
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        [sys.executable, "-c", REOPEN, str(bundle), str(tmp_path / "opened"), str(rebuilt)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"rows": 100, "ready": 98}
    assert rebuilt.read_bytes() == original.read_bytes()
    opened = HistoryStore(tmp_path / "opened").to_frame()
    assert opened["image_path"].str.startswith(str(tmp_path / "opened")).sum() == 98
    pd.testing.assert_frame_equal(opened.drop(columns="image_path"), frame.drop(columns="image_path"))
    assert experiment.root not in {Path(p).parent.parent.parent for p in opened["image_path"].dropna()}


def test_the_zip_holds_tables_images_references_and_a_manifest(experiment: HistoryStore, tmp_path: Path) -> None:
    frame = experiment.to_frame().iloc[:10].assign(rating=range(10))
    bundle = export_bundle(frame, experiment.root, tmp_path / "ten.zip")
    with zipfile.ZipFile(bundle) as archive:
        names = set(archive.namelist())
        manifest = json.loads(archive.read("manifest.json"))
        for name, entry in manifest["files"].items():
            assert hashlib.sha256(archive.read(name)).hexdigest() == entry["sha256"]
        parquet = pd.read_parquet(io.BytesIO(archive.read("records.parquet")))
        csv = pd.read_csv(io.BytesIO(archive.read("records.csv")))
    assert set(manifest["files"]) | {"manifest.json"} == names
    assert manifest["format"] == "flux_nb-bundle/1" and manifest["rows"] == 10
    assert manifest["record_ids"] == list(frame["record_id"])
    assert {"flux_nb", "python", "pandas", "pyarrow"} <= set(manifest["versions"])
    images = {name for name in names if name.startswith("images/")}
    assert images == {str(Path(p).relative_to(experiment.root)) for p in frame["image_path"]}
    references = {h for hashes in frame["input_hashes"] for h in hashes}
    assert (
        len(references) == 1 and {n.split("/")[1].split(".")[0] for n in names if n.startswith("inputs/")} == references
    )
    assert list(parquet["record_id"]) == list(csv["record_id"]) == list(frame["record_id"])
    assert list(parquet["rating"]) == list(range(10)) and parquet["seed"].dtype == "UInt64"
    assert parquet["image_path"].iloc[0] == str(Path(frame["image_path"].iloc[0]).relative_to(experiment.root))
    assert json.loads(csv["input_hashes"].iloc[0]) == list(frame["input_hashes"].iloc[0])


def test_failed_rows_travel_without_an_image(experiment: HistoryStore, tmp_path: Path) -> None:
    frame = experiment.to_frame()
    failed = frame[frame["status"] == "failed"]
    opened = open_bundle(export_bundle(failed, experiment.root, tmp_path / "failed.zip"), tmp_path / "o")
    again = HistoryStore(opened).to_frame()
    assert list(again["record_id"]) == list(failed["record_id"]) and again["image_path"].isna().all()
    assert list(again["error"]) == ["boom", "boom"]


def crafted(path: Path, members: dict[str, bytes], symlink: str | None = None) -> Path:
    """A zip that claims to be a bundle: every member listed in a manifest with its true sha256."""
    files = {name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)} for name, data in members.items()}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("manifest.json", json.dumps({"format": "flux_nb-bundle/1", "files": files}))
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            if name == symlink:
                info.external_attr = 0o120777 << 16
            archive.writestr(info, data)
    return path


@pytest.mark.parametrize("name", ["../escaped.txt", "/tmp/escaped.txt", "images\\..\\..\\escaped.txt", "C:/x.txt"])
def test_open_bundle_refuses_paths_outside_the_folder(tmp_path: Path, name: str) -> None:
    bundle = crafted(tmp_path / "evil.zip", {"history.sqlite": b"", name: b"gotcha"})
    with pytest.raises(ValidationError, match="unsafe path"):
        open_bundle(bundle, tmp_path / "into" / "history")
    assert not (tmp_path / "into").exists()  # refused before anything was written
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "into" / "escaped.txt").exists()


def test_open_bundle_refuses_symlinks_unlisted_and_damaged_files(tmp_path: Path) -> None:
    link = crafted(tmp_path / "link.zip", {"images/a.png": b"/etc/passwd"}, symlink="images/a.png")
    with pytest.raises(ValidationError, match=r"unsafe path 'images/a\.png'"):
        open_bundle(link, tmp_path / "a")
    with zipfile.ZipFile(tmp_path / "extra.zip", "w") as archive:
        archive.writestr("manifest.json", json.dumps({"format": "flux_nb-bundle/1", "files": {}}))
        archive.writestr("stowaway.py", b"print('hi')")
    with pytest.raises(ValidationError, match=r"'stowaway\.py' is not in the manifest"):
        open_bundle(tmp_path / "extra.zip", tmp_path / "b")
    digest = hashlib.sha256(b"one").hexdigest()
    image = f"images/{digest[:2]}/{digest}.png"  # bundle images are named by their sha256
    damaged = crafted(tmp_path / "damaged.zip", {"history.sqlite": b"", image: b"one"})
    with zipfile.ZipFile(damaged) as archive:
        manifest = json.loads(archive.read("manifest.json"))
    manifest["files"][image]["sha256"] = "0" * 64
    with zipfile.ZipFile(tmp_path / "damaged2.zip", "w") as archive:
        archive.writestr("manifest.json", json.dumps(manifest))
        archive.writestr("history.sqlite", b"")
        archive.writestr(image, b"one")
    with pytest.raises(ValidationError, match="does not match its sha256"):
        open_bundle(tmp_path / "damaged2.zip", tmp_path / "c")
    with zipfile.ZipFile(tmp_path / "plain.zip", "w") as archive:
        archive.writestr("hello.txt", b"hi")
    with pytest.raises(ValidationError, match="not a flux_nb bundle"):
        open_bundle(tmp_path / "plain.zip", tmp_path / "d")


def test_export_and_open_refuse_bad_input_with_a_clear_error(experiment: HistoryStore, tmp_path: Path) -> None:
    frame = experiment.to_frame().iloc[:3]
    with pytest.raises(ValidationError, match="no record_id column"):
        export_bundle(frame.drop(columns="record_id"), experiment.root, tmp_path / "x.zip")
    with pytest.raises(ValidationError, match="no rows to export"):
        export_bundle(frame.iloc[:0], experiment.root, tmp_path / "x.zip")
    other = make_experiment(tmp_path / "other", count=2, failed=0)
    with pytest.raises(ValidationError, match=r"2 row\(s\) of the frame are not in the history"):
        export_bundle(other.to_frame(), experiment.root, tmp_path / "x.zip")
    with pytest.raises(ValidationError, match="is not a history folder"):
        export_bundle(frame, tmp_path / "nowhere", tmp_path / "x.zip")
    assert not (tmp_path / "x.zip").exists()
    bundle = export_bundle(frame, experiment.root, tmp_path / "ok.zip")
    with pytest.raises(ValidationError, match="is not empty"):
        open_bundle(bundle, experiment.root)
    with pytest.raises(ValidationError, match="cannot open bundle"):
        open_bundle(tmp_path / "missing.zip", tmp_path / "e")


def test_saved_grids_carry_each_cells_record_and_request(experiment: HistoryStore, tmp_path: Path) -> None:
    frame = experiment.to_frame().iloc[:9]
    drawn = grid(frame, x="seed", y="prompt", cell=48)
    plain = drawn.save(tmp_path / "plain.png")  # type: ignore[union-attr]
    [path] = save_grid(drawn, frame, tmp_path / "grid.png")
    assert pixel_hash(path) == pixel_hash(plain)
    document = read_provenance(path)
    assert document is not None and (document["x"], document["y"]) == ("seed", "prompt")
    by_id = frame.set_index("record_id")
    assert sorted(document["record_ids"]) == sorted(frame["record_id"])
    for cell in document["cells"]:
        row = by_id.loc[cell["record_id"]]
        assert (cell["x"], cell["y"]) == (row["seed"], row["prompt"])
        assert cell["request"]["seed"] == row["seed"] and cell["request"]["width"] == row["width"]
    pages = save_grid(grid(frame, x="seed", z="prompt", cell=48), frame, tmp_path / "pages.png")
    assert len(pages) == 3
    for page in pages:
        document = read_provenance(page)
        assert document is not None and document["z"] == "prompt"
        assert {cell["request"]["prompt"] for cell in document["cells"]} == {document["z_value"]}


def test_a_history_folder_with_an_awkward_name_exports(tmp_path: Path) -> None:
    store = make_experiment(tmp_path / "my history #1?x=%20", count=3, failed=0)
    bundle = export_bundle(store.to_frame(), store.root, tmp_path / "odd.zip")
    opened = HistoryStore(open_bundle(bundle, tmp_path / "back again #2")).to_frame()
    assert list(opened["record_id"]) == list(store.to_frame()["record_id"])
    assert all(Path(p).is_file() for p in opened["image_path"])
