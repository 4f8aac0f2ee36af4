"""flux_nb: FLUX.2 image generation from Jupyter."""

from flux_nb.core.results import Result, SweepResult
from flux_nb.errors import (
    AuthError,
    BudgetError,
    CreditsError,
    DeliveryError,
    FluxError,
    FluxTimeout,
    ModeratedError,
    RateLimitError,
    RejectedError,
    TaskFailedError,
    TaskNotFoundError,
    TransportError,
    UnknownOutcomeError,
    ValidationError,
)
from flux_nb.notebook.grid import grid
from flux_nb.session import Flux

__version__ = "0.1.0"


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext flux_nb``: the magics, the ``flux`` session and ``flux_history``."""
    from flux_nb.notebook.magic import load_ipython_extension as load

    load(ipython)


__all__ = [
    "AuthError",
    "BudgetError",
    "CreditsError",
    "DeliveryError",
    "Flux",
    "FluxError",
    "FluxTimeout",
    "ModeratedError",
    "RateLimitError",
    "RejectedError",
    "Result",
    "SweepResult",
    "TaskFailedError",
    "TaskNotFoundError",
    "TransportError",
    "UnknownOutcomeError",
    "ValidationError",
    "__version__",
    "grid",
    "load_ipython_extension",
]
