"""Storage faults become one clear HistoryError: read-only folders, damaged, empty or foreign files,
a full disk, and values of the wrong kind that must never poison a history."""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest

from flux_nb.errors import FluxError
from flux_nb.history import database as database_module
from flux_nb.history import files as files_module
from flux_nb.history.storage_errors import HistoryError
from flux_nb.history.store import HistoryStore, RecordStatus
from tests.test_store import complete, create, jpeg, submit

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mount small tmpfs file systems (root only; skipped, with the reason, where mounting is not allowed)."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a small tmpfs needs root")
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        run = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], capture_output=True)
        if run.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {run.stderr.decode().strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], check=False)


def remount_read_only(point: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)


WRITE_HISTORY = """
import sys
from flux_nb.protocol import FluxRequest
from flux_nb.history.store import HistoryStore
store = HistoryStore(sys.argv[1])
for seed in range(3):
    rid = store.create(FluxRequest("a cat", seed=seed), backend="b", endpoint="e", notebook="n.ipynb",
                       input_hashes=[], estimated_cost=1.0, experiment="light")
store.rate(rid, 4)
print(rid)
"""


def write_history_elsewhere(folder: Path) -> str:
    """A three-record history written by another process, which then exits (closing every connection)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", WRITE_HISTORY, str(folder)], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


# -- read-only folders ----------------------------------------------------------------------------


def test_a_history_in_a_read_only_folder_can_be_read_but_not_written(tmpfs: Callable[[str], Path]) -> None:
    point = tmpfs("4m")
    last = write_history_elsewhere(point / "h")
    remount_read_only(point)
    store = HistoryStore(point / "h")
    assert store.readonly and "readonly=True" in repr(store)
    frame = store.to_frame()
    assert len(frame) == 3 and set(frame["experiment"]) == {"light"} and store.count() == 3
    assert frame.set_index("record_id").loc[last, "rating"] == 4
    assert store.get(last).prompt == "a cat" and store.spent().empty  # type: ignore[union-attr]
    assert len(store.to_frame(experiment="light")) == 3 and len(store.tail(2)) == 2
    with pytest.raises(HistoryError, match="read-only") as caught:
        create(store)
    assert str(point / "h" / "history.sqlite") in str(caught.value) and isinstance(caught.value, FluxError)
    with pytest.raises(HistoryError, match="read-only"):
        store.rate(last, 1)
    assert sorted(p.name for p in (point / "h").iterdir()) == ["history.sqlite"]


def test_no_history_in_a_read_only_folder_is_a_clear_error(tmpfs: Callable[[str], Path]) -> None:
    point = tmpfs("1m")
    (point / "empty").mkdir()
    remount_read_only(point)
    with pytest.raises(HistoryError, match=r"no history at .*read-only"):
        HistoryStore(point / "empty")
    with pytest.raises(HistoryError, match="create the history folder"):
        HistoryStore(point / "new")


# -- damaged, empty and foreign files -----------------------------------------------------------


def test_a_damaged_file_is_named_with_the_fix(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    for seed in range(300):
        create(store, prompt="x" * 200, seed=seed)
    store._db.connection().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(store.path.read_bytes())
    data[4096 * 2 :] = b"\xa5" * (len(data) - 4096 * 2)  # every page after the second
    store.path.write_bytes(bytes(data))
    with pytest.raises(HistoryError, match=r"damaged .*malformed") as caught:
        HistoryStore(history_dir).to_frame()
    assert str(store.path) in caught.value.one_line() and ".recover" in caught.value.one_line()


@pytest.mark.parametrize("content", [b"", b"these are my notes, not a database\n" * 20], ids=["empty", "text"])
def test_an_empty_or_foreign_file_is_refused_and_left_untouched(history_dir: Path, content: bytes) -> None:
    history_dir.mkdir()
    path = history_dir / "history.sqlite"
    path.write_bytes(content)
    with pytest.raises(HistoryError, match="not a flux_nb history") as caught:
        HistoryStore(history_dir)
    assert str(path) in str(caught.value) and "move it aside" in caught.value.one_line()
    assert path.read_bytes() == content and sorted(p.name for p in history_dir.iterdir()) == ["history.sqlite"]


def test_another_programs_sqlite_database_is_refused_and_left_untouched(history_dir: Path) -> None:
    history_dir.mkdir()
    path = history_dir / "history.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE invoices (id INTEGER, amount REAL)")
        db.execute("INSERT INTO invoices VALUES (1, 9.5)")
    before = path.read_bytes()
    with pytest.raises(HistoryError, match="without a records table"):
        HistoryStore(history_dir)
    assert path.read_bytes() == before


def test_a_new_history_never_shows_a_half_made_file(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    assert store.path.stat().st_size > 0 and not list(history_dir.glob(".tmp-*"))
    assert HistoryStore(history_dir).count() == 0


# -- a full disk ----------------------------------------------------------------------------------


def test_a_full_file_system_stops_writes_cleanly_and_they_resume_after_freeing_space(
    tmpfs: Callable[[str], Path],
) -> None:
    point = tmpfs("2m")
    store = HistoryStore(point / "h")
    record_id = create(store)
    submit(store, record_id)
    filler = point / "filler"
    with open(filler, "wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    with pytest.raises(HistoryError, match="is full") as caught:
        complete(store, record_id)
    assert caught.value.retryable and "free space" in caught.value.one_line()
    assert not [p for p in (point / "h" / "images").rglob("*") if p.is_file()]  # no half image, no temp file
    created = 0
    with pytest.raises(HistoryError, match="is full") as full:
        for seed in range(2000):
            create(store, prompt="p" * 2000, seed=seed)
            created += 1
    assert full.value.retryable and str(store.path) in str(full.value)
    filler.unlink()  # free space, then resume: the same calls work
    path = complete(store, record_id)
    assert path.is_file() and store.get(record_id).status == "ready"  # type: ignore[union-attr]
    create(store)
    assert store.count() == created + 2 and store.integrity_check()


def test_disk_full_while_writing_an_image_is_a_retryable_error(
    history_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = HistoryStore(history_dir)
    record_id = create(store)
    submit(store, record_id)
    real_fsync = files_module.os.fsync

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files_module.os, "fsync", no_space)
    with pytest.raises(HistoryError, match="is full") as caught:
        complete(store, record_id)
    assert caught.value.retryable
    assert not [p for p in (history_dir / "images").rglob("*") if p.is_file()]
    assert store.get(record_id).status == "submitted"  # type: ignore[union-attr]
    monkeypatch.setattr(files_module.os, "fsync", real_fsync)
    assert complete(store, record_id).is_file()


def test_disk_full_in_the_database_is_a_retryable_error(history_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    create(HistoryStore(history_dir))
    real_connect = sqlite3.connect

    def capped(*args: object, **kwargs: object) -> sqlite3.Connection:
        db = real_connect(*args, **kwargs)  # type: ignore[arg-type]
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {pages}")  # the database may not grow: SQLite answers SQLITE_FULL
        return db

    monkeypatch.setattr(database_module.sqlite3, "connect", capped)
    store = HistoryStore(history_dir)
    with pytest.raises(HistoryError, match="is full") as caught:
        for seed in range(500):
            create(store, prompt="p" * 4000, seed=seed)
    assert caught.value.retryable and caught.value.path == store.path


# -- values of the wrong kind --------------------------------------------------------------------


def test_a_bad_value_in_a_row_is_shown_as_missing_never_fatal(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    good = create(store, seed=1)
    complete(store, good, cost=2.0)
    bad = create(store, seed=2)
    complete(store, bad, color="blue")
    with sqlite3.connect(store.path) as db:
        db.execute(
            "UPDATE records SET cost = 'abc', input_mp = x'00ff', out_width = 'wide', seed = 2.5, "
            "finished_at = 'later', input_hashes = 'not json', prompt = 7 WHERE record_id = ?",
            (bad,),
        )
    reopened = HistoryStore(history_dir)
    frame = reopened.to_frame().set_index("record_id")
    row = frame.loc[bad]
    assert pd.isna(row["cost"]) and pd.isna(row["input_mp"]) and pd.isna(row["out_width"]) and pd.isna(row["seed"])
    assert pd.isna(row["finished_at"]) and row["input_hashes"] == [] and row["prompt"] == "7"
    assert frame.loc[good, "cost"] == 2.0 and frame.loc[good, "out_width"] == 32
    assert str(frame["cost"].dtype) == "Float64" and str(frame["seed"].dtype) == "UInt64"
    record = reopened.get(bad)
    assert record is not None and record.cost is None and record.out_width is None and record.input_hashes == []
    spent = reopened.spent().set_index("model")
    assert spent.loc["flux-2-klein-4b", "credits"] == pytest.approx(2.0 + 1.4)  # the bad cost counts at its estimate
    assert len(reopened.query(record_id=bad)) == 1 and len(reopened.tail(1)) == 1


def test_write_methods_keep_the_task_id_and_store_bad_values_as_missing(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    record_id = create(store)
    store.mark_submitted(
        record_id,
        task_id="t-9",
        polling_url=42,  # type: ignore[arg-type]
        cost="abc",  # type: ignore[arg-type]
        input_mp=float("nan"),
        output_mp=object(),  # type: ignore[arg-type]
        submitted_at="now",  # type: ignore[arg-type]
    )
    record = store.get(record_id)
    assert record is not None and (record.task_id, record.status) == ("t-9", "submitted")
    assert (record.polling_url, record.cost, record.input_mp, record.output_mp, record.submitted_at) == (None,) * 5
    store.mark_ready(
        record_id,
        image=jpeg(),
        ext="jpeg",
        width="32",  # type: ignore[arg-type]
        height=16.0,
        ready_at=2.0,
        finished_at=float("inf"),
        duration_s=True,  # type: ignore[arg-type]
        engine=None,
        result_seed=2**70,
        cost="free",  # type: ignore[arg-type]
    )
    record = store.get(record_id)
    assert record is not None and record.status == "ready" and record.image_file is not None
    assert (record.out_width, record.out_height, record.finished_at, record.duration_s) == (None, 16, None, None)
    assert record.result_seed is None and record.cost is None
    frame = store.to_frame()
    assert frame["task_id"].tolist() == ["t-9"] and pd.isna(frame["cost"].iloc[0])
    store.mark_failed(record_id, status=RecordStatus.FAILED, error_kind="X", error="e", finished_at="x")  # type: ignore[arg-type]
    assert store.get(record_id).status == "ready"  # type: ignore[union-attr]
