"""What a newcomer sees in the first hour: the live progress line's end states, its bar and estimates."""

from __future__ import annotations

import html
import re
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from flux_nb.core import watching
from flux_nb.core.events import Emit, Progress
from flux_nb.core.loop import LoopRunner
from flux_nb.core.results import Result
from flux_nb.errors import BatchInterrupted
from flux_nb.notebook import progress as progress_module
from flux_nb.notebook import render
from flux_nb.notebook.progress import BatchProgress
from flux_nb.server import EmbeddedServer

REQUEST = type("Request", (), {"model": "flux-2-klein-4b", "width": 512, "height": 512})()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def shell(request: pytest.FixtureRequest) -> Any:
    """A shell for ``display`` to reach (the ``ipython`` fixture makes its own)."""
    if "ipython" in request.fixturenames:
        yield None
        return
    InteractiveShell.clear_instance()
    yield InteractiveShell.instance()
    InteractiveShell.clear_instance()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    ticking = Clock()
    monkeypatch.setattr(progress_module.time, "monotonic", ticking)
    return ticking


@pytest.fixture
def durations(monkeypatch: pytest.MonkeyPatch) -> progress_module.Durations:
    learned = progress_module.Durations()
    monkeypatch.setattr(progress_module, "DURATIONS", learned)
    return learned


@pytest.fixture
def runner() -> Any:
    loop = LoopRunner()
    yield loop
    loop.close()


def lines_of(captured: Any) -> list[str]:
    return [html.unescape(o.data["text/html"]) for o in captured.outputs if "flux-progress" in o.data["text/html"]]


class InterruptedWhileWaiting(BatchProgress):
    """A live line during which Ctrl-C arrives (a tick is where the caller's thread waits)."""

    def tick(self) -> None:
        super().tick()
        if self.running:
            raise KeyboardInterrupt


def sent_then(outcome: BaseException | None) -> Any:
    """A batch of three whose first request is sent, then which waits forever or fails with ``outcome``."""

    def start(emit: Emit) -> Coroutine[Any, Any, list[Result]]:
        async def run() -> list[Result]:
            import asyncio

            emit(Progress(0, "Submitted", 0.0))
            emit(Progress(1, "Submitted", 0.0))
            if outcome is not None:
                raise outcome
            await asyncio.sleep(3600)
            return []

        return run()

    return start


@pytest.mark.parametrize("observer", [InterruptedWhileWaiting, BatchProgress])
def test_an_interrupted_or_failed_batch_leaves_its_line_in_a_final_state(runner: Any, observer: type) -> None:
    live = observer(rich=True)
    failure = None if observer is InterruptedWhileWaiting else RuntimeError("the loop broke")
    with capture_output() as captured:
        live.started([REQUEST] * 3)
        with pytest.raises(BatchInterrupted if failure is None else RuntimeError):
            watching.relay(runner, sent_then(failure), live, 3)
    lines = lines_of(captured)
    assert "flux-spinner" in lines[0]
    final = lines[-1]
    assert "flux-spinner" not in final and "running" not in final and "left" not in final
    assert "stopped: 0/3 done" in final


def test_the_spinner_stops_by_itself_when_the_kernel_stops_redrawing(clock: Clock) -> None:
    live = BatchProgress(rich=True)
    with capture_output():
        live.started([REQUEST])
        clock.now += 1.25
        first = live._line_html()
        clock.now += 0.45
        second = live._line_html()
    animations = [re.search(r"animation:([^\"]+)", line).group(1) for line in (first, second)]
    assert not any("infinite" in a for a in animations)  # a restarted kernel never redraws: the ring must stop
    for animation, elapsed in zip(animations, (1.25, 1.7), strict=True):
        name, turn, _, delay, count = animation.split()
        assert name == "flux-spin" and turn == f"{render.TURN_S}s"
        assert float(delay[:-1]) == pytest.approx(-(elapsed % render.TURN_S), abs=0.01)  # turns on, not from 0
        assert float(count) * render.TURN_S + float(delay[:-1]) == pytest.approx(render.SPIN_S, abs=0.01)


def test_the_bar_fills_by_expected_time_while_requests_wait(
    tmp_path: Path, clock: Clock, durations: progress_module.Durations
) -> None:
    durations.observe(progress_module.kind_of(REQUEST), 4.0)
    live = BatchProgress(rich=True)
    with capture_output():
        live.started([REQUEST] * 2)
        live.progress(Progress(0, "Submitted", 0.0))
        live.progress(Progress(1, "Submitted", 0.0))
        clock.now += 2.0
        assert live.done_fraction() == pytest.approx(0.5)
        assert "width:50%" in live._line_html()
        clock.now += 60.0  # running late: nearly full, never full before the results
        assert live.done_fraction() == pytest.approx(progress_module.WAITING_SHARE)


def test_durations_are_learned_per_server(clock: Clock, durations: progress_module.Durations) -> None:
    durations.observe(progress_module.kind_of(REQUEST, "http://127.0.0.1:1"), 4.0)
    here = BatchProgress(rich=False, server="http://127.0.0.1:1")
    there = BatchProgress(rich=False, server="http://127.0.0.1:2")
    for live in (here, there):
        live.started([REQUEST])
        live.progress(Progress(0, "Submitted", 0.0))
    clock.now += 1.0
    assert here.status_line().endswith("about 3 s left")
    assert "left" not in there.status_line()


def test_the_magic_learns_durations_under_its_sessions_server(
    ipython: Any, server: EmbeddedServer, durations: progress_module.Durations
) -> None:
    with capture_output():
        ipython.run_cell_magic("flux", "-s 1 -W 512 -H 512", "a red fox")
    learned = list(durations._recent)
    assert [kind[0] for kind in learned] == [server.url]


def test_a_single_sent_request_says_it_is_generating_not_queued(tmp_path: Path) -> None:
    live = BatchProgress(rich=False)
    live.started([REQUEST])
    live.progress(Progress(0, "Submitted", 0.0))
    assert live.status_line().startswith("generating · ")
