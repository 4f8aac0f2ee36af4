"""Releases of one process: written together, and handed straight to its own waiters whose turn it is."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from flux_nb.http import slots as slots_module
from flux_nb.http.slot_table import TAKEN, WAKEUPS_ENV, Lease
from flux_nb.http.slots import SharedSlots, lease_owner

KEY = "bfl-test-key-handover-8d04"
ENDPOINT = "http://127.0.0.1:8800"
WAIT = 60.0  # bound on how long a state may take to show up (not a speed check)
NEVER = 3600.0  # a poll pause no test outlives: only a release can make such a waiter move


@pytest.fixture
def quiet_waiters(monkeypatch: pytest.MonkeyPatch) -> None:
    """Waiters that never look on their own, and no wake-up sockets: only this process's releases move them."""
    for name in ("POLL_FIRST_S", "POLL_HEAD_S", "POLL_MAX_S", "POLL_LISTENING_S"):
        monkeypatch.setattr(slots_module, name, NEVER)
    monkeypatch.setenv(WAKEUPS_ENV, "0")


async def _until(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, "the state never showed up"
        await asyncio.sleep(0.01)


async def _one_held_one_in_line(slots: SharedSlots) -> tuple[Lease, asyncio.Task[Lease]]:
    """A slot held (limit 1), and a second acquire of this process waiting in line for it."""
    first = await slots.acquire()
    second = asyncio.create_task(slots.acquire())
    await _until(lambda: slots.table.count(slots.scope) == (1, 1))
    return first, second


def _foreign(scope: str, name: str) -> Lease:
    """A lease of a process on another host: alive as far as this one can tell."""
    return Lease(name, scope, f"another-{socket.gethostname()}:1@1", 0.0)


def test_releases_made_together_are_written_in_one_transaction(tmp_path: Path) -> None:
    slots = SharedSlots.for_key(KEY, ENDPOINT, 8, tmp_path)
    table = slots.table
    leases = [Lease(f"mine-{i}", slots.scope, lease_owner(), 0.0) for i in range(8)]
    assert [table.try_take(lease, 8, look_first=False) for lease in leases] == [TAKEN] * 8
    queued = [table.queue_release(lease.lease_id, 8) for lease in leases]
    assert [leader for _, leader in queued] == [True] + [False] * 7
    writes = table.writes
    table.run_queued()  # what the leader's thread runs
    assert table.writes - writes == 1
    assert all(done.result(0) is None for done, _ in queued)
    assert table.count(slots.scope) == (0, 0)


def test_a_release_hands_its_slot_to_a_waiter_of_this_process_without_a_look(
    tmp_path: Path, quiet_waiters: None
) -> None:
    slots = SharedSlots.for_key(KEY, ENDPOINT, 1, tmp_path)
    table = slots.table

    async def scenario() -> None:
        first, second = await _one_held_one_in_line(slots)  # in line, waiting for NEVER seconds
        looks, writes = table.looks, table.writes
        await slots.release(first)
        lease = await asyncio.wait_for(second, WAIT)
        assert (table.looks - looks, table.writes - writes) == (0, 1)  # the release's own write took it
        assert table.count(slots.scope) == (1, 0)
        await slots.release(lease)
        assert table.count(slots.scope) == (0, 0)

    asyncio.run(scenario())


def test_a_hand_over_keeps_a_waiter_of_another_process_that_came_first(tmp_path: Path, quiet_waiters: None) -> None:
    slots = SharedSlots.for_key(KEY, ENDPOINT, 1, tmp_path)
    table = slots.table

    async def scenario() -> None:
        first = await slots.acquire()
        other = _foreign(slots.scope, "other-process")
        assert table.try_take(other, 1, look_first=False) == 0  # first in line
        mine = asyncio.create_task(slots.acquire())
        await _until(lambda: table.count(slots.scope) == (1, 2))
        await slots.release(first)
        await asyncio.sleep(0.05)
        assert not mine.done()  # the slot waits for the other process, whose turn it is
        assert table.count(slots.scope) == (0, 2)
        assert table.try_take(other, 1) == TAKEN
        table.forget(other.lease_id, 1)  # its release wakes this process's waiter, whose turn it is now
        lease = await asyncio.wait_for(mine, WAIT)
        await slots.release(lease)

    asyncio.run(scenario())


def test_a_stalled_waiter_of_another_process_is_passed_by_in_a_hand_over(
    tmp_path: Path, quiet_waiters: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    slots = SharedSlots.for_key(KEY, ENDPOINT, 1, tmp_path)
    table = slots.table

    async def scenario() -> None:
        first = await slots.acquire()
        other = _foreign(slots.scope, "stalled-process")
        assert table.try_take(other, 1, look_first=False) == 0
        table._write(lambda db: db.execute("UPDATE waiters SET seen = 0 WHERE lease_id = ?", (other.lease_id,)))
        mine = asyncio.create_task(slots.acquire())
        await _until(lambda: table.count(slots.scope) == (1, 2))
        await slots.release(first)
        lease = await asyncio.wait_for(mine, WAIT)
        assert table.count(slots.scope) == (1, 1)  # the stalled one keeps its place for when it looks again
        await slots.release(lease)

    asyncio.run(scenario())


def test_a_waiter_cancelled_before_the_release_is_never_handed_a_slot(tmp_path: Path, quiet_waiters: None) -> None:
    slots = SharedSlots.for_key(KEY, ENDPOINT, 1, tmp_path)
    table = slots.table

    async def scenario() -> None:
        first = await slots.acquire()
        lease = Lease("left-the-line", slots.scope, lease_owner(), 0.0)
        assert table.try_take(lease, 1, look_first=False) == 0
        table.room.park(lease.lease_id, asyncio.Event())
        table.forget(lease.lease_id, 1)  # what a cancelled acquire does, before it is unparked
        await slots.release(first)
        assert not table.room.granted(lease.lease_id)
        assert table.count(slots.scope) == (0, 0)
        table.room.unpark(lease.lease_id)

    asyncio.run(scenario())


def test_a_waiter_cancelled_as_the_hand_over_reaches_it_gives_the_slot_back(
    tmp_path: Path, quiet_waiters: None
) -> None:
    slots = SharedSlots.for_key(KEY, ENDPOINT, 1, tmp_path)
    table = slots.table

    async def scenario() -> None:
        first, second = await _one_held_one_in_line(slots)
        second.cancel()
        # The release is written, and hands the slot to `second`, before `second` runs again to see its cancel.
        table.queue_release(first.lease_id, 1)
        table.run_queued()
        assert table.count(slots.scope) == (1, 0)  # handed over: the waiter's place in line is a lease now
        assert table.room.parked() == set()  # granted
        with pytest.raises(asyncio.CancelledError):
            await second
        await _until(lambda: table.count(slots.scope) == (0, 0))
        assert await slots.try_acquire() is not None

    asyncio.run(scenario())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_never_hands_a_slot_to_its_parents_waiters(tmp_path: Path) -> None:
    slots = SharedSlots.for_key(KEY, ENDPOINT, 1, tmp_path)
    table = slots.table

    async def scenario() -> int:
        parent_waiter = Lease("parents-waiter", slots.scope, lease_owner(), 0.0)
        table.room.park(parent_waiter.lease_id, asyncio.Event())
        assert table.room.parked() == {"parents-waiter"}
        pid = os.fork()
        if pid == 0:  # the child: the parent's waiter is not one of its own
            os._exit(0 if table.room.parked() == set() else 1)
        _, status = os.waitpid(pid, 0)
        assert table.room.parked() == {"parents-waiter"}  # the parent's own view is unchanged
        return os.waitstatus_to_exitcode(status)

    assert asyncio.run(scenario()) == 0
