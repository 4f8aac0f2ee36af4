"""The Flux session end to end over real HTTP: generate, sweep, history, cache, budget, replay, resume."""

from __future__ import annotations

import _thread
import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from flux_nb import Flux
from flux_nb.core.backend import resolve_backend
from flux_nb.core.results import SweepResult
from flux_nb.errors import AuthError, BatchInterrupted, BudgetError, ValidationError
from flux_nb.history.store import HistoryStore
from flux_nb.http import client as client_module
from flux_nb.server.fault_injection import FaultPlan


def test_generate_returns_an_image_on_disk_with_its_metadata(flux: Flux, server: Any) -> None:
    result = flux.generate("a lighthouse", seed=42, width=512, height=384)
    assert result.ok and result.status == "ready"
    assert result.image.size == (512, 384)
    assert result.path.exists() and result.path.is_relative_to(Path(flux.history_dir).resolve())
    assert (result.seed, result.cost, result.engine) == (42, pytest.approx(1.4), "preview")
    assert result.task_id and result.elapsed is not None and result.elapsed > 0
    assert not result.billed
    assert server.stats()["submits"] == 1


def test_a_seed_is_always_sent_and_recorded(flux: Flux) -> None:
    result = flux.generate("no seed given", width=64, height=64)
    row = flux.history().iloc[-1]
    assert isinstance(result.seed, int) and row["seed"] == result.seed == row["result_seed"]


def test_history_is_written_at_submit_and_survives_the_process(flux: Flux, history_dir: Path) -> None:
    result = flux.generate("a cat", seed=1, width=64, height=64, tag="t1")
    code = textwrap.dedent(f"""
        from flux_nb.history.store import HistoryStore
        frame = HistoryStore({str(history_dir)!r}).to_frame()
        row = frame.iloc[0]
        print(len(frame), row.record_id, row.status, row.tag, row.out_width)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1", result.record_id, "ready", "t1", "64"]


async def test_agenerate_awaits_without_blocking_the_callers_loop(flux: Flux) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    ticking = asyncio.create_task(ticker())
    result = await flux.agenerate("async", seed=3, width=64, height=64)
    ticking.cancel()
    assert result.ok and ticks > 0


def test_sync_generate_works_inside_a_running_loop(flux: Flux) -> None:
    async def cell() -> bool:
        return flux.generate("inside a loop", seed=4, width=64, height=64).ok

    assert asyncio.run(cell())


def test_sweep_expands_every_axis_and_labels_results(flux: Flux, server: Any) -> None:
    sweep = flux.sweep(["a", "b"], seed=[1, 2, 3], width=[64, 128], height=64)
    assert isinstance(sweep, SweepResult) and len(sweep) == 12 and not sweep.failed
    assert {(r.labels["prompt"], r.labels["seed"], r.labels["width"]) for r in sweep} == {
        (p, s, w) for p in "ab" for s in (1, 2, 3) for w in (64, 128)
    }
    pages = sweep.grid()  # seed across, prompt down, one page per width
    assert [page.title for page in pages] == ["width: 64", "width: 128"]
    assert all(len(page.cells) == 6 and all(page.cells.values()) for page in pages)
    assert server.stats()["submits"] == 12


def test_cache_answers_identical_requests_for_free(flux: Flux, server: Any) -> None:
    first = flux.generate("cached", seed=5, width=64, height=64)
    again = flux.generate("cached", seed=5, width=64, height=64, tag="again")  # another tag: a row of its own
    fresh = flux.generate("cached", seed=5, width=64, height=64, fresh=True)
    assert again.cached and again.path == first.path and again.cost == 0
    assert not fresh.cached and fresh.record_id != first.record_id
    assert server.stats()["submits"] == 2
    # The cache hit is a use of the first record: a row of its own, pointing at the image it showed.
    frame = flux.history().set_index("record_id")
    assert len(frame) == 3 and frame.loc[again.record_id, "cached_from"] == first.record_id
    assert frame["cached"].tolist() == [False, True, False]


def test_budget_refuses_a_sweep_before_anything_is_sent(flux: Flux, server: Any) -> None:
    flux.budget = 5.0
    with pytest.raises(BudgetError, match=r"estimated cost at most 7\.00 credits for 5 request"):
        flux.sweep("x", seed=[1, 2, 3, 4, 5], width=64, height=64)
    assert server.stats()["submits"] == 0 and flux.history().empty
    flux.sweep("x", seed=[1, 2, 3], width=64, height=64)
    with pytest.raises(BudgetError, match=r"4\.20 of 5\.00 spent"):
        flux.generate("one more", seed=9, width=64, height=64)
    flux.generate("x", seed=1, width=64, height=64)  # a cache hit costs nothing, so it passes


def test_bad_input_raises_before_sending_and_records_nothing(flux: Flux, server: Any) -> None:
    for kwargs in (
        {"width": 63},
        {"seed": -1},
        {"images": ["/nope.png"]},
        {"model": "flux-3"},
        {"safety_tolerance": 7},
    ):
        with pytest.raises(ValidationError):
            flux.generate("x", **kwargs)
    assert server.stats()["submits"] == 0 and flux.history().empty


def test_replay_rebuilds_the_exact_request_with_its_images(flux: Flux, tmp_path: Path) -> None:
    ref = tmp_path / "ref.png"
    Image.new("RGB", (96, 64), (0, 120, 240)).save(ref)
    old = flux.generate("an edit", seed=8, width=128, height=128, images=[ref])
    ref.unlink()  # the store keeps its own copy
    new = flux.replay(old.record_id)
    assert new.record_id != old.record_id and new.path.read_bytes() == old.path.read_bytes()
    row = flux.history().set_index("record_id").loc[new.record_id]
    assert row["replay_of"] == old.record_id and len(row["input_hashes"]) == 1


def test_unknown_record_is_a_clear_error(flux: Flux) -> None:
    with pytest.raises(ValidationError, match="no history record 'nope'"):
        flux.replay("nope")


def test_backend_choice() -> None:
    assert resolve_backend(None, "key-123").label == "bfl"
    assert resolve_backend(None, "key-123", "eu").base_url == "https://api.eu.bfl.ai"
    with pytest.raises(AuthError, match="needs an API key"):
        resolve_backend("https://api.bfl.ai", None)
    with pytest.raises(ValidationError, match="http"):
        resolve_backend("localhost:8800", None)
    assert resolve_backend("http://127.0.0.1:8800", None).label == "endpoint:127.0.0.1:8800"


@pytest.mark.slow
def test_without_a_key_the_embedded_server_starts_once(history_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("BFL_API_KEY", "FLUX_NB_ENDPOINT")}
    code = textwrap.dedent(f"""
        from flux_nb import Flux
        a, b = Flux(history_dir={str(history_dir)!r}), Flux(history_dir={str(history_dir)!r})
        print(a.generate("one", seed=1, width=64, height=64).engine)
        print(b.generate("two", seed=1, width=64, height=64).engine)
        print(a.backend.base_url == b.backend.base_url)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    lines = out.strip().splitlines()
    assert sum("using the local preview server at http://127.0.0.1:" in line for line in lines) == 1
    assert lines[-3:] == ["preview", "preview", "True"]


def test_repr_never_shows_the_key() -> None:
    flux = Flux(api_key="sk-very-secret-0001")
    assert "sk-very-secret-0001" not in repr(flux) and "key=set" in repr(flux)


SWEEPER = """
import sys
from flux_nb import Flux
flux = Flux(endpoint=sys.argv[1], history_dir=sys.argv[2])
flux.sweep("a long sweep", seed=list(range(30)), width=64, height=64)
"""


@pytest.mark.slow
def test_resume_finishes_every_task_after_a_kill_9(server_factory: Any, history_dir: Path) -> None:
    # Submits 21 and 22 are held by the server for a minute: the kill lands while they are mid-send.
    server = server_factory(latency=1.5, max_active=24, faults=FaultPlan.parse("slow_submit=#21|#22,slow_seconds=60"))
    proc = subprocess.Popen([sys.executable, "-c", SWEEPER, server.url, str(history_dir)])
    store = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if store is None and (history_dir / "history.sqlite").exists():
            store = HistoryStore(history_dir)
        if store is not None:
            statuses = store.to_frame()["status"].value_counts()
            if statuses.get("submitted", 0) >= 20 and statuses.get("sending", 0) >= 2:
                break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert store is not None and store.integrity_check()
    before = store.to_frame().set_index("record_id")
    # Every row of the sweep is written before its first submit: the ones never sent are pending.
    assert len(before) == 30 and (before["status"] == "ready").sum() < len(before)
    by_status = {s: set(before.index[before["status"] == s]) for s in ("pending", "sending", "submitted")}
    assert len(by_status["submitted"]) >= 20 and len(by_status["submitted"] | by_status["sending"]) <= 24
    assert len(by_status["sending"]) >= 2  # the two held submits at least: their outcome is unknown
    # What the server saw: every submitted record, maybe some of those cut off mid-send, never a pending one.
    seen = {int(key.rsplit("|", 2)[1]) for key in server.stats()["requests_seen"]}
    seeds = before["seed"].astype(int)
    assert set(seeds[list(by_status["submitted"])]) <= seen
    assert not set(seeds[list(by_status["pending"])]) & seen
    assert {r.record_id for r in store.orphans()} == by_status["pending"] | by_status["sending"]
    code = (
        f"from flux_nb import Flux\nflux = Flux(endpoint={server.url!r}, history_dir={str(history_dir)!r})\n"
        "results = flux.resume()\nprint(sorted(r.status for r in results), len(flux.unsent()))\n"
        "print(sorted(r.status for r in flux.resume(unsent=True)), len(flux.unsent()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    first, second = out.strip().splitlines()
    n_pending = len(by_status["pending"])
    resumed = ["ready"] * len(by_status["submitted"]) + ["unknown"] * len(by_status["sending"])
    assert first == f"{sorted(resumed)} {n_pending}"
    assert second == f"{['ready'] * n_pending} 0"
    after = HistoryStore(history_dir).to_frame().set_index("record_id")
    assert len(after) == len(before) and after.loc[list(by_status["sending"]), "status"].eq("unknown").all()
    finished = by_status["submitted"] | by_status["pending"]
    assert after.loc[list(finished), "status"].eq("ready").all()
    assert all(Path(p).exists() for p in after.loc[list(finished), "image_path"])
    # Nothing was sent twice: one task per record that reached the server.
    assert server.stats()["most_tasks_for_one_request"] == 1


@pytest.mark.slow  # seconds of real waiting; the full suite runs it
def test_cancelling_a_batch_tells_never_sent_requests_from_submitted_ones(
    server_factory: Any, history_dir: Path
) -> None:
    server = server_factory(latency=3.0)
    flux = Flux(endpoint=server.url, history_dir=history_dir, max_concurrency=1)
    try:
        batch = [flux.prepare("queued", seed=s, width=64, height=64) for s in range(3)]
        future = flux.start(batch)
        deadline = time.monotonic() + 10
        while not flux.store.resumable() and time.monotonic() < deadline:
            time.sleep(0.02)
        future.cancel()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(flux.unsent()) < 2:
            time.sleep(0.02)
        frame = flux.history()
        # One request holds the single slot (whichever the loop started first); the other two never left
        # and stay pending: resume(unsent=True) sends them, and finishes the submitted one.
        assert sorted(frame["status"]) == ["pending", "pending", "submitted"]
        assert frame[frame["status"] == "pending"]["error"].isna().all()
        assert server.stats()["submits"] == 1
        assert sorted(r.status for r in flux.resume(unsent=True)) == ["ready"] * 3 and flux.unsent() == []
        assert server.stats()["submits"] == 3 and server.stats()["most_tasks_for_one_request"] == 1
    finally:
        flux.close()


def test_the_bfl_key_from_the_environment_never_goes_to_another_endpoint(
    server_factory: Any, history_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = server_factory(api_keys=frozenset({"bfl-key-0001", "gateway-key-0002"}))
    monkeypatch.setenv("BFL_API_KEY", "bfl-key-0001")
    monkeypatch.delenv("FLUX_NB_API_KEY", raising=False)
    withheld = Flux(endpoint=server.url, history_dir=history_dir)
    explicit = Flux(endpoint=server.url, history_dir=history_dir, api_key="gateway-key-0002")
    monkeypatch.setenv("FLUX_NB_API_KEY", "gateway-key-0002")
    from_env = Flux(endpoint=server.url, history_dir=history_dir)
    try:
        with pytest.raises(AuthError):
            withheld.generate("no key for you", seed=1, width=64, height=64)
        assert server.stats()["submits"] == 0
        assert explicit.generate("explicit", seed=2, width=64, height=64).status == "ready"
        assert from_env.generate("from env", seed=3, width=64, height=64).status == "ready"
        assert server.stats()["submits"] == 2
    finally:
        for flux in (withheld, explicit, from_env):
            flux.close()


def test_a_session_runs_in_process_through_an_injected_transport(history_dir: Path) -> None:
    """The test seam: no socket, the app itself answers (polling and delivery URLs included)."""
    import httpx

    from flux_nb.server import create_app

    app = create_app()
    flux = Flux(endpoint="http://127.0.0.1:9", history_dir=history_dir, transport=httpx.ASGITransport(app=app))
    try:
        result = flux.generate("in process", seed=5, width=64, height=64)
        assert result.ok and result.image.size == (64, 64)
        assert list(flux.history()["status"]) == ["ready"]
    finally:
        flux.close()


def history_rows(history_dir: Path, query: str) -> list[tuple[Any, ...]]:
    """Rows of the history read through a connection of this thread's own; none while it cannot be read yet."""
    path = history_dir / "history.sqlite"
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)) as db:
            return db.execute(query).fetchall()
    except sqlite3.Error:
        return []


def test_an_interrupt_reports_a_submit_cut_off_mid_send_as_unknown_not_as_never_sent(
    server_factory: Any, history_dir: Path
) -> None:
    """Ctrl-C while one submit is answered and another is held mid-send by the server: the one-line report
    counts one running, one cut off (its record ``unknown``, never resent) and two never sent (``pending``)."""
    server = server_factory(latency=30.0, faults=FaultPlan.parse("slow_submit=#2,slow_seconds=60"))
    flux = Flux(endpoint=server.url, history_dir=history_dir, max_concurrency=2)
    try:
        batch = flux.batch("held", seed=[1, 2, 3, 4], width=64, height=64)

        def interrupt_when_both_are_out() -> None:
            deadline = time.monotonic() + 30
            try:
                while time.monotonic() < deadline:
                    statuses = sorted(s for (s,) in history_rows(history_dir, "SELECT status FROM records"))
                    if statuses == ["pending", "pending", "sending", "submitted"]:
                        break
                    time.sleep(0.02)
            finally:  # whatever happens here, the batch is interrupted (else it ran to its end: DID NOT RAISE)
                _thread.interrupt_main()

        watcher = threading.Thread(target=interrupt_when_both_are_out)
        watcher.start()
        with pytest.raises(BatchInterrupted) as interrupted:
            flux.run(batch)
        watcher.join()
        report = interrupted.value
        assert str(report).startswith(
            "interrupted: 0 of 4 request(s) finished, 1 sent and still running, "
            "1 cut off mid-send (outcome unknown, not resent), 2 never sent"
        ), str(report)
        assert (report.finished, report.running, report.unsent) == (0, 1, 2)
        assert sorted(flux.history()["status"]) == ["pending", "pending", "submitted", "unknown"]
    finally:
        flux.close()


def test_connect_readies_what_sending_needs_so_the_first_request_builds_nothing(
    flux: Flux, server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[object] = []
    init = client_module.AsyncFluxClient.__init__

    def counted(self: Any, *args: Any, **kwargs: Any) -> None:
        built.append(self)
        init(self, *args, **kwargs)

    monkeypatch.setattr(client_module.AsyncFluxClient, "__init__", counted)
    backend = flux.connect()
    assert backend.base_url == server.url and len(built) == 1  # the HTTP client exists before any request
    assert flux.connect() is backend and len(built) == 1  # and connecting again rebuilds nothing
    assert flux.generate("a lighthouse", seed=3, width=64, height=64).status == "ready"
    assert len(built) == 1
