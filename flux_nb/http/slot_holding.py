"""How long a shared slot stays taken once this process stops following a task that may still run at the API.

A task counts against the key's active tasks until it ends at the API, whether or not anyone follows it. A
slot is given back at once when no task runs for it (it ended, or the submit never created one); after a lost
submit answer, a timeout or a cancelled wait it is held for the task's expected remaining time instead.
"""

from __future__ import annotations

import asyncio
import time

from flux_nb.errors import ModeratedError, TaskFailedError, TaskNotFoundError, UnknownOutcomeError
from flux_nb.http.polling import DurationModel
from flux_nb.http.task_types import Task

# The hold: the task's expected remaining time, at least MIN_TASK_HOLD, UNKNOWN_TASK_HOLD when nothing is known.
MIN_TASK_HOLD = 1.0
UNKNOWN_TASK_HOLD = 60.0


def duration_key(task: Task) -> str:
    """The key tasks' durations are learned under: model and output megapixels."""
    size = f"{round(task.output_mp or 1.0, 1)}"
    return f"{task.model}@{size}"


def may_run(exc: BaseException, sent: bool, task: Task | None) -> bool:
    """True when a task may still run at the API after ``exc``: a submit whose answer was lost or cut off,
    or a task this process stopped following before it ended (its own final outcomes end it)."""
    if task is None:
        return sent and isinstance(exc, UnknownOutcomeError | asyncio.CancelledError)
    return not isinstance(exc, TaskFailedError | ModeratedError | TaskNotFoundError)


def hold_seconds(durations: DurationModel, task: Task | None, model: str, most: float) -> float:
    """Seconds a task that may be running at the API is likely to keep its slot there.

    At most ``most`` (the task timeout) or ``UNKNOWN_TASK_HOLD``, whichever is longer: a task that outlived a short
    timeout is still running.
    """
    expected = durations.expected(duration_key(task) if task else f"{model}@1.0")
    expected = UNKNOWN_TASK_HOLD if expected is None else expected
    if task is not None:
        expected -= time.time() - task.submitted_at
    return min(max(expected, MIN_TASK_HOLD), max(most, UNKNOWN_TASK_HOLD))


__all__ = ["MIN_TASK_HOLD", "UNKNOWN_TASK_HOLD", "duration_key", "hold_seconds", "may_run"]
