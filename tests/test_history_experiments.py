"""The experiments data layer: uses of cached images, experiments, reviews, SQL filters, change tokens, views."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from flux_nb.errors import ValidationError
from flux_nb.history.store import HistoryStore, RecordStatus
from flux_nb.history.view import HistoryView
from tests.test_store import complete, create

ROOT = Path(__file__).resolve().parent.parent


def ready(store: HistoryStore, seed: int, color: str = "red", **options: object) -> str:
    record_id = create(store, seed=seed, **options)
    complete(store, record_id, color=color, cost=1.5)
    return record_id


# -- uses: a cache hit is a row of the cell that showed it ---------------------------------------


def test_a_cache_hit_is_recorded_as_a_free_use_pointing_at_its_original(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    original = ready(store, 1, notebook="a.ipynb", tag="first", experiment="light")
    use = store.record_use(original, notebook="b.ipynb", tag="again", experiment="dark", labels={"seed": 1})
    record, source = store.get(use), store.get(original)
    assert record is not None and source is not None and use != original
    assert (record.cached_from, record.cached, record.cost, record.estimated_cost) == (original, True, 0.0, 0.0)
    assert (record.notebook, record.tag, record.experiment, record.labels) == (
        "b.ipynb",
        "again",
        "dark",
        '{"seed": 1}',
    )
    assert record.image_file == source.image_file and record.request_key == source.request_key
    assert record.status == "ready" and record.task_id is None and not source.cached
    dark = store.to_frame(experiment="dark")
    assert dark["record_id"].tolist() == [use] and dark["cached"].tolist() == [True]
    assert dark["cached_from"].tolist() == [original] and dark["cost"].tolist() == [0.0]
    assert dark["image_path"].tolist() == store.to_frame(experiment="light")["image_path"].tolist()
    assert store.to_frame(notebook="b.ipynb")["record_id"].tolist() == [use]
    assert store.to_frame(tag="first")["record_id"].tolist() == [original]
    assert store.to_frame()["cached"].tolist() == [False, True]
    # A use of a use points at the first original; the cache and the bill only know real requests.
    again = store.record_use(use, notebook="c.ipynb")
    assert store.get(again).cached_from == original  # type: ignore[union-attr]
    assert store.find_cached(source.request_key).record_id == original  # type: ignore[arg-type, union-attr]
    spent = store.spent("b.ipynb").iloc[0]
    assert (spent["requests"], spent["credits"], spent["notebook_requests"]) == (1, 1.5, 0)


def test_a_use_needs_a_ready_record(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    pending = create(store)
    with pytest.raises(KeyError, match="nope"):
        store.record_use("nope", notebook="n")
    with pytest.raises(ValueError, match="pending, not ready"):
        store.record_use(pending, notebook="n")
    assert store.count() == 1


# -- experiments and old histories ---------------------------------------------------------------


def test_a_history_from_before_experiments_gains_the_new_columns_and_tables(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    old = ready(store, 1)
    with sqlite3.connect(store.path) as db:
        for trigger in ("spent_insert", "spent_update", "spent_delete"):
            db.execute(f"DROP TRIGGER {trigger}")
        for column in ("experiment", "cached_from", "labels", "seq"):
            db.execute(f"DROP INDEX IF EXISTS records_{column}")
            db.execute(f"DROP INDEX IF EXISTS records_{column}_newest")
            db.execute(f"ALTER TABLE records DROP COLUMN {column}")
        for table in ("reviews", "review_tags", "changes", "spent_totals"):
            db.execute(f"DROP TABLE {table}")
    reopened = HistoryStore(history_dir)
    assert reopened.get(old).experiment is None and reopened.to_frame()["record_id"].tolist() == [old]  # type: ignore[union-attr]
    new = create(reopened, experiment="x")
    reopened.rate(old, 5)
    frame = reopened.to_frame().set_index("record_id")
    assert frame.loc[new, "experiment"] == "x" and pd.isna(frame.loc[old, "experiment"])
    assert frame.loc[old, "rating"] == 5 and reopened.to_frame(experiment="x").index.size == 1
    assert reopened.spent().set_index("model").loc["flux-2-klein-4b", "requests"] == 1  # totals rebuilt from rows


# -- reviews ------------------------------------------------------------------------------------


def test_reviews_join_the_frame_and_follow_the_image(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    first, second = ready(store, 1), ready(store, 2, color="blue")
    use = store.record_use(first, notebook="b.ipynb")
    assert store.rate([first, second], 4) == [first, second]
    assert store.rate(use, 5) == [first]  # reviewing a use reviews the image it shows
    store.note(second, "too dark")
    store.tag([first, second], add=["keep", "portfolio"])
    store.tag(second, add="blue", remove=["portfolio"])
    store.favourite(use)
    frame = store.to_frame().set_index("record_id")
    assert frame.loc[first, "rating"] == 5 and frame.loc[use, "rating"] == 5 and frame.loc[second, "rating"] == 4
    assert frame.loc[second, "note"] == "too dark" and pd.isna(frame.loc[first, "note"])
    assert frame.loc[first, "tags"] == "keep,portfolio" and frame.loc[second, "tags"] == "blue,keep"
    assert frame.loc[use, "tags"] == "keep,portfolio"
    assert frame["favourite"].tolist() == [True, False, True] and str(frame["favourite"].dtype) == "bool"
    store.rate(first, None)
    store.note(second, "")
    store.favourite(first, on=False)
    frame = store.to_frame().set_index("record_id")
    assert pd.isna(frame.loc[first, "rating"]) and pd.isna(frame.loc[second, "note"]) and not frame["favourite"].any()
    assert store.get(first).status == "ready"  # type: ignore[union-attr]


@pytest.mark.parametrize("stars", [6, -1, 2.5, True, "5"])
def test_a_rating_outside_0_to_5_stars_is_refused(history_dir: Path, stars: object) -> None:
    store = HistoryStore(history_dir)
    record_id = ready(store, 1)
    with pytest.raises(ValidationError, match="0 to 5"):
        store.rate(record_id, stars)  # type: ignore[arg-type]
    assert pd.isna(store.to_frame()["rating"].iloc[0])


def test_reviews_of_unknown_ids_name_them_and_change_nothing(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    record_id = ready(store, 1)
    with pytest.raises(ValidationError, match="no record with id missing1, missing2"):
        store.rate([record_id, "missing1", "missing2"], 3)
    with pytest.raises(ValidationError, match="without commas"):
        store.tag(record_id, add=["a,b"])
    with pytest.raises(ValidationError, match="not text"):
        store.note(record_id, 5)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="non-empty strings"):
        store.favourite([])
    frame = store.to_frame()
    assert pd.isna(frame["rating"].iloc[0]) and pd.isna(frame["tags"].iloc[0])


# -- filters in SQL -------------------------------------------------------------------------------


def test_query_filters_by_column_values_and_never_runs_user_text(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    colors = ["red", "green", "blue", "white"]  # four images: a review follows the image
    ids = [ready(store, seed, colors[seed], notebook=f"{seed % 2}.ipynb") for seed in range(4)]
    failed = create(store, seed=9)
    store.mark_failed(failed, status=RecordStatus.FAILED, error_kind="X", error="e", finished_at=1)
    store.tag(ids[1], add="best")
    assert store.query(status="ready", notebook="1.ipynb")["record_id"].tolist() == [ids[1], ids[3]]
    assert store.query(seed=[0, 2, 9])["record_id"].tolist() == [ids[0], ids[2], failed]
    assert store.query(image_path=None)["record_id"].tolist() == [failed]
    assert store.query(tags="best")["record_id"].tolist() == [ids[1]]
    assert store.query(cached=True).empty and len(store.query(cached=False)) == 5
    assert store.query(prompt="a cat' OR '1'='1").empty
    with pytest.raises(ValidationError, match="cannot filter on 'status = status OR 1'"):
        store.query(**{"status = status OR 1": "x"})
    with pytest.raises(ValidationError, match="give text, a number"):
        store.query(seed={"$gt": 1})
    assert store.count() == 5


def test_tail_reads_the_newest_rows_oldest_first(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    ids = [create(store, seed=seed, tag="odd" if seed % 2 else "even") for seed in range(6)]
    assert store.tail(3)["record_id"].tolist() == ids[3:]
    assert store.tail(2, tag="even")["record_id"].tolist() == [ids[2], ids[4]]
    assert store.tail(0).empty and len(store.tail(100)) == 6
    with pytest.raises(ValueError, match="row count"):
        store.tail(-1)


@pytest.mark.parametrize("column", ["tag", "experiment", "notebook"])
def test_the_newest_rows_of_a_filter_come_from_an_index_without_sorting_every_match(
    history_dir: Path, column: str
) -> None:
    """``%flux history 20 --tag T`` at a million rows: SQLite walks (column, created_at), sorting nothing."""
    store = HistoryStore(history_dir)
    create(store, seed=1, **{column: "x"})
    newest = f"SELECT rowid FROM records WHERE {column} IS ? ORDER BY created_at DESC, rowid DESC LIMIT 20"
    with sqlite3.connect(store.path) as db:
        plan = " / ".join(row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {newest}", ("x",)))
    assert f"INDEX records_{column}_newest ({column}=?)" in plan and "TEMP B-TREE" not in plan, plan


def test_a_history_without_the_newest_first_indexes_gets_them_when_opened(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    create(store, seed=1, tag="t")
    with sqlite3.connect(history_dir / "history.sqlite") as db:
        db.execute("DROP INDEX records_tag_newest")
    reopened = HistoryStore(history_dir)
    with sqlite3.connect(reopened.path) as db:
        names = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "records_tag_newest" in names and reopened.tail(5, tag="t")["seed"].tolist() == [1]


def test_a_read_keeps_creation_order_when_rows_were_written_out_of_it(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    ids = [create(store, seed=seed) for seed in range(40)]
    with sqlite3.connect(store.path) as db:  # a row written late but created early (another process's clock)
        db.execute("UPDATE records SET created_at = 0 WHERE record_id = ?", (ids[30],))
    frame = store.to_frame()
    assert frame["record_id"].tolist() == [ids[30], *ids[:30], *ids[31:]]
    assert frame["seed"].tolist() == [30, *range(30), *range(31, 40)]


# -- changes since a token, and views -------------------------------------------------------------


def test_frame_since_returns_only_rows_written_or_reviewed_after_the_token(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    first = ready(store, 1)
    token = store.change_token()
    changed, same = store.frame_since(token)
    assert changed.empty and same == token and list(changed.columns) == list(store.to_frame().columns)
    second = create(store, seed=2)
    changed, token = store.frame_since(token)
    assert changed["record_id"].tolist() == [second]
    use = store.record_use(first, notebook="b.ipynb")
    changed, token = store.frame_since(token)
    assert changed["record_id"].tolist() == [use]
    store.rate(first, 3)
    changed, token = store.frame_since(token)
    assert changed["record_id"].tolist() == [first, use] and changed["rating"].tolist() == [3, 3]
    assert store.changed_ids(token) == [] and store.frame_since(token)[0].empty


def test_a_view_refreshes_to_the_same_frame_as_a_full_read(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    first = ready(store, 1)
    view = store.view()
    assert isinstance(view, HistoryView) and view.frame["record_id"].tolist() == [first]
    second = create(store, seed=2)
    store.rate(first, 2)
    store.mark_failed(second, status=RecordStatus.FAILED, error_kind="X", error="e", finished_at=1)
    third = create(store, seed=3)
    pd.testing.assert_frame_equal(view.refresh(), store.to_frame())
    assert view.refresh()["record_id"].tolist() == [first, second, third]
    ready_only = store.view(status="ready")
    complete(store, third)
    store.mark_failed(first, status=RecordStatus.FAILED, error_kind="X", error="e", finished_at=1)  # stays ready
    assert ready_only.refresh()["record_id"].tolist() == [first, third]
    with sqlite3.connect(store.path) as db:  # a row that stops matching the view's filter leaves it
        db.execute("UPDATE records SET status = 'failed', seq = 1000 WHERE record_id = ?", (first,))
        db.execute("UPDATE changes SET seq = 1000")
    pd.testing.assert_frame_equal(ready_only.refresh(), store.query(status="ready"))
    assert ready_only.frame["record_id"].tolist() == [third]


def test_importing_the_store_does_not_import_pandas() -> None:
    code = (
        "import sys, types\n"
        "pkg = types.ModuleType('flux_nb'); pkg.__path__ = [sys.argv[1]]; sys.modules['flux_nb'] = pkg\n"
        "import flux_nb.history.store\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'pandas', 'pyarrow'}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code, str(ROOT / "flux_nb")], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_running_totals_match_the_records_through_every_kind_of_write(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    for seed in range(6):
        record_id = ready(store, seed, color=["red", "blue", "green"][seed % 3], experiment=f"e{seed % 2}")
        if seed == 4:
            store.record_use(record_id, notebook="b.ipynb", experiment="e0")
    moderated = create(store, seed=7)
    store.mark_failed(moderated, status=RecordStatus.MODERATED, error_kind="M", error="m", finished_at=1)
    with sqlite3.connect(store.path) as db:  # writers that are not this store: raw SQL, and a bad cost
        db.execute("UPDATE records SET notebook = 'c.ipynb', cost = 'abc' WHERE seed = 1")
        db.execute("DELETE FROM records WHERE seed = 2")
    direct = """SELECT model, backend, COUNT(*), TOTAL(COALESCE(CASE WHEN typeof(cost) IN ('real', 'integer')
                THEN cost END, estimated_cost)), SUM(notebook = 'c.ipynb') FROM records
                WHERE status = 'ready' AND cached_from IS NULL AND experiment IS ? GROUP BY model, backend"""
    for experiment in ("e0", "e1"):
        spent = store.spent("c.ipynb", experiment=experiment)
        expected = store._db.read(direct, [experiment])
        got = spent[["model", "backend", "requests", "credits", "notebook_requests"]].itertuples(index=False)
        assert [tuple(row) for row in got] == [tuple(row) for row in expected]
    assert store.spent()["requests"].sum() == 5 and store.spent()["credits"].sum() == pytest.approx(4 * 1.5 + 1.4)


def test_frames_see_rows_written_between_reads(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    first = create(store)
    assert store.to_frame()["record_id"].tolist() == [first]
    second = create(store, seed=2)
    store.rate(first, 1)
    frame = store.to_frame()
    assert frame["record_id"].tolist() == [first, second] and frame["rating"].tolist()[0] == 1


def test_a_view_reads_afresh_after_many_appends_and_still_matches(
    history_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(HistoryView, "REREAD_AFTER", 2)
    store = HistoryStore(history_dir)
    view = store.view()
    for seed in range(5):
        create(store, seed=seed)
        pd.testing.assert_frame_equal(view.refresh(), store.to_frame())
    assert view._appends == 2  # reread at the third append, then two more
