"""Writes that arrive together are made in one call, each caller getting its own item's outcome."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from flux_nb.errors import RecordTakenError
from flux_nb.group_commit import GroupCommit
from flux_nb.history.store import HistoryStore
from tests.test_store import complete, create


class Gate:
    """A ``write_many`` whose first call waits at a gate, so that the items queued meanwhile share the next."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.entered = threading.Event()
        self.gate = threading.Event()

    def __call__(self, items: list[str]) -> list[BaseException | None]:
        self.calls.append(items)
        if len(self.calls) == 1:
            self.entered.set()
            self.gate.wait(60)
        return [KeyError(item) if item.startswith("missing") else None for item in items]


def test_items_queued_during_a_write_share_the_next_one_and_each_gets_its_own_outcome() -> None:
    write_many = Gate()
    commit: GroupCommit[str, None] = GroupCommit(write_many, "test writes")

    async def scenario() -> list[object]:
        first = asyncio.ensure_future(commit.write("a"))
        await asyncio.to_thread(write_many.entered.wait, 60)
        rest = [asyncio.ensure_future(commit.write(item)) for item in ("b", "missing-c", "d")]
        await asyncio.sleep(0)  # all three queued behind the first write
        write_many.gate.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    outcomes = asyncio.run(scenario())
    assert write_many.calls == [["a"], ["b", "missing-c", "d"]]
    assert commit.calls == 2
    assert outcomes[0] is None and outcomes[1] is None and outcomes[3] is None
    assert isinstance(outcomes[2], KeyError)


def test_a_write_that_fails_as_a_whole_fails_every_item_of_it() -> None:
    def broken(items: list[str]) -> list[BaseException | None]:
        raise OSError("disk full")

    commit: GroupCommit[str, None] = GroupCommit(broken, "broken writes")

    async def scenario() -> None:
        with pytest.raises(OSError, match="disk full"):
            await commit.write("a")
        with pytest.raises(OSError, match="disk full"):  # and the next write is tried again
            await commit.write("b")

    asyncio.run(scenario())
    assert commit.calls == 2


def test_a_caller_cancelled_while_waiting_does_not_stop_the_write() -> None:
    write_many = Gate()
    commit: GroupCommit[str, None] = GroupCommit(write_many, "test writes")

    async def scenario() -> None:
        waiting = asyncio.ensure_future(commit.write("a"))
        await asyncio.to_thread(write_many.entered.wait, 60)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        write_many.gate.set()
        await commit.write("b")  # runs after the first write ended

    asyncio.run(scenario())
    assert write_many.calls == [["a"], ["b"]]


def test_sending_marks_of_several_records_are_one_transaction(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path)
    pending = [create(store, seed=i) for i in range(3)]
    done = create(store, seed=9)
    complete(store, done)
    outcomes = store.mark_sending_many([*pending, "no-such-record", done])
    assert [type(o) for o in outcomes] == [type(None)] * 3 + [KeyError, RecordTakenError]
    assert [store.get(r).status for r in pending] == ["sending"] * 3  # type: ignore[union-attr]
    assert store.get(done).status == "ready"  # type: ignore[union-attr]  # a finished record never goes back
    with pytest.raises(KeyError):
        store.mark_sending("no-such-record")
