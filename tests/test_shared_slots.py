"""Shared slots end to end: several processes on one key never send more than the key's active tasks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from flux_nb import Flux, ValidationError
from flux_nb.http.slots import SharedSlots

KEY = "shared-slots-key-7d1e"
WAIT = 120.0  # bound on how long a child may take to start or a state to show up (not a speed check)

# A child process: waits for the go file, then sweeps COUNT images at once and prints what came back.
SWEEPER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from flux_nb import Flux
    url, history, name, count, go = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), Path(sys.argv[5])
    flux = Flux(endpoint=url, history_dir=history, share_slots=sys.argv[6] == "1")
    batch = flux.batch(f"{name} sweep", seed=list(range(count)), width=64, height=64)
    flux.connect()
    Path(history).mkdir(parents=True, exist_ok=True)
    (Path(history) / "ready").write_text("1")
    while not go.exists():
        time.sleep(0.01)
    results = flux.run(batch)
    print(json.dumps(sorted(r.status for r in results)))
    flux.close()
    """
)


@contextmanager
def serve(*args: str, key: str = KEY) -> Iterator[str]:
    """``flux-nb serve --port 0 ARGS`` with ``key`` required; yields its base URL."""
    env = {k: v for k, v in os.environ.items() if k not in ("BFL_API_KEY", "FLUX_NB_ENDPOINT")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "flux_nb", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**env, "FLUX_NB_SERVER_KEYS": key},
    )
    try:
        first = proc.stdout.readline() if proc.stdout else ""
        assert "http://127.0.0.1:" in first, first + (proc.stderr.read() if proc.stderr else "")
        yield "http://" + first.split("http://", 1)[1].split()[0]
    finally:
        proc.terminate()
        proc.communicate(timeout=60)


def stats(url: str) -> dict[str, Any]:
    answer = httpx.get(f"{url}/_flux/stats", headers={"x-key": KEY}, timeout=10)
    answer.raise_for_status()
    return answer.json()


def sweep_in_processes(url: str, tmp_path: Path, processes: int, count: int, *, share: bool = True) -> list[list[str]]:
    """Start ``processes`` children, let them sweep ``count`` images each at the same moment; their statuses."""
    go = tmp_path / "go"
    env = {**os.environ, "FLUX_NB_API_KEY": KEY}
    env.pop("BFL_API_KEY", None)
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                SWEEPER,
                url,
                str(tmp_path / f"h{i}"),
                f"p{i}",
                str(count),
                str(go),
                str(int(share)),
            ],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(processes)
    ]
    deadline = time.monotonic() + WAIT
    while not all((tmp_path / f"h{i}" / "ready").exists() for i in range(processes)):
        assert time.monotonic() < deadline and all(c.poll() is None for c in children), "a child did not start"
        time.sleep(0.02)
    go.write_text("go")
    outs = [c.communicate(timeout=WAIT)[0] for c in children]
    assert [c.returncode for c in children] == [0] * processes
    return [json.loads(out.strip().splitlines()[-1]) for out in outs]


@pytest.mark.slow
def test_three_processes_sweeping_48_each_get_no_429_and_lose_nothing(tmp_path: Path) -> None:
    with serve("--max-active", "24", "--latency", "0.5") as url:
        statuses = sweep_in_processes(url, tmp_path, 3, 48)
        seen = stats(url)
    assert statuses == [["ready"] * 48] * 3
    assert seen["rejected"] == 0  # the server's count of 429 answers
    assert seen["submits"] == 144 and seen["ready"] == 144 and seen["peak_active"] <= 24
    from flux_nb.history.store import HistoryStore

    for i in range(3):
        assert list(HistoryStore(tmp_path / f"h{i}").to_frame()["status"]) == ["ready"] * 48


KILLED = textwrap.dedent(
    """
    import sys
    from flux_nb import Flux
    flux = Flux(endpoint=sys.argv[1], history_dir=sys.argv[2])
    flux.run(flux.batch("held", seed=list(range(24)), width=64, height=64))
    """
)


@pytest.mark.slow
def test_slots_of_a_killed_process_come_back_and_the_next_sweep_runs(
    server_factory: Any, tmp_path: Path, slots_dir: Path
) -> None:
    # The server allows more than the key's 24: only the shared table limits what is sent.
    server = server_factory(latency=2.0, max_active=200, max_active_per_key=200, api_keys=frozenset({KEY}))
    env = {**os.environ, "FLUX_NB_API_KEY": KEY}
    child = subprocess.Popen([sys.executable, "-c", KILLED, server.url, str(tmp_path / "killed")], env=env)
    slots = SharedSlots.for_key(KEY, server.url, 24, slots_dir)
    try:
        deadline = time.monotonic() + WAIT
        while server.stats()["submits"] < 24:
            assert time.monotonic() < deadline and child.poll() is None, "the child never held its slots"
            time.sleep(0.02)
        assert slots.held() == 24
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    flux = Flux(endpoint=server.url, api_key=KEY, history_dir=tmp_path / "next")
    try:
        future = flux.start(flux.batch("next", seed=list(range(24)), width=64, height=64))
        # A dead process's leases are its until someone reclaims them: without that, this never ends.
        results = future.result(timeout=WAIT)
    finally:
        flux.close()
    assert [r.status for r in results] == ["ready"] * 24
    assert server.stats()["submits"] == 48 and slots.held() == 0


def test_share_slots_off_leaves_the_shared_table_alone(server: Any, history_dir: Path, slots_dir: Path) -> None:
    flux = Flux(endpoint=server.url, history_dir=history_dir, share_slots=False)
    try:
        assert flux.generate("alone", seed=1, width=64, height=64).ok
        assert flux._ready_executor().client.shared_slots is None
    finally:
        flux.close()
    assert list(slots_dir.iterdir()) == []
    shared = Flux(endpoint=server.url, history_dir=history_dir)
    try:
        assert shared.generate("shared", seed=2, width=64, height=64).ok
        assert shared._ready_executor().client.shared_slots is not None
        assert len(list(slots_dir.glob("slots-*.lock"))) == 1
    finally:
        shared.close()


@pytest.mark.parametrize("how", ["timeout", "cancel"])
def test_a_slot_stays_taken_while_a_task_may_still_run_at_the_api(
    server_factory: Any, history_dir: Path, slots_dir: Path, how: str
) -> None:
    server = server_factory(latency=60.0)
    flux = Flux(endpoint=server.url, history_dir=history_dir, task_timeout=0.5 if how == "timeout" else 600.0)
    slots = SharedSlots.for_key(None, server.url, 24, slots_dir)
    try:
        if how == "timeout":
            result = flux.run([flux.prepare("slow", seed=1, width=64, height=64)])[0]
            assert result.status == "submitted"  # left to resume: the task still runs at the API
        else:
            future = flux.start([flux.prepare("slow", seed=1, width=64, height=64)])
            deadline = time.monotonic() + WAIT
            while not flux.store.resumable():
                assert time.monotonic() < deadline
                time.sleep(0.02)
            future.cancel()
        deadline = time.monotonic() + WAIT
        while not (server.stats()["submits"] == 1 and slots.held() == 1):
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        flux.close()
    assert slots.held() == 0  # closing the session gives back what it still held


def test_a_slots_folder_that_cannot_be_used_warns_and_generation_goes_on(
    server: Any, history_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the slots folder should be")
    monkeypatch.setenv("FLUX_NB_SLOTS_DIR", str(blocker / "slots"))
    flux = Flux(endpoint=server.url, history_dir=history_dir)
    try:
        with pytest.warns(UserWarning, match="not shared with other processes"):
            assert flux.generate("alone after all", seed=1, width=64, height=64).ok
        assert flux._ready_executor().client.shared_slots is None
    finally:
        flux.close()


def test_the_wait_before_flux_nb_says_who_holds_the_slots_is_a_setting(server: Any, history_dir: Path) -> None:
    flux = Flux(endpoint=server.url, history_dir=history_dir, slots_say_after=0.5)
    try:
        slots = flux._ready_executor().client.shared_slots
        assert slots is not None and slots.say_after == 0.5
        with pytest.raises(ValidationError, match="slots_say_after must be a finite number above 0"):
            flux.slots_say_after = 0
    finally:
        flux.close()


def test_a_slot_is_held_only_while_a_task_may_run_and_for_its_expected_rest() -> None:
    from flux_nb.errors import FluxTimeout, TaskFailedError, TransportError, UnknownOutcomeError
    from flux_nb.http.polling import DurationModel
    from flux_nb.http.slot_holding import UNKNOWN_TASK_HOLD, duration_key, hold_seconds, may_run
    from flux_nb.http.task_types import Task

    task = Task(id="t", polling_url="http://127.0.0.1:9/p", model="flux-2-klein-4b", submitted_at=time.time() - 4.0)
    assert may_run(UnknownOutcomeError("lost answer"), True, None)  # the submit may have created a task
    assert not may_run(TransportError("refused"), True, None) and not may_run(UnknownOutcomeError("x"), False, None)
    assert may_run(FluxTimeout("slow"), True, task) and not may_run(TaskFailedError("failed"), True, task)
    durations = DurationModel()
    assert 1.0 <= hold_seconds(durations, task, task.model, 600.0) <= UNKNOWN_TASK_HOLD - 4.0  # nothing learned yet
    durations.observe(duration_key(task), 10.0)
    assert 1.0 <= hold_seconds(durations, task, task.model, 600.0) <= 6.0  # 10 s expected, 4 s (or more) gone
    durations.observe(duration_key(task), 5000.0), durations.observe(duration_key(task), 5000.0)
    assert hold_seconds(durations, task, task.model, 600.0) == 600.0  # never past the task timeout
