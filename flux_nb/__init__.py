"""flux_nb: FLUX.2 image generation from Jupyter."""

from flux_nb.errors import (
    AuthError,
    BudgetError,
    CreditsError,
    DeliveryError,
    FluxError,
    FluxTimeout,
    ModeratedError,
    RateLimitError,
    TaskFailedError,
    TaskNotFoundError,
    TransportError,
    UnknownOutcomeError,
    ValidationError,
)

__version__ = "0.1.0"

__all__ = [
    "AuthError",
    "BudgetError",
    "CreditsError",
    "DeliveryError",
    "FluxError",
    "FluxTimeout",
    "ModeratedError",
    "RateLimitError",
    "TaskFailedError",
    "TaskNotFoundError",
    "TransportError",
    "UnknownOutcomeError",
    "ValidationError",
    "__version__",
]
