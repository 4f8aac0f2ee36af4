"""What a record means for its request: the request it rebuilds, the status an error leaves,
whether the cache answers it, the submits a stopped process cut off mid-send, and the provenance
its stored image carries.
"""

from __future__ import annotations

import time
from typing import Any

from flux_nb.core.batch import PreparedRequest
from flux_nb.core.results import Result
from flux_nb.errors import (
    FluxError,
    ModeratedError,
    TaskFailedError,
    TaskNotFoundError,
    UnknownOutcomeError,
)
from flux_nb.history.records import KEY_FIELDS
from flux_nb.history.store import HistoryStore, Record, RecordStatus, request_key
from flux_nb.images import sha256_hex
from flux_nb.protocol import FluxRequest


def result_of(
    record_id: str,
    prepared: PreparedRequest,
    status: str,
    *,
    billed: bool,
    size: tuple[int, int] | None = None,
    **fields: Any,
) -> Result:
    """The Result a caller sees for ``prepared`` (its size unless the image's ``size`` is known)."""
    request = prepared.request
    width, height = size or (request.width, request.height)
    return Result(
        record_id=record_id,
        status=status,
        prompt=request.prompt,
        model=request.model,
        seed=request.seed if request.seed is not None else 0,
        width=width,
        height=height,
        estimated_cost=prepared.estimated_cost,
        billed=billed,
        tag=prepared.tag,
        labels=prepared.labels,
        **fields,
    )


def result_of_record(record: Record, prepared: PreparedRequest | None, *, cached: bool, billed: bool) -> Result:
    """The Result of a stored record (a cache hit, or an old record shown beside its replay)."""
    prepared = prepared or prepared_from_record(record)
    size = (record.out_width, record.out_height) if record.out_width and record.out_height else None
    return result_of(
        record.record_id,
        prepared,
        record.status,
        billed=billed,
        size=size,
        path=record.image_file,
        cost=0.0 if cached else record.cost,
        elapsed=record.duration_s,
        cached=cached,
        task_id=record.task_id,
        engine=record.engine,
        error=FluxError(record.error) if record.error else None,
    )


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
    if isinstance(exc, UnknownOutcomeError | TaskNotFoundError):  # a lost task may have run, and been charged
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


def with_provenance(store: HistoryStore, record_id: str, image: bytes, values: dict[str, Any]) -> bytes:
    """The API's image bytes with the request that made them written in (no pixel re-encoded).

    The file carries what made the image (the request, its reference hashes, the backend and what
    the API said of the result) and ``api_sha256``, the SHA-256 of the bytes as the API sent them
    (the bytes the delivery checks passed). Nothing per record goes in (id, task, times, cost): an
    identical answer to an identical request is the same file, so the history keeps it once and it
    keeps one hash as a reference image. ``Flux.export_image`` writes copies with the whole record.
    A format that cannot carry metadata is stored as it came.
    """
    from flux_nb.metadata import embed_provenance  # pandas comes with it: only once an image arrives

    record = store.get(record_id)
    if record is None:
        return image
    made_of = {name: getattr(record, name) for name in (*KEY_FIELDS, "input_hashes", "backend")}
    made_of.update(status=RecordStatus.READY.value, out_width=values["width"], out_height=values["height"])
    made_of.update(engine=values["engine"], result_seed=values["result_seed"], api_sha256=sha256_hex(image))
    try:
        return embed_provenance(image, made_of)
    except FluxError:
        return image
