"""What a running batch tells its watchers: typed events and the one observer protocol.

Every front end watches batches the same way: the magic's live line, the panel's status and
gallery, the CLI's terminal line. Events carry the request's position in the batch, so a
watcher never has to re-number them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from flux_nb.core.batch import PreparedRequest
    from flux_nb.core.results import Result


@dataclass(frozen=True)
class Progress:
    """Request ``index`` moved on: "Submitted", "Pending", "Downloading", or another API status."""

    index: int
    status: str
    fraction: float | None = None


@dataclass(frozen=True)
class Finished:
    """Request ``index`` ended; ``result`` says how (its ``error`` is set when it failed)."""

    index: int
    result: Result


BatchEvent = Progress | Finished
#: Where a running batch sends its events (called on flux_nb's loop thread).
Emit = Callable[[BatchEvent], None]


class BatchObserver(Protocol):
    """Watches one batch: told when it starts, as requests progress, and as each one ends."""

    def started(self, batch: Sequence[PreparedRequest]) -> None: ...
    def progress(self, event: Progress) -> None: ...
    def finished(self, event: Finished) -> None: ...
    def tick(self) -> None:
        """Called between events (a few times a second) so elapsed times can move."""


def deliver(observer: BatchObserver, event: BatchEvent) -> None:
    """Hand ``event`` to the observer method of its type."""
    if isinstance(event, Finished):
        observer.finished(event)
    else:
        observer.progress(event)


def ignore(event: BatchEvent) -> None:
    """An ``Emit`` for callers that don't watch."""
    return None


__all__ = ["BatchEvent", "BatchObserver", "Emit", "Finished", "Progress", "deliver", "ignore"]
