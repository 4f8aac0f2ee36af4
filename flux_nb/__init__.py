"""flux_nb: FLUX.2 image generation from Jupyter.

The public surface: ``Flux``, ``Result``, ``SweepResult``, ``grid``, the errors and
``load_ipython_extension``. Importing it stays light (no pandas, widgets or server):
heavy modules load on first use.

This module is also where the layers are wired together, since it sits above all of them:
results render through the notebook layer, ``Flux.panel()`` builds the widget panel, and the
embedded local server is started through a starter, so no lower layer imports a higher one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flux_nb.core import backend as _backend
from flux_nb.core import results as _results
from flux_nb.errors import (
    AuthError,
    BatchInterrupted,
    BudgetError,
    CreditsError,
    DeliveryError,
    FluxError,
    FluxTimeout,
    HistoryError,
    LargeBatchError,
    ModeratedError,
    RateLimitError,
    RecordTakenError,
    RejectedError,
    SizeWarning,
    TaskFailedError,
    TaskNotFoundError,
    TransportError,
    UnknownOutcomeError,
    ValidationError,
)
from flux_nb.notebook.presenter import NotebookPresenter as _NotebookPresenter

if TYPE_CHECKING:
    from flux_nb.core.results import Result, SweepResult
    from flux_nb.grids import grid
    from flux_nb.session import Flux

__version__ = "0.1.0"

_LAZY = {
    "Flux": "flux_nb.session",
    "Result": "flux_nb.core.results",
    "SweepResult": "flux_nb.core.results",
    "grid": "flux_nb.grids",
}


def __getattr__(name: str) -> Any:
    """Load the heavier public names on first use."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'flux_nb' has no attribute {name!r}")


def _start_embedded_server() -> str:
    """Start this process's local preview server on a free loopback port; its base URL."""
    from flux_nb.server import EmbeddedServer

    return EmbeddedServer().start().url


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext flux_nb``: the magics, the ``flux`` session and ``flux_history``."""
    from flux_nb.notebook.magic import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: object) -> None:
    """``%unload_ext flux_nb`` (``%reload_ext`` too): the magics and their session go, leaving none behind."""
    from flux_nb.notebook.magic import unload_ipython_extension as unload

    unload(ipython)


_results.use_presenter(_NotebookPresenter())
_backend.use_local_starter(_start_embedded_server)

__all__ = [
    "AuthError",
    "BatchInterrupted",
    "BudgetError",
    "CreditsError",
    "DeliveryError",
    "Flux",
    "FluxError",
    "FluxTimeout",
    "HistoryError",
    "LargeBatchError",
    "ModeratedError",
    "RateLimitError",
    "RecordTakenError",
    "RejectedError",
    "Result",
    "SizeWarning",
    "SweepResult",
    "TaskFailedError",
    "TaskNotFoundError",
    "TransportError",
    "UnknownOutcomeError",
    "ValidationError",
    "__version__",
    "grid",
    "load_ipython_extension",
    "unload_ipython_extension",
]
