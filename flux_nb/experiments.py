"""What ``Flux``'s experiment methods do: review targets, restoring requests from files, hand-over.

An experiment is the rows that share an ``experiment`` name (or a tag, or a notebook): every
request and every *use* (a cache hit, or a duplicate in one batch, shown again at no cost).
These helpers turn what a user points at (ids, Results, sweeps, frames, image files) into
record ids and requests, and move an experiment out of the history (bundles, reports, copies).

Content hashes: a stored image is the API's bytes with the request that made them written in (no
pixel re-encoded, nothing per record), named by the SHA-256 of the file (``image_sha256``), so an
identical answer to an identical request is one file with one hash (as a reference image too). The
provenance keeps ``api_sha256``, the hash of the bytes the API sent (checked against Content-MD5
before anything is stored); ``metadata.source_sha256`` reads it, ``metadata.pixel_hash`` compares
pixels. ``export_image`` copies carry the whole record (id, task, cost, times) and its review.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flux_nb import protocol
from flux_nb.core import batch as batches
from flux_nb.core.batch import Defaults, PreparedRequest
from flux_nb.core.results import Result, SweepResult
from flux_nb.errors import ValidationError
from flux_nb.history.records import SHA256, Record
from flux_nb.history.store import HistoryStore
from flux_nb.images import ImageInput, prepare_image, sha256_hex

if TYPE_CHECKING:
    import pandas as pd

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
IGNORED_SHOWN = 12  # names of fields a file asked for and a restored request left out, shown in one line
FORMAT_SUFFIXES = {"png": (".png",), "jpeg": (".jpg", ".jpeg"), "webp": (".webp",)}


def record_ids(target: Any) -> list[str]:
    """The record ids a review points at: an id, a Result, a SweepResult, a DataFrame (its ``record_id``
    column) or a list of these, in order and without repeats."""
    found: list[str] = []
    _collect(target, found)
    if not found:
        raise ValidationError("nothing to review: give record ids, Results, a sweep or rows of the history")
    return list(dict.fromkeys(found))


def _collect(target: Any, found: list[str]) -> None:
    if isinstance(target, str):
        found.append(target)
    elif isinstance(target, Result):
        found.append(target.record_id)
    elif isinstance(target, SweepResult):
        found.extend(r.record_id for r in target)
    elif hasattr(target, "columns") and hasattr(target, "__getitem__"):  # a DataFrame
        if "record_id" not in target.columns:
            raise ValidationError("the frame has no record_id column: give rows of the history (flux.history())")
        found.extend(str(v) for v in target["record_id"].dropna())
    elif hasattr(target, "record_id"):  # a history row (Series or namedtuple) or a Record
        found.append(str(target.record_id))
    elif isinstance(target, Iterable) and not isinstance(target, (bytes, Mapping)):
        for item in target:
            _collect(item, found)
    else:
        raise ValidationError(
            f"cannot review a {type(target).__name__}: give a record id, a Result, a SweepResult, "
            "a DataFrame of history rows, or a list of these"
        )


def find_record(store: HistoryStore, record_id: str) -> Record:
    """The record ``record_id`` of ``store``; a ValidationError when there is none."""
    record = store.get(record_id)
    if record is None:
        raise ValidationError(f"no history record {record_id!r} in {store.root}")
    return record


def is_image_path(value: Any, store: HistoryStore) -> bool:
    """True when ``value`` names an image file rather than a history record."""
    if isinstance(value, os.PathLike):
        return True
    if not isinstance(value, str):
        return False
    if store.get(value) is not None:
        return False
    return value.lower().endswith(IMAGE_SUFFIXES) or os.sep in value or "/" in value or Path(value).is_file()


def stored_reference(found: bytes | str, digest: str) -> ImageInput:
    """A reference read back from a history, to send as it is: a URL stays the URL string (never fetched,
    measured or read as a path here), bytes are checked as an image."""
    if isinstance(found, str):
        return ImageInput(found, digest, is_url=True)
    return prepare_image(found, f"reference {digest[:12]}")


def load_reference(store: HistoryStore, digest: str) -> ImageInput:
    """A reference image by content hash: a kept input, else a result image with that hash; KeyError if neither."""
    try:
        return stored_reference(store.load_input(digest), digest)
    except KeyError:
        pass
    if SHA256.fullmatch(digest):
        for candidate in sorted((store.root / "images" / digest[:2]).glob(f"{digest}.*")):
            return stored_reference(candidate.read_bytes(), digest)
    raise KeyError(digest)


def _mapped(fields: dict[str, Any], defaults: Defaults, *, ours: bool) -> tuple[dict[str, Any], list[str]]:
    """The request fields of a file that this session can send, and the names of those it cannot: all of
    flux_nb's own are sent; of another tool's, a model flux_nb does not know, or a setting the model lacks,
    is left out."""
    fields = {k: v for k, v in fields.items() if v is not None}
    if ours:
        return fields, []
    model = fields.get("model") if fields.get("model") in protocol.MODELS else None
    takes = {f.name for f in protocol.MODELS[model or defaults.model].extra_fields}
    unfit = {"steps", "guidance"} - takes | (set() if model else {"model"})
    kept = {k: v for k, v in fields.items() if k not in unfit}
    return kept, sorted(set(fields) - set(kept))


def _tell_ignored(path: Path, names: list[str]) -> None:
    """One line naming what a file asked for that its restored request leaves out (names shown safely)."""
    if names:
        shown = [n if re.fullmatch(r"\w{1,40}", n, re.ASCII) else json.dumps(n[:40]) for n in names[:IGNORED_SHOWN]]
        more = f" and {len(names) - IGNORED_SHOWN} more" if len(names) > IGNORED_SHOWN else ""
        print(f"flux_nb: ignored from the file {path.name}: {', '.join(shown)}{more}", file=sys.stderr)


def restore_request(store: HistoryStore, source: str | os.PathLike[str], defaults: Defaults) -> PreparedRequest:
    """The request that made an image file, validated and priced, its references loaded from ``store``.

    Reads flux_nb's provenance, or A1111-style ``parameters`` another tool wrote (as far as its
    fields map). A reference image that ``store`` does not hold is named in a ValidationError. Only
    the fields the restored request shows are kept: anything else the file asks for (a webhook, a
    tag, a cache switch) is left out and named in one line on stderr.
    """
    from flux_nb.metadata import read_provenance, read_request
    from flux_nb.metadata.provenance import foreign_fields, import_note

    path = Path(source).expanduser()
    fields, ignored = read_request(path)
    document = read_provenance(path)
    hashes = list(fields.pop("input_hashes", None) or [])
    images: list[ImageInput] = []
    missing: list[str] = []
    for digest in hashes:
        try:
            images.append(load_reference(store, str(digest)))
        except KeyError:
            missing.append(str(digest))
    if missing:
        listed = ", ".join(d[:12] for d in missing)
        raise ValidationError(
            f"{path.name} was made with {len(missing)} reference image(s) not in the history at {store.root}: "
            f"{listed}; open the bundle it came from (or copy those inputs into its inputs/ folder) first"
        )
    fields, dropped = _mapped(fields, defaults, ours=document is not None)
    if document is None and ignored + dropped:
        print(import_note(path.name, foreign_fields(path), ignored + dropped, defaults.model), file=sys.stderr)
    else:
        _tell_ignored(path, ignored + dropped)
    prompt = fields.pop("prompt", None) or ""
    prepared = batches.prepare(prompt, defaults, images=tuple(images) or None, **fields)
    prepared.replay_of = _origin(store, path, document)
    return prepared


def _origin(store: HistoryStore, path: Path, document: dict[str, Any] | None) -> str | None:
    """The record of ``store`` that made the file: the one it names, else the request whose stored image it is."""
    named = (document or {}).get("record_id")
    known = store.get(named) if isinstance(named, str) else None
    if known is not None and known.record_id == named:
        return known.cached_from or known.record_id
    stored = store.query(image_sha256=sha256_hex(path.read_bytes()), cached=False)
    return str(stored["record_id"].iloc[0]) if len(stored) else None


def copy_image(store: HistoryStore, record: Record, path: str | os.PathLike[str]) -> Path:
    """Copy a record's image to ``path`` with its provenance written afresh; a folder (an existing one, or a
    name without a suffix) gets ``<record id>.<ext>``."""
    from flux_nb.metadata import save_with_provenance, source_sha256

    source = record.image_file
    if source is None or not source.is_file():
        raise ValidationError(f"record {record.record_id} has no stored image (status {record.status})")
    ext = source.suffix.lstrip(".").lower()
    target = Path(path).expanduser()
    if target.is_dir() or not target.suffix:
        target = target / f"{record.record_id}.{ext}"
    allowed = FORMAT_SUFFIXES.get(ext, (f".{ext}",))
    if target.suffix.lower() not in allowed:
        raise ValidationError(
            f"{target.name}: the image is {ext.upper()}; name the copy with {' or '.join(allowed)} "
            "(a copy is never re-encoded)"
        )
    values = {name: getattr(record, name) for name in record.__dataclass_fields__}
    original = store.get(record.cached_from) if record.cached_from else None
    if original is not None:  # a use: the task that made the image is its original's
        values.update({k: getattr(original, k) for k in ("task_id", "submitted_at", "input_mp", "output_mp")})
    values.update(review_of(store, record), api_sha256=source_sha256(source))
    return save_with_provenance(source, values, target)


def review_of(store: HistoryStore, record: Record) -> dict[str, Any]:
    """The review of the image a record shows (rating, note, tags, favourite), for its exported copy."""
    frame = store.query(record_id=record.record_id)
    if not len(frame):
        return {}
    row = frame.iloc[0]
    return {name: row[name] for name in ("rating", "note", "tags", "favourite") if name in frame.columns}


def selected(store: HistoryStore, history_dir: str, frame_or_filter: Any, filters: Mapping[str, Any]) -> pd.DataFrame:
    """The rows an export or a report is about: a frame as given, or the history filtered in SQL."""
    if hasattr(frame_or_filter, "columns"):
        if filters:
            raise ValidationError(f"give a frame or filters, not both (got a frame and {', '.join(filters)})")
        return frame_or_filter
    if frame_or_filter is not None and not isinstance(frame_or_filter, Mapping):
        raise ValidationError(
            f"cannot export a {type(frame_or_filter).__name__}: give a history frame or filters such as "
            "experiment='study-3'"
        )
    frame = store.query(**{**dict(frame_or_filter or {}), **filters})
    frame.attrs["history_dir"] = history_dir
    return frame


def split_path(frame_or_filter: Any, path: Any, what: str) -> tuple[Any, Any]:
    """``(frame_or_filter, path)`` from a call that gave the path first (``export("a.zip", experiment=...)``)."""
    if path is None and isinstance(frame_or_filter, (str, os.PathLike)):
        return None, frame_or_filter
    if path is None:
        example = "study.zip" if what == "bundle" else "study.html"
        raise ValidationError(f"give the {what} file to write, e.g. path={example!r}")
    return frame_or_filter, path


def bundle_folder(path_zip: str | os.PathLike[str], into: str | os.PathLike[str] | None) -> Path:
    """Where a bundle is unpacked: ``into``, else a folder named after the zip beside it."""
    if into is not None:
        return Path(into).expanduser()
    source = Path(path_zip).expanduser()
    return source.with_name(source.stem)


class Experiments:
    """An experiment's reviews, restored requests and hand-over, on one history (a part of ``Flux``).

    ``defaults()`` gives what a restored request leaves out (the session's settings); ``reviewed()`` is
    called after each review (the session tells its listeners).
    """

    def __init__(self, store: HistoryStore, defaults: Callable[[], Defaults], reviewed: Callable[[], None]) -> None:
        self.store = store
        self.defaults = defaults
        self.reviewed = reviewed

    def _reviewed(self, reviewed: list[str]) -> list[str]:
        self.reviewed()
        return reviewed

    def rate(self, target: Any, stars: int | None) -> list[str]:
        """Give 0 to 5 stars (None clears) to records: ids, Results, a SweepResult, a frame or a list.

        A use (a cache hit) reviews the image it showed; returns the ids of the records reviewed.
        """
        return self._reviewed(self.store.rate(record_ids(target), stars))

    def note(self, target: Any, text: str | None) -> list[str]:
        """Set a note on records (None or "" clears it); targets as for ``rate``."""
        return self._reviewed(self.store.note(record_ids(target), text))

    def tag(self, target: Any, add: Iterable[str] | str = (), remove: Iterable[str] | str = ()) -> list[str]:
        """Add and remove review tags (words without commas) on records; targets as for ``rate``."""
        return self._reviewed(self.store.tag(record_ids(target), add=add, remove=remove))

    def favourite(self, target: Any, on: bool = True) -> list[str]:
        """Mark records as favourites (``on=False`` unmarks); targets as for ``rate``."""
        return self._reviewed(self.store.favourite(record_ids(target), on=on))

    def export_image(self, result_or_id: Result | str, path: str | os.PathLike[str]) -> Path:
        """Copy a result's image to ``path`` (a file, or a folder) with its request and review written in."""
        record_id = result_or_id.record_id if isinstance(result_or_id, Result) else str(result_or_id)
        return copy_image(self.store, find_record(self.store, record_id), path)

    def request_from(self, path: str | os.PathLike[str]) -> PreparedRequest:
        """The request that made an image file (flux_nb's provenance, or another tool's A1111 ``parameters``),
        validated and priced, with its reference images from this history (missing ones are named)."""
        return restore_request(self.store, path, self.defaults())

    def export(self, frame_or_filter: Any = None, path: str | os.PathLike[str] | None = None, **filters: Any) -> Path:
        """Write an experiment as one zip (rows as Parquet, CSV and SQLite, images, references, reviews)."""
        from flux_nb.export import export_bundle

        frame_or_filter, path = split_path(frame_or_filter, path, "bundle")
        frame = selected(self.store, str(self.store.root), frame_or_filter, filters)
        return export_bundle(frame, self.store.root, path)

    def report(
        self,
        frame_or_filter: Any = None,
        path: str | os.PathLike[str] | None = None,
        *,
        title: str = "flux_nb experiment",
        grids: Any = None,
        **filters: Any,
    ) -> Path:
        """Write one self-contained HTML page (grids, a sortable table with thumbnails and reviews, the cost);
        ``grids`` as for ``write_report`` (default: one grid per batch)."""
        from flux_nb.export import write_report

        frame_or_filter, path = split_path(frame_or_filter, path, "report")
        frame = selected(self.store, str(self.store.root), frame_or_filter, filters)
        return write_report(frame, self.store.root, path, title=title, grids=grids)
