"""Errors a user of flux_nb can meet.

Every error a user can cause or must react to is a ``FluxError``; a notebook shows
it as one clear line. The tree:

    FluxError
    ├── ValidationError ........ bad input, caught before anything is sent
    │   ├── BudgetError ........ the estimated cost would pass the configured budget
    │   └── RejectedError ...... the API refused the request as invalid (400/422)
    ├── AuthError .............. missing or wrong API key (401/403)
    ├── CreditsError ........... the account is out of credits (402)
    ├── RateLimitError ......... still answered 429 after every retry
    ├── ModeratedError ......... the input or the output was moderated (not charged)
    ├── TaskFailedError ........ the task ended with status Error
    ├── TaskNotFoundError ...... unknown or expired task id
    ├── FluxTimeout ............ a task or a request took longer than allowed
    ├── TransportError ......... network faults or 5xx answers after every retry
    │   └── UnknownOutcomeError  a submit may have reached the API: never resent blindly
    └── DeliveryError .......... the finished image could not be downloaded or decoded
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "BudgetError",
    "CreditsError",
    "DeliveryError",
    "FluxError",
    "FluxTimeout",
    "ModeratedError",
    "RateLimitError",
    "RejectedError",
    "TaskFailedError",
    "TaskNotFoundError",
    "TransportError",
    "UnknownOutcomeError",
    "ValidationError",
]


class FluxError(Exception):
    """Base of every error flux_nb raises on purpose."""

    #: A short hint on what to do about it, shown after the message.
    hint: str = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    @property
    def kind(self) -> str:
        """A stable short name for the error kind, as stored in history."""
        return type(self).__name__

    def one_line(self) -> str:
        """The message and its hint on one line, for notebooks and history."""
        text = str(self)
        return f"{text} ({self.hint})" if self.hint else text


class ValidationError(FluxError, ValueError):
    """Input the API would reject; raised before anything is sent or spent."""


class BudgetError(ValidationError):
    """The estimated cost would pass the configured budget."""

    hint = "raise Flux.budget or make the request smaller"


class RejectedError(ValidationError):
    """The API refused the request as invalid (HTTP 400 or 422); nothing was charged."""

    hint = "fix the field the API names and run the cell again; nothing was charged"


class AuthError(FluxError):
    """The API key is missing or was refused."""

    hint = "set BFL_API_KEY, or run %flux login"


class CreditsError(FluxError):
    """The account has no credits left."""

    hint = "add credits to your BFL account"


class RateLimitError(FluxError):
    """The API kept answering 429 after every retry."""

    hint = "lower Flux.max_concurrency or wait a moment"


class ModeratedError(FluxError):
    """The request or its output was moderated; moderated tasks are not charged."""

    hint = "rephrase the prompt, change the reference images, or raise safety_tolerance"

    def __init__(self, message: str, *, status: str, reasons: list[str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reasons = reasons or []


class TaskFailedError(FluxError):
    """The task ended with status Error."""

    hint = "run the cell again; if it keeps failing, change the prompt, size or reference images"


class TaskNotFoundError(FluxError):
    """The API does not know the task id (never existed, or expired)."""

    hint = "it expired or was never created: run the cell again to send a new task"


class FluxTimeout(FluxError):
    """A task or a request took longer than allowed."""

    hint = "the record is kept as pending: %flux resume (or flux.resume()) finishes it"


class TransportError(FluxError):
    """The API could not be reached, or kept failing, after every retry."""

    hint = "check the network and Flux.endpoint, then run the cell again"


class UnknownOutcomeError(TransportError):
    """A submit was sent but its answer was lost: it may have created a paid task."""

    hint = "not resent, to avoid paying twice; pass fresh=True (or --fresh) to try again"


class DeliveryError(FluxError):
    """The finished image could not be downloaded or decoded."""

    hint = "run the cell again: the same seed gives the same image"

    def __init__(self, message: str, *, hint: str | None = None, expired: bool = False) -> None:
        super().__init__(message, hint=hint)
        self.expired = expired
