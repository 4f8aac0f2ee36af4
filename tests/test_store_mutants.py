"""The history store word for word: each value a write keeps, each message a refused write gives.

Written against the survivors of ``bench/mutation.py --module store`` (see ``bench/MUTATION.md``).
"""

from __future__ import annotations

import errno
import pathlib
import sqlite3
import time
import types
from pathlib import Path

import pytest

from flux_nb.history import store as store_module
from flux_nb.history.store import HistoryError, HistoryStore, RecordStatus
from flux_nb.images import ImageInput
from tests.test_store import complete, create, jpeg, submit


def ready_record(store: HistoryStore) -> str:
    record_id = create(store)
    complete(store, record_id)
    return record_id


# -- opening ----------------------------------------------------------------------------------------


def test_a_history_folder_is_made_with_its_missing_parents(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "a" / "b" / "history")
    assert (tmp_path / "a" / "b" / "history").is_dir() and store.count() == 0


def test_a_full_disk_when_making_the_folder_names_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(self: Path, *args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "mkdir", full)
    folder = tmp_path / "history"
    with pytest.raises(HistoryError) as caught:
        HistoryStore(folder)
    assert str(caught.value) == f"the disk holding {folder} is full: could not create the history folder"
    assert caught.value.path == folder and caught.value.retryable


def test_a_store_opened_read_only_refuses_writes_and_says_so_in_its_repr(history_dir: Path) -> None:
    writable = HistoryStore(history_dir)
    record_id = create(writable)
    readonly = HistoryStore(history_dir, readonly=True)
    assert readonly.readonly and not writable.readonly
    assert repr(readonly) == f"HistoryStore({str(history_dir.resolve())!r}, readonly=True)"
    assert repr(writable) == f"HistoryStore({str(history_dir.resolve())!r})"
    with pytest.raises(HistoryError, match="read-only"):
        readonly.mark_sending(record_id)


# -- messages of refused writes --------------------------------------------------------------------


WRITES = {
    "add a record": lambda store, rid: create(store),
    "record a cached image's use": lambda store, rid: store.record_use(rid, notebook="n"),
    "mark a request as sending": lambda store, rid: store.mark_sending(rid),
    "keep a submitted task's id": lambda store, rid: submit(store, rid),
    "complete a record": lambda store, rid: complete(store, rid),
    "end a record": lambda store, rid: store.mark_failed(
        rid, status=RecordStatus.FAILED, error_kind="x", error="y", finished_at=1.0
    ),
    "note an error": lambda store, rid: store.note_error(rid, error_kind="x", error="y"),
}


@pytest.mark.parametrize("doing", list(WRITES))
def test_each_refused_write_says_what_it_could_not_do(history_dir: Path, doing: str) -> None:
    record_id = ready_record(HistoryStore(history_dir))
    readonly = HistoryStore(history_dir, readonly=True)
    database = history_dir.resolve() / "history.sqlite"
    with pytest.raises(HistoryError) as caught:
        WRITES[doing](readonly, record_id)
    assert str(caught.value) == f"the history {database} is read-only here: could not {doing}"


def test_a_full_disk_while_writing_a_file_names_the_file(history_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = HistoryStore(history_dir)

    def full(target: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_module, "write_file", full)
    with pytest.raises(HistoryError) as caught:
        store.save_image(jpeg(), "jpeg")
    digest = store_module.sha256_hex(jpeg())
    target = history_dir.resolve() / "images" / digest[:2] / f"{digest}.jpeg"
    assert str(caught.value) == f"the disk holding {target} is full: could not write {digest}.jpeg"
    assert caught.value.path == target


def test_an_unknown_record_is_a_key_error_naming_it(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    with pytest.raises(KeyError) as caught:
        store.mark_sending("feedbeef0000")
    assert caught.value.args == ("feedbeef0000",)
    with pytest.raises(KeyError) as missing:
        store.load_input("0" * 64)
    assert missing.value.args == ("0" * 64,)


# -- files ------------------------------------------------------------------------------------------


def test_a_reference_of_unknown_format_is_kept_as_png(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    image = ImageInput(value="eA==", sha256="a" * 64, data=b"x", format=None)
    store.save_input(image)
    assert (history_dir / "inputs" / f"{'a' * 64}.png").read_bytes() == b"x"
    assert store.load_input("a" * 64) == b"x"


# -- values each write keeps -------------------------------------------------------------------------


def test_labels_are_kept_as_sorted_json(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    record = store.get(create(store, labels={"seed": 3, "model": "flex"}))
    assert record is not None and record.labels == '{"model": "flex", "seed": 3}'


def test_a_clashing_record_id_is_drawn_again_and_no_row_is_lost(
    history_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = HistoryStore(history_dir)
    drawn = iter(["aaaaaaaaaaaaaaaaaaaa", "aaaaaaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbbbbbb"])
    monkeypatch.setattr(
        store_module, "uuid", types.SimpleNamespace(uuid4=lambda: types.SimpleNamespace(hex=next(drawn)))
    )
    first, second = create(store), create(store)
    assert (first, second) == ("aaaaaaaaaaaa", "bbbbbbbbbbbb")
    assert store.count() == 2 and store.get(second).prompt == "a cat"  # type: ignore[union-attr]


def test_submitted_keeps_every_figure_and_never_undoes_ready(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    record_id = create(store)
    store.mark_submitted(
        record_id, task_id="t9", polling_url="http://x/p", cost=2.5, input_mp=0.75, output_mp=1.5, submitted_at=4.0
    )
    record = store.get(record_id)
    assert record is not None and record.status == "submitted"
    assert (record.task_id, record.polling_url, record.cost) == ("t9", "http://x/p", 2.5)
    assert (record.input_mp, record.output_mp, record.submitted_at) == (0.75, 1.5, 4.0)
    complete(store, record_id)
    submit(store, record_id)  # a late copy of the submit's answer
    assert store.get(record_id).status == "ready"  # type: ignore[union-attr]


def test_ready_keeps_its_times_and_seed_and_clears_an_earlier_error(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    record_id = create(store)
    store.note_error(record_id, error_kind="download", error="the download failed")
    store.mark_ready(
        record_id,
        image=jpeg(),
        ext="jpeg",
        width=32,
        height=16,
        ready_at=12.5,
        finished_at=13.5,
        duration_s=1.25,
        engine="preview",
        result_seed=77,
    )
    record = store.get(record_id)
    assert record is not None and record.status == "ready"
    assert (record.ready_at, record.finished_at, record.duration_s) == (12.5, 13.5, 1.25)
    assert (record.result_seed, record.error_kind, record.error) == (77, None, None)


def test_note_error_keeps_why_an_open_record_is_open_but_never_touches_a_ready_one(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    record_id = create(store)
    submit(store, record_id)
    store.note_error(record_id, error_kind="download", error="the download failed")
    record = store.get(record_id)
    assert record is not None and record.status == "submitted"
    assert (record.error_kind, record.error) == ("download", "the download failed")
    done = ready_record(store)
    store.note_error(done, error_kind="download", error="late")
    assert (store.get(done).error_kind, store.get(done).error) == (None, None)  # type: ignore[union-attr]
    with pytest.raises(KeyError):
        store.note_error("feedbeef0000", error_kind="x", error="y")


def test_a_use_has_its_own_id_times_and_owner(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    original = create(store)
    store.mark_ready(
        original,
        image=jpeg(),
        ext="jpeg",
        width=32,
        height=16,
        ready_at=2.0,
        finished_at=3.0,
        duration_s=5.0,
        engine="preview",
        result_seed=1,
    )
    before = time.time()
    use_id = store.record_use(original, notebook="m.ipynb", owner="elsewhere:1")
    after = time.time()
    use = store.get(use_id)
    assert use is not None and len(use_id) == 12 and use.cached_from == original
    assert before <= use.created_at == use.updated_at == use.ready_at == use.finished_at <= after
    assert (use.duration_s, use.cost, use.estimated_cost, use.owner) == (0.0, 0.0, 0.0, "elsewhere:1")
    mine = store.get(store.record_use(original, notebook="m.ipynb"))
    assert mine is not None and mine.owner == store_module.process_owner()


def test_a_use_of_an_original_owned_elsewhere_is_owned_here(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    original = ready_record(store)
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE records SET owner = 'elsewhere:1'")
    use = store.get(store.record_use(original, notebook="m.ipynb"))
    assert use is not None and use.owner == store_module.process_owner()


# -- reading ----------------------------------------------------------------------------------------


def test_input_hashes_that_are_not_a_list_read_as_none(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    record_id = create(store)
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE records SET input_hashes = ?", ('{"a": 1}',))
    assert store.get(record_id).input_hashes == []  # type: ignore[union-attr]


def test_a_read_only_history_from_before_uses_still_finds_cached_images(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    record_id = ready_record(store)
    key = store.get(record_id).request_key  # type: ignore[union-attr]
    with sqlite3.connect(store.path) as db:  # as a flux_nb from before cache uses left it
        for trigger in ("spent_insert", "spent_update", "spent_delete"):
            db.execute(f"DROP TRIGGER {trigger}")
        db.execute("DROP INDEX IF EXISTS records_cached_from")
        db.execute("ALTER TABLE records DROP COLUMN cached_from")
    old = HistoryStore(history_dir, readonly=True)  # read-only: it stays as it is
    assert "cached_from" not in old._db.columns
    found = old.find_cached(key)  # type: ignore[arg-type]
    assert found is not None and found.record_id == record_id
