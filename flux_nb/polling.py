"""When to poll a task next: densely around its expected finish, sparsely otherwise.

Pure and clock-free: callers pass elapsed seconds and the API's progress; this module
learns typical durations and answers "sleep this long". A finished task is noticed
soon after it is ready without sending a poll every few milliseconds.
"""

from __future__ import annotations

import random
import statistics
from collections import defaultdict, deque
from dataclasses import dataclass, field

# With nothing known, BFL's integration notes suggest starting near 0.5 s and backing off to 10 s.
FIRST_POLL_UNKNOWN = 0.25
BACKOFF_FACTOR = 1.5
MAX_INTERVAL = 10.0
MIN_INTERVAL = 0.01
# Near the expected finish, polls are this fraction of the expected duration apart.
DENSE_FRACTION = 0.05
# Progress readings this early are too noisy to extrapolate from.
MIN_ELAPSED_FOR_PROGRESS = 0.05


class DurationModel:
    """Recent task durations per key (model and size), for predicting the next one."""

    def __init__(self, window: int = 32) -> None:
        self._recent: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=window))

    def observe(self, key: str, seconds: float) -> None:
        if seconds >= 0:
            self._recent[key].append(seconds)

    def expected(self, key: str) -> float | None:
        """The median of recent durations for ``key``, or None when nothing is known."""
        recent = self._recent.get(key)
        return statistics.median(recent) if recent else None


@dataclass
class PollPlan:
    """The poll schedule of one task.

    >>> plan = PollPlan(expected=1.0)
    >>> round(plan.next_delay(elapsed=0.0, progress=None), 2)
    1.0
    """

    expected: float | None = None
    jitter: float = 0.1
    polls: int = 0
    _overdue_polls: int = field(default=0, repr=False)
    _last_pending: float = field(default=0.0, repr=False)

    def next_delay(self, elapsed: float, progress: float | None) -> float:
        """Seconds to sleep before the next poll, given the latest answer."""
        self.polls += 1
        self._last_pending = elapsed
        remaining = self._remaining(elapsed, progress)
        if remaining is not None and remaining > MIN_INTERVAL:
            self._overdue_polls = 0
            return min(remaining, MAX_INTERVAL)
        if self.expected is not None or remaining is not None:
            scale = self.expected if self.expected is not None else max(elapsed, MIN_INTERVAL)
            delay = max(MIN_INTERVAL, DENSE_FRACTION * scale) * BACKOFF_FACTOR**self._overdue_polls
            self._overdue_polls += 1
        else:
            delay = FIRST_POLL_UNKNOWN * BACKOFF_FACTOR ** max(0, self.polls - 1)
        return self._jittered(min(delay, MAX_INTERVAL))

    def first_delay(self) -> float:
        """Seconds to wait after submitting, before the first poll."""
        if self.expected is None:
            return FIRST_POLL_UNKNOWN
        return max(0.0, self.expected)

    def finished_estimate(self, elapsed: float) -> float:
        """The best estimate of when the task really finished: between the last two polls."""
        return (self._last_pending + elapsed) / 2 if self.polls else elapsed

    def _remaining(self, elapsed: float, progress: float | None) -> float | None:
        if progress is not None and 0.0 < progress < 1.0 and elapsed >= MIN_ELAPSED_FOR_PROGRESS:
            return elapsed * (1.0 - progress) / progress
        if self.expected is not None:
            return self.expected - elapsed
        return None

    def _jittered(self, delay: float) -> float:
        if delay < 1.0:
            return delay
        return delay * random.uniform(1.0 - self.jitter, 1.0 + self.jitter)
