"""The poll schedule: dense near the expected finish, backing off when nothing is known."""

from __future__ import annotations

import itertools

import pytest

from flux_nb.http.polling import DENSE_FRACTION, FIRST_POLL_UNKNOWN, MAX_INTERVAL, DurationModel, PollPlan


def simulate(plan: PollPlan, duration: float, progress_reported: bool) -> tuple[float, int]:
    """Run a plan against a task that is ready at ``duration``; return (notice delay, polls)."""
    now = plan.first_delay()
    polls = 1
    while now < duration:
        progress = now / duration if progress_reported else None
        now += plan.next_delay(now, progress)
        polls += 1
    return now - duration, polls


def test_duration_model_learns_the_median_per_key() -> None:
    model = DurationModel(window=3)
    assert model.expected("klein") is None
    for seconds in (1.0, 5.0, 2.0, 3.0):
        model.observe("klein", seconds)
    assert model.expected("klein") == 3.0  # the window keeps 5, 2, 3
    assert model.expected("pro") is None


@pytest.mark.parametrize("duration", [0.3, 1.0, 3.0, 20.0])
def test_progress_lets_a_cold_plan_notice_within_fifteen_percent(duration: float) -> None:
    delay, polls = simulate(PollPlan(jitter=0.0), duration, progress_reported=True)
    assert delay <= 0.15 * duration
    assert polls <= 5


@pytest.mark.parametrize("duration", [0.3, 1.0, 3.0])
def test_learned_duration_alone_notices_quickly(duration: float) -> None:
    delay, polls = simulate(PollPlan(expected=duration, jitter=0.0), duration, progress_reported=False)
    assert delay <= 0.15 * duration
    assert polls <= 3


def test_a_task_slower_than_expected_is_polled_with_growing_gaps() -> None:
    plan = PollPlan(expected=1.0, jitter=0.0)
    gaps = [plan.next_delay(1.0 + i, None) for i in range(20)]
    assert gaps[0] == pytest.approx(DENSE_FRACTION)
    assert all(b >= a for a, b in itertools.pairwise(gaps))
    assert gaps[-1] == MAX_INTERVAL


def test_with_nothing_known_polls_back_off_to_the_cap() -> None:
    plan = PollPlan(jitter=0.0)
    assert plan.first_delay() == FIRST_POLL_UNKNOWN
    gaps = [plan.next_delay(float(i), None) for i in range(20)]
    assert gaps[0] == FIRST_POLL_UNKNOWN
    assert gaps[1] > gaps[0]
    assert max(gaps) == MAX_INTERVAL


def test_finished_estimate_lies_between_the_last_two_polls() -> None:
    plan = PollPlan(jitter=0.0)
    plan.next_delay(0.8, None)
    assert plan.finished_estimate(1.0) == pytest.approx(0.9)


def test_jitter_spreads_long_backoff_gaps_only() -> None:
    def gaps(jitter: float) -> list[float]:
        plan = PollPlan(jitter=jitter)
        return [plan.next_delay(float(i), None) for i in range(8)]

    plain = gaps(0.0)
    runs = [gaps(0.1) for _ in range(20)]
    for position, expected in enumerate(plain):
        seen = {run[position] for run in runs}
        if expected < 1.0:
            assert seen == {expected}
        else:
            assert len(seen) > 1
            assert all(0.9 * expected <= d <= 1.1 * expected for d in seen)


def test_ready_at_the_first_poll_lets_the_learned_duration_shrink() -> None:
    model = DurationModel()
    for _ in range(8):
        plan = PollPlan(expected=model.expected("k"), jitter=0.0)
        elapsed = plan.first_delay()
        estimate = plan.finished_estimate(max(elapsed, 0.004))  # the task really takes 4 ms
        model.observe("k", estimate, upper_bound=plan.bound_only)
    assert model.expected("k") < 0.02


def test_an_upper_bound_drops_longer_durations() -> None:
    model = DurationModel()
    for seconds in (1.0, 1.2, 0.9):
        model.observe("k", seconds)
    model.observe("k", 0.5, upper_bound=True)
    assert model.expected("k") == 0.5


def test_the_earliest_duration_needs_a_few_of_them() -> None:
    model = DurationModel()
    for seconds in (1.0, 0.9, 1.1):
        model.observe("k", seconds)
    assert model.earliest("k") is None
    model.observe("k", 1.05)
    assert model.earliest("k") == 0.9
    assert model.earliest("other") is None


def test_tight_durations_are_noticed_with_one_poll_fewer() -> None:
    loose, loose_polls = simulate(PollPlan(expected=1.0, jitter=0.0), 1.0, progress_reported=True)
    assert loose <= DENSE_FRACTION  # as quick to notice, with one poll more
    tight, tight_polls = simulate(PollPlan(expected=1.0, earliest=0.99, jitter=0.0), 1.0, progress_reported=True)
    assert (loose_polls, tight_polls) == (3, 2)
    assert tight <= DENSE_FRACTION


def test_spread_durations_keep_the_first_poll_well_ahead_of_the_median() -> None:
    assert PollPlan(expected=5.0, earliest=2.0, jitter=0.0).first_delay() == pytest.approx(4.5)
    # and never past the median, however late the earliest one was
    assert PollPlan(expected=1.0, earliest=1.5, jitter=0.0).first_delay() == 1.0
