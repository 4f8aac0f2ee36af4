"""What to do next, in a notebook's words: the ``%flux`` hints the lower layers leave out.

Errors from the client and the history speak neutrally (a script or the CLI reads them too);
the notebook front end words the next step as a magic or a setting.
"""

from __future__ import annotations

from flux_nb.errors import (
    AuthError,
    BatchInterrupted,
    BudgetError,
    DeliveryError,
    FluxError,
    FluxTimeout,
    LargeBatchError,
    RateLimitError,
    RejectedError,
    TaskFailedError,
    TaskNotFoundError,
    TransportError,
    UnknownOutcomeError,
)

# Most specific first: the first class an error is an instance of gives its hint.
HINTS: tuple[tuple[type[FluxError], str], ...] = (
    (UnknownOutcomeError, "not resent, to avoid paying twice; pass --fresh (or fresh=True) to try again"),
    (BudgetError, "raise Flux.budget (%config Flux.budget = ...) or make the request smaller"),
    (LargeBatchError, "add --yes to the %%flux line (confirm=True in Python, or the panel's confirm button)"),
    (BatchInterrupted, "%flux resume --unsent finishes it: the sent ones, then the rest"),
    (RejectedError, "fix the field the API names and run the cell again; nothing was charged"),
    (AuthError, "set BFL_API_KEY, or run %flux login"),
    (RateLimitError, "lower Flux.max_concurrency or wait a moment"),
    (FluxTimeout, "the record is kept: %flux resume (or flux.resume()) finishes it"),
    (TransportError, "check the network and Flux.endpoint, then run the cell again"),
    (TaskFailedError, "run the cell again; if it keeps failing, change the prompt, size or reference images"),
    (
        TaskNotFoundError,
        "it may have run (and been charged) on another cluster: check BFL's dashboard (usage) or %flux credits "
        "before --fresh sends it again, which may be charged twice",
    ),
    (DeliveryError, "run the cell again: the same seed gives the same image"),
)
#: The hint for a request the API accepted but that did not finish here.
RESUME = "the task was accepted and is kept as submitted: %flux resume (or flux.resume()) finishes it"


def notebook_hint(error: FluxError) -> str:
    """The hint to show under ``error`` in a notebook."""
    for kind, hint in HINTS:
        if isinstance(error, kind):
            return hint
    return error.hint


def in_notebook_words(error: FluxError | str) -> str:
    """``error`` as one line, with its notebook hint."""
    if not isinstance(error, FluxError):
        return str(error)
    hint = RESUME if "kept as submitted" in error.hint else notebook_hint(error)
    return f"{error} ({hint})" if hint else str(error)
