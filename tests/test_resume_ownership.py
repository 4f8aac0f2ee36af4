"""``resume`` takes up only what is dead here: never a record a session of this process has queued, never one
whose owner answers EPERM, never one owned on another host; a record goes out once; ``close`` leaves every row
in the database file."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import sqlite3
import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest

from flux_nb import owners
from flux_nb.core.events import ignore
from flux_nb.core.resuming import Resumed, plan, unsent_records
from flux_nb.errors import RecordTakenError
from flux_nb.history.store import HistoryStore
from flux_nb.owners import may_take_over, process_owner
from flux_nb.session import Flux
from tests.test_cli import flux_nb
from tests.test_jobs_mutants import ScriptedClient, executor, prepared, run
from tests.test_store import create, submit

NOT_A_PID = "4194303"  # the largest pid Linux hands out: the tests give it whatever answer they need


def owned_by(store: HistoryStore, owner: str, *record_ids: str) -> None:
    with sqlite3.connect(store.path) as db:
        db.executemany("UPDATE records SET owner = ? WHERE record_id = ?", [(owner, r) for r in record_ids])


def open_records(store: HistoryStore) -> tuple[str, str, str]:
    """A never-sent, a cut-off and a submitted record."""
    pending, sending, submitted = (create(store, seed=i) for i in range(3))
    store.mark_sending(sending)
    submit(store, submitted)
    return pending, sending, submitted


def ids(records: list[Any]) -> list[str]:
    return [r.record_id for r in records]


def wait_for(condition: Any, what: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"waited {limit} s for {what}"
        time.sleep(0.01)


# -- whose a record is ------------------------------------------------------------------------------


class Kills:
    """``os.kill`` staged per pid, never sent: None (the process exists) or the error it raises; calls kept."""

    def __init__(self) -> None:
        self.answers: dict[int, type[OSError] | None] = {}
        self.calls: list[tuple[int, int]] = []

    def __call__(self, pid: int, signal: int) -> None:
        self.calls.append((pid, signal))
        answer = self.answers[pid]
        if answer is not None:
            raise answer()


@pytest.fixture
def kills(monkeypatch: pytest.MonkeyPatch) -> Kills:
    """The owner checks' ``os.kill``, staged (the tests run as root: EPERM must be staged, and nothing is signalled)."""
    staged = Kills()
    monkeypatch.setattr(owners.os, "kill", staged)
    return staged


def test_a_process_answering_eperm_is_alive_and_keeps_its_records(history_dir: Path, kills: Kills) -> None:
    store = HistoryStore(history_dir)
    pending, sending, submitted = open_records(store)
    owner = f"{socket.gethostname()}:{NOT_A_PID}"
    owned_by(store, owner, pending, sending, submitted)
    kills.answers[int(NOT_A_PID)] = PermissionError  # another user's live process
    assert not may_take_over(owner) and not owners.owner_is_gone(owner)
    left = plan(store)
    assert (left.finish, left.unsent, left.cut_off) == ([], [], [])
    assert ids(left.elsewhere) == [submitted] and unsent_records(store) == []
    kills.answers[int(NOT_A_PID)] = ProcessLookupError  # the same owner, gone: all three are taken up
    taken = plan(store)
    assert (ids(taken.finish), ids(taken.unsent), ids(taken.cut_off), taken.elsewhere) == (
        [submitted],
        [pending],
        [sending],
        [],
    )
    assert {signal for _, signal in kills.calls} == {0}  # only asked whether it exists


def test_an_owner_is_gone_only_when_its_local_process_is(kills: Kills, monkeypatch: pytest.MonkeyPatch) -> None:
    host, parent = socket.gethostname(), os.getppid()
    kills.answers.update({parent: None, int(NOT_A_PID): ProcessLookupError})
    assert not owners.owner_is_gone(f"{host}:{parent}")  # it runs (no start time kept: none compared)
    assert owners.owner_is_gone(f"{host}:{NOT_A_PID}")
    assert not owners.owner_is_gone(process_owner()) and not owners.owner_is_gone(f"{host}:{os.getpid()}")
    assert owners.owner_is_gone(f"{host}:{os.getpid()}@1")  # this pid, another start time: a recycled pid
    assert not owners.owner_is_gone(f"{host}:not-a-pid") and not owners.owner_is_gone(None)
    assert kills.calls == [(parent, 0), (int(NOT_A_PID), 0)]
    assert not owners.owner_is_gone(f"elsewhere:{NOT_A_PID}")  # another host's: never looked up here
    monkeypatch.setattr(owners, "socket", types.SimpleNamespace(gethostname=lambda: "odd:host"))  # with a colon
    assert owners.is_local(f"odd:host:{NOT_A_PID}") and owners.owner_is_gone(f"odd:host:{NOT_A_PID}")
    assert not owners.is_local(f"odd:{NOT_A_PID}")
    windows = types.SimpleNamespace(name="nt", getpid=os.getpid)  # signal 0 is Ctrl-C there: nothing is local
    monkeypatch.setattr(owners, "os", windows)
    assert not owners.is_local(f"odd:host:{NOT_A_PID}")


def test_this_process_is_named_by_host_pid_and_start_time(monkeypatch: pytest.MonkeyPatch) -> None:
    host, _, process = process_owner().rpartition(":")
    pid, _, start = process.partition("@")
    assert (host, pid) == (socket.gethostname(), str(os.getpid())) and start.isdigit()
    fields = " ".join(str(n) for n in range(3, 53))  # /proc/PID/stat after the name: field 22 is the start time
    stat = io.StringIO(f"77 (a name) with ) in it) {fields}")
    monkeypatch.setattr(owners, "open", lambda path: stat if path == "/proc/77/stat" else None, raising=False)
    assert owners._start_time(77) == "22"


def test_records_owned_on_another_host_are_left_alone_with_the_note(history_dir: Path, kills: Kills) -> None:
    store = HistoryStore(history_dir)
    pending, sending, submitted = open_records(store)
    owner = f"another-{socket.gethostname()}:{NOT_A_PID}"  # its liveness cannot be known from here
    kills.answers[int(NOT_A_PID)] = ProcessLookupError  # no such pid here says nothing of another host's
    owned_by(store, owner, pending, sending, submitted)
    assert not may_take_over(owner)
    left = plan(store)
    assert (left.finish, left.unsent, left.cut_off, ids(left.elsewhere)) == ([], [], [], [submitted])
    assert unsent_records(store) == [] and kills.calls == []
    note = Resumed([], left.elsewhere).note()
    assert note == (
        f"1 submitted record(s) left alone: another running process, or one on another host, follows them ({owner})"
    )


def test_the_note_names_every_owner_left_alone_and_is_empty_when_none_was(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    records = [create(store, seed=i) for i in range(3)]
    for record_id in records:
        submit(store, record_id)
    owned_by(store, "b-host:2", records[0])
    owned_by(store, "a-host:1", records[1])
    with sqlite3.connect(store.path) as db:  # a record from before owners were kept: its owner is not known
        db.execute("UPDATE records SET owner = NULL WHERE record_id = ?", (records[2],))
    left = plan(store)
    assert left.finish == [] and ids(left.elsewhere) == records
    assert Resumed([], left.elsewhere).note().endswith("follows them (?, a-host:1, b-host:2)")
    assert Resumed([], []).note() == ""


def test_this_process_takes_up_its_own_records_unless_it_runs_them(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    pending, sending, submitted = open_records(store)
    assert may_take_over(process_owner()) and not may_take_over(process_owner(), running_here=True)
    mine = plan(store)
    assert (ids(mine.finish), ids(mine.unsent), ids(mine.cut_off), mine.elsewhere) == (
        [submitted],
        [pending],
        [sending],
        [],
    )
    runner = executor(store, ScriptedClient())
    runner.ledger.in_flight.update([pending, sending, submitted])  # a session of this process runs them
    busy = plan(HistoryStore(history_dir))
    assert (busy.finish, busy.unsent, busy.cut_off, busy.elsewhere) == ([], [], [], [])
    assert unsent_records(store) == []


def test_a_dead_process_record_another_session_here_took_up_is_not_offered_again(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    pending, _, submitted = open_records(store)
    owned_by(store, f"{socket.gethostname()}:{os.getpid()}@1", pending, submitted)  # this pid, an earlier process
    assert ids(unsent_records(store)) == [pending]
    runner = executor(store, ScriptedClient())  # another session of this process sends and finishes them
    runner.ledger.in_flight.update([pending, submitted])
    assert unsent_records(store) == [] and plan(store).finish == []


def test_flux_nb_resume_leaves_another_host_s_task_alone_and_says_so(server: Any, tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / ".flux")
    record_id = create(store)
    submit(store, record_id, polling_url=f"{server.url}/v1/get_result?id=t1")
    owned_by(store, "another-host:1", record_id)
    out = flux_nb("resume", "--endpoint", server.url, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "1 submitted record(s) left alone: another running process, or one on another host, follows them "
        "(another-host:1)"
    ]
    assert server.stats()["polls"] == 0 and store.get(record_id).status == "submitted"  # type: ignore[union-attr]


# -- a record goes out once -------------------------------------------------------------------------


def test_a_record_is_marked_sending_once_and_a_second_sender_is_refused(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    record_id = create(store)
    store.mark_sending(record_id)
    with pytest.raises(RecordTakenError) as refused:
        store.mark_sending(record_id)
    assert refused.value.record_status == "sending"
    assert str(refused.value) == (
        f"record {record_id} is already sending: another request took it up, so it is not sent again"
    )
    record = store.get(record_id)
    assert record is not None and record.status == "sending" and record.owner == process_owner()


def test_a_sender_refused_the_mark_sends_nothing_and_leaves_the_record_to_the_other(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    record_id = create(store)
    submit(store, record_id)  # another request sent it, and its task runs
    client = ScriptedClient(lambda: None)  # would submit right after the mark, with a task costing 2.0
    result = run(executor(store, client).execute(0, prepared(), ignore, record_id=record_id))
    assert isinstance(result.error, RecordTakenError) and result.status == "submitted"
    record = store.get(record_id)
    assert record is not None and (record.status, record.cost, record.error) == ("submitted", 1.4, None)


def test_resume_never_sees_a_batch_record_written_but_not_yet_in_flight(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    real = store.create_many
    seen: list[list[str]] = []
    lookers: list[threading.Thread] = []

    def create_many(requests: list[dict[str, Any]]) -> list[str]:
        written = real(requests)
        looker = threading.Thread(target=lambda: seen.append(ids(unsent_records(store))))
        lookers.append(looker)
        looker.start()
        looker.join(timeout=1.0)  # unguarded, it looks now; guarded, it waits until the records are in flight
        return written

    store.create_many = create_many  # type: ignore[method-assign]
    results = run(executor(store, ScriptedClient(lambda: None)).run_batch([prepared()], ignore))
    for looker in lookers:
        looker.join()
    assert [r.status for r in results] == ["ready"]
    assert seen == [[]]


def test_resume_unsent_in_another_session_leaves_a_queued_batch_alone(server_factory: Any, history_dir: Path) -> None:
    server = server_factory(latency=0.5)
    batcher = Flux(endpoint=server.url, history_dir=history_dir, max_concurrency=1, share_slots=False)
    resumer = Flux(endpoint=server.url, history_dir=history_dir, share_slots=False)
    try:
        for session in (batcher, resumer):
            session.connect()
        running = batcher.start(batcher.batch("queued", seed=[1, 2, 3], width=64, height=64))

        def queued() -> bool:
            return [r.status for r in batcher.store.unsettled()] == ["pending", "pending"]

        wait_for(queued, "the batch's first submit, the other two waiting for the one slot")
        resumed = resumer.resume(unsent=True)
        assert list(resumed) == [] and resumed.elsewhere == [] and resumer.unsent() == []
        assert [r.status for r in running.result(timeout=60)] == ["ready"] * 3
        assert server.stats()["submits"] == 3
        assert sorted(batcher.store.query()["status"]) == ["ready"] * 3
    finally:
        batcher.close()
        resumer.close()


# -- close ------------------------------------------------------------------------------------------


def without_its_wal(store: HistoryStore, folder: Path) -> HistoryStore:
    """The history's database file alone, opened elsewhere: as if its WAL were lost."""
    folder.mkdir()
    shutil.copy(store.path, folder / store.path.name)
    return HistoryStore(folder)


def test_closing_the_history_closes_every_thread_connection(history_dir: Path, tmp_path: Path) -> None:
    store = HistoryStore(history_dir)
    written = [create(store, seed=i) for i in range(5)]
    thread = threading.Thread(target=lambda: written.append(create(store, seed=9)))  # a connection of its own
    thread.start()
    thread.join()
    store.close()
    assert not store.path.with_name(store.path.name + "-wal").exists()  # SQLite removes it at the last close
    assert sorted(without_its_wal(store, tmp_path / "alone").query()["record_id"]) == sorted(written)
    assert store.count() == 6 and store.get(create(store, seed=10)) is not None  # a closed store reopens


def test_closing_the_history_while_another_process_reads_it_leaves_every_row_in_its_file(
    history_dir: Path, tmp_path: Path
) -> None:
    store = HistoryStore(history_dir)
    written = [create(store, seed=i) for i in range(5)]
    with contextlib.closing(sqlite3.connect(store.path)) as other:  # another kernel's connection stays open
        assert other.execute("SELECT COUNT(*) FROM records").fetchone() == (5,)
        store.close()
        assert sorted(without_its_wal(store, tmp_path / "alone").query()["record_id"]) == sorted(written)


def test_closing_a_session_leaves_its_rows_in_the_file_even_with_a_damaged_wal(server: Any, history_dir: Path) -> None:
    flux = Flux(endpoint=server.url, history_dir=history_dir)
    made = flux.sweep("kept", seed=[1, 2, 3], width=64, height=64)
    flux.close()
    wal = flux.store.path.with_name(flux.store.path.name + "-wal")
    if wal.exists():
        wal.write_bytes(b"\xff" * 4096)  # a damaged journal: SQLite would drop what it held
    reopened = HistoryStore(history_dir)
    assert sorted(reopened.query()["record_id"]) == sorted(r.record_id for r in made)
    assert set(reopened.query()["status"]) == {"ready"}


def test_a_pid_no_process_can_have_is_gone_not_an_overflow(history_dir: Path) -> None:
    huge = f"{socket.gethostname()}:{10**30}"
    assert owners.owner_is_gone(huge) and may_take_over(huge)
    store = HistoryStore(history_dir)
    record_id = create(store)
    owned_by(store, huge, record_id)
    assert ids(unsent_records(store)) == [record_id]
