"""A review belongs to the experiment it was made in: keyed by (experiment, image), shown on every row of that
experiment showing the image (cache hit, replay, bundle), never changing another experiment's; old histories
keep their reviews. Also the review's change numbers and the view's refresh, and empty filter lists.

Sessions run against a real local server on 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from flux_nb.errors import HistoryError, ValidationError
from flux_nb.history.filters import FILTERABLE
from flux_nb.history.review import MAX_NOTE, MAX_TAG
from flux_nb.history.store import HistoryStore
from flux_nb.history.view import HistoryView
from flux_nb.protocol import FluxRequest
from flux_nb.session import Flux
from tests.test_store import complete, create

SIZE = {"width": 64, "height": 64}


def test_rating_an_image_in_one_experiment_leaves_another_experiments_rating(flux: Flux) -> None:
    with flux.experimenting("seeds"):
        seed_study = flux.generate("a kite", seed=1, **SIZE)
    with flux.experimenting("models"):
        model_study = flux.generate("a kite", seed=1, **SIZE)  # a cache hit of the same image
    assert model_study.cached
    flux.rate(seed_study, 4)
    flux.rate(model_study, 3)
    flux.note(model_study, "flat light")
    seeds = flux.history(experiment="seeds")
    models = flux.history(experiment="models")
    assert seeds["rating"].tolist() == [4] and pd.isna(seeds["note"].iloc[0])
    assert models["rating"].tolist() == [3] and models["note"].tolist() == ["flat light"]
    assert flux.store.query(experiment="seeds", rating=4)["record_id"].tolist() == [seed_study.record_id]
    assert flux.store.query(rating=3)["record_id"].tolist() == [model_study.record_id]


def test_a_review_survives_a_replay_and_shows_on_its_cache_hits(flux: Flux) -> None:
    with flux.experimenting("study"):
        first = flux.generate("a lighthouse", seed=5, **SIZE)
        flux.rate(first, 5)
        flux.note(first, "keep this one")
        flux.tag(first, add="cover")
        replayed = flux.replay(first.record_id)  # a new record making the same bytes
        again = flux.generate("a lighthouse", seed=5, tag="again", **SIZE)  # the hit points at the replay
    frame = flux.history(experiment="study").set_index("record_id")
    assert replayed.record_id != first.record_id and again.cached
    for row in (first.record_id, replayed.record_id, again.record_id):
        review = (frame.loc[row, "rating"], frame.loc[row, "note"], frame.loc[row, "tags"])
        assert review == (5, "keep this one", "cover")


def test_a_bundle_carries_the_review_of_its_experiment_only(flux: Flux, tmp_path: Path) -> None:
    with flux.experimenting("handover"):
        shown = flux.generate("a fox", seed=2, **SIZE)
    with flux.experimenting("other"):
        elsewhere = flux.generate("a fox", seed=2, **SIZE)
    flux.rate(shown, 2)
    flux.rate(elsewhere, 5)
    opened = flux.open_bundle(flux.export(experiment="handover", path=tmp_path / "handover.zip"))
    try:
        frame = opened.history()
        assert frame["record_id"].tolist() == [shown.record_id] and frame["rating"].tolist() == [2]
        assert opened.store.query(rating=5).empty
    finally:
        opened.close()


def _old_history(folder: Path) -> dict[str, str]:
    """A history as the previous version wrote it: reviews keyed by record id (a use shares its original's)."""
    store = HistoryStore(folder)
    ids = {}
    ids["a"] = create(store, seed=1, experiment="a")
    complete(store, ids["a"], color="red")
    ids["a_use"] = store.record_use(ids["a"], notebook="n.ipynb", experiment="a")
    ids["b_use"] = store.record_use(ids["a"], notebook="n.ipynb", experiment="b")
    ids["plain"] = create(store, seed=2)
    complete(store, ids["plain"], color="blue")
    store.close()
    db = sqlite3.connect(folder / "history.sqlite")
    with db:
        db.execute("DROP TABLE reviews")
        db.execute("DROP TABLE review_tags")
        db.execute("DROP INDEX IF EXISTS records_image_sha256")
        db.execute(
            "CREATE TABLE reviews (record_id TEXT PRIMARY KEY, rating INTEGER, note TEXT, "
            "favourite INTEGER NOT NULL DEFAULT 0, seq INTEGER)"
        )
        db.execute(
            "CREATE TABLE review_tags (record_id TEXT NOT NULL, tag TEXT NOT NULL, "
            "PRIMARY KEY (record_id, tag)) WITHOUT ROWID"
        )
        db.execute("CREATE INDEX reviews_seq ON reviews (seq)")
        db.execute("CREATE INDEX review_tags_tag ON review_tags (tag)")
        db.execute("INSERT INTO reviews VALUES (?, 4, 'warm', 1, 100)", (ids["a"],))
        db.execute("INSERT INTO reviews VALUES (?, 2, NULL, 0, 101)", (ids["plain"],))
        db.executemany("INSERT INTO review_tags VALUES (?, ?)", [(ids["a"], "keep"), (ids["plain"], "dark")])
    db.close()
    return ids


def test_reviews_of_a_history_made_by_the_old_schema_are_migrated(tmp_path: Path) -> None:
    ids = _old_history(tmp_path / "old")
    store = HistoryStore(tmp_path / "old")
    frame = store.to_frame().set_index("record_id")
    for row in ("a", "a_use", "b_use"):  # every row that showed the reviewed image keeps what it showed
        assert (frame.loc[ids[row], "rating"], frame.loc[ids[row], "note"], frame.loc[ids[row], "tags"]) == (
            4,
            "warm",
            "keep",
        )
        assert frame.loc[ids[row], "favourite"]
    assert frame.loc[ids["plain"], "rating"] == 2 and frame.loc[ids["plain"], "tags"] == "dark"
    store.rate(ids["b_use"], 1)  # from now on, experiments part ways
    frame = store.to_frame().set_index("record_id")
    assert frame.loc[ids["b_use"], "rating"] == 1 and frame.loc[ids["a"], "rating"] == 4
    assert frame.loc[ids["a_use"], "rating"] == 4
    db = sqlite3.connect(tmp_path / "old" / "history.sqlite")
    names = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    db.close()
    assert {"reviews_seq", "review_tags_tag", "records_image_sha256"} <= names
    assert not {"reviews_by_record", "review_tags_by_record"} & names
    store.close()


def test_a_re_review_takes_a_new_change_number_so_refresh_shows_it(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    record_id = create(store, seed=1)
    complete(store, record_id)
    view = store.view()
    store.rate(record_id, 3)
    assert view.refresh()["rating"].tolist() == [3]
    store.rate(record_id, 4)
    assert view.refresh()["rating"].tolist() == [4]
    store.tag(record_id, add="x")
    assert view.refresh()["tags"].tolist() == ["x"]


def test_rows_appended_by_refresh_are_updated_in_place_later(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    view = store.view()
    record_id = create(store, seed=1)
    view.refresh()
    store.mark_failed(record_id, status="failed", error_kind="X", error="e", finished_at=1.0)  # type: ignore[arg-type]
    frame = view.refresh()
    assert frame["record_id"].tolist() == [record_id] and frame["status"].tolist() == ["failed"]
    pd.testing.assert_frame_equal(frame, store.to_frame())


def test_an_empty_list_filter_matches_no_row(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    for seed in (1, 2):
        complete(store, create(store, seed=seed), color="red" if seed == 1 else "blue")
    assert len(store.query(seed=[])) == 0 and len(store.query(seed=[1])) == 1
    assert len(store.query(rating=[])) == 0


def _same(view: HistoryView, store: HistoryStore) -> None:
    pd.testing.assert_frame_equal(view.refresh(), store.to_frame())


def test_a_row_written_out_of_order_is_put_in_its_place(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    first = create(store, seed=1)
    view = store.view()
    late = create(store, seed=2)
    store._update(late, {"created_at": 1.0})  # another process's row, made earlier, written later
    _same(view, store)
    assert view.frame["record_id"].tolist() == [late, first]
    store._update(first, {"created_at": 0.5})  # a held row that moved
    _same(view, store)
    assert view.frame["record_id"].tolist() == [first, late]
    pair = [create(store, seed=3), create(store, seed=4)]  # two rows appended by one refresh
    _same(view, store)
    frame = view.frame
    store.rate(pair[1], 2)  # then updated in place, where they were appended
    store._update(pair[0], {"input_hashes": json.dumps(["a" * 64])})
    _same(view, store)
    assert view.frame is frame and view.frame["input_hashes"].iloc[2] == ["a" * 64]


def test_a_filtered_view_drops_rows_that_stop_matching_and_rereads_after_many_appends(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    kept, leaving = create(store, seed=1), create(store, seed=2)
    view = store.view(status="pending")
    view.REREAD_AFTER = 2
    store.mark_failed(leaving, status="failed", error_kind="X", error="e", finished_at=1.0)  # type: ignore[arg-type]
    pd.testing.assert_frame_equal(view.refresh(), store.query(status="pending"))
    assert view.frame["record_id"].tolist() == [kept]
    for seed in range(3, 7):  # appended one refresh at a time, then read afresh
        create(store, seed=seed)
        pd.testing.assert_frame_equal(view.refresh(), store.query(status="pending"))
    assert len(view.frame) == 5 and view._at == {r: i for i, r in enumerate(view.frame["record_id"])}
    assert view._appends == 1  # three appends, a fresh read, one more append
    assert "5 rows" in repr(view) and "'status': 'pending'" in repr(view)


def test_a_view_sees_reviews_of_its_rows_and_nothing_when_nothing_changed(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    record_id = create(store, seed=1)
    complete(store, record_id)
    use = store.record_use(record_id, notebook="n.ipynb")
    view = store.view(cached=True)
    frame = view.refresh()
    assert view.refresh() is frame  # nothing written: the same frame
    store.favourite(use)
    store.note(use, "soft")
    assert view.refresh() is frame  # updated in place
    pd.testing.assert_frame_equal(frame, store.query(cached=True))
    assert view.frame["favourite"].tolist() == [True] and view.frame["note"].tolist() == ["soft"]


def test_review_writes_on_a_read_only_history_say_what_they_tried(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    record_id = create(store, seed=1)
    store.close()
    readonly = HistoryStore(history_dir, readonly=True)
    for call, doing in (
        (lambda: readonly.rate(record_id, 3), "rate records"),
        (lambda: readonly.note(record_id, "x"), "note records"),
        (lambda: readonly.tag(record_id, add="x"), "change tags"),
        (lambda: readonly.favourite(record_id), "mark favourites"),
    ):
        with pytest.raises(HistoryError, match=f"could not {doing}"):
            call()


def test_review_values_are_checked_at_their_limits(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    record_id = create(store, seed=1)
    assert store.note(record_id, "n" * MAX_NOTE) == [record_id]
    with pytest.raises(ValidationError, match=f"note of {MAX_NOTE + 1} characters is longer than {MAX_NOTE}"):
        store.note(record_id, "n" * (MAX_NOTE + 1))
    assert store.tag(record_id, add="t" * MAX_TAG) == [record_id]
    for bad in ("t" * (MAX_TAG + 1), 5, " ", "a,b"):
        with pytest.raises(ValidationError, match="is not a tag"):
            store.tag(record_id, add=[bad])  # type: ignore[list-item]
    assert store.to_frame()["tags"].tolist() == ["t" * MAX_TAG]
    assert store.to_frame()["note"].tolist() == ["n" * MAX_NOTE]


def test_a_review_of_more_rows_than_one_sql_chunk_reaches_every_row(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    base = {"backend": "local:preview", "endpoint": "http://127.0.0.1:1", "notebook": "n.ipynb", "input_hashes": []}
    ids = store.create_many(
        [{"request": FluxRequest("a cat", seed=seed), "estimated_cost": 0.0, **base} for seed in range(501)]
    )
    assert store.rate(ids, 3) == ids
    assert store.to_frame()["rating"].tolist() == [3] * 501


def test_reviewing_unknown_ids_names_the_first_five(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    record_id = create(store, seed=1)
    five = [f"nope{i}" for i in range(5)]
    with pytest.raises(ValidationError, match=r"no record with id nope0, nope1, nope2, nope3, nope4 in this history"):
        store.rate([record_id, *five], 3)
    with pytest.raises(ValidationError, match=r"id nope0, nope1, nope2, nope3, nope4 and 2 more in this history"):
        store.rate([*five, "nope5", "nope6"], 3)
    with pytest.raises(ValidationError, match=r"id nope0, nope1, nope2, nope3, nope4 and 1 more in this history"):
        store.rate([*five, "nope5"], 3)
    assert store.to_frame()["rating"].isna().all()  # nothing reviewed when one id is unknown


def test_filters_combine_review_columns_tags_and_uses(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    ids = [create(store, seed=seed) for seed in (1, 2)]
    for record_id, color in zip(ids, ("red", "blue"), strict=True):
        complete(store, record_id, color=color)
    use = store.record_use(ids[0], notebook="n.ipynb")
    store.tag(ids, add="a")
    store.tag(ids[1], add="b")
    store.favourite(ids[1])
    store.rate(ids[0], 0)  # zero stars is a rating
    assert store.query(tags=["a", "b"])["record_id"].tolist() == [ids[1]]
    assert store.query(tags="a", seed=2)["record_id"].tolist() == [ids[1]]
    assert store.query(cached=True, seed=2).empty and store.query(cached=True, seed=1)["record_id"].tolist() == [use]
    assert store.query(favourite=2)["record_id"].tolist() == [ids[1]]  # any true value: a favourite
    assert store.query(favourite=False)["record_id"].tolist() == [ids[0], use]
    assert store.query(rating=0)["record_id"].tolist() == [ids[0], use]
    with pytest.raises(ValidationError, match=re.escape(f"(try one of {', '.join(FILTERABLE)})")):
        store.query(colour="red")
    with pytest.raises(ValidationError, match=re.escape("filter seed={'$gt': 1}: give text")):
        store.query(seed={"$gt": 1})
    with pytest.raises(ValidationError, match=re.escape("record ids must be non-empty strings, got ['']")):
        store.rate([ids[0], ""], 3)
