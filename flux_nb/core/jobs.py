"""The life of one request: cache lookup, record, send, wait, download, store.

A record is written before the request is sent and completed when it ends, so a crash
or a kernel restart loses nothing; ``resume`` finishes what is still pending.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from flux_nb.core.backend import Backend
from flux_nb.core.batch import PreparedRequest
from flux_nb.core.events import Emit, Finished, Progress
from flux_nb.core.in_flight import CLAIMING, Ledger, is_retryable
from flux_nb.core.loop import settled_gather
from flux_nb.core.made_from import made_from
from flux_nb.core.outcomes import (
    NOT_RECORDED_HINT,
    NOT_SENT_HINT,
    cache_hit,
    is_final,
    prepared_from_record,
    record_status_for,
    result_of,
    result_of_record,
    with_provenance,
    with_resume_hint,
)
from flux_nb.core.results import Result
from flux_nb.errors import (
    FluxError,
    RecordTakenError,
    UnknownOutcomeError,
)
from flux_nb.group_commit import GroupCommit
from flux_nb.history.batches import Batch, new_batch
from flux_nb.history.store import HistoryError, HistoryStore, Record, RecordStatus
from flux_nb.http.client import AsyncFluxClient, Task, TaskResult


class Executor:
    """Runs prepared requests against one backend, keeping the history true at every step."""

    def __init__(
        self,
        client: AsyncFluxClient,
        backend: Backend,
        store: HistoryStore,
        *,
        notebook: Callable[[], str] = str,
        cache: bool = True,
        on_spent: Callable[[float], None] | None = None,
        experiment: Callable[[], str] = str,
        ledger: Ledger | None = None,
    ) -> None:
        self.client = client
        self.backend = backend
        self.store = store
        self.notebook = notebook
        #: The current experiment's name ("" for none), read when a row is written.
        self.experiment = experiment
        self.cache = cache
        self._on_spent = on_spent
        #: Records in flight here, and writes a full disk refused (kept in memory, made at the next chance).
        self.ledger = ledger or Ledger()
        self._sending_marks = GroupCommit(store.mark_sending_many, "sending marks")

    def cached(self, prepared: PreparedRequest) -> Record | None:
        return cache_hit(self.store, self.backend.label, prepared, enabled=self.cache)

    async def run_batch(self, batch: list[PreparedRequest], emit: Emit) -> list[Result]:
        """Run every request of ``batch`` at once; identical requests are sent once and shared.

        Each further index showing a shared result is a *use* of it (a row of its own, cost 0), so a
        tag's or an experiment's rows match what the batch showed, one row per index. Every row written
        keeps the batch's id and axes; a cache hit this notebook already shows (a re-run) writes no row.
        """
        marks = new_batch(p.labels for p in batch)
        first: dict[tuple[Any, ...], int] = {}
        copies: dict[int, list[int]] = {}
        for index, prepared in enumerate(batch):
            owner = first.setdefault(prepared.identity(), index)
            copies.setdefault(owner, []).append(index)

        def fan_out(event: Progress | Finished) -> None:
            for index in copies[event.index] if isinstance(event, Progress) else [event.index]:
                emit(replace(event, index=index))

        begun = await self._begin({owner: batch[owner] for owner in copies}, marks)

        async def run_one(owner: int) -> dict[int, Result]:
            result = await self._run_begun(owner, batch[owner], fan_out, begun[owner], marks)
            extra = copies[owner][1:]
            uses = await asyncio.to_thread(self._shared, result, [batch[i] for i in extra], marks) if extra else []
            for index, use in zip(extra, uses, strict=True):
                emit(Finished(index, use))
            return {owner: result, **dict(zip(extra, uses, strict=True))}

        shown: dict[int, Result] = {}
        try:
            for part in await settled_gather([run_one(owner) for owner in copies]):
                shown.update(part)
        finally:  # a request cancelled before it began keeps its pending record, resumable
            self.ledger.in_flight.difference_update(b for b in begun.values() if isinstance(b, str))
        return [shown[index] for index in range(len(batch))]

    def _shared(self, result: Result, copies: list[PreparedRequest], marks: Batch) -> list[Result]:
        """Results for the further indexes of a shared request: uses of its image when it has one."""
        if not result.ok:
            return [result for _ in copies]
        original = result.record_id
        return [
            replace(result, record_id=self._use(original, p, marks), cached=True, cost=0.0, tag=p.tag, labels=p.labels)
            for p in copies
        ]

    def _use(self, original_id: str, prepared: PreparedRequest, marks: Batch) -> str:
        """Record that ``prepared`` showed the image of ``original_id`` again; the use's id (or the id of the
        row of an earlier batch that already showed it here: a re-run adds no row).

        A history that cannot be written (opened read-only) keeps no use: the original's id is returned.
        """
        if self.store.readonly:
            return original_id
        return self.store.record_use(
            original_id,
            notebook=self.notebook(),
            tag=prepared.tag,
            experiment=self.experiment() or None,
            labels=prepared.labels or None,
            batch=marks,
        )

    async def execute(self, index: int, prepared: PreparedRequest, emit: Emit, record_id: str | None = None) -> Result:
        """Run one request end to end; errors come back inside the result.

        ``record_id`` sends an existing, never-sent record (left pending by a crash) instead of a new one.
        """
        if record_id is None:
            marks = new_batch([prepared.labels])
            begun = (await self._begin({index: prepared}, marks))[index]
            if not isinstance(begun, str):
                return await self._run_begun(index, prepared, emit, begun, marks)
            record_id = begun
        self.ledger.in_flight.add(record_id)
        try:
            return await self._send(index, prepared, emit, record_id)
        finally:
            self.ledger.in_flight.discard(record_id)

    async def _begin(self, batch: dict[int, PreparedRequest], marks: Batch) -> dict[int, Record | str | HistoryError]:
        """How each request begins: the stored record that answers it (a cache hit), else the id of its new
        pending record, all written in one transaction before anything is sent (the first submit does not
        wait behind the others' rows), or the history's refusal to write them."""
        begun: dict[int, Record | str | HistoryError] = {}
        for index, prepared in batch.items():
            if (hit := self.cached(prepared)) is not None:
                begun[index] = hit
        fresh = {index: prepared for index, prepared in batch.items() if index not in begun}
        if not fresh:
            return begun
        given_up = threading.Event()
        writing = asyncio.ensure_future(
            asyncio.to_thread(self._record_after_owed, list(fresh.values()), marks, given_up)
        )
        try:
            ids = await asyncio.shield(writing)
        except HistoryError as exc:
            return {**begun, **dict.fromkeys(fresh, exc)}
        except asyncio.CancelledError:  # the rows are written all the same: never sent, they stay resumable
            given_up.set()
            writing.add_done_callback(self._not_in_flight)
            raise
        return {**begun, **dict(zip(fresh, ids, strict=True))}

    def _not_in_flight(self, writing: asyncio.Future[list[str]]) -> None:
        if not writing.cancelled() and writing.exception() is None:
            self.ledger.in_flight.difference_update(writing.result())

    async def _run_begun(
        self, index: int, prepared: PreparedRequest, emit: Emit, begun: Record | str | HistoryError, marks: Batch
    ) -> Result:
        """Show a cache hit (as a use of it), fail a request the history refused, or send a new record."""
        if isinstance(begun, HistoryError):
            return self._not_recorded(emit, index, prepared, begun)
        if isinstance(begun, Record):
            use_id = await asyncio.to_thread(self._use, begun.record_id, prepared, marks)
            shown = replace(self.result_from_record(begun, prepared, cached=True), record_id=use_id)
            return self._finished(emit, index, shown)
        return await self.execute(index, prepared, emit, record_id=begun)

    def _not_recorded(self, emit: Emit, index: int, prepared: PreparedRequest, exc: HistoryError) -> Result:
        """A request whose record could not be written: failed, and nothing was sent."""
        exc.hint = NOT_RECORDED_HINT if exc.retryable else exc.hint
        return self._finished(emit, index, self.result("", prepared, "failed", error=exc))

    def _record_after_owed(self, batch: list[PreparedRequest], marks: Batch, given_up: threading.Event) -> list[str]:
        """Make what the history owes first, then write the records (in flight from their first moment, unless
        the batch was ``given_up`` meanwhile: then they are never in flight)."""
        self.ledger.flush()
        with CLAIMING:  # no ``resume`` of this process sees them written but not yet in flight
            record_ids = self._record(batch, marks)
            if not given_up.is_set():
                self.ledger.in_flight.update(record_ids)
        return record_ids

    async def _send(self, index: int, prepared: PreparedRequest, emit: Emit, record_id: str) -> Result:
        started = time.time()
        submitted: list[Task] = []

        sending: list[bool] = []

        async def on_sending() -> None:
            await self._sending_marks.write(record_id)  # with the marks of the other submits of this moment
            sending.append(True)

        async def on_submitted(task: Task) -> None:
            submitted.append(task)
            emit(Progress(index, "Submitted", 0.0))  # sent from now on, even if a cancel lands in the write below
            write = functools.partial(
                self.store.mark_submitted,
                record_id,
                task_id=task.id,
                polling_url=task.polling_url,
                cost=task.cost,
                input_mp=task.input_mp,
                output_mp=task.output_mp,
                submitted_at=task.submitted_at,
            )
            try:
                await asyncio.to_thread(self.ledger.write, record_id, write)
            except HistoryError as exc:
                if not exc.retryable:
                    raise  # a full disk: the task id is kept in memory (the ledger) and the task followed to its end

        def on_progress(task: Task, status: str, fraction: float | None) -> None:
            emit(Progress(index, status, fraction))

        try:
            outcome = await self.client.generate(
                prepared.request, on_sending=on_sending, on_submitted=on_submitted, on_progress=on_progress
            )
        except asyncio.CancelledError:
            # Never sent: the record stays pending, for resume(unsent=True). Submitted: it stays for resume().
            if sending and not submitted:
                status = self.fail(record_id, UnknownOutcomeError("cancelled while the submit was in flight"))
                emit(Finished(index, self.result(record_id, prepared, status, elapsed=time.time() - started)))
            raise
        except RecordTakenError as exc:  # another request sends it: its record is that one's to write
            return self._finished(emit, index, self.result(record_id, prepared, exc.record_status, error=exc))
        except FluxError as exc:
            failed = await asyncio.to_thread(self.failed, record_id, prepared, exc, bool(submitted), started)
            return self._finished(emit, index, failed)
        stored = await asyncio.to_thread(self._store, record_id, prepared, outcome, started)
        return self._finished(emit, index, stored)

    def _store(self, record_id: str, prepared: PreparedRequest, outcome: TaskResult, started: float) -> Result:
        """Store a finished task; on a full disk keep its image in memory (written at the next chance)."""
        try:
            return self.ledger.write(record_id, lambda: self.store_outcome(record_id, prepared, outcome, started))
        except HistoryError as exc:
            if not exc.retryable:
                raise
            exc.hint = (
                f"task {outcome.task.id} finished; its image is held in memory: free space, then resume stores it"
            )
            elapsed = time.time() - started
            return self.result(record_id, prepared, "submitted", error=exc, elapsed=elapsed, task_id=outcome.task.id)

    def _record(self, batch: list[PreparedRequest], marks: Batch | None = None) -> list[str]:
        """Keep the inputs and write the pending records: before anything is sent."""
        for prepared in batch:
            for image in prepared.inputs:
                self.store.save_input(image)
        notebook, experiment = self.notebook(), self.experiment() or None
        return self.store.create_many(
            [
                {
                    "request": prepared.request,
                    "backend": self.backend.label,
                    "endpoint": self.backend.base_url,
                    "notebook": notebook,
                    "input_hashes": prepared.input_hashes,
                    "estimated_cost": prepared.estimated_cost,
                    "tag": prepared.tag,
                    "replay_of": prepared.replay_of,
                    "experiment": experiment,
                    "labels": prepared.labels or None,
                    "batch": marks,
                }
                for prepared in batch
            ]
        )

    async def resume_batch(
        self, records: list[Record], emit: Emit, unsent: dict[str, PreparedRequest] | None = None
    ) -> list[Result]:
        """Finish submitted ``records`` and send ``unsent`` ones (record id -> request), all at once."""
        finishing = [self.resume(i, r, emit) for i, r in enumerate(records)]
        sending = [
            self.execute(len(records) + i, prepared, emit, record_id=record_id)
            for i, (record_id, prepared) in enumerate((unsent or {}).items())
        ]
        return await settled_gather([*finishing, *sending])

    async def resume(self, index: int, record: Record, emit: Emit) -> Result:
        """Finish a record whose task was submitted earlier, from its stored polling URL."""
        prepared = prepared_from_record(record)
        task = Task(
            id=record.task_id or "",
            polling_url=record.polling_url or "",
            model=record.model,
            submitted_at=record.submitted_at or record.created_at,
            cost=record.cost,
            input_mp=record.input_mp,
            output_mp=record.output_mp,
        )
        started = record.created_at
        self.ledger.in_flight.add(record.record_id)
        try:
            outcome = await self.client.resume(task)
        except FluxError as exc:
            result = await asyncio.to_thread(self.failed, record.record_id, prepared, exc, True, started)
        else:
            result = await asyncio.to_thread(self._store, record.record_id, prepared, outcome, started)
        finally:
            self.ledger.in_flight.discard(record.record_id)
        return self._finished(emit, index, result)

    @staticmethod
    def _finished(emit: Emit, index: int, result: Result) -> Result:
        emit(Finished(index, result))
        return result

    def store_outcome(self, record_id: str, prepared: PreparedRequest, outcome: TaskResult, started: float) -> Result:
        """Store a finished task's image, with its provenance written in, and complete its record."""
        cost = outcome.task.cost if outcome.task.cost is not None else prepared.estimated_cost
        elapsed = outcome.finished_at - started
        values: dict[str, Any] = dict(
            width=outcome.width,
            height=outcome.height,
            ready_at=outcome.ready_at,
            finished_at=outcome.finished_at,
            duration_s=elapsed,
            engine=outcome.engine,
            result_seed=outcome.seed,
            cost=cost,
        )
        image = with_provenance(self.store, record_id, outcome.image, values)
        path = self.store.mark_ready(
            record_id, image=image, ext=outcome.format or prepared.request.output_format, **values
        )
        if self._on_spent is not None:
            self._on_spent(cost)
        return self.result(
            record_id,
            prepared,
            "ready",
            size=(outcome.width, outcome.height),
            path=path,
            cost=cost,
            elapsed=elapsed,
            task_id=outcome.task.id,
            engine=outcome.engine,
            details=outcome.details,
        )

    def failed(
        self, record_id: str, prepared: PreparedRequest, exc: FluxError, submitted: bool, started: float
    ) -> Result:
        """Record a failure. Once the API gave a task id, only the task's own final outcome ends the
        record: after a timeout, a lost poll or a failed download it stays "submitted", for resume.
        A full disk before the submit leaves it "pending" (never sent)."""
        if is_retryable(exc) and not submitted:
            exc.hint = NOT_SENT_HINT
            return self.result(record_id, prepared, RecordStatus.PENDING.value, error=exc, elapsed=0.0)
        if submitted and not is_final(exc):
            status = RecordStatus.SUBMITTED.value
            exc = with_resume_hint(exc)
            note = functools.partial(self.store.note_error, record_id, error_kind=exc.kind, error=exc.one_line())
            self._write_or_owe(record_id, note)
        else:
            status = self.fail(record_id, exc)
        return self.result(record_id, prepared, status, error=exc, elapsed=time.time() - started)

    def fail(self, record_id: str, exc: FluxError) -> str:
        status = record_status_for(exc)
        write = functools.partial(
            self.store.mark_failed,
            record_id,
            status=status,
            error_kind=exc.kind,
            error=exc.one_line(),
            finished_at=time.time(),
        )
        self._write_or_owe(record_id, write)
        return status.value

    def _write_or_owe(self, record_id: str, work: Callable[[], object]) -> None:
        """Write now or, on a full disk, at the next chance (the ledger keeps it)."""
        try:
            self.ledger.write(record_id, work)
        except HistoryError as exc:
            if not exc.retryable:
                raise

    def result(self, record_id: str, prepared: PreparedRequest, status: str, **fields: Any) -> Result:
        result = result_of(record_id, prepared, status, billed=self.backend.billed, **fields)
        return self._made_from(result, [image.sha256 for image in prepared.inputs])

    def result_from_record(self, record: Record, prepared: PreparedRequest | None = None, *, cached: bool) -> Result:
        """A Result for a stored record (a cache hit, or an old record shown beside its replay)."""
        result = result_of_record(record, prepared, cached=cached, billed=self.backend.billed)
        return self._made_from(result, record.input_hashes)

    def _made_from(self, result: Result, digests: list[str]) -> Result:
        """``result`` naming the reference images it was made from (a ready edit's; a history that cannot be read
        leaves them unnamed)."""
        if not digests or result.status != "ready":
            return result
        try:
            return replace(result, references=made_from(self.store, digests))
        except HistoryError:
            return result
