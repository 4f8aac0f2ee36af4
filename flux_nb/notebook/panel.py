"""The ipywidgets panel: FLUX.2 for people who would rather click than type.

It runs on the same session, history and cache as the magic. Work runs on flux_nb's own
loop, so the kernel stays responsive; widget updates are made from that loop's thread.
Each request of a batch runs as its own future, so Generate comes back only once all have ended.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import html
import io
import os
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import ipywidgets as w
import numpy as np
from PIL import Image

from flux_nb import protocol
from flux_nb.core.batch import PreparedRequest, draw_seed
from flux_nb.core.events import Emit
from flux_nb.core.results import Result, SweepResult
from flux_nb.errors import FluxError, ValidationError
from flux_nb.images import ImageInput, prepare_image, thumbnail
from flux_nb.notebook.progress import STATES
from flux_nb.notebook.render import NOT_BILLED
from flux_nb.session import Flux

SIZE_PRESETS: dict[str, tuple[int, int] | None] = {
    "1:1 · 1024×1024": (1024, 1024),
    "4:3 · 1184×880": protocol.aspect_size("4:3"),
    "3:4 · 880×1184": protocol.aspect_size("3:4"),
    "16:9 · 1360×768": protocol.aspect_size("16:9"),
    "9:16 · 768×1360": protocol.aspect_size("9:16"),
    "3:2 · 1248×832": protocol.aspect_size("3:2"),
    "2:3 · 832×1248": protocol.aspect_size("2:3"),
    "512×512 (fast drafts)": (512, 512),
    "custom": None,
}
MAX_SLOTS = 4
GALLERY_THUMB = 224
#: What a notebook variable may hold to become a reference image (prepare_image's inputs, and a Result).
REFERENCE_TYPES = (Result, ImageInput, Image.Image, np.ndarray, bytes, bytearray, memoryview, str, os.PathLike)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass
class Slot:
    """One reference image slot: the prepared image, where it came from, and its widget."""

    image: ImageInput
    widget: w.Widget
    name: str = "reference"


class Panel(w.VBox):
    """A generation panel bound to a ``Flux`` session; display it in a cell.

    ``namespace`` is where the "variable name" field looks names up; by default the notebook's
    (IPython's ``user_ns``).

    >>> flux.panel()  # doctest: +SKIP
    """

    def __init__(self, session: Flux, namespace: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        self.session = session
        self.namespace = namespace
        #: The batch in flight (None when idle): resolves, with its results, once every request has ended.
        self._future: Future[list[Result]] | None = None
        self._requests: list[Future[list[Result]]] = []  # one per request, so one failure cannot end the batch
        self._lock = threading.Lock()
        self._remaining = 0
        self._batch_size = 0
        self._batch_done = 0
        self._batch_credits = 0.0
        self._started = 0.0
        self._slots: list[Slot] = []
        self._mirroring = False  # set while the upload button's value is rewritten to count the slots
        self._results: list[Result] = []
        self._build()
        super().__init__(children=self._layout(), **kwargs)
        self.add_class("flux-panel")
        self._refresh_size()
        self._refresh_cost()

    # -- building ------------------------------------------------------------------------------

    def _build(self) -> None:
        s = self.session
        self.prompt = w.Textarea(placeholder="Describe the image…", layout=w.Layout(width="100%", height="80px"))
        self.prompt.add_class("flux-prompt")
        self.model = w.Dropdown(options=list(protocol.MODELS), value=s.model, description="Model")
        self.seed = w.IntText(value=draw_seed(), description="Seed", layout=w.Layout(width="220px"))
        self.random_seed = w.Button(icon="random", tooltip="New random seed", layout=w.Layout(width="40px"))
        self.lock_seed = w.Checkbox(value=False, description="Keep seed", indent=False)
        self.size = w.Dropdown(options=list(SIZE_PRESETS), value="1:1 · 1024×1024", description="Size")
        self.width = w.BoundedIntText(
            value=1024, min=16, max=8192, step=16, description="W", layout=w.Layout(width="140px")
        )
        self.height = w.BoundedIntText(
            value=1024, min=16, max=8192, step=16, description="H", layout=w.Layout(width="140px")
        )
        self.size_note = w.HTML()
        self.safety = w.IntSlider(value=s.safety_tolerance, min=0, max=5, description="Safety")
        self.format = w.ToggleButtons(options=list(protocol.OUTPUT_FORMATS), value=s.output_format)
        self.count = w.IntSlider(value=1, min=1, max=8, description="Images")
        # The button reads "References (N)": ipywidgets 8 always appends len(value), which holds the attached slots.
        self.upload = w.FileUpload(
            accept="image/*",
            multiple=True,
            description="References",
            tooltip=f"Upload reference images (at most {MAX_SLOTS}); the count is how many are attached",
            layout=w.Layout(width="auto"),
        )
        self.upload.add_class("flux-upload")
        self.variable = w.Text(placeholder="variable name", layout=w.Layout(width="150px"))
        self.variable.add_class("flux-variable")
        self.add_variable = w.Button(
            description="Add", tooltip="Add the image a notebook variable holds", layout=w.Layout(width="56px")
        )
        self.add_variable.add_class("flux-add-variable")
        self.slots_box = w.HBox()
        self.generate = w.Button(description="Generate", button_style="primary", icon="magic")
        self.generate.add_class("flux-generate")
        self.cancel = w.Button(description="Cancel", disabled=True, icon="stop")
        self.status = w.HTML(value="Ready.")
        self.status.add_class("flux-status")
        self.error = w.HTML()
        self.error.add_class("flux-error")
        self.cost = w.HTML()
        self.gallery = w.HBox(layout=w.Layout(flex_flow="row wrap"))
        self.gallery.add_class("flux-gallery")

        self.random_seed.on_click(lambda _: setattr(self.seed, "value", draw_seed()))
        self.size.observe(lambda _: self._refresh_size(), "value")
        self.width.observe(lambda _: self._refresh_size(), "value")
        self.height.observe(lambda _: self._refresh_size(), "value")
        self.upload.observe(self._on_upload, "value")
        self.add_variable.on_click(lambda _: self.add_from_variable())
        self.generate.on_click(lambda _: self.submit())
        self.cancel.on_click(lambda _: self.stop())

    def _layout(self) -> list[w.Widget]:
        return [
            self.prompt,
            w.HBox([self.model, self.seed, self.random_seed, self.lock_seed]),
            w.HBox([self.size, self.width, self.height, self.size_note]),
            w.HBox([self.safety, self.format]),
            w.HBox([self.upload, self.variable, self.add_variable, self.count]),
            self.slots_box,
            w.HBox([self.generate, self.cancel, self.status]),
            self.error,
            self.cost,
            self.gallery,
        ]

    # -- form state ----------------------------------------------------------------------------

    def _refresh_size(self) -> None:
        preset = SIZE_PRESETS[self.size.value]
        custom = preset is None
        self.width.disabled = self.height.disabled = not custom
        if preset is not None and (self.width.value, self.height.value) != preset:
            self.width.value, self.height.value = preset
        try:
            protocol.check_size(self.width.value, self.height.value)
        except ValidationError as exc:
            self.size_note.value = f'<span style="color:#b00020">{html.escape(str(exc))}</span>'
            self.generate.disabled = True
            return
        mp = protocol.megapixels(self.width.value, self.height.value)
        self.size_note.value = f'<span style="color:#666">{mp:.2f} MP</span>'
        self.generate.disabled = self._future is not None

    def _on_upload(self, change: dict[str, Any]) -> None:
        if self._mirroring:
            return
        for item in change["new"] or ():
            self._add_reference(bytes(item["content"]), item.get("name", "upload"))
        self._slots_changed()  # the consumed files give way to the count of attached references

    def add_reference(self, image: Any, name: str = "reference") -> None:
        """Add a reference image (a path, URL, bytes, PIL image, array or Result) to the next request.

        ``name`` is how errors and the slot refer to it; a refused image is explained in the error area.
        """
        self._add_any(image, name)

    def add_from_variable(self, name: str | None = None) -> None:
        """Add the image held by a notebook variable (default: the name typed in the panel's field)."""
        typed = name is None
        name = (self.variable.value if name is None else name).strip()
        try:
            value = self._lookup(name)
        except FluxError as exc:
            self._show_error(exc)
            return
        if self._add_any(value, name) and typed:
            self.variable.value = ""

    def _add_any(self, image: Any, name: str) -> bool:
        """Add ``image`` (a Result too); whether it was added."""
        if isinstance(image, Result):
            if not image.ok or image.path is None:
                self._show_error(FluxError(f"result {image.record_id} has no image to use (status {image.status})"))
                return False
            return self._add_reference(image.path, f"result {image.record_id}")  # the stored bytes, as they came
        return self._add_reference(image, name)

    def _lookup(self, name: str) -> Any:
        """The value of notebook variable ``name``, if it is something a reference image can be made of."""
        if not name:
            raise ValidationError("type the name of a notebook variable that holds an image, then Add")
        namespace = self.namespace if self.namespace is not None else _notebook_namespace()
        if namespace is None:
            raise ValidationError(f"no notebook namespace to look {name!r} up in (not running in IPython)")
        if name not in namespace:
            hint = "" if name.isidentifier() else " (give a plain variable name: assign the image to one first)"
            raise ValidationError(f"no variable named {name!r} in the notebook{hint}")
        value = namespace[name]
        if isinstance(value, REFERENCE_TYPES):
            return value
        hint = ""
        if isinstance(value, (list, tuple, SweepResult)) and len(value):
            hint = f" (it holds {len(value)} items: pick one, e.g. img = {name}[0], and add img)"
        raise ValidationError(
            f"variable {name!r} holds a {type(value).__name__}, not an image; use a PIL image, a NumPy array, "
            f"bytes, a path or URL string, or a Result{hint}"
        )

    def _add_reference(self, obj: Any, name: str) -> bool:
        try:
            if len(self._slots) >= MAX_SLOTS:
                raise ValidationError(f"at most {MAX_SLOTS} reference images; remove one first")
            prepared = prepare_image(obj, name)
        except FluxError as exc:
            self._show_error(exc)
            return False
        preview = w.Image(value=_thumb_bytes(prepared), format="jpeg", layout=w.Layout(max_width="96px"))
        remove = w.Button(description="remove", tooltip=name, layout=w.Layout(width="96px"))
        box = w.VBox([preview, remove])
        box.add_class("flux-slot")
        slot = Slot(prepared, box, name)
        remove.on_click(lambda _: self._remove_slot(slot))
        self._slots.append(slot)
        self._slots_changed()
        self.error.value = ""
        return True

    def _remove_slot(self, slot: Slot) -> None:
        self._slots = [s for s in self._slots if s is not slot]
        self._slots_changed()

    def clear_references(self) -> None:
        """Empty every reference slot."""
        self._slots = []
        self._slots_changed()

    def _slots_changed(self) -> None:
        """Show the slots, and count them on the upload button.

        ipywidgets 8 labels a FileUpload ``f"{description} ({len(value)})"``, with no way to hide the count;
        so its value lists the attached references (names only, no content), never files already consumed.
        """
        self.slots_box.children = [s.widget for s in self._slots]
        self._mirroring = True
        try:
            self.upload.value = tuple(_upload_entry(s) for s in self._slots)
        finally:
            self._mirroring = False

    # -- generating ----------------------------------------------------------------------------

    def submit(self) -> None:
        """Validate the form and start generating; a second click while busy does nothing."""
        if self._future is not None:
            return
        self.error.value = ""
        try:
            batch = self._batch()
            self.session.check_budget(batch)
        except Exception as exc:  # shown in words: the panel never dies
            self._show_error(exc)
            return
        self._begin(batch)
        if not self.lock_seed.value:
            self.seed.value = draw_seed()

    def _batch(self) -> list[PreparedRequest]:
        if not self.prompt.value.strip():
            raise ValidationError("the prompt is empty: describe the image you want")
        inputs = tuple(s.image for s in self._slots)
        return [
            self.session.prepare(
                self.prompt.value,
                seed=self.seed.value + i,
                width=self.width.value,
                height=self.height.value,
                images=inputs,
                safety_tolerance=self.safety.value,
                output_format=self.format.value,
                model=self.model.value,
                tag="panel",
            )
            for i in range(self.count.value)
        ]

    def _begin(self, batch: list[PreparedRequest]) -> None:
        """Start every request on flux_nb's loop; Generate stays disabled until the last one has ended."""
        self._future = Future()
        self.generate.disabled, self.cancel.disabled = True, False
        self._started = time.monotonic()
        self._batch_size, self._batch_done, self._batch_credits = len(batch), 0, 0.0
        self._set_status(f"queued {len(batch)} request(s)…")
        started: list[Future[list[Result]]] = []
        try:
            for index, prepared in enumerate(batch):
                started.append(self.session.start([prepared], self._emitter(index)))
        except Exception as exc:  # the requests already started still run, and are waited for
            self._show_error(exc)
        self._requests = started
        self._remaining = len(started)
        if not started:
            self._finish()
            return
        for future in started:
            future.add_done_callback(self._on_request_done)

    def _emitter(self, index: int) -> Emit:
        """The event callback of request ``index`` (each runs as a batch of one, numbered 0)."""
        return lambda kind, args: self._on_event(kind, (index, *args[1:]))

    def _on_event(self, kind: str, args: tuple[Any, ...]) -> None:
        """A request's event, on flux_nb's loop thread; a failure here is shown, never raised into the request."""
        try:
            if kind == "progress":
                self._on_progress(*args)
            elif kind == "finished":
                self._on_finished(*args)
        except Exception as exc:
            with contextlib.suppress(Exception):
                self._show_error(exc)

    def _on_progress(self, index: int, status: str, fraction: float | None) -> None:
        stage = STATES.get(status, "generating")
        pct = f" {fraction * 100:.0f}%" if isinstance(fraction, float) and 0 < fraction < 1 else ""
        self._set_status(f"{stage}{pct} · {self._elapsed()}{self._tally()}")

    def _on_finished(self, index: int, result: Result) -> None:
        with self._lock:
            self._batch_done += 1
            self._batch_credits += result.cost or 0.0
        self._set_status(f"{'finished' if result.ok else result.status} · {self._elapsed()}{self._tally()}")
        self._refresh_cost()
        self._add_result(result)

    def _tally(self) -> str:
        """The batch so far: requests ended (for more than one) and credits spent."""
        done = f" · {self._batch_done} of {self._batch_size} done" if self._batch_size > 1 else ""
        return f"{done} · {self._batch_credits:.2f} credits so far"

    def _elapsed(self) -> str:
        return f"{time.monotonic() - self._started:.1f} s"

    def _on_request_done(self, future: Future[list[Result]]) -> None:
        """One request has ended (or was cancelled); the last one ends the batch."""
        if not future.cancelled() and future.exception() is not None:
            with contextlib.suppress(Exception):
                self._show_error(future.exception())
        with self._lock:
            self._remaining -= 1
            last = self._remaining == 0
        if last:
            self._finish()

    def _finish(self) -> None:
        """Every request has ended: report, and make the form usable again."""
        batch, requests = self._future, self._requests
        results: list[Result] = []
        try:
            results = [r for f in requests if not f.cancelled() and f.exception() is None for r in f.result()]
            if any(f.cancelled() for f in requests):
                self._set_status(
                    f"cancelled after {self._elapsed()}: submitted requests are kept as pending "
                    "(%flux resume finishes them)"
                )
            elif requests:
                failed = sum(not r.ok for r in results)
                self._set_status(
                    f"done: {len(results) - failed} image(s){f', {failed} failed' if failed else ''} · "
                    f"{self._elapsed()} · {self._batch_credits:.2f} credits{self._not_billed()}"
                )
            self._refresh_cost()
        finally:
            self._requests = []
            self._idle()
            if batch is not None:
                batch.set_result(results)

    def stop(self) -> None:
        """Stop waiting for the current request(s); the records stay pending for resume."""
        for future in list(self._requests):
            future.cancel()

    def _idle(self) -> None:
        self._future = None
        self.cancel.disabled = True
        self._refresh_size()

    # -- gallery -------------------------------------------------------------------------------

    def _add_result(self, result: Result) -> None:
        self._results.insert(0, result)
        if not result.ok:
            self._show_error(result.error or FluxError(f"request ended with status {result.status}"))
            return
        image = w.Image(value=_result_thumb(result), format="jpeg", layout=w.Layout(max_width=f"{GALLERY_THUMB}px"))
        image.add_class("flux-result-image")
        caption = w.HTML(
            f'<div class="flux-caption" style="font-size:11px;line-height:1.3">{html.escape(_caption(result))}</div>',
            layout=w.Layout(width=f"{GALLERY_THUMB}px"),
        )
        remix = w.Button(description="Remix", tooltip="Load these settings into the form", layout=w.Layout(width="48%"))
        remix.add_class("flux-remix")
        reuse = w.Button(description="Edit this", tooltip="Use as a reference image", layout=w.Layout(width="48%"))
        reuse.add_class("flux-reuse")
        remix.on_click(lambda _: self.remix(result))
        reuse.on_click(lambda _: self.add_reference(result))
        card = w.VBox(
            [image, caption, w.HBox([remix, reuse])], layout=w.Layout(width=f"{GALLERY_THUMB + 16}px", margin="4px")
        )
        card.add_class("flux-card")
        self.gallery.children = (card, *self.gallery.children)

    def remix(self, result: Result) -> None:
        """Load a result's settings back into the form: prompt, model, seed, size, safety, format, references."""
        try:
            self._remix(result)
        except Exception as exc:
            self._show_error(exc)

    def _remix(self, result: Result) -> None:
        self.error.value = ""
        self.prompt.value = result.prompt
        if result.model in self.model.options:
            self.model.value = result.model
        self.seed.value = result.seed
        self.lock_seed.value = True
        if result.width and result.height:
            preset = next((k for k, v in SIZE_PRESETS.items() if v == (result.width, result.height)), "custom")
            self.size.value = preset
            self.width.value, self.height.value = result.width, result.height
        record = self.session.record(result.record_id)
        if record.safety_tolerance is not None:
            self.safety.value = record.safety_tolerance
        if record.output_format in self.format.options:
            self.format.value = record.output_format
        self.clear_references()
        missing = []
        for digest in record.input_hashes:
            try:
                self._add_reference(self.session.store.load_input(digest), f"reference {digest[:12]}")
            except KeyError:
                missing.append(digest[:12])
        self._set_status(f"loaded the settings of {result.record_id}")
        if missing:
            self._show_error(
                ValidationError(f"reference image(s) {', '.join(missing)} of {record.record_id} are no longer stored")
            )

    # -- status --------------------------------------------------------------------------------

    def _set_status(self, text: str) -> None:
        self.status.value = f"<span>{html.escape(text)}</span>"

    def _show_error(self, exc: BaseException) -> None:
        text = exc.one_line() if isinstance(exc, FluxError) else f"unexpected error: {exc}"
        self.error.value = f'<div style="color:#b00020">⚠ {html.escape(text)}</div>'

    def _not_billed(self) -> str:
        """NOT_BILLED when the session's server bills nothing (a local server), else ""."""
        try:
            billed = self.session.backend.billed
        except Exception:  # no usable backend yet (e.g. no key): Generate will say why
            return ""
        return "" if billed else NOT_BILLED

    def _refresh_cost(self) -> None:
        spent = self.session.spent()
        budget = self.session.budget
        limit = f" of {budget:.2f} budget" if budget is not None else ""
        note = html.escape(self._not_billed())
        self.cost.value = f'<span style="color:#444">Credits spent: {spent:.2f}{limit}{note}</span>'


def _notebook_namespace() -> Mapping[str, Any] | None:
    """The running IPython shell's user namespace, or None outside IPython."""
    from IPython import get_ipython

    shell = get_ipython()
    return shell.user_ns if shell is not None else None


def _upload_entry(slot: Slot) -> dict[str, Any]:
    """A FileUpload value entry standing for an attached reference (its content is not sent back)."""
    image = slot.image
    kind = f"image/{image.format}" if image.format else "text/uri-list"
    size = len(image.data) if image.data is not None else 0
    return {"name": slot.name, "type": kind, "size": size, "content": memoryview(b""), "last_modified": _EPOCH}


def _caption(result: Result) -> str:
    cost = "cached" if result.cached else f"{result.cost or 0:.2f} credits{'' if result.billed else NOT_BILLED}"
    took = f"{result.elapsed:.1f} s" if result.elapsed is not None else ""
    return f"seed {result.seed} · {result.width}×{result.height} · {cost} · {took}"


def _result_thumb(result: Result) -> bytes:
    return thumbnail(result.image, GALLERY_THUMB * 2, "jpeg")


def _thumb_bytes(image: ImageInput) -> bytes:
    if image.data is None:
        return b""
    with Image.open(io.BytesIO(image.data)) as opened:
        return thumbnail(opened, 192, "jpeg")
