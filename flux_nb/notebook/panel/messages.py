"""The panel's words: a status line, an error area and the running cost of the session.

Errors read as one line with the notebook's hint (``%flux resume``, ``%config ...``), never a traceback.
"""

from __future__ import annotations

import html
from concurrent.futures import Future
from typing import TYPE_CHECKING

import ipywidgets as w

from flux_nb.errors import FluxError
from flux_nb.notebook.hints import in_notebook_words
from flux_nb.notebook.render import ERROR, MUTED, NOT_BILLED, TEXT, icon

if TYPE_CHECKING:
    from flux_nb.session import Flux


class Messages:
    """The status line, the error area and the cost line of a panel on ``session``."""

    def __init__(self, session: Flux) -> None:
        self.session = session
        self.status = w.HTML(value="Ready.")
        self._said = "Ready."  # the status line's own text, which a note (a rating) never replaces
        self.status.add_class("flux-status")
        self.error = w.HTML()
        self.error.add_class("flux-error")
        self.cost = w.HTML()
        self.refresh_cost()

    def say(self, text: str) -> None:
        """Replace the status line."""
        self._said = text
        self.status.value = f"<span>{html.escape(text)}</span>"

    def note(self, text: str) -> None:
        """Add ``text`` after the status line (a review stored), keeping what the line said (e.g. "done: ...")."""
        self.status.value = f"<span>{html.escape(f'{self._said} · {text}')}</span>"

    def report(self, exc: BaseException) -> None:
        """Show ``exc`` in the error area: a FluxError in the notebook's words, anything else as unexpected."""
        text = in_notebook_words(exc) if isinstance(exc, FluxError) else f"unexpected error: {exc}"
        # The text in the page's text colour (a page stylesheet may set --jp-error-color1 too light to read),
        # marked as an error by its red ring and rule.
        self.error.value = (
            f'<div style="color:{TEXT};border-left:3px solid {ERROR};padding-left:6px">'
            f'<span style="color:{ERROR}">{icon("error")}</span>{html.escape(text)}</div>'
        )

    def clear_error(self) -> None:
        self.error.value = ""

    def not_billed(self) -> str:
        """NOT_BILLED when the session's server bills nothing (a local server), else ""."""
        try:
            billed = self.session.backend.billed
        except FluxError:  # no backend can be chosen yet (e.g. no key): Generate will say why
            return ""
        return "" if billed else NOT_BILLED

    def refresh_cost(self) -> None:
        """Show the credits this session has spent, against its budget if it has one; on a billed endpoint
        the account's balance too, asked for again (in the background) each time."""
        budget = self.session.budget
        limit = f" of {budget:.2f} budget" if budget is not None else ""
        note = html.escape(self.not_billed())
        spent = f"Credits spent: {self.session.spent():.2f}{limit}{note}"
        self.cost.value = f'<span class="flux-credits" style="color:{MUTED}">{spent}</span>'
        if not note and self.billed():
            self.session.fetch_credits().add_done_callback(lambda f: self._show_balance(spent, f))

    def billed(self) -> bool:
        try:
            return self.session.backend.billed
        except FluxError:
            return False

    def _show_balance(self, spent: str, balance: Future[float]) -> None:
        """Add the balance (or that it could not be read) after the spent credits."""
        try:
            told = f" · balance {balance.result():.2f} credits"
        except Exception as exc:  # a gateway without /v1/credits: the panel still works
            told = f" · balance unknown ({exc})" if isinstance(exc, FluxError) else " · balance unknown"
        self.cost.value = f'<span class="flux-credits" style="color:{MUTED}">{spent}{html.escape(told)}</span>'
