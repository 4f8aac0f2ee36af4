"""The history store: durable rows, content-addressed files, typed frames, many writers at once."""

from __future__ import annotations

import io
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from flux_nb.errors import RecordTakenError
from flux_nb.history import database as database_module
from flux_nb.history import store as store_module
from flux_nb.history.store import COLUMNS, FRAME_COLUMNS, HistoryStore, RecordStatus, request_key
from flux_nb.images import prepare_image, sha256_hex
from flux_nb.protocol import FluxRequest


def jpeg(color: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 16), color).save(buffer, "JPEG")
    return buffer.getvalue()


def create(store: HistoryStore, prompt: str = "a cat", seed: int = 1, **options: object) -> str:
    request = FluxRequest(prompt, seed=seed, width=512, height=512)
    defaults = {"backend": "local:preview", "endpoint": "http://127.0.0.1:1", "notebook": "n.ipynb", "input_hashes": []}
    return store.create(request, estimated_cost=1.4, **{**defaults, **options})


def complete(store: HistoryStore, record_id: str, color: str = "red", cost: float | None = None) -> Path:
    """Mark a record ready with a small JPEG."""
    return store.mark_ready(
        record_id,
        image=jpeg(color),
        ext="jpeg",
        width=32,
        height=16,
        ready_at=2.0,
        finished_at=3.0,
        duration_s=1.0,
        engine="preview",
        result_seed=1,
        cost=cost,
    )


def submit(store: HistoryStore, record_id: str, polling_url: str | None = "http://x/v1/get_result?id=t1") -> None:
    store.mark_submitted(
        record_id, task_id="t1", polling_url=polling_url, cost=1.4, input_mp=0, output_mp=0.25, submitted_at=1.0
    )


# -- one record's life ------------------------------------------------------------------------


def test_a_record_is_written_before_sending_with_every_request_field(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    before = time.time()
    request = FluxRequest(
        "a fox", model="flux-2-flex", seed=7, width=768, height=512, steps=20, guidance=3.5, output_format="png"
    )
    request = request.with_(webhook_url="https://hook.example/x", webhook_secret="s3cret")
    record_id = store.create(
        request,
        backend="bfl",
        endpoint="https://api.bfl.ai",
        notebook="a.ipynb",
        input_hashes=["h1", "h2"],
        estimated_cost=5.0,
        tag="try",
        replay_of="abc",
    )
    record = store.get(record_id)
    assert record is not None and len(record_id) == 12 and int(record_id, 16) >= 0
    assert record.status == RecordStatus.PENDING and record.image_file is None and record.task_id is None
    assert record.request_fields() == {
        "prompt": "a fox",
        "model": "flux-2-flex",
        "seed": 7,
        "width": 768,
        "height": 512,
        "safety_tolerance": 2,
        "output_format": "png",
        "steps": 20,
        "guidance": 3.5,
    }
    assert (record.backend, record.endpoint, record.notebook, record.tag, record.replay_of) == (
        "bfl",
        "https://api.bfl.ai",
        "a.ipynb",
        "try",
        "abc",
    )
    assert record.input_hashes == ["h1", "h2"] and record.webhook_url == "https://hook.example/x"
    assert record.request_key == request_key(request, "bfl", ["h1", "h2"]) and record.estimated_cost == 5.0
    assert record.created_at == record.updated_at and before <= record.created_at <= time.time()
    assert all(b"s3cret" not in path.read_bytes() for path in history_dir.iterdir())  # database and WAL


def test_submitted_then_ready_completes_the_row_and_keeps_the_image_by_hash(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    record_id = create(store)
    assert store.get(record_id).status == "pending" and store.resumable() == []  # type: ignore[union-attr]
    store.mark_sending(record_id)
    assert store.get(record_id).status == "sending" and store.resumable() == []  # type: ignore[union-attr]
    submit(store, record_id)
    assert [r.record_id for r in store.resumable()] == [record_id]
    path = complete(store, record_id)
    digest = sha256_hex(jpeg())
    assert path == history_dir.resolve() / "images" / digest[:2] / f"{digest}.jpeg"
    assert sha256_hex(path.read_bytes()) == digest
    record = store.get(record_id)
    assert record is not None and record.status == "ready" and record.image_file == path
    assert record.image_path == f"images/{digest[:2]}/{digest}.jpeg" and record.image_sha256 == digest
    assert record.cost == 1.4  # from the submit answer, since mark_ready got none
    assert (record.out_width, record.out_height, record.engine, record.duration_s) == (32, 16, "preview", 1.0)
    assert record.updated_at >= record.created_at
    assert store.resumable() == [] and store.orphans() == []
    assert not list(history_dir.rglob(".tmp-*"))


def test_history_survives_reopening_in_this_and_another_process(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    record_id = create(store)
    complete(store, create(store, seed=2))
    reopened = HistoryStore(history_dir)
    assert reopened.get(record_id) == store.get(record_id) and reopened.count() == 2
    code = (
        "from flux_nb.history.store import HistoryStore\n"
        f"r = HistoryStore({str(history_dir)!r}).get({record_id!r})\n"
        "print(r.prompt, r.status)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "a cat pending"


def test_a_failure_never_overwrites_a_ready_record(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    record_id = create(store)
    complete(store, record_id)
    store.mark_failed(record_id, status=RecordStatus.FAILED, error_kind="TaskNotFoundError", error="x", finished_at=9)
    record = store.get(record_id)
    assert record is not None and record.status == "ready" and record.error is None


def test_failures_keep_their_status_kind_and_message(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    for status in (RecordStatus.FAILED, RecordStatus.MODERATED, RecordStatus.UNKNOWN, RecordStatus.CANCELLED):
        record_id = create(store)
        store.mark_failed(record_id, status=status, error_kind="SomeError", error="e", finished_at=4.0)
        record = store.get(record_id)
        assert record is not None and (record.status, record.error_kind, record.error) == (status, "SomeError", "e")
        assert record.finished_at == 4.0


def test_updating_a_record_that_does_not_exist_is_an_error(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    with pytest.raises(KeyError):
        submit(store, "000000000000")
    with pytest.raises(KeyError):
        store.mark_failed("nope", status=RecordStatus.FAILED, error_kind="X", error="e", finished_at=1)


def test_lookup_by_id_or_unique_prefix(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    record_id = create(store)
    assert store.get(record_id[:6]).record_id == record_id  # type: ignore[union-attr]
    assert store.get("zzzz") is None and store.get("") is None and store.get("%") is None


def test_orphans_and_resumable(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    pending, sending, submitted, no_url, done = (create(store, seed=i) for i in range(5))
    store.mark_sending(sending)
    submit(store, submitted)
    submit(store, no_url, polling_url=None)
    complete(store, done)
    with pytest.raises(RecordTakenError):  # a finished record never goes back, nor goes out again
        store.mark_sending(done)
    assert store.get(done).status == "ready"  # type: ignore[union-attr]
    assert [r.record_id for r in store.resumable()] == [submitted]
    assert store.orphans() == []  # this process still runs: its open records are its own
    # The same rows, written by a process that has died since.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    owner = f"{store_module.socket.gethostname()}:{int(dead.stdout)}"
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE records SET owner = ?", (owner,))
    assert [(r.record_id, r.status) for r in store.orphans()] == [(pending, "pending"), (sending, "sending")]
    # This very pid, but written by an earlier process that had it (a restarted container): gone too.
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE records SET owner = ?", (store_module.process_owner().partition("@")[0] + "@1",))
    assert len(store.orphans()) == 2
    with sqlite3.connect(store.path) as db:  # another host's process: its liveness is not known here
        db.execute("UPDATE records SET owner = 'elsewhere:1'")
    assert store.orphans() == []


def test_a_history_from_before_the_owner_column_gains_it(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    record_id = create(store)
    with sqlite3.connect(store.path) as db:  # as an older flux_nb left it: no running totals either
        for trigger in ("spent_insert", "spent_update", "spent_delete"):
            db.execute(f"DROP TRIGGER {trigger}")
        db.execute("DROP TABLE spent_totals")
        db.execute("ALTER TABLE records DROP COLUMN owner")
    reopened = HistoryStore(history_dir)
    record = reopened.get(record_id)
    assert record is not None and record.owner is None and record.status == "pending"
    assert reopened.get(create(reopened)).owner == store_module.process_owner()  # type: ignore[union-attr]


# -- files ------------------------------------------------------------------------------------


def test_inputs_are_stored_by_hash_and_loaded_back(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    image = prepare_image(jpeg("blue"))
    url = prepare_image("https://example.com/x.png")
    store.save_input(image)
    store.save_input(image)  # the same content twice is one file
    store.save_input(url)
    assert (history_dir / "inputs" / f"{image.sha256}.jpeg").read_bytes() == jpeg("blue")
    assert store.load_input(image.sha256) == jpeg("blue")
    assert store.load_input(url.sha256) == "https://example.com/x.png"
    for missing in ("0" * 64, "../history", "*"):
        with pytest.raises(KeyError):
            store.load_input(missing)


def test_a_failed_write_leaves_no_file_behind(history_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = HistoryStore(history_dir)

    def crash(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(store_module.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        store.save_image(jpeg(), "jpg")
    assert [p for p in (history_dir / "images").rglob("*") if p.is_file()] == []


def test_image_extensions_are_normalised_and_checked(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    assert store.save_image(jpeg(), ".JPG")[0].endswith(".jpeg")
    with pytest.raises(ValueError, match="plain file extension"):
        store.save_image(jpeg(), "../x")


# -- cache keys -------------------------------------------------------------------------------


def test_request_key_ignores_the_webhook_and_follows_what_shapes_the_image() -> None:
    base = FluxRequest("a cat", seed=1, width=512, height=512)
    key = request_key(base, "bfl", ["h1"])
    assert request_key(base.with_(webhook_url="https://h", webhook_secret="s"), "bfl", ["h1"]) == key
    assert len(key) == 64 and request_key(base, "bfl", ("h1",)) == key
    different = [
        request_key(base.with_(seed=2), "bfl", ["h1"]),
        request_key(base, "bfl", ["h2"]),
        request_key(base, "bfl", ["h1", "h2"]),
        request_key(base, "bfl", []),
        request_key(base, "local:preview", ["h1"]),
        request_key(base.with_(output_format="png"), "bfl", ["h1"]),
        request_key(base.with_(prompt="a dog"), "bfl", ["h1"]),
        request_key(base.with_(width=768), "bfl", ["h1"]),
        request_key(base.with_(safety_tolerance=5), "bfl", ["h1"]),
        request_key(base.with_(model="flux-2-pro"), "bfl", ["h1"]),
    ]
    assert len({key, *different}) == 1 + len(different)
    assert request_key(base, "bfl", ["a", "b"]) != request_key(base, "bfl", ["b", "a"])  # reference order matters
    flex = FluxRequest("x", model="flux-2-flex", guidance=5)
    assert request_key(flex, "bfl", []) == request_key(flex.with_(guidance=5.0), "bfl", [])


def test_cache_lookup_needs_a_ready_record_whose_file_exists(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    key = request_key(FluxRequest("a cat", seed=1, width=512, height=512), "local:preview", [])
    first = create(store, endpoint="http://127.0.0.1:1111")
    assert store.find_cached(key) is None  # pending
    store.mark_failed(first, status=RecordStatus.FAILED, error_kind="X", error="e", finished_at=1)
    assert store.find_cached(key) is None  # failed
    older = create(store, endpoint="http://127.0.0.1:2222")  # the embedded server's port changed
    complete(store, older, color="blue")
    assert store.find_cached(key).record_id == older  # type: ignore[union-attr]
    newer = create(store)
    newest_path = complete(store, newer, color="green")
    assert store.find_cached(key).record_id == newer  # type: ignore[union-attr]
    newest_path.unlink()
    assert store.find_cached(key).record_id == older  # type: ignore[union-attr]
    assert store.find_cached(request_key(FluxRequest("a cat", seed=2), "local:preview", [])) is None


# -- frames and credits -----------------------------------------------------------------------

EXPECTED_DTYPES = {
    **{c: "datetime64[ns, UTC]" for c in ("created_at", "updated_at", "submitted_at", "ready_at", "finished_at")},
    **{c: "Int64" for c in ("width", "height", "safety_tolerance", "steps", "out_width", "out_height")},
    **{c: "UInt64" for c in ("seed", "result_seed")},  # seeds run to 2**64-1
    **{c: "Float64" for c in ("guidance", "estimated_cost", "cost", "input_mp", "output_mp", "duration_s")},
    "input_hashes": "object",
    "cached": "bool",
    "rating": "Int64",
    "favourite": "bool",
}


def test_frame_columns_and_every_dtype(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    ready = create(store, tag="t", input_hashes=["a" * 64])
    submit(store, ready)
    complete(store, ready, cost=1.5)
    moderated = create(store, seed=2**64 - 1)  # the largest seed survives next to a NULL result_seed
    store.mark_failed(moderated, status=RecordStatus.MODERATED, error_kind="ModeratedError", error="no", finished_at=4)
    frame = store.to_frame()
    assert list(frame.columns) == FRAME_COLUMNS and FRAME_COLUMNS[: len(COLUMNS)] == list(COLUMNS)
    assert list(frame["record_id"]) == [ready, moderated]  # newest last
    expected = {c: EXPECTED_DTYPES.get(c, "string") for c in FRAME_COLUMNS}
    assert {c: str(t) for c, t in frame.dtypes.items()} == expected
    first, second = frame.iloc[0], frame.iloc[1]
    assert first["image_path"] == str(history_dir.resolve() / "images" / first["image_sha256"][:2]) + (
        f"/{first['image_sha256']}.jpeg"
    )
    assert Path(first["image_path"]).is_file()
    assert first["input_hashes"] == ["a" * 64] and second["input_hashes"] == []
    assert first["cost"] == 1.5 and first["submitted_at"] == pd.Timestamp(1.0, unit="s", tz="UTC")
    assert second["seed"] == 2**64 - 1 and pd.isna(second["result_seed"]) and pd.isna(second["steps"])
    assert pd.isna(second["image_path"]) and pd.isna(second["ready_at"]) and pd.isna(second["cost"])
    assert second["status"] == "moderated"


def test_an_empty_history_gives_an_empty_typed_frame(history_dir: Path) -> None:
    frame = HistoryStore(history_dir).to_frame()
    assert frame.empty and list(frame.columns) == FRAME_COLUMNS
    expected = {c: EXPECTED_DTYPES.get(c, "string") for c in FRAME_COLUMNS}
    assert {c: str(t) for c, t in frame.dtypes.items()} == expected


@pytest.mark.slow
def test_a_100k_row_history_becomes_a_whole_frame_in_order(history_dir: Path) -> None:
    """Every row, in order (its speed is measured in bench/history_scale.py, not here)."""
    store = HistoryStore(history_dir)
    names = list(COLUMNS)
    assert names[:3] == ["record_id", "created_at", "updated_at"]
    template = dict.fromkeys(names) | {"model": "flux-2-klein-4b", "prompt": "p", "status": "ready", "seed": 1}
    template |= {"input_hashes": "[]", "cost": 1.4, "image_path": "images/ab/x.jpeg", "width": 1024, "engine": "e"}
    rest = tuple(template[n] for n in names[3:])
    rows = [(f"{i:012x}", float(i), float(i), *rest) for i in range(100_000)]
    with sqlite3.connect(store.path) as db:
        db.executemany(f"INSERT INTO records ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})", rows)
    frame = store.to_frame()
    assert len(frame) == 100_000 and frame["record_id"].iloc[-1] == f"{99_999:012x}"
    assert frame["record_id"].is_unique and frame["cost"].sum() == pytest.approx(140_000.0)


def test_spent_counts_ready_records_by_model_and_never_failed_or_moderated(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    plan = [("ready", "a.ipynb", 1.4), ("ready", "b.ipynb", 1.4), ("failed", "a.ipynb", 1.4)]
    plan += [("moderated", "a.ipynb", 1.4), ("ready", "a.ipynb", None), ("pending", "a.ipynb", None)]
    for i, (status, notebook, cost) in enumerate(plan):
        record_id = create(store, seed=i, notebook=notebook)
        if status == "ready":
            complete(store, record_id, color=["red", "blue", "", "", "green"][i], cost=cost)
        elif status != "pending":
            store.mark_failed(record_id, status=RecordStatus(status), error_kind="X", error="e", finished_at=1)
    pro = store.create(
        FluxRequest("x", model="flux-2-pro"),
        backend="bfl",
        endpoint="https://api.bfl.ai",
        notebook="a.ipynb",
        input_hashes=[],
        estimated_cost=3.0,
    )
    complete(store, pro, color="white", cost=4.5)
    spent = store.spent("a.ipynb").set_index("model")
    klein = spent.loc["flux-2-klein-4b"]
    # The ready record without a reported cost counts at its estimate (1.4).
    assert klein["requests"] == 3 and klein["credits"] == pytest.approx(4.2) and not klein["billed"]
    assert klein["notebook_requests"] == 2 and klein["notebook_credits"] == pytest.approx(2.8)
    assert spent.loc["flux-2-pro", "credits"] == pytest.approx(4.5) and spent.loc["flux-2-pro", "billed"]
    assert list(store.spent().columns) == ["model", "backend", "requests", "credits", "billed"]
    # Where the notebook's name is not known, "this notebook" is this process's records.
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE records SET owner = 'elsewhere:1' WHERE notebook = 'a.ipynb'")
    mine = store.spent(owner=store_module.process_owner()).set_index("model").loc["flux-2-klein-4b"]
    assert mine["notebook_requests"] == 1 and mine["notebook_credits"] == pytest.approx(1.4)


# -- many writers -----------------------------------------------------------------------------


def test_many_threads_write_at_once(history_dir: Path) -> None:
    stores = [HistoryStore(history_dir), HistoryStore(history_dir)]  # two stores: separate connections too
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            store = stores[n % 2]
            for i in range(25):
                record_id = create(store, seed=n * 100 + i)
                submit(store, record_id)
                if i % 5 == 0:
                    complete(store, record_id, color=["red", "blue", "green", "white", "black"][n % 5])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    store = stores[0]
    assert store.count() == 200 and store.integrity_check()
    assert store.to_frame()["status"].value_counts().to_dict() == {"submitted": 160, "ready": 40}


WRITER = """
import io, sys
from PIL import Image
from flux_nb.protocol import FluxRequest
from flux_nb.history.store import HistoryStore, RecordStatus
store = HistoryStore(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()  # start together
for i in range(200):
    rid = store.create(FluxRequest("p", seed=i), backend="b", endpoint="e", notebook=sys.argv[2],
                       input_hashes=[], estimated_cost=1.0)
    if i % 10:
        store.mark_failed(rid, status=RecordStatus.FAILED, error_kind="X", error="e", finished_at=1.0)
    else:
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), (i, len(sys.argv[2]), 0)).save(buffer, "PNG")
        store.mark_ready(rid, image=buffer.getvalue(), ext="png", width=8, height=8, ready_at=1.0, finished_at=1.0,
                         duration_s=0.0, engine="x", result_seed=i)
"""


def test_two_processes_writing_one_folder_at_once_keep_every_row(history_dir: Path) -> None:
    history_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(history_dir), name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for name in ("nb0", "nb01")
    ]
    for proc in procs:  # both have opened the store...
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    for proc in procs:  # ...then both write at once
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    store = HistoryStore(history_dir)
    frame = store.to_frame()
    assert len(frame) == 400 and store.integrity_check()
    assert frame.groupby("notebook").size().to_dict() == {"nb0": 200, "nb01": 200}
    assert frame["status"].value_counts().to_dict() == {"failed": 360, "ready": 40}
    assert all(Path(p).is_file() for p in frame["image_path"].dropna())


def test_a_writer_waits_out_a_lock_longer_than_the_busy_timeout(
    history_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(database_module, "BUSY_TIMEOUT_S", 0.01)  # SQLite gives up at once; our retries take over
    store = HistoryStore(history_dir)
    locked = threading.Event()

    def hold_the_write_lock() -> None:
        holder = sqlite3.connect(store.path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        locked.set()
        time.sleep(0.3)
        holder.execute("COMMIT")
        holder.close()

    holder = threading.Thread(target=hold_the_write_lock)
    holder.start()
    locked.wait(5)
    started = time.monotonic()
    record_id = create(store)
    assert time.monotonic() - started >= 0.2
    holder.join()
    assert store.get(record_id) is not None
