"""``flux_history``: the history as a real DataFrame in the notebook, read on first use, refreshed cheaply."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from flux_nb.errors import FluxError
from flux_nb.history.schema import DATABASE
from flux_nb.notebook.render import show_error

if TYPE_CHECKING:
    from flux_nb.history.view import HistoryView
    from flux_nb.session import Flux

HISTORY_VARIABLE = "flux_history"


class HistoryVariable:
    """Keeps ``flux_history`` a real DataFrame of the history, read on first use and refreshed incrementally.

    ``%load_ext`` reads the history only when it is small (``EAGER_ROWS``); otherwise the frame is
    read before the first cell that names ``flux_history`` runs. After every request only the rows
    written since the last read are read (``HistoryView.refresh``).
    """

    EAGER_ROWS = 10_000

    def __init__(self, shell: Any, session: Flux) -> None:
        self.shell = shell
        self.session = session
        self.view: HistoryView | None = None
        #: True once the history was found too large to read before it is asked for.
        self.deferred = False

    def load(self) -> None:
        """Publish the frame now if the history is small, else on first use (a new folder is not made here)."""
        if not (Path(self.session.history_dir) / DATABASE).exists():
            return  # nothing recorded yet: the first request or the first mention makes it
        self.deferred = self.session.store.count() > self.EAGER_ROWS
        if not self.deferred:
            self.publish()

    def publish(self) -> None:
        """Read the whole history afresh and put it in the namespace."""
        self.view = self.session.store.view()
        self._set()

    def _current(self) -> bool:
        return self.view is not None and self.view.store is self.session.store

    def before_cell(self, info: Any) -> None:
        """Before a cell runs: read the history if the cell names ``flux_history`` and it is not read yet."""
        if not self._current() and HISTORY_VARIABLE in (getattr(info, "raw_cell", "") or ""):
            try:
                self.publish()
            except FluxError as exc:  # the cell still runs; the reason is said once, not as a traceback
                show_error(exc)

    def after_request(self) -> None:
        """After a request or a batch: read what changed (or, for a new history folder, start again)."""
        if self._current():
            assert self.view is not None
            self.view.refresh()
            self._set()
            return
        if self.view is not None:  # the history folder changed: the old frame is not this history's
            self.view = None
            self.deferred = False
            self.shell.user_ns.pop(HISTORY_VARIABLE, None)
        if not self.deferred:
            self.load()

    def _set(self) -> None:
        import flux_nb.accessor  # noqa: F401  (registers frame.flux)

        assert self.view is not None
        frame = self.view.frame.copy(deep=False)  # the user's changes to it never reach the view
        frame.attrs["history_dir"] = str(self.session.history_dir)
        self.shell.user_ns[HISTORY_VARIABLE] = frame
