"""Where an edit's reference images came from: a result of the history (found by its image's hash) or a file."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from flux_nb.core.results import Reference
from flux_nb.history.store import HistoryStore

if TYPE_CHECKING:
    import pandas as pd


def made_from(store: HistoryStore, digests: Iterable[str]) -> tuple[Reference, ...]:
    """The references with these SHA-256s: named by the first ready record whose image it is, else shortly."""
    return tuple(_reference(store, digest) for digest in digests)


def with_references(frame: pd.DataFrame, history_dir: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """A history frame with a ``references`` column (an edit's reference images, from ``input_hashes``), so a grid
    drawn from it shows them as a sweep's grid does; unchanged where it names no history or holds no edit.

    The history is ``history_dir``, else the one the frame came from (its ``attrs``)."""
    folder = history_dir if history_dir is not None else frame.attrs.get("history_dir")
    if folder is None or "input_hashes" not in frame.columns or not frame["input_hashes"].map(bool).any():
        return frame
    store = HistoryStore(folder, readonly=True)
    try:
        known = {digest: _reference(store, digest) for digest in set().union(*frame["input_hashes"])}
    finally:
        store.close()
    return frame.assign(references=[tuple(known[d] for d in digests) for digests in frame["input_hashes"]])


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
