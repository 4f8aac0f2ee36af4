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

# With nothing known: one early poll (its progress reading sets the schedule), then back off to 10 s.
FIRST_POLL_UNKNOWN = 0.1
BACKOFF_FACTOR = 1.5
MAX_INTERVAL = 10.0
MIN_INTERVAL = 0.002
# Near the expected finish, polls are this fraction of the expected duration apart.
DENSE_FRACTION = 0.03
# Aim at this fraction of the estimated time left (see _aim).
AIM_FRACTION = 0.9
# Progress readings this early are too noisy to extrapolate from.
MIN_ELAPSED_FOR_PROGRESS = 0.05
# Durations needed before the shortest of them says when a task can finish at the earliest.
MIN_SAMPLES_FOR_EARLIEST = 4


def _aim(remaining: float, dense: float) -> float:
    """Sleep until a little before the estimated finish: estimates err both ways, and arriving
    one dense step early costs a cheap poll while arriving late costs the user time."""
    return max(dense, min(remaining * AIM_FRACTION, remaining - dense))


class DurationModel:
    """Recent task durations per key (model and size), for predicting the next one."""

    def __init__(self, window: int = 32) -> None:
        self._recent: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=window))

    def observe(self, key: str, seconds: float, *, upper_bound: bool = False) -> None:
        """Record a duration; an upper bound also drops the recent durations above it."""
        if seconds < 0:
            return
        recent = self._recent[key]
        if upper_bound and any(d > seconds for d in recent):
            kept = [d for d in recent if d <= seconds]
            recent.clear()
            recent.extend(kept)
        recent.append(seconds)

    def expected(self, key: str) -> float | None:
        """The median of recent durations for ``key``, or None when nothing is known."""
        recent = self._recent.get(key)
        return statistics.median(recent) if recent else None

    def earliest(self, key: str) -> float | None:
        """The shortest recent duration for ``key``, once there are enough of them to trust it."""
        recent = self._recent.get(key)
        return min(recent) if recent and len(recent) >= MIN_SAMPLES_FOR_EARLIEST else None


@dataclass
class PollPlan:
    """The poll schedule of one task.

    >>> plan = PollPlan(expected=1.0)
    >>> round(plan.next_delay(elapsed=0.0, progress=None), 2)
    1.0
    """

    expected: float | None = None
    #: The shortest recent duration (``DurationModel.earliest``): no task of late finished before it.
    earliest: float | None = None
    jitter: float = 0.1
    polls: int = 0
    _overdue_polls: int = field(default=0, repr=False)
    _last_pending: float = field(default=0.0, repr=False)
    _last_progress: tuple[float, float] | None = field(default=None, repr=False)

    def next_delay(self, elapsed: float, progress: float | None) -> float:
        """Seconds to sleep before the next poll, given the latest answer."""
        self.polls += 1
        self._last_pending = elapsed
        remaining = self._remaining(elapsed, progress)
        dense = self._dense(elapsed)
        if remaining is not None and remaining > dense:
            self._overdue_polls = 0
            return min(_aim(remaining, dense), MAX_INTERVAL)
        if self.expected is not None or remaining is not None:
            delay = dense * BACKOFF_FACTOR**self._overdue_polls
            self._overdue_polls += 1
        else:
            delay = FIRST_POLL_UNKNOWN * BACKOFF_FACTOR ** max(0, self.polls - 1)
        return self._jittered(min(delay, MAX_INTERVAL))

    def first_delay(self) -> float:
        """Seconds to wait after submitting, before the first poll.

        Where recent durations were close together, the first poll goes just before the earliest of them
        instead of well ahead of the median: a poll that could only answer "pending" is not sent.
        """
        if self.expected is None:
            return FIRST_POLL_UNKNOWN
        dense = self._dense(self.expected)
        aim = _aim(self.expected, dense)
        if self.earliest is not None:
            aim = min(max(aim, self.earliest - dense / 2), self.expected)
        return aim

    def _dense(self, elapsed: float) -> float:
        """The gap between polls near the expected finish."""
        scale = self.expected if self.expected is not None else max(elapsed, MIN_INTERVAL)
        return max(MIN_INTERVAL, DENSE_FRACTION * scale)

    @property
    def bound_only(self) -> bool:
        """True when the task was Ready at the first poll: its duration is only known as "at most"."""
        return self.polls == 0

    def finished_estimate(self, elapsed: float) -> float:
        """The best estimate of when the task really finished: between the last two polls.

        Ready at the very first poll only says "at most ``elapsed``": halving it lets the
        learned duration shrink towards the truth instead of locking onto our own first guess.
        """
        return (self._last_pending + elapsed) / 2 if self.polls else elapsed / 2

    def _remaining(self, elapsed: float, progress: float | None) -> float | None:
        if progress is not None and 0.0 < progress < 1.0:
            previous, self._last_progress = self._last_progress, (elapsed, progress)
            if previous is not None and progress > previous[1] and elapsed > previous[0]:
                # Two readings give the rate whatever the offset between our clock and the server's.
                return (1.0 - progress) * (elapsed - previous[0]) / (progress - previous[1])
            if elapsed >= MIN_ELAPSED_FOR_PROGRESS:
                return elapsed * (1.0 - progress) / progress
        if self.expected is not None:
            return self.expected - elapsed
        return None

    def _jittered(self, delay: float) -> float:
        if delay < 1.0:
            return delay
        return delay * random.uniform(1.0 - self.jitter, 1.0 + self.jitter)
