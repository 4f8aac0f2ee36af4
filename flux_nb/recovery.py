"""Records back into requests: look up, replay, and resume what a crash, a restart or an interrupt left open.

A part of ``Flux`` (a mixin): it uses the session's store, executor, relay and budget check.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from flux_nb import experiments
from flux_nb.core import batch as batches
from flux_nb.core.events import BatchObserver
from flux_nb.core.outcomes import prepared_from_record, settle_cut_off
from flux_nb.core.results import Result
from flux_nb.core.resuming import Resumed, plan, unsent_records
from flux_nb.core.watching import relay
from flux_nb.errors import ValidationError
from flux_nb.history.store import HistoryStore, Record
from flux_nb.images import ImageInput

if TYPE_CHECKING:
    from flux_nb.core.batch import Defaults, PreparedRequest
    from flux_nb.core.in_flight import Ledger
    from flux_nb.core.jobs import Executor
    from flux_nb.core.loop import LoopRunner


class RecoveryMethods:
    """``record``, ``result_of``, ``references_of``, ``rebuild``, ``replay``, ``resume``, ``unsent``."""

    history_dir: str
    _ledger: Ledger
    _runner: LoopRunner

    if TYPE_CHECKING:  # the session's own, declared for type checkers only (never shadowing them)

        @property
        def store(self) -> HistoryStore: ...
        def _ready_executor(self) -> Executor: ...
        def _notify(self) -> None: ...
        def defaults(self) -> Defaults: ...
        def request_from(self, path: str | os.PathLike[str]) -> PreparedRequest: ...
        def check_budget(self, batch: Sequence[PreparedRequest], *, confirm: bool = True) -> None: ...
        def run(
            self, batch: Sequence[PreparedRequest], observer: BatchObserver | None = None, *, confirm: bool = False
        ) -> list[Result]: ...

    def record(self, record_id: str) -> Record:
        """The history record ``record_id``."""
        record = self.store.get(record_id)
        if record is None:
            raise ValidationError(f"no history record {record_id!r} in {self.history_dir}")
        return record

    def result_of(self, record_id: str) -> Result:
        """A stored record as a Result (its image from disk)."""
        return self._ready_executor().result_from_record(self.record(record_id), cached=False)

    def references_of(self, record: Record) -> tuple[ImageInput, ...]:
        """The reference images of ``record`` from the store, ready to send as stored (a URL is never fetched
        or measured here); a clear error names any no longer stored."""
        images: list[ImageInput] = []
        for digest in record.input_hashes:
            try:
                found = self.store.load_input(digest)
            except KeyError:
                raise ValidationError(
                    f"record {record.record_id} used reference image {digest[:12]} which is no longer stored"
                ) from None
            images.append(experiments.stored_reference(found, digest))
        return tuple(images)

    def rebuild(self, record_id: str, *, fresh: bool = True) -> PreparedRequest:
        """The exact request of a record, reference images restored from the store."""
        record = self.record(record_id)
        images = self.references_of(record)
        prepared = batches.prepare(
            **record.request_fields(), defaults=self.defaults(), images=images or None, tag=record.tag, fresh=fresh
        )
        prepared.replay_of = record.record_id
        return prepared

    def replay(self, record_id: str | os.PathLike[str], *, fresh: bool = True) -> Result:
        """Run a recorded request again, exactly (a new record pointing back to the old one).

        Takes a record id or an image file carrying its request (see ``request_from``).
        """
        if experiments.is_image_path(record_id, self.store):
            prepared = self.request_from(record_id)
            prepared.fresh = fresh
        else:
            prepared = self.rebuild(str(record_id), fresh=fresh)
        return self.run([prepared], confirm=True)[0]

    def resume(self, observer: BatchObserver | None = None, *, unsent: bool = False) -> Resumed:
        """Finish what a crash, a restart, an interrupt or a full disk left open; one result per record settled.

        Submitted tasks are finished from their polling URLs while those still work. A submit cut off
        mid-send is marked ``unknown`` (it may have created a task, so it is never resent on its own).
        Requests never sent are sent only with ``unsent=True``. Only this process's own records (none that a
        session here has queued or runs) and a dead local process's are taken up: submitted records another
        running process follows (a second kernel) or another host owns are left alone and listed in the
        result's ``elsewhere`` (``note()`` says so).
        """
        owed = self._ledger.flush()  # task ids and images a full disk kept in memory
        if owed:
            raise self._ledger.blocked
        open_records = plan(self.store)
        cut_off = settle_cut_off(self.store, open_records.cut_off)
        executor = self._ready_executor()
        settled = [executor.result_from_record(self.record(r.record_id), cached=False) for r in cut_off]
        records = open_records.finish
        resend: dict[str, PreparedRequest] = {}
        if unsent:
            resend = {r.record_id: self.rebuild(r.record_id) for r in open_records.unsent}
            for prepared in resend.values():
                prepared.replay_of = None  # sent under its own record, not as a replay
        if not records and not resend:
            if settled:
                self._notify()
            return Resumed(settled, open_records.elsewhere)
        self.check_budget(list(resend.values()))
        if observer is not None:
            observer.started([prepared_from_record(r) for r in records] + list(resend.values()))
        size = len(records) + len(resend)
        try:
            results = relay(self._runner, lambda emit: executor.resume_batch(records, emit, resend), observer, size)
        finally:
            self._notify()
        return Resumed(settled + results, open_records.elsewhere)

    def unsent(self) -> list[Record]:
        """Requests never sent (a crash, a restart, an interrupt): ``resume(unsent=True)`` sends them."""
        return unsent_records(self.store)
