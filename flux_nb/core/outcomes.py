"""What a record means for its request: the request it rebuilds, the status an error leaves,
whether the cache answers it, and the submits a stopped process cut off mid-send.
"""

from __future__ import annotations

import time

from flux_nb.core.batch import PreparedRequest
from flux_nb.errors import (
    FluxError,
    ModeratedError,
    TaskFailedError,
    TaskNotFoundError,
    UnknownOutcomeError,
)
from flux_nb.history.store import HistoryStore, Record, RecordStatus, request_key
from flux_nb.protocol import FluxRequest


def prepared_from_record(record: Record) -> PreparedRequest:
    """The request of a record, without its images (enough to describe and display it)."""
    request = FluxRequest(**record.request_fields())
    return PreparedRequest(request, (), record.estimated_cost or 0.0, tag=record.tag)


# The task's own final outcomes: anything else after the API gave a task id leaves it to resume.
FINAL_OUTCOMES = (ModeratedError, TaskFailedError, TaskNotFoundError)
RESUME_HINT = "the task was accepted and is kept as submitted: resume finishes it"
NOT_SENT_HINT = "nothing was sent for it: free space, then resume(unsent=True) sends it"
NOT_RECORDED_HINT = "nothing was sent for it: free space, then run it again"


def is_final(exc: FluxError) -> bool:
    """True when ``exc`` is the task's real outcome (moderated, failed, unknown id), not a fault on the way."""
    return isinstance(exc, FINAL_OUTCOMES)


def with_resume_hint(exc: FluxError) -> FluxError:
    """Point ``exc``'s hint at resuming: sending the request again would pay for a second task."""
    exc.hint = RESUME_HINT
    return exc


def record_status_for(exc: FluxError) -> RecordStatus:
    if isinstance(exc, ModeratedError):
        return RecordStatus.MODERATED
    if isinstance(exc, UnknownOutcomeError):
        return RecordStatus.UNKNOWN
    return RecordStatus.FAILED


def cache_hit(store: HistoryStore, label: str, prepared: PreparedRequest, *, enabled: bool = True) -> Record | None:
    """The stored record answering this request on backend ``label``, if the cache may be used.

    Never for a request with a ``webhook_url``: its sender wants the webhook to fire.
    """
    if not enabled or prepared.fresh or prepared.request.webhook_url:
        return None
    return store.find_cached(request_key(prepared.request, label, prepared.input_hashes))


def settle_cut_off(store: HistoryStore, orphans: list[Record]) -> list[Record]:
    """Mark submits cut off mid-send ``unknown``: they may have created (and been charged for) a task."""
    cut_off = [r for r in orphans if r.status == RecordStatus.SENDING]
    for record in cut_off:
        store.mark_failed(
            record.record_id,
            status=RecordStatus.UNKNOWN,
            error_kind="unknown_outcome",
            error="its process stopped while the submit was in flight: it may have created (and been charged "
            "for) a task, so it is not resent; check the dashboard, or replay it on purpose",
            finished_at=time.time(),
        )
    return cut_off
