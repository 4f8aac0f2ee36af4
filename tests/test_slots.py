"""flux_nb.http.slots: a key's active-task slots shared by real processes through file locks, key-free on disk."""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flux_nb.errors import FluxTimeout, ValidationError
from flux_nb.http import slot_locks
from flux_nb.http.slots import WANTED, SharedSlots, default_folder, scope_of

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


# -- children (module level: spawned processes import them) ---------------------------------------


def _sweep(folder: str, limit: int, tasks: int, rounds: int, shared: tuple[Any, ...]) -> None:
    """After every child is ready, ``tasks`` concurrent tasks each take a slot ``rounds`` times and
    hold it a moment, counting holders (now, peak, total) in shared memory."""
    ready, counter, peak, total, lock = shared
    slots = SharedSlots.for_key(KEY, ENDPOINT, limit, Path(folder))

    async def one() -> None:
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


def _start(target: Callable[..., None], *args: Any) -> Any:
    process = SPAWN.Process(target=target, args=args, daemon=True)
    process.start()
    return process


def _kill(process: Any) -> None:
    if process.is_alive():
        os.kill(process.pid, signal.SIGCONT)
        os.kill(process.pid, signal.SIGKILL)
    process.join(WAIT)


def _holding(tmp_path: Path, limit: int, count: int) -> Any:
    """A child process holding ``count`` of ``limit`` slots until killed."""
    holding = SPAWN.Event()
    child = _start(_hold, str(tmp_path), limit, count, holding)
    assert holding.wait(WAIT), "the child never took its slots"
    return child


FOREIGN = textwrap.dedent(
    """
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
    fcntl.lockf(fd, fcntl.LOCK_SH if sys.argv[2] == "shared" else fcntl.LOCK_EX, int(sys.argv[3]), int(sys.argv[4]))
    print("locked", flush=True)
    time.sleep(3600)
    """
)


def _foreign_lock(path: Path, kind: str, length: int = 0, start: int = 0) -> subprocess.Popen[str]:
    """Another program (not flux_nb) holding a lock on ``path``: the whole file by default."""
    child = subprocess.Popen(
        [sys.executable, "-c", FOREIGN, str(path), kind, str(length), str(start)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "locked"
    return child


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
    assert SharedSlots.for_key(KEY, ENDPOINT, limit, tmp_path).held() == 0


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


def test_waiters_of_one_process_are_served_first_come_first_served(tmp_path: Path) -> None:
    slots = SharedSlots.for_key(KEY, ENDPOINT, 1, tmp_path)

    async def scenario() -> list[str]:
        order: list[str] = []

        async def wait(name: str) -> None:
            async with slots.slot():
                order.append(name)

        async with slots.slot():
            waiters = []
            for name in "abc":
                waiters.append(asyncio.create_task(wait(name)))
                await asyncio.sleep(0.01)  # each in line before the next
        await asyncio.wait_for(asyncio.gather(*waiters), WAIT)
        return order

    assert asyncio.run(scenario()) == ["a", "b", "c"]
    assert slots.held() == 0


def test_a_slot_given_back_is_left_free_while_another_process_waits(tmp_path: Path) -> None:
    slots = SharedSlots.for_key(KEY, ENDPOINT, 1, tmp_path)
    other = _foreign_lock(slots.path, "shared", 1, WANTED)  # a waiting process's sign, as flux_nb makes it

    async def scenario() -> list[Any]:
        lease = await slots.acquire()
        waiter = asyncio.create_task(slots.acquire())
        await asyncio.sleep(0.01)
        slots.release(lease)
        seen = [waiter.done(), slots.held()]  # not handed over here: the other process may take it first
        slots.release(await asyncio.wait_for(waiter, WAIT))  # nobody took it: this process's next look does
        return seen

    try:
        assert asyncio.run(scenario()) == [False, 0]
    finally:
        other.kill()
        other.wait()


def test_the_next_waiter_looks_for_slots_once_the_first_got_one(tmp_path: Path) -> None:
    slots = SharedSlots.for_key(KEY, ENDPOINT, 2, tmp_path)
    others = [_foreign_lock(slots.path, "exclusive", 1, index) for index in range(2)]  # one slot each

    async def scenario() -> None:
        first = asyncio.create_task(slots.acquire())
        await asyncio.sleep(0.01)
        second = asyncio.create_task(slots.acquire())
        await asyncio.sleep(0.01)  # both in line
        leases = []
        for other, waiter in zip(others, (first, second), strict=True):
            other.kill()
            other.wait()
            leases.append(await asyncio.wait_for(waiter, WAIT))  # found by its own look: nobody here gave one back
        assert slots.holders() == {os.getpid(): 2}

    try:
        asyncio.run(scenario())
    finally:
        for other in others:
            other.kill()
            other.wait()


def test_the_next_waiter_looks_for_slots_once_the_first_stopped_waiting(tmp_path: Path) -> None:
    slots = SharedSlots.for_key(KEY, ENDPOINT, 1, tmp_path)
    other = _foreign_lock(slots.path, "exclusive", 1, 0)

    async def scenario() -> None:
        first = asyncio.create_task(slots.acquire())
        await asyncio.sleep(0.01)
        second = asyncio.create_task(slots.acquire())
        await asyncio.sleep(0.01)
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        other.kill()
        other.wait()
        await asyncio.wait_for(second, WAIT)

    try:
        asyncio.run(scenario())
    finally:
        other.kill()
        other.wait()


# -- processes that die, stop, fork ---------------------------------------------------------------


def test_slots_of_a_killed_process_are_free_at_once(tmp_path: Path) -> None:
    child = _holding(tmp_path, 3, 3)
    slots = SharedSlots.for_key(KEY, ENDPOINT, 3, tmp_path)
    try:

        async def scenario() -> list[Any]:
            steps: list[Any] = [await slots.try_acquire(), dict(slots.holders())]
            waiter = asyncio.create_task(slots.acquire())
            await asyncio.sleep(0.05)
            steps.append(waiter.done())
            await asyncio.to_thread(_kill, child)
            await asyncio.wait_for(waiter, WAIT)
            steps.append([await slots.try_acquire() is not None for _ in range(3)])  # no waiting: free already
            return steps

        assert asyncio.run(scenario()) == [None, {child.pid: 3}, False, [True, True, False]]
        assert slots.holders() == {os.getpid(): 3}
    finally:
        _kill(child)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_holds_none_of_its_parents_slots(tmp_path: Path) -> None:
    slots = SharedSlots.for_key(KEY, ENDPOINT, 2, tmp_path)

    async def scenario() -> int:
        lease = await slots.acquire()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: the parent's slot is another process's, and its lease is not the child's

            async def child() -> bool:
                seen = dict(slots.holders())
                slots.release(lease)
                mine, none = await slots.try_acquire(), await slots.try_acquire()
                return seen == {parent: 1} and mine is not None and none is None

            os._exit(0 if asyncio.run(child()) else 1)
        _, status = os.waitpid(pid, 0)
        assert slots.holders() == {parent: 1}  # the child's slot went with it; the parent's stays
        slots.release(lease)
        return os.waitstatus_to_exitcode(status)

    assert asyncio.run(scenario()) == 0
    assert slots.held() == 0


def test_a_wait_behind_a_stopped_holder_says_who_holds_the_slots(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    child = _holding(tmp_path, 2, 2)
    os.kill(child.pid, signal.SIGSTOP)  # alive, holding its slots, doing nothing
    slots = SharedSlots.for_key(KEY, ENDPOINT, 2, tmp_path, say_after=0.2)
    try:
        with caplog.at_level(logging.WARNING, logger="flux_nb.slots"), pytest.raises(FluxTimeout):
            asyncio.run(slots.acquire(timeout=1.0))
    finally:
        _kill(child)
    [told] = [record.getMessage() for record in caplog.records]  # once for the whole stall
    assert f"held by pid {child.pid} (2)" in told and "the setting share_slots off" in told
    assert "FLUX_NB_SLOTS_DIR" in told and "\n" not in told


def test_a_foreign_lock_on_the_whole_file_is_named_in_the_wait(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    slots = SharedSlots.for_key(KEY, ENDPOINT, 24, tmp_path, say_after=0.2)
    other = _foreign_lock(slots.path, "exclusive")
    try:
        with caplog.at_level(logging.WARNING, logger="flux_nb.slots"), pytest.raises(FluxTimeout):
            asyncio.run(slots.acquire(timeout=1.0))
        assert slots.holders() == {other.pid: 24}
    finally:
        other.kill()
        other.wait()
    [told] = [record.getMessage() for record in caplog.records]
    assert f"(the key's 24 active tasks); held by pid {other.pid} (24)." in told
    assert asyncio.run(slots.try_acquire()) is not None  # its end freed them


def test_a_long_line_that_moves_says_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    child = _holding(tmp_path, 2, 1)  # another process holds one slot all along
    slots = SharedSlots.for_key(KEY, ENDPOINT, 2, tmp_path, say_after=0.3)

    async def one() -> None:
        async with slots.slot():
            await asyncio.sleep(0.02)

    async def line() -> None:
        await asyncio.wait_for(asyncio.gather(*(one() for _ in range(30))), WAIT)

    try:
        with caplog.at_level(logging.WARNING, logger="flux_nb.slots"):
            asyncio.run(line())
    finally:
        _kill(child)
    assert caplog.records == []  # the last one waited about 0.6 s, but a slot came every 0.02 s


def test_a_wait_behind_this_processs_own_slots_says_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    slots = SharedSlots.for_key(KEY, ENDPOINT, 1, tmp_path, say_after=0.1)

    async def scenario() -> None:
        async with slots.slot():  # its own task, which ends or times out by itself
            with pytest.raises(FluxTimeout):
                await slots.acquire(timeout=0.5)

    with caplog.at_level(logging.WARNING, logger="flux_nb.slots"):
        asyncio.run(scenario())
    assert caplog.records == []


# -- giving back ------------------------------------------------------------------------------------


def test_release_is_idempotent_and_the_context_manager_gives_back(tmp_path: Path) -> None:
    slots = SharedSlots.for_key(KEY, ENDPOINT, 2, tmp_path)

    async def scenario() -> list[int]:
        seen = []
        lease = await slots.acquire()
        slots.release(lease)
        again = await slots.acquire()  # the same slot, a new lease
        slots.release(lease)  # the old lease: not the new holder's slot
        seen.append(slots.held())
        slots.release(again)
        with pytest.raises(RuntimeError):
            async with slots.slot():
                seen.append(slots.held())
                raise RuntimeError("the task failed")
        seen.append(slots.held())
        return seen

    assert asyncio.run(scenario()) == [1, 1, 0]


def test_release_later_keeps_the_slot_for_the_delay_and_release_pending_ends_it(tmp_path: Path) -> None:
    slots = SharedSlots.for_key(KEY, ENDPOINT, 1, tmp_path)

    async def scenario() -> list[Any]:
        slots.release_later(await slots.acquire(), 0.2)  # a lost submit's task may still run that long
        seen: list[Any] = [await slots.try_acquire()]
        lease = await asyncio.wait_for(slots.acquire(), WAIT)  # back after the delay
        slots.release_later(lease, 3600)
        return [*seen, slots.held(), await slots.release_pending(), slots.held()]

    assert asyncio.run(scenario()) == [None, 1, 1, 0]


def test_try_acquire_takes_a_free_slot_or_none_without_joining_the_line(tmp_path: Path) -> None:
    slots = SharedSlots.for_key(KEY, ENDPOINT, 2, tmp_path)

    async def scenario() -> list[Any]:
        first, second, third = [await slots.try_acquire() for _ in range(3)]
        held = slots.held()
        assert first is not None and second is not None
        slots.release(first)
        return [third, held, slots.held()]

    assert asyncio.run(scenario()) == [None, 2, 1]


def test_a_cancelled_or_timed_out_acquire_leaves_nothing_behind(tmp_path: Path) -> None:
    slots = SharedSlots.for_key(KEY, ENDPOINT, 1, tmp_path)

    async def scenario() -> None:
        lease = await slots.acquire()
        with pytest.raises(FluxTimeout, match="no free slot of 1"):
            await slots.acquire(timeout=0.05)
        waiter = asyncio.create_task(slots.acquire())
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        slots.release(lease)
        assert slots.held() == 0  # the cancelled waiter was not handed it
        lease = await slots.acquire()
        handed = asyncio.create_task(slots.acquire())
        await asyncio.sleep(0.01)
        slots.release(lease)  # handed to the waiter in line...
        handed.cancel()  # ... which is cancelled before it runs again: it gives the slot back
        with pytest.raises(asyncio.CancelledError):
            await handed
        assert slots.held() == 0

    asyncio.run(scenario())
    assert asyncio.run(SharedSlots.for_key(KEY, ENDPOINT, 1, tmp_path).try_acquire()) is not None


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


def test_the_key_never_reaches_the_folder_or_a_repr(tmp_path: Path) -> None:
    slots = SharedSlots.for_key(KEY, ENDPOINT, 3, tmp_path)
    lease = asyncio.run(slots.acquire())
    files = list(tmp_path.iterdir())
    assert files == [tmp_path / f"slots-{scope_of(KEY, ENDPOINT)}.lock"]
    assert files[0].stat().st_size == 0  # only its locks count (reading it here would drop them: one fd each)
    assert KEY not in repr(slots) and KEY not in repr(lease) and KEY[:12] not in str(files)


def test_the_folder_comes_from_the_argument_then_the_environment_then_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLUX_NB_SLOTS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_folder() == tmp_path / "cache" / "flux_nb"
    monkeypatch.setenv("FLUX_NB_SLOTS_DIR", str(tmp_path / "env"))
    assert default_folder() == tmp_path / "env"
    assert SharedSlots.for_key(KEY, ENDPOINT).path.parent == (tmp_path / "env").resolve()
    missing = tmp_path / "arg" / "not" / "there"
    assert SharedSlots.for_key(KEY, ENDPOINT, folder=missing).path.parent == missing.resolve()
    assert [path.suffix for path in missing.iterdir()] == [".lock"]  # the folder is made


def test_a_folder_that_cannot_hold_the_lock_file_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    for folder in (tmp_path / "a-file", tmp_path / "a-file" / "slots"):
        with pytest.raises(ValidationError, match=r"a-file.*cannot hold the lock file.*FLUX_NB_SLOTS_DIR"):
            SharedSlots.for_key(KEY, ENDPOINT, folder=folder)


def test_slots_go_on_when_their_folder_goes_away_after_it_opened(tmp_path: Path) -> None:
    folder = tmp_path / "slots"
    slots = SharedSlots.for_key(KEY, ENDPOINT, 2, folder)

    async def sweep() -> int:
        async def one() -> None:
            async with slots.slot():
                await asyncio.sleep(0.001)

        await asyncio.gather(*(one() for _ in range(10)))
        return slots.held()

    assert asyncio.run(sweep()) == 0
    shutil.rmtree(folder)  # deleted, unmounted, or full: nothing is written while slots come and go
    assert asyncio.run(sweep()) == 0


def test_a_limit_out_of_range_is_refused(tmp_path: Path) -> None:
    for limit in (0, WANTED):
        with pytest.raises(ValidationError, match=f"between 1 and {WANTED - 1}, got {limit}"):
            SharedSlots.for_key(KEY, ENDPOINT, limit, tmp_path)


def test_without_file_locks_the_limit_holds_in_this_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slot_locks, "fcntl", None)  # as on Windows
    slots = SharedSlots.for_key(KEY, ENDPOINT, 2, tmp_path / "no-locks")

    async def scenario() -> list[Any]:
        first, second, third = [await slots.try_acquire() for _ in range(3)]
        held = slots.held()
        slots.release(first)  # type: ignore[arg-type]
        return [second is not None, third, held, slots.held()]

    assert asyncio.run(scenario()) == [True, None, 2, 1]
    assert not (tmp_path / "no-locks").exists()


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
