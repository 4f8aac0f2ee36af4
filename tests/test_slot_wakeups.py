"""flux_nb.http.slot_wakeups: a slot given back in one process reaches a waiter in another without polling."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import socket
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flux_nb.http import slots as slots_module
from flux_nb.http.slot_table import TAKEN, WAKEUPS_ENV, Lease
from flux_nb.http.slot_wakeups import WAKE_DIR, owner_of, socket_name
from flux_nb.http.slots import DATABASE, SharedSlots, lease_owner
from flux_nb.owners import process_owner

KEY = "bfl-test-key-wakeups-5e21"
ENDPOINT = "http://127.0.0.1:8800"
SPAWN = multiprocessing.get_context("spawn")
WAIT = 60.0  # bound on how long a child may take to start or a state to show up (not a speed check)
NEVER = 3600.0  # a poll pause no test outlives: only a wake-up can make such a waiter look again

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="AF_UNIX wake-ups; Windows only polls")


def _wait_in_line(folder: str, poll: float, listening: Any, answers: Any) -> None:
    """Wait for one slot, looking on its own only every ``poll`` seconds; report every answer of every look."""
    for name in ("POLL_FIRST_S", "POLL_HEAD_S", "POLL_MAX_S", "POLL_LISTENING_S"):
        setattr(slots_module, name, poll)
    slots = SharedSlots.for_key(KEY, ENDPOINT, 1, Path(folder))
    seen: list[int] = []
    take_many = slots.table.try_take_many

    def recorded(*args: Any, **kwargs: Any) -> list[int]:
        found = take_many(*args, **kwargs)
        seen.extend(found)
        if len(seen) == 2:
            listening.set()  # in line, its socket open, and the look after opening it done
        return found

    slots.table.try_take_many = recorded  # type: ignore[method-assign]

    async def main() -> None:
        await slots.acquire()
        answers.put((seen, slots.table.looks, slots.table.wakeups.wakes, slots.table.wakeups.enabled))
        await asyncio.sleep(NEVER)

    asyncio.run(main())


def _start(target: Any, *args: Any) -> Any:
    process = SPAWN.Process(target=target, args=args, daemon=True)
    process.start()
    return process


def _stop(process: Any) -> None:
    process.kill()
    process.join(WAIT)


def _sockets(folder: Path) -> list[str]:
    wake = folder / WAKE_DIR
    return sorted(path.name for path in wake.iterdir()) if wake.exists() else []


def test_a_release_here_wakes_a_waiter_in_another_process_which_takes_the_slot_in_one_look(tmp_path: Path) -> None:
    def while_in_line(slots: SharedSlots, child: Any) -> None:
        assert slots.table.count(slots.scope) == (1, 1)
        assert _sockets(tmp_path) == [socket_name(f"{socket.gethostname()}:{child.pid}@{_start_of(child.pid)}")]

    slots, (seen, looks, wakes, enabled) = _hand_over(tmp_path, NEVER, while_in_line)
    # The first try joined the line, the look once its socket was open saw it still full, and the one look
    # after the wake-up took the slot: no poll in between (the child's pause is an hour).
    assert (seen, looks, wakes, enabled) == ([0, 0, TAKEN], 3, 1, True)
    assert slots.table.wakeups.sent == 1
    assert slots.table.count(slots.scope) == (1, 0)


def _hand_over(
    folder: Path, pause: float, while_in_line: Callable[[SharedSlots, Any], None] | None = None
) -> tuple[SharedSlots, tuple[Any, ...]]:
    """This process holds the only slot while a spawned child (looking every ``pause`` s) waits in line, then
    releases it; the child's answers: (what each look saw, its looks, its wake-ups, whether it listened)."""
    slots = SharedSlots.for_key(KEY, ENDPOINT, 1, folder)
    listening, answers = SPAWN.Event(), SPAWN.Queue()
    child = None

    async def scenario() -> tuple[Any, ...]:
        nonlocal child
        lease = await slots.acquire()
        child = _start(_wait_in_line, str(folder), pause, listening, answers)
        assert await asyncio.to_thread(listening.wait, WAIT)
        if while_in_line is not None:
            while_in_line(slots, child)
        await slots.release(lease)
        return await asyncio.to_thread(answers.get, True, WAIT)

    try:
        return slots, asyncio.run(scenario())
    finally:
        if child is not None:
            _stop(child)


def _start_of(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rpartition(")")[2].split()[19]


def test_polling_still_hands_the_slot_over_with_wakeups_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WAKEUPS_ENV, "0")  # the child (spawned now) reads it; this process's table is made after
    slots, (seen, looks, wakes, enabled) = _hand_over(tmp_path, 0.01)
    assert not enabled and not slots.table.wakeups.enabled
    assert seen[-1] == TAKEN and all(answer == 0 for answer in seen[:-1]) and looks == len(seen) >= 3
    assert wakes == 0 and slots.table.wakeups.sent == 0
    assert _sockets(tmp_path) == []


def test_a_waiting_process_listens_only_while_it_has_waiters(tmp_path: Path) -> None:
    slots = SharedSlots.for_key(KEY, ENDPOINT, 1, tmp_path)
    wakeups = slots.table.wakeups
    mine = socket_name(process_owner())

    async def scenario() -> list[Any]:
        steps: list[Any] = [_sockets(tmp_path)]
        lease = await slots.acquire()  # free: no waiting, no socket
        steps.append(_sockets(tmp_path))
        first, second = asyncio.create_task(slots.acquire()), asyncio.create_task(slots.acquire())
        deadline = time.monotonic() + WAIT
        while slots.table.count(slots.scope) != (1, 2) or not wakeups.listening:
            assert time.monotonic() < deadline, "the two waiters never stood in line with the socket open"
            await asyncio.sleep(0.01)
        steps.append(_sockets(tmp_path))
        await slots.release(lease)
        await asyncio.wait_for(first, WAIT)
        steps.append(_sockets(tmp_path))  # the second still waits
        await slots.release(first.result())
        await asyncio.wait_for(second, WAIT)
        steps.append(_sockets(tmp_path))
        return steps

    assert asyncio.run(scenario()) == [[], [], [mine], [mine], []]
    assert wakeups.sent == 0  # nobody else listened: this process woke its own waiters directly


def _stand_in_line(folder: Path, scope: str, owner: str) -> None:
    """A waiter row of ``owner`` (a process that looks: seen now), as its first try would write it."""
    now = time.time()
    with sqlite3.connect(folder / DATABASE) as db:
        db.execute(
            "INSERT INTO waiters (lease_id, scope, owner, since, seen) VALUES (?, ?, ?, ?, ?)",
            (f"waiter-of-{owner}", scope, owner, now, now),
        )


def test_a_release_wakes_only_the_processes_whose_turn_it_is_and_stale_sockets_do_no_harm(tmp_path: Path) -> None:
    slots = SharedSlots.for_key(KEY, ENDPOINT, 2, tmp_path)
    wake = tmp_path / WAKE_DIR
    wake.mkdir()
    host = socket.gethostname()
    dead = SPAWN.Process(target=int)
    dead.start()
    dead.join(WAIT)
    owners = {
        "dead": f"{host}:{dead.pid}@1",
        "foreign": f"another-{host}:{os.getpid()}@1",
        "alive": f"{host}:{os.getppid()}@{_start_of(os.getppid())}",
        "behind": f"{host}:1@{_start_of(1)}",  # alive too, but third in line: never its turn here
    }
    names = {which: socket_name(owner) for which, owner in owners.items()}
    for which in ("dead", "foreign"):  # bound, then closed without unlinking: refuses every datagram
        left = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        left.bind(str(wake / names[which]))
        left.close()
    (wake / "notes.txt").write_text("not a socket")
    listening = {}
    for which in ("alive", "behind"):
        listening[which] = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listening[which].bind(str(wake / names[which]))
        listening[which].setblocking(False)

    async def scenario() -> int:
        first, second = await slots.acquire(), await slots.acquire()
        for which in ("alive", "foreign", "behind"):
            _stand_in_line(tmp_path, slots.scope, owners[which])
        await slots.release(first)  # one slot free: the first in line's turn
        await slots.release(second)  # two free: the first two's turn (the foreign one's socket refuses)
        return slots.held()

    try:
        assert asyncio.run(scenario()) == 0
        received = {which: _drain(sock) for which, sock in listening.items()}
    finally:
        for sock in listening.values():
            sock.close()
    assert received == {"alive": [b"\1", b"\1"], "behind": []}
    assert slots.table.wakeups.sent == 2
    assert slots.table.wakeups.hold()  # this process opens its own socket: dead processes' ones go
    slots.table.wakeups.release()
    assert _sockets(tmp_path) == sorted([names["foreign"], names["alive"], names["behind"], "notes.txt"])


def _drain(sock: socket.socket) -> list[bytes]:
    got = []
    with contextlib.suppress(BlockingIOError):
        while True:
            got.append(sock.recv(64))
    return got


def test_socket_names_carry_the_owner_of_this_host_only() -> None:
    owner = lease_owner()
    assert owner_of(socket_name(owner)) == owner
    assert owner_of(socket_name(f"{socket.gethostname()}:123")) == f"{socket.gethostname()}:123"
    assert owner_of(socket_name(f"another-{socket.gethostname()}:123@4")) is None
    assert owner_of("notes.txt") is None


def test_waiters_of_one_process_that_look_together_share_one_look_first_come_first_served(tmp_path: Path) -> None:
    slots = SharedSlots.for_key(KEY, ENDPOINT, 2, tmp_path)
    table = slots.table
    other = Lease("other-process", slots.scope, f"another-{socket.gethostname()}:1@1", 0.0)  # alive: not checkable
    leases = [Lease(f"mine-{i}", slots.scope, lease_owner(), 0.0) for i in range(4)]
    assert table.try_take(other, 2, look_first=False) == TAKEN

    def together(batch: list[Lease], look_first: bool) -> list[Any]:
        queued = [table.queue_look(lease, 2, look_first=look_first) for lease in batch]
        assert [leader for _, leader in queued] == [True] + [False] * (len(batch) - 1)
        looks = table.looks
        table.run_queued()  # what the leader's thread runs
        return [table.looks - looks, [future.result(0) for future, _ in queued]]

    # One look for four first tries: one slot was free, the other three joined the line in the order they came.
    assert together(leases, False) == [1, [TAKEN, 0, 1, 2]]
    assert table.count(slots.scope) == (2, 3)
    table.forget(other.lease_id)
    table.forget(leases[0].lease_id)
    # Both slots free: the first two in line take them in one look, the last is now first in line.
    assert together(list(reversed(leases[1:])), True) == [1, [0, TAKEN, TAKEN]]
    assert table.count(slots.scope) == (2, 1)
