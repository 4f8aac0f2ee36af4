"""The ipywidgets panel: FLUX.2 for people who would rather click than type.

It runs on the same session, history and cache as the magic. A click of Generate builds one
batch through ``Flux.batch`` and runs it with ``Flux.start``, watched by one ``PanelObserver``;
the kernel stays responsive meanwhile. Its parts, one job each:

- ``form``: the request's fields (prompt, model, seed, size, safety, format, count);
- ``references``: reference image slots (uploads, a notebook variable, a result);
- ``gallery``: a card per image made, with Remix, Edit this, stars and a favourite toggle, and a
  "Whole history" toggle that opens ``flux.browse()`` below it;
- ``messages``: the status line, the error area, the running cost;
- ``observer``: how a running batch reads on the status line.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import ipywidgets as w

from flux_nb.core.results import Result
from flux_nb.errors import FluxError, LargeBatchError
from flux_nb.notebook.panel.form import SIZE_PRESETS, Form
from flux_nb.notebook.panel.gallery import CARD_THUMB, Gallery, WholeHistory
from flux_nb.notebook.panel.messages import Messages
from flux_nb.notebook.panel.observer import PanelObserver
from flux_nb.notebook.panel.reference_slots import MAX_SLOTS, References

if TYPE_CHECKING:
    from flux_nb.core.batch import PreparedRequest
    from flux_nb.session import Flux


class Panel(w.VBox):
    """A generation panel bound to a ``Flux`` session; display it in a cell.

    ``namespace`` is where the "variable name" field looks names up; by default the notebook's
    (IPython's ``user_ns``). The form's widgets are the panel's attributes (``panel.prompt``,
    ``panel.seed``, ...), so a notebook can fill it in too.

    >>> flux.panel()  # doctest: +SKIP
    """

    def __init__(self, session: Flux, namespace: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        self.session = session
        #: Every result this panel received, newest first (failures too).
        self.results: list[Result] = []
        #: Resolves, with the batch's results, once the panel is idle again (None while idle).
        self._future: Future[list[Result]] | None = None
        self._running: Future[list[Result]] | None = None  # the batch's own future, from Flux.start
        #: The observer of the batch in flight, or of the last one.
        self.observer: PanelObserver | None = None
        self.generate = w.Button(description="Generate", button_style="primary", icon="magic")
        self.generate.add_class("flux-generate")
        self.cancel = w.Button(description="Cancel", disabled=True, icon="stop")
        #: Shown when a batch's estimate passes Flux.confirm_over: sends the same form anyway.
        self.confirm = w.Button(description="Send anyway", button_style="warning", layout=w.Layout(display="none"))
        self.confirm.add_class("flux-confirm")
        self.messages = Messages(session)
        self.form = Form(session, on_change=self._refresh_generate)
        self.references = References(namespace, report=self.messages.report, clear=self.messages.clear_error)
        self.gallery = Gallery(
            on_remix=self.remix,
            on_reuse=self.add_reference,
            on_rate=self.rate,
            on_favourite=self.favourite,
            on_error=self.messages.report,
        )
        self.whole_history = WholeHistory(session.browse, self.messages.report)
        self._expose_widgets()
        self.generate.on_click(lambda _: self.submit())
        self.cancel.on_click(lambda _: self.stop())
        self.confirm.on_click(lambda _: self.submit(confirm=True))
        super().__init__(children=self._layout(), **kwargs)
        self.add_class("flux-panel")
        self._refresh_generate()

    def _expose_widgets(self) -> None:
        """The parts' widgets as the panel's own attributes."""
        form, refs, messages = self.form, self.references, self.messages
        self.prompt, self.model, self.seed, self.random_seed = form.prompt, form.model, form.seed, form.random_seed
        self.lock_seed, self.size, self.width, self.height = form.lock_seed, form.size, form.width, form.height
        self.size_note, self.safety, self.format, self.count = form.size_note, form.safety, form.format, form.count
        self.upload, self.variable, self.add_variable = refs.upload, refs.variable, refs.add_variable
        self.slots_box = refs.slots_box
        self.status, self.error, self.cost = messages.status, messages.error, messages.cost

    def _layout(self) -> list[w.Widget]:
        return [
            self.prompt,
            w.HBox([self.model, self.seed, self.random_seed, self.lock_seed]),
            w.HBox([self.size, self.width, self.height, self.size_note]),
            w.HBox([self.safety, self.format]),
            w.HBox([self.upload, self.variable, self.add_variable, self.count]),
            self.slots_box,
            w.HBox([self.generate, self.cancel, self.confirm, self.status]),
            self.error,
            self.cost,
            self.gallery,
            self.whole_history,
        ]

    # -- references ----------------------------------------------------------------------------

    def add_reference(self, image: Any, name: str = "reference") -> None:
        """Add a reference image (a path, URL, bytes, PIL image, array or Result) to the next request.

        ``name`` is how errors and the slot refer to it; a refused image is explained in the error area.
        """
        self.references.add(image, name)

    def add_from_variable(self, name: str | None = None) -> None:
        """Add the image held by a notebook variable (default: the name typed in the panel's field)."""
        self.references.add_from_variable(name)

    def clear_references(self) -> None:
        """Empty every reference slot."""
        self.references.clear()

    # -- generating ----------------------------------------------------------------------------

    def submit(self, confirm: bool = False) -> None:
        """Check the form and start generating; a second click while busy does nothing.

        ``confirm`` sends a batch whose estimate passes ``Flux.confirm_over`` (the "Send anyway" button).
        """
        if self._future is not None:
            return
        self.confirm.layout.display = "none"
        self.messages.clear_error()
        try:
            batch = self._batch()
        except Exception as exc:  # shown in words: the panel never dies
            self.messages.report(exc)
            return
        self._start(batch, confirm)

    def _batch(self) -> list[PreparedRequest]:
        prompt, fields = self.form.request()
        return self.session.batch(prompt, images=self.references.images, tag="panel", **fields)

    def _start(self, batch: list[PreparedRequest], confirm: bool = False) -> None:
        """Run ``batch`` on flux_nb's loop; Generate stays disabled until its future resolves."""
        self._future = Future()
        self.cancel.disabled = False
        self._refresh_generate()
        self.observer = PanelObserver(self.messages, self._show_result)
        try:
            self._running = self.session.start(batch, self.observer, confirm=confirm)  # checks, then sends
        except LargeBatchError as exc:
            self.messages.report(exc)
            self._idle([])
            self.confirm.layout.display = ""  # the count and estimate are said; one click sends it
            return
        except Exception as exc:
            self.messages.report(exc)
            self._idle([])
            return
        self._running.add_done_callback(self._ended)
        self.form.next_seed()

    def _show_result(self, result: Result) -> None:
        """A request ended (on flux_nb's loop thread): its card, or why it has none."""
        self.results.insert(0, result)
        if result.ok:
            self.gallery.add(result)
        else:
            self.messages.report(result.error or FluxError(f"request ended with status {result.status}"))

    def _ended(self, batch: Future[list[Result]]) -> None:
        """The batch's future resolved (or was cancelled): say how, and make the form usable again."""
        results: list[Result] = []
        try:
            if self.observer is not None:
                results = self.observer.ended(batch)
            self.messages.refresh_cost()
        except Exception as exc:
            with contextlib.suppress(Exception):
                self.messages.report(exc)
        finally:
            self._idle(results)

    def stop(self) -> None:
        """Stop waiting for the batch in flight; its submitted records stay pending, for resume."""
        if self._running is not None:
            self._running.cancel()

    def _idle(self, results: list[Result]) -> None:
        future, self._future, self._running = self._future, None, None
        self.cancel.disabled = True
        self._refresh_generate()
        if future is not None:
            future.set_result(results)

    def _refresh_generate(self) -> None:
        """Generate is usable when the form's size is valid and no batch is in flight."""
        self.generate.disabled = self._future is not None or not self.form.size_ok

    # -- review --------------------------------------------------------------------------------

    def rate(self, result: Result, stars: int) -> None:
        """Rate a result 1-5 stars in the session's history (its card's stars follow)."""
        self.messages.clear_error()
        self.session.rate(result, stars)
        self.messages.note(f"rated {result.record_id} {stars} of 5")

    def favourite(self, result: Result, on: bool = True) -> None:
        """Mark a result a favourite (or not) in the session's history."""
        self.messages.clear_error()
        self.session.favourite(result, on=on)
        self.messages.note(f"{'marked' if on else 'unmarked'} {result.record_id} as a favourite")

    # -- remix ---------------------------------------------------------------------------------

    def remix(self, result: Result) -> None:
        """Load a result's settings back into the form: prompt, model, seed, size, safety, format, references."""
        try:
            self._remix(result)
        except Exception as exc:
            self.messages.report(exc)

    def _remix(self, result: Result) -> None:
        self.messages.clear_error()
        record = self.session.record(result.record_id)
        self.form.load(result, record)
        self.references.clear()
        self.messages.say(f"loaded the settings of {result.record_id}")
        images = self.session.references_of(record)  # names a reference image no longer stored
        for digest, image in zip(record.input_hashes, images, strict=True):
            self.references.add(image, f"reference {digest[:12]}")


__all__ = ["CARD_THUMB", "MAX_SLOTS", "SIZE_PRESETS", "Panel"]
