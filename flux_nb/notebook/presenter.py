"""The notebook layer's presenter: how results render, grids draw and the panel opens.

Installed into ``flux_nb.core.results`` by ``flux_nb/__init__``. Light to import: the modules
that do the work (PIL, pandas, ipywidgets) load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flux_nb.core.results import Result, SweepResult


class NotebookPresenter:
    """Renders results and sweeps as HTML, draws grids, builds the widget panel."""

    def result_bundle(self, result: Result) -> dict[str, Any]:
        from flux_nb.notebook.render import result_bundle

        return result_bundle(result)

    def sweep_bundle(self, sweep: SweepResult) -> dict[str, Any]:
        from flux_nb.notebook.render import sweep_bundle

        return sweep_bundle(sweep)

    def grid(self, results: list[Result], **options: Any) -> Any:
        from flux_nb.grids import grid

        return grid(results, **options)

    def panel(self, session: Any) -> Any:
        from flux_nb.notebook.panel import Panel

        return Panel(session)

    def compare(self, session: Any, items: tuple[Any, ...]) -> Any:
        from flux_nb.notebook.compare import compare

        return compare(*items, store=session.store)

    def browse(self, session: Any, filters: dict[str, Any]) -> Any:
        from flux_nb.notebook.browse import Browser

        return Browser(session, **filters)
