"""The history store: durable rows, content-addressed files, typed frames, many writers at once."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from flux_nb.api import FluxRequest
from flux_nb.images import prepare_image, sha256_hex
from flux_nb.store import HistoryStore, RecordStatus, request_key


def jpeg(color: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 16), color).save(buffer, "JPEG")
    return buffer.getvalue()


def create(store: HistoryStore, prompt: str = "a cat", seed: int = 1, **options: object) -> str:
    request = FluxRequest(prompt, seed=seed, width=512, height=512)
    defaults = {"backend": "local:preview", "endpoint": "http://127.0.0.1:1", "notebook": "n.ipynb"}
    return store.create(request, input_hashes=[], estimated_cost=1.4, **{**defaults, **options})


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


def test_a_record_is_written_before_sending_and_completed_after(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    record_id = create(store)
    record = store.get(record_id)
    assert record is not None and record.status == "pending" and record.image_file is None
    store.mark_submitted(
        record_id,
        task_id="t1",
        polling_url="http://x/v1/get_result?id=t1",
        cost=1.4,
        input_mp=0,
        output_mp=0.25,
        submitted_at=1.0,
    )
    assert [r.record_id for r in store.resumable()] == [record_id]
    path = complete(store, record_id)
    assert path.read_bytes() == jpeg() and path.name == f"{sha256_hex(jpeg())}.jpeg"
    record = store.get(record_id)
    assert record.status == "ready" and record.image_file == path and record.cost == 1.4
    assert store.resumable() == []


def test_history_survives_reopening_from_another_process(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    record_id = create(store)
    code = (
        "from flux_nb.store import HistoryStore\n"
        f"r = HistoryStore({str(history_dir)!r}).get({record_id!r})\n"
        "print(r.prompt, r.status)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "a cat pending"


def test_frame_columns_and_dtypes(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    ready = create(store, tag="t")
    complete(store, ready, cost=1.4)
    failed = create(store, seed=2)
    store.mark_failed(failed, status=RecordStatus.MODERATED, error_kind="ModeratedError", error="no", finished_at=4.0)
    frame = store.to_frame()
    assert list(frame["record_id"]) == [ready, failed]
    dtypes = frame.dtypes.astype(str).to_dict()
    for column in ("created_at", "submitted_at", "ready_at", "finished_at"):
        assert dtypes[column] == "datetime64[ns, UTC]" or dtypes[column].startswith("datetime64[")
    for column in ("seed", "width", "height", "out_width", "result_seed", "steps"):
        assert dtypes[column] == "Int64"
    for column in ("cost", "estimated_cost", "duration_s", "guidance"):
        assert dtypes[column] == "Float64"
    for column in ("prompt", "status", "model", "tag", "image_path", "error"):
        assert dtypes[column] == "string"
    assert frame.loc[0, "image_path"].startswith(str(history_dir.resolve()))
    assert pd.isna(frame.loc[1, "image_path"]) and frame.loc[1, "status"] == "moderated"
    assert frame.loc[0, "input_hashes"] == []


def test_cache_lookup_needs_a_ready_record_whose_file_exists(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    request = FluxRequest("a cat", seed=1, width=512, height=512)
    key = request_key(request, "local:preview", [])
    record_id = create(store)
    assert store.find_cached(key) is None
    path = complete(store, record_id)
    assert store.find_cached(key).record_id == record_id
    path.unlink()
    assert store.find_cached(key) is None


def test_request_key_ignores_secrets_and_follows_what_shapes_the_image() -> None:
    base = FluxRequest("a cat", seed=1, width=512, height=512)
    key = request_key(base, "bfl", ["h1"])
    assert request_key(base.with_(webhook_url="https://h", webhook_secret="s"), "bfl", ["h1"]) == key
    assert request_key(base.with_(seed=2), "bfl", ["h1"]) != key
    assert request_key(base, "bfl", ["h2"]) != key
    assert request_key(base, "local:preview", ["h1"]) != key
    assert request_key(base.with_(output_format="png"), "bfl", ["h1"]) != key


def test_inputs_are_stored_by_hash_and_loaded_back(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    image = prepare_image(jpeg("blue"))
    url = prepare_image("https://example.com/x.png")
    store.save_input(image)
    store.save_input(url)
    assert store.load_input(image.sha256) == jpeg("blue")
    assert store.load_input(url.sha256) == "https://example.com/x.png"
    with pytest.raises(KeyError):
        store.load_input("0" * 64)


def test_spent_counts_ready_records_only(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    for i, status in enumerate(["ready", "ready", "failed", "moderated"]):
        record_id = create(store, seed=i, notebook="a.ipynb" if i else "b.ipynb")
        if status == "ready":
            complete(store, record_id, color=["red", "blue"][i], cost=1.4)
        else:
            store.mark_failed(record_id, status=RecordStatus(status), error_kind="X", error="e", finished_at=1)
    spent = store.spent("a.ipynb").set_index("model").loc["flux-2-klein-4b"]
    assert spent["requests"] == 2 and spent["credits"] == pytest.approx(2.8)
    assert spent["notebook_requests"] == 1 and spent["notebook_credits"] == pytest.approx(1.4)


def test_prefix_lookup(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    record_id = create(store)
    assert store.get(record_id[:6]).record_id == record_id
    assert store.get("zzzz") is None


def test_many_threads_write_at_once(history_dir: Path) -> None:
    store = HistoryStore(history_dir)

    def work(n: int) -> None:
        for i in range(25):
            create(store, seed=n * 100 + i)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.count() == 200 and store.integrity_check()


WRITER = """
import sys
from flux_nb.api import FluxRequest
from flux_nb.store import HistoryStore
store = HistoryStore(sys.argv[1])
for i in range(200):
    rid = store.create(FluxRequest("p", seed=i), backend="b", endpoint="e", notebook=sys.argv[2],
                       input_hashes=[], estimated_cost=1.0)
    store.mark_failed(rid, status=__import__("flux_nb.store").store.RecordStatus.FAILED, error_kind="X", error="e",
                      finished_at=1.0)
"""


def test_two_processes_writing_one_folder_keep_every_row(history_dir: Path) -> None:
    HistoryStore(history_dir)
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(history_dir), f"nb{n}"]) for n in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    store = HistoryStore(history_dir)
    frame = store.to_frame()
    assert len(frame) == 400 and store.integrity_check()
    assert frame.groupby("notebook").size().to_dict() == {"nb0": 200, "nb1": 200}
    assert set(frame["status"]) == {"failed"}
