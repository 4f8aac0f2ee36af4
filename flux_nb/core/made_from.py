"""Where an edit's reference images came from: a result of the history (found by its image's hash) or a file."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from flux_nb.core.results import Reference
from flux_nb.history.store import HistoryStore


def made_from(store: HistoryStore, digests: Iterable[str]) -> tuple[Reference, ...]:
    """The references with these SHA-256s: named by the first ready record whose image it is, else shortly."""
    return tuple(_reference(store, digest) for digest in digests)


def _reference(store: HistoryStore, digest: str) -> Reference:
    rows = store.query(image_sha256=digest, status="ready")
    record = store.get(str(rows["record_id"].iloc[0])) if len(rows) else None
    try:
        kept = store.load_input(digest)
    except KeyError:
        kept = None
    if isinstance(kept, str):  # a URL: named by its file name, nothing to show
        return Reference(record.record_id if record else _url_name(kept))
    stored = sorted(p for p in (store.root / "inputs").glob(f"{digest}.*") if p.suffix != ".url")
    path = stored[0] if stored else (record.image_file if record else None)
    return Reference(record.record_id if record else f"image {digest[:8]}", path)


def _url_name(url: str) -> str:
    parts = urlsplit(url)
    return PurePosixPath(parts.path).name or parts.netloc
