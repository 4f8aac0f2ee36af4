"""flux_nb.http.slots: a key's active-task slots shared by real processes, crash-safe and key-free on disk."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flux_nb.errors import FluxTimeout, ValidationError
from flux_nb.http import slot_table as slot_table_module
from flux_nb.http.slots import (
    DATABASE,
    SharedSlots,
    default_folder,
    lease_owner,
    owner_is_gone,
    scope_of,
)

KEY = "bfl-test-key-3f9c1a7e-never-on-disk"
ENDPOINT = "http://127.0.0.1:8800"
SPAWN = multiprocessing.get_context("spawn")
WAIT = 60.0  # generous bound on how long a child may take to start or a state to show up


def _until(check: Callable[[], bool]) -> None:
    """Wait for ``check`` to hold (it is expected to: the bound only keeps a broken run from hanging)."""
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, "the expected state never showed up"
        time.sleep(0.01)


def _owners(folder: Path) -> list[str]:
    with sqlite3.connect(folder / DATABASE) as db:
        return [row[0] for row in db.execute("SELECT owner FROM leases ORDER BY owner")]


# -- children (module level: spawned processes import them) ---------------------------------------


def _sweep(folder: str, limit: int, tasks: int, rounds: int, shared: tuple[Any, ...]) -> None:
    """After every child is ready, ``tasks`` concurrent tasks each take a slot ``rounds`` times and
    hold it a moment, counting holders (now, peak, total) in shared memory."""
    ready, counter, peak, total, lock = shared

    async def one() -> None:
        slots = SharedSlots.for_key(KEY, ENDPOINT, limit, Path(folder))
        for _ in range(rounds):
            async with slots.slot():
                with lock:
                    counter.value += 1
                    peak.value = max(peak.value, counter.value)
                    total.value += 1
                await asyncio.sleep(0.02)
                with lock:
                    counter.value -= 1

    async def main() -> None:
        await asyncio.gather(*(one() for _ in range(tasks)))

    SharedSlots.for_key(KEY, ENDPOINT, limit, Path(folder)).held()  # the table is open: start together
    ready.wait()
    asyncio.run(main())


def _hold(folder: str, limit: int, count: int, holding: Any) -> None:
    """Take ``count`` slots, say so, and keep them until killed."""

    async def main() -> None:
        slots = SharedSlots.for_key(KEY, ENDPOINT, limit, Path(folder))
        for _ in range(count):
            await slots.acquire()
        holding.set()
        await asyncio.sleep(3600)

    asyncio.run(main())


def _wait_in_line(folder: str, limit: int, got: Any) -> None:
    """Wait for one slot, say when it came, and keep it until killed."""

    async def main() -> None:
        await SharedSlots.for_key(KEY, ENDPOINT, limit, Path(folder)).acquire()
        got.set()
        await asyncio.sleep(3600)

    asyncio.run(main())


def _start(target: Callable[..., None], *args: Any) -> Any:
    process = SPAWN.Process(target=target, args=args, daemon=True)
    process.start()
    return process


def _kill(process: Any) -> None:
    if process.is_alive():
        os.kill(process.pid, signal.SIGKILL)
    process.join(WAIT)


# -- the limit across processes and threads --------------------------------------------------------


def test_three_processes_never_hold_more_than_the_limit_together(tmp_path: Path) -> None:
    limit, tasks, rounds = 4, 4, 8
    counter, peak, total = SPAWN.Value("i", 0, lock=False), SPAWN.Value("i", 0, lock=False), SPAWN.Value("i", 0)
    shared = (SPAWN.Barrier(3), counter, peak, total, SPAWN.Lock())
    children = [_start(_sweep, str(tmp_path), limit, tasks, rounds, shared) for _ in range(3)]
    for child in children:
        child.join(WAIT * 3)
    assert [child.exitcode for child in children] == [0, 0, 0]
    assert total.value == 3 * tasks * rounds
    assert 1 <= peak.value <= limit  # 12 tasks wanted a slot at once: unshared, peak would pass 4
    assert counter.value == 0
    assert SharedSlots.for_key(KEY, ENDPOINT, limit, tmp_path).table.count(scope_of(KEY, ENDPOINT)) == (0, 0)


def test_threads_with_their_own_loops_share_one_instance_within_the_limit(tmp_path: Path) -> None:
    slots = SharedSlots.for_key(KEY, ENDPOINT, 3, tmp_path)
    lock, state = threading.Lock(), {"now": 0, "peak": 0, "total": 0}

    async def one() -> None:
        for _ in range(10):
            async with slots.slot():
                with lock:
                    state["now"] += 1
                    state["peak"] = max(state["peak"], state["now"])
                    state["total"] += 1
                await asyncio.sleep(0.001)
                with lock:
                    state["now"] -= 1

    async def loop() -> None:
        await asyncio.gather(one(), one())

    threads = [threading.Thread(target=asyncio.run, args=(loop(),)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert state["total"] == 80
    assert 1 <= state["peak"] <= 3
    assert slots.held() == 0


# -- crashes ----------------------------------------------------------------------------------------


def test_slots_of_a_killed_process_go_to_a_waiter_in_another_process(tmp_path: Path) -> None:
    holding = SPAWN.Event()
    holder = _start(_hold, str(tmp_path), 3, 3, holding)
    try:
        assert holding.wait(WAIT)
        slots = SharedSlots.for_key(KEY, ENDPOINT, 3, tmp_path)
        assert slots.held() == 3

        async def scenario() -> list[str]:
            with pytest.raises(FluxTimeout):
                await slots.acquire(timeout=0.2)  # full while the holder lives
            waiter = asyncio.create_task(slots.acquire())
            await asyncio.sleep(0.2)
            steps = ["waiting" if not waiter.done() else "took a live process's slot"]
            _kill(holder)
            await asyncio.wait_for(waiter, WAIT)
            steps.append("got a slot after the kill")
            for _ in range(2):
                await asyncio.wait_for(slots.acquire(), WAIT)
            return steps

        assert asyncio.run(scenario()) == ["waiting", "got a slot after the kill"]
        assert slots.held() == 3
        assert set(_owners(tmp_path)) == {lease_owner()}
        assert owner_is_gone(f"{os.uname().nodename}:{holder.pid}")
    finally:
        _kill(holder)


def test_a_killed_waiter_does_not_hold_up_the_line(tmp_path: Path) -> None:
    slots = SharedSlots.for_key(KEY, ENDPOINT, 1, tmp_path)

    async def scenario() -> None:
        lease = await slots.acquire()
        got = SPAWN.Event()  # kept referenced until the child has it
        waiter = _start(_wait_in_line, str(tmp_path), 1, got)
        await asyncio.to_thread(_until, lambda: slots.table.count(slots.scope) == (1, 1))
        _kill(waiter)
        mine = asyncio.create_task(slots.acquire())  # behind the dead child in the line
        await slots.release(lease)
        await asyncio.wait_for(mine, WAIT)
        assert not got.is_set()

    asyncio.run(scenario())
    assert slots.table.count(slots.scope) == (1, 0)
    assert _owners(tmp_path) == [lease_owner()]


def test_a_stopped_waiter_is_passed_by_once_it_stops_looking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slot_table_module, "STALLED_S", 0.5)  # this process's judgement; the child keeps its own
    slots = SharedSlots.for_key(KEY, ENDPOINT, 1, tmp_path)
    got = SPAWN.Event()
    child = _start(_wait_in_line, str(tmp_path), 1, got)

    async def scenario() -> None:
        lease = await slots.acquire()
        await asyncio.to_thread(_until, lambda: slots.table.count(slots.scope) == (1, 1))
        os.kill(child.pid, signal.SIGSTOP)  # alive, first in line, no longer looking
        mine = asyncio.create_task(slots.acquire())
        await slots.release(lease)
        await asyncio.wait_for(mine, WAIT)
        assert not got.is_set()

    try:
        asyncio.run(scenario())
        assert slots.table.count(slots.scope) == (1, 1)  # the stopped child keeps its place for when it wakes
    finally:
        os.kill(child.pid, signal.SIGCONT)
        _kill(child)


# -- order and giving back --------------------------------------------------------------------------


def test_first_come_first_served_across_processes(tmp_path: Path) -> None:
    slots = SharedSlots.for_key(KEY, ENDPOINT, 1, tmp_path)
    got = SPAWN.Event()
    child = None

    async def scenario() -> list[str]:
        nonlocal child
        lease = await slots.acquire()
        child = _start(_wait_in_line, str(tmp_path), 1, got)
        await asyncio.to_thread(_until, lambda: slots.table.count(slots.scope) == (1, 1))
        mine = asyncio.create_task(slots.acquire())  # in line behind the child
        await asyncio.to_thread(_until, lambda: slots.table.count(slots.scope) == (1, 2))
        await slots.release(lease)  # wakes `mine` at once, but the child came first
        await asyncio.to_thread(got.wait, WAIT)
        order = ["child" if got.is_set() and not mine.done() else "this process"]
        _kill(child)
        await asyncio.wait_for(mine, WAIT)
        return [*order, "this process"]

    try:
        assert asyncio.run(scenario()) == ["child", "this process"]
    finally:
        if child is not None:
            _kill(child)


def test_release_is_idempotent_and_the_context_managers_give_back(tmp_path: Path) -> None:
    slots = SharedSlots.for_key(KEY, ENDPOINT, 2, tmp_path)

    async def scenario() -> list[int]:
        seen = []
        lease = await slots.acquire()
        await slots.release(lease)
        await slots.release(lease)
        seen.append(slots.held())
        with pytest.raises(RuntimeError):
            async with slots.slot():
                seen.append(slots.held())
                raise RuntimeError("the task failed")
        async with slots as first, slots as second:
            assert first.lease_id != second.lease_id
            seen.append(slots.held())
        seen.append(slots.held())
        return seen

    assert asyncio.run(scenario()) == [0, 1, 2, 0]


def test_release_later_gives_the_lease_back_after_the_delay_without_waiting_for_it(tmp_path: Path) -> None:
    slots = SharedSlots.for_key(KEY, ENDPOINT, 1, tmp_path)

    async def scenario() -> list[int]:
        lease = await slots.acquire()
        later = slots.release_later(lease, 0.05)
        held = [slots.held()]
        await asyncio.wait_for(slots.acquire(), WAIT)  # the one slot comes back to the line
        await later
        return [*held, slots.held()]

    assert asyncio.run(scenario()) == [1, 1]


def test_try_acquire_takes_a_free_slot_or_none_without_joining_the_line(tmp_path: Path) -> None:
    slots = SharedSlots.for_key(KEY, ENDPOINT, 2, tmp_path)

    async def scenario() -> list[Any]:
        first, second, third = [await slots.try_acquire() for _ in range(3)]
        counts = slots.table.count(slots.scope)
        assert first is not None and second is not None
        await slots.release(first)
        return [third, counts, slots.table.count(slots.scope)]

    assert asyncio.run(scenario()) == [None, (2, 0), (1, 0)]


def test_a_cancelled_or_timed_out_acquire_leaves_nothing_behind(tmp_path: Path) -> None:
    slots = SharedSlots.for_key(KEY, ENDPOINT, 1, tmp_path)

    async def scenario() -> None:
        lease = await slots.acquire()
        with pytest.raises(FluxTimeout, match="no free slot of 1"):
            await slots.acquire(timeout=0.05)
        assert slots.table.count(slots.scope) == (1, 0)
        waiter = asyncio.create_task(slots.acquire())
        await asyncio.to_thread(_until, lambda: slots.table.count(slots.scope) == (1, 1))
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await asyncio.to_thread(_until, lambda: slots.table.count(slots.scope) == (1, 0))
        await slots.release(lease)
        await asyncio.wait_for(slots.acquire(), WAIT)

    asyncio.run(scenario())
    assert slots.table.count(slots.scope) == (1, 0)


# -- scopes, the key, the folder --------------------------------------------------------------------


def test_different_keys_and_endpoints_do_not_share_slots(tmp_path: Path) -> None:
    full = SharedSlots.for_key(KEY, ENDPOINT, 2, tmp_path)

    async def scenario() -> None:
        await full.acquire()
        await full.acquire()
        with pytest.raises(FluxTimeout):
            await full.acquire(timeout=0.05)
        for key, endpoint in [("another-key", ENDPOINT), (KEY, "http://127.0.0.1:8801"), (None, ENDPOINT)]:
            other = SharedSlots.for_key(key, endpoint, 2, tmp_path)
            await asyncio.wait_for(other.acquire(), WAIT)
            assert other.held() == 1
        with pytest.raises(FluxTimeout):  # the same key and endpoint, spelled with a slash: still full
            await SharedSlots.for_key(KEY, ENDPOINT + "/", 2, tmp_path).acquire(timeout=0.05)

    asyncio.run(scenario())


def test_every_bfl_host_is_one_endpoint_for_a_key() -> None:
    assert scope_of(KEY, "https://api.bfl.ai") == scope_of(KEY, "https://api.eu.bfl.ai/")
    assert scope_of(KEY, "https://api.bfl.ai") != scope_of("other", "https://api.bfl.ai")
    assert scope_of(KEY, "http://127.0.0.1:8800") != scope_of(KEY, "http://127.0.0.1:8801")
    assert len(scope_of(KEY, ENDPOINT)) == 32
    with pytest.raises(ValidationError, match="is not a URL with a valid port"):
        scope_of(KEY, "http://127.0.0.1:99999")


def test_the_key_never_reaches_the_database_or_a_repr(tmp_path: Path) -> None:
    slots = SharedSlots.for_key(KEY, ENDPOINT, 3, tmp_path)

    async def scenario() -> Any:
        kept = await slots.acquire()
        await slots.release(await slots.acquire())
        return kept

    lease = asyncio.run(scenario())
    files = [path for path in tmp_path.iterdir() if path.name.startswith(DATABASE)]
    assert tmp_path / DATABASE in files
    data = b"".join(path.read_bytes() for path in files)
    assert scope_of(KEY, ENDPOINT).encode() in data  # the scan reads what was written
    assert KEY.encode() not in data and KEY[:12].encode() not in data
    assert KEY not in repr(slots) and KEY not in repr(lease)


def test_the_folder_comes_from_the_argument_then_the_environment_then_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLUX_NB_SLOTS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_folder() == tmp_path / "cache" / "flux_nb"
    monkeypatch.setenv("FLUX_NB_SLOTS_DIR", str(tmp_path / "env"))
    assert default_folder() == tmp_path / "env"
    assert SharedSlots.for_key(KEY, ENDPOINT).table.folder == (tmp_path / "env").resolve()
    assert SharedSlots.for_key(KEY, ENDPOINT, folder=tmp_path / "arg").table.folder == (tmp_path / "arg").resolve()
    assert (tmp_path / "arg" / DATABASE).exists()


def test_a_folder_that_cannot_hold_the_table_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(ValidationError, match=r"a-file.*FLUX_NB_SLOTS_DIR"):
        SharedSlots.for_key(KEY, ENDPOINT, folder=tmp_path / "a-file")
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / DATABASE).write_bytes(b"this is not a database" * 100)
    with pytest.raises(ValidationError, match="garbage"):
        SharedSlots.for_key(KEY, ENDPOINT, folder=tmp_path / "garbage")


def test_owners_name_host_pid_and_start_and_only_dead_local_ones_are_gone() -> None:
    host, _, process = lease_owner().rpartition(":")
    assert host == os.uname().nodename and process.startswith(f"{os.getpid()}@")
    assert not owner_is_gone(lease_owner())
    assert owner_is_gone(f"{host}:{os.getpid()}@1")  # this pid, another start time: a recycled pid
    assert not owner_is_gone(f"another-host-{host}:{os.getpid() + 1}@1")


def test_a_limit_below_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="at least 1, got 0"):
        SharedSlots.for_key(KEY, ENDPOINT, 0, tmp_path)


def test_the_bench_runs_at_tiny_sizes(tmp_path: Path) -> None:
    target = tmp_path / "slots.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench.shared_slots", "--smoke", "--json", str(target)],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(target.read_text())
    assert results["leases"] == 100 and results["contended"]["leases"] == 3 * 24
    assert "us per lease" in run.stdout
