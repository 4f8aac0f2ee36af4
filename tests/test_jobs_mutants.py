"""One request's life in the Executor, field by field, against a scripted client (no network at all).

Written against the survivors of ``bench/mutation.py --module jobs`` (see ``bench/MUTATION.md``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from flux_nb.core.backend import Backend
from flux_nb.core.batch import PreparedRequest
from flux_nb.core.events import BatchEvent, Finished, Progress
from flux_nb.core.in_flight import Ledger
from flux_nb.core.jobs import Executor
from flux_nb.core.outcomes import NOT_RECORDED_HINT, NOT_SENT_HINT, RESUME_HINT
from flux_nb.errors import FluxError, ModeratedError, TransportError, UnknownOutcomeError
from flux_nb.history.storage_errors import HistoryError
from flux_nb.history.store import HistoryStore
from flux_nb.http.client import Task, TaskResult
from flux_nb.protocol import FluxRequest

BACKEND = Backend("http://127.0.0.1:9", "local:test", True)


def png(color: str = "red", size: tuple[int, int] = (40, 24)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


def prepared(prompt: str = "a cat", seed: int = 1, **options: Any) -> PreparedRequest:
    return PreparedRequest(FluxRequest(prompt, seed=seed, width=64, height=48), (), 1.5, **options)


def task(task_id: str = "t1", cost: float | None = 2.0) -> Task:
    return Task(task_id, "http://127.0.0.1:9/v1/get_result?id=" + task_id, "flux-2-pro", 100.0, cost, 0.0, 0.1)


def outcome(the_task: Task, **fields: Any) -> TaskResult:
    values: dict[str, Any] = dict(
        image=png(), width=40, height=24, format="png", seed=5, ready_at=110.0, finished_at=111.0, polls=2
    )
    values.update(engine="scripted", details={"engine": "scripted"})
    return TaskResult(the_task, **{**values, **fields})


class ScriptedClient:
    """Answers ``generate`` from a script: each call submits (or not) and returns or raises."""

    def __init__(self, *steps: Callable[[], Any], submit: bool = True) -> None:
        self.steps = list(steps)
        self.submit = submit
        self.calls = 0

    async def generate(self, request: FluxRequest, *, on_sending: Any, on_submitted: Any, on_progress: Any) -> Any:
        self.calls += 1
        step = self.steps.pop(0)
        await on_sending()
        the_task = task(f"t{self.calls}")
        if self.submit:
            await on_submitted(the_task)
            on_progress(the_task, "Pending", 0.5)
        answer = step()
        if isinstance(answer, BaseException):
            raise answer
        return outcome(the_task) if answer is None else answer

    async def resume(self, the_task: Task) -> TaskResult:
        step = self.steps.pop(0)()
        if isinstance(step, BaseException):
            raise step
        return outcome(the_task)


def executor(store: HistoryStore, client: Any, **options: Any) -> Executor:
    return Executor(client, BACKEND, store, notebook=lambda: "nb.ipynb", experiment=lambda: "exp", **options)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- a batch with identical requests ----------------------------------------------------------------


def test_identical_requests_are_sent_once_and_each_further_index_is_a_use(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    client = ScriptedClient(lambda: None)
    events: list[BatchEvent] = []
    batch = [prepared(tag="first"), prepared(tag="second", labels={"row": 2}), prepared(tag="third")]
    runner = executor(store, client)
    results = run(runner.run_batch(batch, events.append))
    assert client.calls == 1 and runner.ledger.in_flight == set()
    first, second, third = results
    assert first.cached is False and first.cost == 2.0 and first.tag == "first"
    assert (second.cached, second.cost, second.tag, second.labels) == (True, 0.0, "second", {"row": 2})
    assert (third.cached, third.cost, third.tag, third.labels) == (True, 0.0, "third", {})
    assert len({first.record_id, second.record_id, third.record_id}) == 3
    assert second.path == first.path and second.ok
    use = store.get(second.record_id)
    assert use is not None and use.cached_from == first.record_id
    assert (use.notebook, use.tag, use.experiment, use.labels) == ("nb.ipynb", "second", "exp", '{"row": 2}')
    original = store.get(first.record_id)
    assert original is not None and (original.backend, original.endpoint) == ("local:test", "http://127.0.0.1:9")
    assert store.get(third.record_id).labels is None  # type: ignore[union-attr]
    progress = [e.index for e in events if isinstance(e, Progress)]
    assert sorted(set(progress)) == [0, 1, 2]
    finished = {e.index: e.result for e in events if isinstance(e, Finished)}
    assert finished == {0: first, 1: second, 2: third}


def test_a_failed_shared_request_is_the_same_failure_at_every_index(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    client = ScriptedClient(lambda: ModeratedError("moderated", reasons=[]))
    results = run(executor(store, client).run_batch([prepared(), prepared(tag="b")], lambda e: None))
    assert results[0] is results[1] and results[0].status == "moderated"
    assert store.count() == 1


def test_a_use_without_experiment_or_labels_keeps_none(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    runner = Executor(ScriptedClient(lambda: None), BACKEND, store, notebook=lambda: "nb.ipynb")
    results = run(runner.run_batch([prepared(), prepared()], lambda e: None))
    use = store.get(results[1].record_id)
    assert use is not None and (use.experiment, use.labels, use.tag) == (None, None, None)


# -- the cache ---------------------------------------------------------------------------------------


def test_a_cache_hit_is_shown_from_its_record_as_a_use(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    first = run(executor(store, ScriptedClient(lambda: None)).execute(0, prepared(), lambda e: None))
    again = ScriptedClient()
    hit = run(executor(store, again).execute(0, prepared(tag="again"), lambda e: None))
    assert again.calls == 0
    assert hit.record_id != first.record_id and store.get(hit.record_id).cached_from == first.record_id  # type: ignore[union-attr]
    assert (hit.status, hit.cached, hit.cost, hit.tag) == ("ready", True, 0.0, "again")
    assert (hit.width, hit.height, hit.task_id, hit.engine) == (40, 24, "t1", "scripted")
    assert hit.elapsed == pytest.approx(first.elapsed) and hit.path == first.path and hit.error is None


def test_an_old_record_is_shown_with_its_own_cost_error_and_request(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    runner = executor(store, ScriptedClient(lambda: TransportError("the line dropped")))
    failed = run(runner.execute(0, prepared(prompt="a dog", seed=9), lambda e: None))
    record = store.get(failed.record_id)
    assert record is not None and record.status == "submitted"
    shown = runner.result_from_record(record, cached=False)
    assert (shown.record_id, shown.status, shown.prompt, shown.seed) == (record.record_id, "submitted", "a dog", 9)
    assert (shown.width, shown.height, shown.task_id, shown.cost) == (64, 48, "t1", 2.0)
    assert isinstance(shown.error, FluxError) and str(shown.error).startswith("the line dropped")
    done = run(executor(store, ScriptedClient(lambda: None)).execute(0, prepared(seed=2), lambda e: None))
    old = runner.result_from_record(store.get(done.record_id), cached=False)  # type: ignore[arg-type]
    assert (old.width, old.height, old.cost, old.engine, old.error) == (40, 24, 2.0, "scripted", None)
    assert old.elapsed == pytest.approx(done.elapsed)


def test_a_record_with_one_side_of_its_size_unknown_shows_the_requested_size(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    runner = executor(store, ScriptedClient(lambda: None))
    done = run(runner.execute(0, prepared(), lambda e: None))
    record = store.get(done.record_id)
    assert record is not None and record.out_width == 40
    shown = runner.result_from_record(dataclasses.replace(record, out_height=None), cached=True)
    assert (shown.width, shown.height) == (64, 48)


# -- failures ----------------------------------------------------------------------------------------


def test_a_full_disk_before_the_submit_leaves_the_record_pending(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    runner = executor(store, ScriptedClient())
    record_id = store.create(
        prepared().request, backend="b", endpoint="e", notebook="n", input_hashes=[], estimated_cost=1.5
    )
    full = HistoryError("the disk is full", path=history_dir, retryable=True)
    result = runner.failed(record_id, prepared(), full, False, time.time())
    assert (result.record_id, result.status, result.error, result.elapsed) == (record_id, "pending", full, 0.0)
    assert full.hint == NOT_SENT_HINT and result.prompt == "a cat"
    assert store.get(record_id).status == "pending"  # type: ignore[union-attr]


def test_a_full_disk_after_the_submit_keeps_the_record_for_resume(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    runner = executor(store, ScriptedClient())
    record_id = store.create(
        prepared().request, backend="b", endpoint="e", notebook="n", input_hashes=[], estimated_cost=1.5
    )
    full = HistoryError("the disk is full", path=history_dir, retryable=True)
    result = runner.failed(record_id, prepared(), full, True, time.time())
    assert result.status == "submitted" and full.hint == RESUME_HINT
    record = store.get(record_id)
    assert record is not None and (record.error_kind, record.error) == (full.kind, full.one_line())


def test_a_failure_before_any_task_ends_the_record_with_its_kind_message_and_time(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    before = time.time()
    error = UnknownOutcomeError("the submit's answer was lost")
    result = run(executor(store, ScriptedClient(lambda: error, submit=False)).execute(0, prepared(), lambda e: None))
    record = store.get(result.record_id)
    assert result.status == "unknown" and record is not None and record.status == "unknown"
    assert (record.error_kind, record.error) == (error.kind, error.one_line())
    assert record.finished_at is not None and before <= record.finished_at <= time.time()


def test_a_failure_after_the_submit_notes_its_kind_and_leaves_the_record_submitted(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    error = TransportError("the line dropped")
    result = run(executor(store, ScriptedClient(lambda: error)).execute(0, prepared(), lambda e: None))
    record = store.get(result.record_id)
    assert result.status == "submitted" and record is not None and record.status == "submitted"
    assert (record.error_kind, record.error) == ("TransportError", error.one_line()) and error.hint == RESUME_HINT


# -- writes a full disk refuses ----------------------------------------------------------------------


def full_disk(history_dir: Path, retryable: bool = True) -> Callable[..., None]:
    def refuse(*args: object, **kwargs: object) -> None:
        raise HistoryError("the disk is full", path=history_dir, retryable=retryable)

    return refuse


def test_an_end_a_full_disk_refuses_is_owed_for_its_record(history_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = HistoryStore(history_dir)
    runner = executor(store, ScriptedClient())
    record_id = store.create(
        prepared().request, backend="b", endpoint="e", notebook="n", input_hashes=[], estimated_cost=1.5
    )
    monkeypatch.setattr(store, "mark_failed", full_disk(history_dir))
    assert runner.fail(record_id, TransportError("x")) == "failed"
    assert runner.ledger.owed() == [record_id]
    monkeypatch.setattr(store, "mark_failed", full_disk(history_dir, retryable=False))
    with pytest.raises(HistoryError):
        runner.fail(
            store.create(
                prepared().request, backend="b", endpoint="e", notebook="n", input_hashes=[], estimated_cost=1.5
            ),
            TransportError("x"),
        )


# -- resuming ----------------------------------------------------------------------------------------


class ResumingClient:
    """Finishes (or fails) each resumed task, keeping the Task it was given and what was in flight then."""

    def __init__(self, runner_of: Callable[[], Executor], *answers: BaseException | None) -> None:
        self.answers = list(answers)
        self.tasks: list[Task] = []
        self.in_flight: list[set[str]] = []
        self.runner_of = runner_of

    async def resume(self, the_task: Task) -> TaskResult:
        self.tasks.append(the_task)
        self.in_flight.append(set(self.runner_of().ledger.in_flight))
        answer = self.answers.pop(0)
        if answer is not None:
            raise answer
        return outcome(the_task)


def submitted_record(store: HistoryStore, seed: int = 1) -> str:
    record_id = store.create(
        prepared(seed=seed).request, backend="b", endpoint="e", notebook="n", input_hashes=[], estimated_cost=1.5
    )
    store.mark_submitted(
        record_id,
        task_id=f"t{seed}",
        polling_url="http://127.0.0.1:9/p",
        cost=3.0,
        input_mp=0.5,
        output_mp=0.25,
        submitted_at=50.0,
    )
    return record_id


def test_resume_follows_the_task_the_record_kept(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    record_id = submitted_record(store)
    client = ResumingClient(lambda: runner, None)
    runner = executor(store, client)
    record = store.get(record_id)
    assert record is not None
    result = run(runner.resume(0, record, lambda e: None))
    kept = Task("t1", "http://127.0.0.1:9/p", record.model, 50.0, 3.0, 0.5, 0.25)
    assert client.tasks == [kept] and client.in_flight == [{record_id}] and runner.ledger.in_flight == set()
    assert result.status == "ready" and result.cost == 3.0 and store.get(record_id).status == "ready"  # type: ignore[union-attr]


def test_resume_of_a_record_without_task_fields_sends_empty_ones(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    record_id = submitted_record(store)
    client = ResumingClient(lambda: runner, None)
    runner = executor(store, client)
    record = dataclasses.replace(store.get(record_id), task_id=None, polling_url=None, submitted_at=None)  # type: ignore[type-var]
    run(runner.resume(0, record, lambda e: None))
    assert (client.tasks[0].id, client.tasks[0].polling_url, client.tasks[0].submitted_at) == (
        "",
        "",
        record.created_at,
    )


def test_resume_that_fails_on_the_way_keeps_the_record_submitted(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    lost, moderated = submitted_record(store, 1), submitted_record(store, 2)
    client = ResumingClient(lambda: runner, TransportError("the poll was lost"), ModeratedError("moderated"))
    runner = executor(store, client)
    first = run(runner.resume(0, store.get(lost), lambda e: None))  # type: ignore[arg-type]
    assert (first.record_id, first.status, first.prompt) == (lost, "submitted", "a cat")
    assert store.get(lost).error_kind == "TransportError"  # type: ignore[union-attr]
    second = run(runner.resume(1, store.get(moderated), lambda e: None))  # type: ignore[arg-type]
    assert second.status == "moderated" and store.get(moderated).status == "moderated"  # type: ignore[union-attr]


def test_resume_batch_numbers_finishing_records_first_then_unsent_ones(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    records = [store.get(submitted_record(store, 1)), store.get(submitted_record(store, 2))]
    unsent = {
        store.create(p.request, backend="b", endpoint="e", notebook="n", input_hashes=[], estimated_cost=1.5): p
        for p in (prepared(seed=3), prepared(seed=4))
    }
    client = ResumingClient(lambda: runner, None, None)
    runner = executor(store, client)
    runner.client.generate = ScriptedClient(lambda: None, lambda: None).generate  # type: ignore[attr-defined]
    events: list[BatchEvent] = []
    results = run(runner.resume_batch(records, events.append, unsent))  # type: ignore[arg-type]
    finished = {e.index: e.result.record_id for e in events if isinstance(e, Finished)}
    assert finished == dict(enumerate([r.record_id for r in records] + list(unsent)))  # type: ignore[union-attr]
    assert [r.status for r in results] == ["ready"] * 4


def test_the_cache_can_be_turned_off_and_a_given_ledger_is_used(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    run(executor(store, ScriptedClient(lambda: None)).execute(0, prepared(), lambda e: None))
    client = ScriptedClient(lambda: None)
    ledger = Ledger()
    runner = executor(store, client, cache=False, ledger=ledger)
    assert runner.ledger is ledger and runner.cache is False
    result = run(runner.execute(0, prepared(), lambda e: None))
    assert client.calls == 1 and result.cached is False and store.count() == 2


def test_a_read_only_history_shows_a_cache_hit_as_the_original_record(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    first = run(executor(store, ScriptedClient(lambda: None)).execute(0, prepared(), lambda e: None))
    readonly = HistoryStore(history_dir, readonly=True)
    hit = run(executor(readonly, ScriptedClient()).execute(0, prepared(), lambda e: None))
    assert (hit.record_id, hit.cached, hit.cost) == (first.record_id, True, 0.0) and store.count() == 1


def test_a_note_a_full_disk_refuses_is_owed_and_the_failure_timed(
    history_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = HistoryStore(history_dir)
    runner = executor(store, ScriptedClient())
    record_id = submitted_record(store)
    monkeypatch.setattr(store, "note_error", full_disk(history_dir))
    started = time.time() - 100.0
    result = runner.failed(record_id, prepared(), TransportError("the poll was lost"), True, started)
    assert result.status == "submitted" and runner.ledger.owed() == [record_id]
    assert result.elapsed is not None and 100.0 <= result.elapsed <= time.time() - started


def test_a_record_is_written_with_the_notebook_experiment_labels_and_estimate(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    events: list[BatchEvent] = []
    runner = executor(store, ScriptedClient(lambda: None))
    result = run(runner.execute(3, prepared(labels={"seed": 1}), events.append))
    record = store.get(result.record_id)
    assert record is not None and (record.notebook, record.experiment, record.labels) == (
        "nb.ipynb",
        "exp",
        '{"seed": 1}',
    )
    assert record.estimated_cost == 1.5 and [e.index for e in events if isinstance(e, Finished)] == [3]
    hit_events: list[BatchEvent] = []
    hit = run(runner.execute(4, prepared(), hit_events.append))
    assert hit.cached and [(e.index, e.result) for e in hit_events if isinstance(e, Finished)] == [(4, hit)]


@pytest.mark.parametrize("retryable", [True, False])
def test_a_record_the_history_refuses_is_a_failure_with_nothing_sent(
    history_dir: Path, monkeypatch: pytest.MonkeyPatch, retryable: bool
) -> None:
    store = HistoryStore(history_dir)
    monkeypatch.setattr(store, "create_many", full_disk(history_dir, retryable=retryable))
    client = ScriptedClient(lambda: None)
    events: list[BatchEvent] = []
    result = run(executor(store, client).execute(2, prepared(), events.append))
    assert client.calls == 0 and (result.record_id, result.status, result.prompt) == ("", "failed", "a cat")
    assert isinstance(result.error, HistoryError)
    assert result.error.hint == (NOT_RECORDED_HINT if retryable else HistoryError.hint)
    assert [(e.index, e.result) for e in events if isinstance(e, Finished)] == [(2, result)]


def held_mid_write(store: HistoryStore, method: str = "create_many") -> tuple[threading.Event, threading.Event]:
    """Make ``store.<method>`` wait (``entered`` set) until ``release`` is set, then write."""
    entered, release = threading.Event(), threading.Event()
    write = getattr(store, method)

    def held(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        release.wait(30)
        return write(*args, **kwargs)

    setattr(store, method, held)
    return entered, release


async def cancel_mid_write(batch: Any, entered: threading.Event, release: threading.Event) -> None:
    """Run ``batch``, cancel it while a held write waits, see it end cancelled, then let the write go on."""
    running = asyncio.ensure_future(batch)
    assert await asyncio.to_thread(entered.wait, 30)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    release.set()


def test_a_batch_cancelled_while_its_records_are_written_leaves_them_resumable(history_dir: Path) -> None:
    """The rows are written all the same; none is sent, and none stays "in flight" here (resume would skip it)."""
    store = HistoryStore(history_dir)
    entered, release = held_mid_write(store)
    client = ScriptedClient(lambda: None)
    runner = executor(store, client)

    async def scenario() -> None:
        await cancel_mid_write(runner.run_batch([prepared(seed=1), prepared(seed=2)], lambda e: None), entered, release)
        for _ in range(3000):  # the write ends in its thread; its ids must then leave the in-flight set
            if store.count() == 2 and not runner.ledger.in_flight:
                return
            await asyncio.sleep(0.01)

    run(scenario())
    assert client.calls == 0 and store.count() == 2
    assert sorted(store.query()["status"]) == ["pending", "pending"] and runner.ledger.in_flight == set()


def test_a_batch_whose_records_the_history_refuses_sends_nothing(history_dir: Path) -> None:
    """The batch's rows are written in one go: refused, every request fails at its own index, none is sent."""
    store = HistoryStore(history_dir)
    store.create_many = full_disk(history_dir, retryable=True)  # type: ignore[method-assign]
    client = ScriptedClient(lambda: None)
    events: list[BatchEvent] = []
    batch = [prepared(seed=1), prepared(seed=2), prepared(seed=1)]  # the third repeats the first
    results = run(executor(store, client).run_batch(batch, events.append))
    assert client.calls == 0 and [r.status for r in results] == ["failed"] * 3
    assert all(isinstance(r.error, HistoryError) and r.error.hint == NOT_RECORDED_HINT for r in results)
    assert sorted(e.index for e in events if isinstance(e, Finished)) == [0, 1, 2]
    assert store.count() == 0


def test_events_of_one_request_in_order(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    events: list[BatchEvent] = []
    result = run(executor(store, ScriptedClient(lambda: None)).execute(5, prepared(), events.append))
    assert events == [Progress(5, "Submitted", 0.0), Progress(5, "Pending", 0.5), Finished(5, result)]


def test_the_submitted_task_is_kept_with_its_figures(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    result = run(executor(store, ScriptedClient(lambda: TransportError("lost"))).execute(0, prepared(), lambda e: None))
    record = store.get(result.record_id)
    assert record is not None and (record.task_id, record.polling_url) == ("t1", task("t1").polling_url)
    assert (record.cost, record.input_mp, record.output_mp, record.submitted_at) == (2.0, 0.0, 0.1, 100.0)


@pytest.mark.parametrize("retryable", [True, False])
def test_a_task_id_the_history_refuses_is_held_and_the_task_followed(
    history_dir: Path, monkeypatch: pytest.MonkeyPatch, retryable: bool
) -> None:
    store = HistoryStore(history_dir)
    monkeypatch.setattr(store, "mark_submitted", full_disk(history_dir, retryable=retryable))
    runner = executor(store, ScriptedClient(lambda: None))
    result = run(runner.execute(0, prepared(), lambda e: None))
    assert result.status == "submitted" and isinstance(result.error, HistoryError)
    if retryable:  # a full disk: the task id and then the image are held in memory for the record
        assert runner.ledger.owed() == [result.record_id] and result.task_id == "t1"
        assert result.error.hint == "task t1 finished; its image is held in memory: free space, then resume stores it"
    else:
        assert runner.ledger.owed() == [] and result.error.hint == RESUME_HINT


def test_an_image_the_history_refuses_is_held_and_the_record_stays_submitted(
    history_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = HistoryStore(history_dir)
    monkeypatch.setattr(store, "mark_ready", full_disk(history_dir))
    runner = executor(store, ScriptedClient(lambda: None))
    before = time.time()
    events: list[BatchEvent] = []
    result = run(runner.execute(7, prepared(), events.append))
    elapsed = time.time() - before
    assert (result.status, result.task_id, result.prompt) == ("submitted", "t1", "a cat")
    assert result.record_id and runner.ledger.owed() == [result.record_id] and isinstance(result.error, HistoryError)
    assert result.error.hint == "task t1 finished; its image is held in memory: free space, then resume stores it"
    assert result.elapsed is not None and 0.0 <= result.elapsed <= elapsed
    assert events[-1] == Finished(7, result)
    monkeypatch.setattr(store, "mark_ready", full_disk(history_dir, retryable=False))
    with pytest.raises(HistoryError):
        run(executor(store, ScriptedClient(lambda: None)).execute(0, prepared(seed=2), lambda e: None))


def test_a_failure_is_finished_at_its_index(history_dir: Path) -> None:
    events: list[BatchEvent] = []
    error = TransportError("lost")
    result = run(
        executor(HistoryStore(history_dir), ScriptedClient(lambda: error)).execute(6, prepared(), events.append)
    )
    assert events[-1] == Finished(6, result) and result.error is error


async def cancelled(runner: Executor, emit: Callable[[BatchEvent], None]) -> bool:
    try:
        await runner.execute(8, prepared(), emit)
    except asyncio.CancelledError:
        return True
    return False


def test_a_cancel_while_the_submit_is_in_flight_ends_the_record_unknown(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    events: list[BatchEvent] = []
    before = time.time()
    assert run(cancelled(executor(store, ScriptedClient(asyncio.CancelledError, submit=False)), events.append))
    took = time.time() - before
    [finished] = events
    assert isinstance(finished, Finished) and finished.index == 8
    shown = finished.result
    assert (shown.status, shown.prompt) == ("unknown", "a cat") and shown.elapsed is not None
    assert 0.0 <= shown.elapsed <= took
    record = store.get(shown.record_id)
    error = UnknownOutcomeError("cancelled while the submit was in flight")
    assert record is not None and (record.status, record.error_kind, record.error) == (
        "unknown",
        "UnknownOutcomeError",
        error.one_line(),
    )


def test_a_cancel_after_the_submit_leaves_the_record_submitted_for_resume(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    events: list[BatchEvent] = []
    assert run(cancelled(executor(store, ScriptedClient(asyncio.CancelledError)), events.append))
    assert not [e for e in events if isinstance(e, Finished)]
    assert store.query()["status"].tolist() == ["submitted"]


# -- storing a finished task -------------------------------------------------------------------------


def test_a_finished_task_is_stored_with_its_figures_and_spent_once(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    spent: list[float] = []
    runner = executor(store, ScriptedClient(lambda: None), on_spent=spent.append)
    result = run(runner.execute(0, prepared(), lambda e: None))
    record = store.get(result.record_id)
    assert record is not None and record.status == "ready" and spent == [2.0]
    assert (record.out_width, record.out_height, record.ready_at, record.finished_at) == (40, 24, 110.0, 111.0)
    assert (record.engine, record.result_seed, record.cost, record.image_path.endswith(".png")) == (  # type: ignore[union-attr]
        "scripted",
        5,
        2.0,
        True,
    )
    assert result.path == record.image_file and result.path is not None and result.path.is_file()
    assert (result.width, result.height, result.cost, result.task_id, result.engine) == (40, 24, 2.0, "t1", "scripted")
    assert result.details == {"engine": "scripted"} and result.elapsed == record.duration_s
    assert (result.estimated_cost, result.billed, result.seed, result.model) == (1.5, True, 1, "flux-2-klein-4b")


def test_a_task_without_a_cost_is_spent_at_its_estimate_and_kept_in_the_requested_format(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    spent: list[float] = []
    unpriced = task("t1", cost=None)
    client = ScriptedClient(lambda: outcome(unpriced, format=""))
    result = run(executor(store, client, on_spent=spent.append).execute(0, prepared(), lambda e: None))
    record = store.get(result.record_id)
    assert spent == [1.5] and result.cost == 1.5 and record is not None and record.cost == 1.5
    assert record.image_path is not None and record.image_path.endswith(".jpeg")


def test_the_stored_image_carries_what_made_it(history_dir: Path) -> None:
    from flux_nb.images import sha256_hex
    from flux_nb.metadata import read_provenance

    store = HistoryStore(history_dir)
    result = run(executor(store, ScriptedClient(lambda: None)).execute(0, prepared(), lambda e: None))
    document = read_provenance(result.path)  # type: ignore[arg-type]
    assert document is not None
    assert document["record"] == {
        "api_sha256": sha256_hex(png()),
        "backend": "local:test",
        "engine": "scripted",
        "out_height": 24,
        "out_width": 40,
        "result_seed": 5,
        "status": "ready",
    }
    request = {k: document["request"][k] for k in ("prompt", "seed", "width", "height", "model", "input_hashes")}
    assert request == {
        "prompt": "a cat",
        "seed": 1,
        "width": 64,
        "height": 48,
        "model": "flux-2-klein-4b",
        "input_hashes": [],
    }
    assert Image.open(result.path).tobytes() == Image.open(io.BytesIO(png())).tobytes()  # type: ignore[arg-type]


def test_an_image_that_cannot_carry_provenance_is_stored_as_it_came(history_dir: Path) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 24), "blue").save(buffer, "GIF")
    store = HistoryStore(history_dir)
    client = ScriptedClient(lambda: outcome(task("t1"), image=buffer.getvalue(), format="gif"))
    result = run(executor(store, client).execute(0, prepared(), lambda e: None))
    assert result.ok and result.path is not None and result.path.read_bytes() == buffer.getvalue()


def test_a_stored_task_took_from_the_send_to_its_finish(history_dir: Path) -> None:
    store = HistoryStore(history_dir)
    finished_at = time.time() + 5.0
    before = time.time()
    client = ScriptedClient(lambda: outcome(task("t1"), finished_at=finished_at))
    result = run(executor(store, client).execute(0, prepared(), lambda e: None))
    after = time.time()
    assert result.elapsed is not None and finished_at - after <= result.elapsed <= finished_at - before
    assert store.get(result.record_id).duration_s == result.elapsed  # type: ignore[union-attr]


def test_a_request_without_a_seed_shows_seed_0(history_dir: Path) -> None:
    runner = executor(HistoryStore(history_dir), ScriptedClient())
    unseeded = PreparedRequest(FluxRequest("a cat", width=64, height=48), (), 1.5)
    assert unseeded.request.seed is None and runner.result("r", unseeded, "failed").seed == 0
    assert runner.result("r", prepared(seed=7), "failed").seed == 7


def test_a_batch_cancelled_while_its_records_are_written_never_puts_them_in_flight(history_dir: Path) -> None:
    """Rows committed after the cancel stay out of the in-flight set: nobody sees them written, then in flight."""
    store = HistoryStore(history_dir)
    entered, release = held_mid_write(store)
    runner = executor(store, ScriptedClient(lambda: None))
    entered_in_flight: list[set[str]] = []

    class Watched(set[str]):
        def update(self, *others: Any) -> None:
            entered_in_flight.append(set().union(*others))
            super().update(*others)

    runner.ledger.in_flight = Watched()
    batch = runner.run_batch([prepared(seed=1), prepared(seed=2)], lambda e: None)
    asyncio.run(cancel_mid_write(batch, entered, release))  # ends once the write's thread has ended
    assert store.count() == 2 and entered_in_flight == [] and runner.ledger.in_flight == set()


def test_a_batch_cancelled_while_a_task_id_is_written_still_counts_that_request_sent(history_dir: Path) -> None:
    """The API answered with a task: the request is sent, even when the cancel lands while its id is written
    (an interrupt's report must not call it never sent)."""
    store = HistoryStore(history_dir)
    entered, release = held_mid_write(store, "mark_submitted")
    events: list[BatchEvent] = []
    runner = executor(store, ScriptedClient(lambda: None))
    asyncio.run(cancel_mid_write(runner.run_batch([prepared(seed=1)], events.append), entered, release))
    assert [(e.index, e.status) for e in events if isinstance(e, Progress)][:1] == [(0, "Submitted")]
    assert list(store.query()["status"]) == ["submitted"]
