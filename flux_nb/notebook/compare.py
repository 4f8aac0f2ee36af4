"""Compare two or more results: a slider, a flip, side by side and a difference view.

``compare(a, b, ...)`` takes results, record ids, history rows (a Series, a dict) or a history frame
(each of its rows). In a notebook it shows a widget: anywidget's (the ``compare`` extra: the slider runs
in the browser) or a plain ipywidgets one (each move redrawn by the kernel). Where widgets don't render
(an exported notebook) the same output holds a static image (HTML with the PNG inside: the images side by
side, and for two their difference); a terminal shows the labels and the caption as text.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from flux_nb.errors import ValidationError
from flux_nb.history.files import image_file
from flux_nb.notebook.compare_images import STATIC_HEIGHT, data_url, difference, side_by_side

if TYPE_CHECKING:
    from flux_nb.history.store import HistoryStore

#: Request fields a label names when they differ between the images.
LABELLED = ("prompt", "model", "seed", "width", "height", "steps", "guidance", "experiment")


@dataclass(frozen=True)
class Shown:
    """One compared image: its record id, its request fields and its file."""

    record_id: str
    fields: dict[str, Any]
    path: Path

    def image(self) -> Image.Image:
        with Image.open(self.path) as image:
            return image.convert("RGB")


def _from_row(row: Mapping[str, Any], root: Path | None) -> Shown:
    record_id = str(row.get("record_id") or "")
    value = row.get("image_path")
    if not isinstance(value, str | Path) or not value or row.get("status", "ready") != "ready":
        raise ValidationError(f"record {record_id or '?'} has no image to compare (status {row.get('status')})")
    path = Path(value)
    if not path.is_absolute():
        if root is None:
            raise ValidationError(f"record {record_id}: its image path is relative and its history is not known")
        path = image_file(root, str(value))
    return Shown(record_id, {k: row.get(k) for k in LABELLED if k in row}, path)


def resolve(item: Any, store: HistoryStore | None) -> list[Shown]:
    """What one argument of ``compare`` shows: a Result, a record id, a history row, or a frame's rows."""
    import pandas as pd

    from flux_nb.core.results import Result

    if isinstance(item, Result):
        if item.path is None or not item.ok:
            raise ValidationError(f"result {item.record_id} has no image to compare ({item.status})")
        fields = {"prompt": item.prompt, "model": item.model, "seed": item.seed, "width": item.width}
        return [Shown(item.record_id, {**fields, "height": item.height}, Path(item.path))]
    if isinstance(item, str):
        if store is None:
            raise ValidationError(f"record id {item!r}: compare needs the session's history to find it")
        record = store.get(item)
        if record is None:
            raise ValidationError(f"no record with id {item!r} in the history at {store.root}")
        row = {"record_id": record.record_id, "image_path": record.image_path, "status": record.status}
        return [_from_row({**row, **record.request_fields()}, store.root)]
    if isinstance(item, pd.DataFrame):
        return [s for _, row in item.iterrows() for s in resolve(row, store)]
    if isinstance(item, pd.Series | Mapping):
        return [_from_row(dict(item), store.root if store else None)]
    raise ValidationError(f"compare takes results, record ids or history rows, not {type(item).__name__}")


def _label(shown: Shown, differing: Sequence[str]) -> str:
    parts = [f"{k} {str(shown.fields.get(k))[:40]}" for k in differing if k != "width" or "height" not in differing]
    if "width" in differing and "height" in differing:
        parts.append(f"{shown.fields.get('width')}x{shown.fields.get('height')}")
    return " · ".join([shown.record_id[:8], *parts])


def labels(items: Sequence[Shown]) -> list[str]:
    """A short label per image: its id and the request fields that differ between the images."""
    differing = [k for k in LABELLED if len({str(s.fields.get(k)) for s in items}) > 1]
    return [_label(s, differing) for s in items]


class Comparison:
    """Two or more images to compare; shows as a widget in a notebook and as a static image (in HTML) elsewhere.

    >>> flux.compare(a, b)  # doctest: +SKIP
    """

    def __init__(self, items: Sequence[Shown], caption: str = "") -> None:
        if len(items) < 2:
            raise ValidationError(f"compare needs two or more images, got {len(items)}")
        self.items = list(items)
        self.labels = labels(self.items)
        self.caption = caption
        self._widget: Any = None

    def __repr__(self) -> str:
        text = f"Comparison of {len(self.items)} images: " + " | ".join(self.labels)
        return f"{text}\n{self.caption}" if self.caption else text

    def images(self) -> list[Image.Image]:
        return [s.image() for s in self.items]

    def static(self) -> Image.Image:
        """The view where widgets don't render: all images side by side, then (for two) their difference."""
        images = self.images()
        if len(images) == 2:
            images.append(difference(images[0], images[1]))
        return side_by_side(images, STATIC_HEIGHT)

    def _repr_html_(self) -> str:
        from html import escape

        shown = " | ".join(escape(label) for label in self.labels)
        tail = " | difference" if len(self.items) == 2 else ""
        source = data_url(self.static())
        line = f"<br>{escape(self.caption)}" if self.caption else ""
        return f'<figure><img src="{source}" alt="comparison"><figcaption>{shown}{tail}{line}</figcaption></figure>'

    def widget(self) -> Any:
        """The interactive view (built once): anywidget's where installed, else plain ipywidgets."""
        if self._widget is None:
            try:
                from flux_nb.notebook.compare_widget import CompareWidget
            except ImportError:
                from flux_nb.notebook.compare_fallback import fallback_widget

                self._widget = fallback_widget(self)
            else:
                self._widget = CompareWidget.of(self)
        return self._widget

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        bundle: dict[str, Any] = {"text/plain": repr(self), "text/html": self._repr_html_()}
        try:
            view = self.widget()._repr_mimebundle_()
        except Exception:  # no widget front end here: the static view stands
            return bundle
        view = view[0] if isinstance(view, tuple) else view  # some widgets answer (data, metadata)
        bundle.update({k: v for k, v in (view or {}).items() if k != "text/plain"})
        return bundle


def compare(*items: Any, store: HistoryStore | None = None) -> Comparison:
    """Compare results, record ids or history rows (a frame: each row); see ``Comparison``."""
    shown: list[Shown] = []
    for item in _flat(items):
        shown.extend(resolve(item, store))
    return Comparison(shown)


def byte_identity(a: Path, b: Path) -> str:
    """Whether two images came from byte-identical API answers (their ``source_sha256``), in one line."""
    from flux_nb.metadata import source_sha256

    first, second = source_sha256(a), source_sha256(b)
    return f"byte-identical images (sha256 {first[:12]})" if first == second else "the images differ"


def file_replay(path: Path, new: Any) -> Comparison:
    """An image file and its replay (a Result) side by side, with the byte-identity line."""
    from flux_nb.metadata import request_from_file
    from flux_nb.notebook.render import caption

    try:
        fields = {k: v for k, v in request_from_file(path).items() if k in LABELLED}
    except ValidationError:
        fields = {}
    old = Shown(path.name, fields, path.resolve())
    shown = resolve(new, None)[0]
    line = f"replay of {path}: record {new.record_id} · {caption(new)}\n{byte_identity(old.path, shown.path)}"
    return Comparison([old, shown], caption=line)


def _flat(items: Iterable[Any]) -> list[Any]:
    """The arguments, with a list or tuple of them taken apart."""
    out: list[Any] = []
    for item in items:
        out.extend(item if isinstance(item, list | tuple) else [item])
    return out
