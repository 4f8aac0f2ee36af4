"""A visual history browser: pages of thumbnails with filters, reviews, and actions on a selection.

``flux.browse()`` (or ``%flux browse``) pages the whole history newest first, by SQL (``LIMIT``/``OFFSET``
over the ``created_at`` index): a page reads only its own rows, so it stays fast at 100,000 rows.
Thumbnails are made on demand and kept in ``<history>/thumbnails`` (named by the image's SHA-256).
Reviews go through the session's public review methods (``rate``, ``favourite``, ``note``).
"""

from __future__ import annotations

import io
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from flux_nb.errors import ValidationError
from flux_nb.history.filters import where_clause
from flux_nb.history.schema import DATABASE
from flux_nb.protocol import MODELS

if TYPE_CHECKING:
    import pandas as pd

    from flux_nb.session import Flux

PAGE_SIZE = 24
THUMBNAIL_PX = 192
STARS = [("·", 0), ("1", 1), ("2", 2), ("3", 3), ("4", 4), ("5", 5)]
ANY = "(any)"


def _like(text: str) -> str:
    """``text`` as a LIKE pattern matching it anywhere, its own ``%`` and ``_`` taken literally."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class Pages:
    """The history's rows as pages, newest first, for ``equals`` filters (as ``store.query``) and prompt text."""

    def __init__(self, history: Path, size: int = PAGE_SIZE) -> None:
        self.path = history / DATABASE
        self.size = size
        self._db: sqlite3.Connection | None = None

    def _read(self, sql: str, params: list[Any]) -> list[Any]:
        if self._db is None:
            if not self.path.is_file():
                return []
            self._db = sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True, check_same_thread=False)
        return self._db.execute(sql, params).fetchall()

    def _where(self, equals: dict[str, Any], text: str) -> tuple[str, list[Any]]:
        where, params = where_clause(equals)
        if text:
            where = " AND ".join(p for p in (where, "records.prompt LIKE ? ESCAPE '\\'") if p)
            params = [*params, _like(text)]
        return (f"WHERE {where}" if where else ""), params

    def ids(self, page: int, equals: dict[str, Any], text: str = "") -> list[str]:
        """The record ids of page ``page`` (0 first), newest first."""
        where, params = self._where(equals, text)
        sql = f"SELECT record_id FROM records {where} ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?"
        return [row[0] for row in self._read(sql, [*params, self.size, page * self.size])]

    def count(self, equals: dict[str, Any], text: str = "") -> int:
        where, params = self._where(equals, text)
        rows = self._read(f"SELECT COUNT(*) FROM records {where}", params)
        return int(rows[0][0]) if rows else 0

    def distinct(self, column: str) -> list[str]:
        """The values a column takes (for the filter menus), read from its index."""
        if column not in ("experiment", "tag"):
            raise ValidationError(f"no menu of {column!r}")
        rows = self._read(f"SELECT DISTINCT {column} FROM records WHERE {column} IS NOT NULL ORDER BY 1", [])
        return [str(row[0]) for row in rows]

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


class Thumbnails:
    """Small JPEGs of history images, made the first time they are asked for and kept by the image's SHA-256."""

    def __init__(self, history: Path, px: int = THUMBNAIL_PX) -> None:
        self.folder = history / "thumbnails"
        self.px = px
        self._memory: dict[str, bytes] = {}

    def of(self, image_path: Any, sha256: Any) -> bytes:
        """The thumbnail of an image file (b"" when there is none to read)."""
        if not isinstance(image_path, str | Path) or not image_path or not isinstance(sha256, str):
            return b""
        key = f"{sha256}-{self.px}"
        if key in self._memory:
            return self._memory[key]
        kept = self.folder / sha256[:2] / f"{key}.jpeg"
        if kept.is_file():
            data = kept.read_bytes()
        else:
            try:
                with Image.open(image_path) as image:
                    image.draft("RGB", (self.px, self.px))  # a JPEG decodes at 1/2 to 1/8 scale: far quicker
                    image.thumbnail((self.px, self.px))
                    buffer = io.BytesIO()
                    image.convert("RGB").save(buffer, "JPEG", quality=80)
            except OSError:
                return b""
            data = buffer.getvalue()
            try:
                kept.parent.mkdir(parents=True, exist_ok=True)
                kept.write_bytes(data)
            except OSError:
                pass  # a read-only history: kept in memory only
        self._memory[key] = data
        return data


class Card:
    """One thumbnail with its caption, stars, favourite mark, note and a select box (reused across pages)."""

    def __init__(self, browser: Browser) -> None:
        import ipywidgets as widgets

        self.record_id = ""
        self.image = widgets.Image(format="jpeg", layout=widgets.Layout(width=f"{THUMBNAIL_PX}px"))
        self.caption = widgets.HTML()
        self.stars = widgets.ToggleButtons(options=STARS, value=0, style={"button_width": "24px"})
        self.favourite = widgets.ToggleButton(value=False, description="♥", tooltip="favourite")
        self.note = widgets.Text(placeholder="note", continuous_update=False, layout=widgets.Layout(width="150px"))
        self.selected = widgets.Checkbox(value=False, description="select", indent=False)
        row = widgets.HBox([self.favourite, self.selected])
        self.box = widgets.VBox([self.image, self.caption, self.stars, row, self.note])
        self.box.add_class("flux-browse-card")
        self._quiet = False
        self.stars.observe(lambda c: self._review(browser.session.rate, c["new"] or None), names="value")
        self.favourite.observe(lambda c: self._review(browser.session.favourite, c["new"]), names="value")
        self.note.observe(lambda c: self._review(browser.session.note, c["new"] or None), names="value")

    def _review(self, method: Callable[[str, Any], Any], value: Any) -> None:
        if not self._quiet and self.record_id:
            method(self.record_id, value)

    def show(self, row: dict[str, Any] | None, thumbnail: bytes) -> None:
        """Show a row (None hides the card) without writing its review back."""
        from html import escape

        self._quiet = True
        try:
            self.box.layout.display = "none" if row is None else ""
            if row is None:
                self.record_id = ""
                return
            self.record_id = str(row["record_id"])
            self.image.value = thumbnail
            what = f"{row.get('model')} · seed {row.get('seed')} · {row.get('experiment') or ''}"
            prompt = str(row.get("prompt") or "")
            self.caption.value = (
                f'<div style="font-size:11px;line-height:1.2;width:{THUMBNAIL_PX}px" title="{escape(prompt)}">'
                f"<code>{escape(self.record_id)}</code> {escape(what)}<br>{escape(prompt[:80])}</div>"
            )
            rating = row.get("rating")
            self.stars.value = int(rating) if isinstance(rating, int | float) and rating == rating else 0
            self.favourite.value = bool(row.get("favourite"))
            note = row.get("note")
            self.note.value = note if isinstance(note, str) else ""
            self.selected.value = False
        finally:
            self._quiet = False


class Browser:
    """The browser of ``flux.browse()``: filters, a page of cards, paging, and actions on the selection.

    >>> flux.browse(experiment="lighting")  # doctest: +SKIP
    """

    def __init__(self, session: Flux, *, page_size: int = PAGE_SIZE, **filters: Any) -> None:
        import ipywidgets as widgets

        if isinstance(page_size, bool) or not isinstance(page_size, int) or not 1 <= page_size <= 200:
            raise ValidationError(f"page_size {page_size!r} is not a whole number from 1 to 200")
        where_clause(filters)  # a bad filter is refused here, before anything is drawn
        self.session = session
        root = Path(session.history_dir).expanduser().resolve()
        self.pages = Pages(root, page_size)
        self.thumbnails = Thumbnails(root)
        self.page = 0
        self.total = 0
        self.rows: list[dict[str, Any]] = []
        self.shown: Any = None  # what the last action on the selection drew
        chosen = filters.pop("experiment", ANY)
        self.fixed = dict(filters)
        menu = list(dict.fromkeys([ANY, *self.pages.distinct("experiment"), chosen]))
        self.experiment = widgets.Dropdown(options=menu, value=chosen, description="experiment")
        self.model = widgets.Dropdown(options=[ANY, *MODELS], value=ANY, description="model")
        self.tag = widgets.Text(placeholder="review tag", continuous_update=False, description="tag")
        self.rating = widgets.Dropdown(options=[(ANY, 0), *STARS[1:]], value=0, description="rating")
        self.only_favourites = widgets.Checkbox(value=False, description="favourites only")
        self.text = widgets.Text(placeholder="words in the prompt", continuous_update=False, description="prompt")
        self.cards = [Card(self) for _ in range(self.pages.size)]
        self.previous = widgets.Button(description="◀ newer")
        self.next = widgets.Button(description="older ▶")
        self.status = widgets.Label()
        self.status.add_class("flux-browse-status")
        self.compare_button = widgets.Button(description="compare selected")
        self.grid_button = widgets.Button(description="grid selected")
        self.export_path = widgets.Text(placeholder="selection.zip", layout=widgets.Layout(width="160px"))
        self.export_button = widgets.Button(description="export selected")
        self.output = widgets.Output()
        for control in (self.experiment, self.model, self.tag, self.rating, self.only_favourites, self.text):
            control.observe(lambda _: self.go(0), names="value")
        self.previous.on_click(lambda _: self.go(self.page - 1))
        self.next.on_click(lambda _: self.go(self.page + 1))
        self.compare_button.on_click(lambda _: self._act(self.compare))
        self.grid_button.on_click(lambda _: self._act(self.grid))
        self.export_button.on_click(lambda _: self._act(lambda: self.export(self.export_path.value or "selection.zip")))
        filters_box = widgets.HBox(
            [self.experiment, self.model, self.rating, self.only_favourites, self.tag, self.text],
            layout=widgets.Layout(flex_flow="row wrap"),
        )
        grid = widgets.GridBox(
            [c.box for c in self.cards],
            layout=widgets.Layout(grid_template_columns=f"repeat(auto-fill, minmax({THUMBNAIL_PX + 16}px, 1fr))"),
        )
        actions = [self.compare_button, self.grid_button, self.export_path, self.export_button]
        paging = widgets.HBox([self.previous, self.status, self.next, *actions], layout={"flex_flow": "row wrap"})
        self.widget = widgets.VBox([filters_box, paging, grid, self.output])
        self.widget.add_class("flux-browse")
        self.go(0)

    def __repr__(self) -> str:
        return f"history browser: {self.status.value}"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> Any:
        bundle = self.widget._repr_mimebundle_()
        data = bundle[0] if isinstance(bundle, tuple) else dict(bundle or {})
        data["text/plain"] = repr(self)
        return data

    def filters(self) -> tuple[dict[str, Any], str]:
        """The filters now set: ``equals`` (as ``store.query``) and the prompt text."""
        equals = dict(self.fixed)
        if self.experiment.value != ANY:
            equals["experiment"] = self.experiment.value
        if self.model.value != ANY:
            equals["model"] = self.model.value
        if self.tag.value.strip():
            equals["tags"] = self.tag.value.strip()
        if self.rating.value:
            equals["rating"] = self.rating.value
        if self.only_favourites.value:
            equals["favourite"] = True
        return equals, self.text.value.strip()

    def go(self, page: int) -> None:
        """Show page ``page`` (0: the newest rows) of the rows the filters keep."""
        equals, text = self.filters()
        self.total = self.pages.count(equals, text)
        last = max(0, (self.total - 1) // self.pages.size)
        self.page = min(max(0, page), last)
        ids = self.pages.ids(self.page, equals, text)
        frame = self.session.store.query(record_id=ids) if ids else None
        by_id = {} if frame is None else {r["record_id"]: r for r in frame.to_dict("records")}
        self.rows = [by_id[i] for i in ids if i in by_id]
        for i, card in enumerate(self.cards):
            row = self.rows[i] if i < len(self.rows) else None
            card.show(row, self.thumbnails.of(row.get("image_path"), row.get("image_sha256")) if row else b"")
        shown = f"{self.page * self.pages.size + 1:,}-{self.page * self.pages.size + len(self.rows):,}"
        self.status.value = f"{shown if self.rows else 0} of {self.total:,} rows · page {self.page + 1} of {last + 1:,}"
        self.previous.disabled, self.next.disabled = self.page == 0, self.page >= last

    def selected(self) -> list[str]:
        """The record ids whose select box is ticked on this page."""
        return [c.record_id for c in self.cards if c.selected.value and c.record_id]

    def _selection(self) -> pd.DataFrame:
        ids = self.selected()
        if not ids:
            raise ValidationError("select one or more thumbnails first (their select boxes)")
        frame = self.session.store.query(record_id=ids)
        frame.attrs["history_dir"] = str(self.session.history_dir)
        return frame

    def _act(self, action: Callable[[], Any]) -> None:
        from IPython.display import display

        self.output.clear_output()
        with self.output:
            try:
                self.shown = action()
            except ValidationError as exc:
                print(f"flux_nb: {exc}")
            else:
                display(self.shown)

    def compare(self) -> Any:
        """The selected images in a comparison (two or more)."""
        return self.session.compare(self._selection())

    def grid(self) -> Any:
        """The selected images in one grid."""
        frame = self._selection()
        return frame.flux.grid()

    def export(self, path: str) -> Path:
        """The selected rows as a bundle at ``path``."""
        return self.session.export(self._selection(), path)

    def close(self) -> None:
        """Close the database reader and every widget of the browser."""
        self.pages.close()
        stack = [self.widget]
        while stack:
            widget = stack.pop()
            stack.extend(getattr(widget, "children", ()))
            stack.extend(w for w in (getattr(widget, "layout", None), getattr(widget, "style", None)) if w is not None)
            widget.close()
