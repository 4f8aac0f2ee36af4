"""Errors a user of flux_nb can meet.

Every error a user can cause or must react to is a ``FluxError``; a notebook shows
it as one clear line. The tree:

    FluxError
    ├── ValidationError ........ bad input, caught before anything is sent
    │   ├── BudgetError ........ the estimated cost would pass the configured budget
    │   ├── LargeBatchError .... the batch's estimate passes the confirmation threshold: not sent unconfirmed
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
    ├── DeliveryError .......... the finished image could not be downloaded or decoded
    ├── RecordTakenError ....... another request took the record up first: it is not sent twice
    ├── HistoryError ........... the history folder cannot be read or written as asked (a full disk, a damaged file)
    └── BatchInterrupted ....... a batch was interrupted (also a KeyboardInterrupt): what was sent, what was not
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "AuthError",
    "BatchInterrupted",
    "BudgetError",
    "CreditsError",
    "DeliveryError",
    "FluxError",
    "FluxTimeout",
    "HistoryError",
    "LargeBatchError",
    "ModeratedError",
    "RateLimitError",
    "RecordTakenError",
    "RejectedError",
    "SizeWarning",
    "TaskFailedError",
    "TaskNotFoundError",
    "TransportError",
    "UnknownOutcomeError",
    "ValidationError",
]


class FluxError(Exception):
    """Base of every error flux_nb raises on purpose.

    An error that comes from an HTTP answer carries its ``status`` (the HTTP status code) and
    ``answer`` (a short, key-free excerpt of the body: parsed JSON or text); others have None.
    """

    #: A short hint on what to do about it, shown after the message; front ends set their own.
    hint: str = ""

    def __init__(self, message: str, *, hint: str | None = None, status: int | None = None, answer: Any = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint
        self.status = status
        self.answer = answer

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

    hint = "raise the budget or make the request smaller"


class LargeBatchError(ValidationError):
    """The batch's estimate passes the confirmation threshold: nothing was sent (``count``, ``estimate``)."""

    hint = "confirm the batch to send it, or raise the confirmation threshold"

    def __init__(self, message: str, *, count: int = 0, estimate: float = 0.0, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.count = count
        self.estimate = estimate


class RejectedError(ValidationError):
    """The API refused the request as invalid (HTTP 400 or 422); nothing was charged."""

    hint = "fix the field the API names and send it again; nothing was charged"


class AuthError(FluxError):
    """The API key is missing or was refused."""

    hint = "check the API key (BFL_API_KEY)"


class CreditsError(FluxError):
    """The account has no credits left."""

    hint = "add credits to the account"


class RateLimitError(FluxError):
    """The API kept answering 429 after every retry."""

    hint = "send fewer requests at once, or wait a moment"


class ModeratedError(FluxError):
    """The request or its output was moderated; moderated tasks are not charged.

    ``task_status`` is the API's status ("Request Moderated" or "Content Moderated").
    """

    hint = "rephrase the prompt, change the reference images, or raise safety_tolerance"

    def __init__(
        self,
        message: str,
        *,
        task_status: str = "",
        reasons: list[str] | None = None,
        status: int | None = None,
        answer: Any = None,
    ) -> None:
        super().__init__(message, status=status, answer=answer)
        self.task_status = task_status
        self.reasons = reasons or []


class TaskFailedError(FluxError):
    """The task ended with status Error."""

    hint = "try again; if it keeps failing, change the prompt, size or reference images"


class TaskNotFoundError(FluxError):
    """The API does not know the task id (never existed, or expired)."""

    hint = (
        "the API no longer knows the task (it may have run, and been charged, on another cluster): check BFL's "
        "dashboard (usage) or the balance (flux.credits()) before sending it again, which may be charged twice"
    )


class FluxTimeout(FluxError):
    """A task or a request took longer than allowed."""

    hint = "the task may still finish: ask for it again later"


class TransportError(FluxError):
    """The API could not be reached, or kept failing, after every retry."""

    hint = "check the network and the endpoint, then try again"


class UnknownOutcomeError(TransportError):
    """A submit was sent but its answer was lost: it may have created a paid task."""

    hint = "not resent, to avoid paying twice; send it again only on purpose"


class DeliveryError(FluxError):
    """The finished image could not be downloaded or decoded."""

    hint = "try again: the same seed gives the same image"

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        expired: bool = False,
        status: int | None = None,
        answer: Any = None,
    ) -> None:
        super().__init__(message, hint=hint, status=status, answer=answer)
        self.expired = expired


class RecordTakenError(FluxError):
    """Another request (of this process or another) took the record up first: this one did not send it.

    ``record_status`` is the status the record had then ("sending", "submitted", "ready", ...).
    """

    hint = "nothing was sent again; the history shows what the other request made of it"

    def __init__(self, message: str, *, record_status: str) -> None:
        super().__init__(message)
        self.record_status = record_status


class HistoryError(FluxError):
    """The history folder cannot be read or written as asked; the message names the file and the fix.

    ``path`` is that file or folder; ``retryable`` says whether the same call can simply be made again once
    the cause is gone (a full disk: free space, then resume).
    """

    def __init__(self, message: str, *, path: Path, retryable: bool = False, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.path = path
        self.retryable = retryable


class BatchInterrupted(FluxError, KeyboardInterrupt):
    """A batch was interrupted (Ctrl-C, a kernel interrupt): counts of what was sent and what was not.

    It is a ``KeyboardInterrupt`` too, so a script's loop still stops. Requests never sent stay ``pending``
    for ``resume(unsent=True)``; those sent stay ``submitted`` for ``resume()``.
    """

    hint = "resume() finishes the sent ones; resume(unsent=True) also sends the rest"

    def __init__(self, message: str, *, finished: int = 0, running: int = 0, unsent: int = 0, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.finished = finished
        self.running = running
        self.unsent = unsent


class SizeWarning(UserWarning):
    """A size that the API renders otherwise (sides in multiples of 16): it says which size comes back."""
