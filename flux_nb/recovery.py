"""Records back into requests: look up, rebuild, and plan what a crash, a restart or an interrupt left open.

A part of ``Flux``, on one history: it reads records and turns them into requests; the session sends them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from flux_nb import experiments
from flux_nb.core import batch as batches
from flux_nb.core.batch import Defaults, PreparedRequest
from flux_nb.core.outcomes import settle_cut_off
from flux_nb.core.resuming import plan, unsent_records
from flux_nb.errors import ValidationError
from flux_nb.history.store import HistoryStore, Record
from flux_nb.images import ImageInput


@dataclass
class OpenWork:
    """What ``resume`` has to do: records settled as cut off, records to finish, requests to send again."""

    settled: list[Record]
    finish: list[Record]
    resend: dict[str, PreparedRequest]
    elsewhere: list[Record]


class Recovery:
    """Records of ``store`` back into requests, priced with ``defaults()`` (the session's, when asked)."""

    def __init__(self, store: HistoryStore, defaults: Callable[[], Defaults]) -> None:
        self.store = store
        self.defaults = defaults

    def record(self, record_id: str) -> Record:
        """The history record ``record_id``."""
        return experiments.find_record(self.store, record_id)

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

    def replayed(self, record_id: str | os.PathLike[str], *, fresh: bool = True) -> PreparedRequest:
        """The request to replay: a record's (by id), or the one an image file carries."""
        if experiments.is_image_path(record_id, self.store):
            prepared = experiments.restore_request(self.store, record_id, self.defaults())
            prepared.fresh = fresh
            return prepared
        return self.rebuild(str(record_id), fresh=fresh)

    def open_work(self, *, unsent: bool) -> OpenWork:
        """Plan a resume: submits cut off mid-send settled as ``unknown`` now, submitted records to finish,
        and (with ``unsent``) never-sent requests rebuilt to send under their own records."""
        open_records = plan(self.store)
        cut_off = settle_cut_off(self.store, open_records.cut_off)
        settled = [self.record(r.record_id) for r in cut_off]
        resend: dict[str, PreparedRequest] = {}
        if unsent:
            resend = {r.record_id: self.rebuild(r.record_id) for r in open_records.unsent}
            for prepared in resend.values():
                prepared.replay_of = None  # sent under its own record, not as a replay
        return OpenWork(settled, open_records.finish, resend, open_records.elsewhere)

    def unsent(self) -> list[Record]:
        """Requests never sent (a crash, a restart, an interrupt): ``resume(unsent=True)`` sends them."""
        return unsent_records(self.store)
