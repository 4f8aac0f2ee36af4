"""What a newcomer sees in the first hour: the live progress line's end states, its bar and estimates."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from flux_nb.core import watching
from flux_nb.core.events import Emit, Finished, Progress
from flux_nb.core.loop import LoopRunner
from flux_nb.core.results import Result, SweepResult
from flux_nb.errors import BatchInterrupted
from flux_nb.grids import grid
from flux_nb.notebook import progress as progress_module
from flux_nb.notebook import render
from flux_nb.notebook.progress import BatchProgress
from flux_nb.server import EmbeddedServer

ROOT = Path(__file__).resolve().parents[1]
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


@pytest.fixture
def ready_result() -> Any:
    from tests.test_display import ready

    return ready


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


def test_an_interrupt_that_lands_as_an_event_is_taken_still_counts_that_request_sent(
    runner: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C arrives just after the caller's thread took a "sent" event off the queue, before it noted it: the
    report still says the request was sent (it exists at the API), not that it was never sent."""

    interrupts = [KeyboardInterrupt()]

    class InterruptedAsTaken(watching.queue.SimpleQueue):  # type: ignore[type-arg]
        def get(self, block: bool = True, timeout: float | None = None) -> Any:
            event = super().get(block, timeout)
            if isinstance(event, Progress) and interrupts:
                raise interrupts.pop()  # once, as a signal handled at the next bytecode would
            return event

    monkeypatch.setattr(watching.queue, "SimpleQueue", InterruptedAsTaken)
    with pytest.raises(BatchInterrupted) as interrupted:
        watching.relay(runner, sent_then(None), None, 3)
    assert (interrupted.value.running, interrupted.value.unsent) == (2, 1), str(interrupted.value)


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


def test_time_left_neither_jumps_when_a_slot_frees_nor_vanishes_when_one_runs_late(
    tmp_path: Path, clock: Clock, durations: progress_module.Durations, ready_result: Any
) -> None:
    durations.observe(progress_module.kind_of(REQUEST), 4.0)
    live = BatchProgress(rich=False)
    live.started([REQUEST] * 6)
    for index in range(3):
        live.progress(Progress(index, "Pending", 0.0))
    clock.now += 1.0
    assert live.remaining() == pytest.approx(3.0 + 3 * 4.0 / 3)  # 3 lanes: 3 s for those running, 4 s for the rest
    with capture_output():  # a slot frees (a cached answer: nothing learned); the next request hasn't started yet
        live.finished(Finished(0, ready_result(tmp_path, cached=True)))
    assert live.remaining() == pytest.approx(3.0 + 3 * 4.0 / 3)  # still three lanes, not one
    clock.now += 10.0  # the two running are late now
    assert live.remaining() == pytest.approx(1.0 + 3 * 4.0 / 3)
    assert "left" in live.status_line()


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


# -- grids -------------------------------------------------------------------------------------------------

LONG_PROMPT = (
    "a photo of a red fox sitting in deep fresh snow at dawn, golden rim light, shallow depth of field, "
    "telephoto lens, national geographic style, highly detailed fur"
)


def rows(**columns: list[Any]) -> list[dict[str, Any]]:
    count = len(next(iter(columns.values())))
    made = [{"record_id": f"r{i}", "status": "ready", "image_path": None} for i in range(count)]
    for name, values in columns.items():
        for row, value in zip(made, values, strict=True):
            row[name] = value
    return made


def test_grid_headers_name_their_axis() -> None:
    page = grid(rows(seed=[1, 2], prompt=["a fox"] * 2, model=["flux-2-pro", "flux-2-klein-4b"]), x="seed", y="model")
    assert page.label_text["x:1"] == ["seed 1"] and page.label_text["x:2"] == ["seed 2"]
    assert page.label_text["y:flux-2-pro"] == ["model flux-2-pro"]
    prompts = grid(rows(seed=[1, 1], prompt=["a fox", "a cat"]), x="prompt")
    assert prompts.label_text["x:a fox"] == ["a fox"]  # a prompt reads as itself


def test_a_shared_prompt_is_said_once_and_whole(tmp_path: Path) -> None:
    page = grid(rows(seed=[1, 2, 3], prompt=[LONG_PROMPT] * 3), x="seed", cell=128)
    title = " ".join(page.label_text["title"])
    assert f"prompt: {LONG_PROMPT}" in title and "…" not in title
    assert len(page.label_text["title"]) > 1  # wrapped across lines, not cut


def test_a_grid_says_when_its_cells_differ_off_the_axes() -> None:
    page = grid(rows(model=["flux-2-pro", "flux-2-klein-4b"], prompt=["a fox", "a cat"]), x="model")
    assert "cells differ in prompt (2 values, not on an axis)" in " ".join(page.label_text["title"])
    same = grid(rows(model=["flux-2-pro", "flux-2-klein-4b"], prompt=["a fox", "a fox"]), x="model")
    assert "differ" not in " ".join(same.label_text["title"])


def test_a_history_grid_keeps_the_order_the_models_were_typed(flux: Any) -> None:
    small = {"width": 256, "height": 256, "prompt": "a red fox"}
    flux.sweep(model=["flux-2-klein-9b", "flux-2-pro"], seed=2, **small)  # older rows of two of the models
    flux.sweep(model=["flux-2-klein-4b", "flux-2-klein-9b", "flux-2-pro"], seed=1, **small)
    page = grid(flux.history(), x="model")
    headers = [key for key in page.label_text if key.startswith("x:")]
    assert headers == ["x:flux-2-klein-4b", "x:flux-2-klein-9b", "x:flux-2-pro"]
    assert set(page.cells.values()) == {r for r in flux.history().query("seed == 1").record_id}


def test_notebook_02s_history_grid_draws_no_missing_cells(ipython: Any) -> None:
    notebook = json.loads((ROOT / "notebooks" / "02_sweeps_and_grids.ipynb").read_text())
    code = ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]
    [grid_cell] = [c for c in code if c.startswith("%flux grid")]
    with capture_output():
        for cell in code[1 : code.index(grid_cell)]:  # the extension is already loaded
            assert ipython.run_cell(cell).success, cell
        with capture_output() as shown:
            assert ipython.run_cell(grid_cell).success
    [drawn] = [o.data["text/plain"] for o in shown.outputs]
    assert re.search(r"\d+×\d+ cells, 0 missing", drawn), drawn


def test_a_finished_sweep_says_its_totals_once(tmp_path: Path, ready_result: Any) -> None:
    live = BatchProgress(rich=True)
    with capture_output() as captured:
        live.started([REQUEST] * 2)
        for index in range(2):
            live.finished(Finished(index, ready_result(tmp_path, record_id=f"r{index}", seed=index)))
    final = lines_of(captured)[-1]
    assert "credits" not in final and "done" not in final and "finished in" in final
    summary = render.sweep_bundle(SweepResult([ready_result(tmp_path, record_id=f"r{i}") for i in range(2)]))
    assert html.unescape(summary["text/html"]).count("credits") == 1


def test_a_result_card_shows_no_hash_path_under_its_image(tmp_path: Path, ready_result: Any) -> None:
    result = ready_result(tmp_path)
    card = render.result_html(result)
    visible = re.sub(r"<[^>]+>", " ", card)  # text only, not attributes (the image's tooltip keeps the path)
    assert str(result.path.name) not in visible and "img.jpeg" in card


# -- panel -------------------------------------------------------------------------------------------------


def test_rating_a_card_keeps_the_done_status(flux: Any) -> None:
    from tests.test_panel import generated

    panel, result = generated(flux, "a red kite over a hill")
    assert panel.status.value.startswith("<span>done: 1 image")
    review = panel.gallery.reviews[result.record_id]
    review.stars[2].click()
    review.heart.value = True
    assert panel.status.value.startswith("<span>done: 1 image")
    assert "as a favourite" in panel.status.value


def test_lit_and_unlit_stars_differ_in_shape_not_only_background(flux: Any) -> None:
    from tests.test_panel import generated

    panel, result = generated(flux, "a red kite over a hill")
    stars = panel.gallery.reviews[result.record_id].stars
    stars[2].click()
    assert [s.icon for s in stars] == ["star"] * 3 + ["star-o"] * 2
    assert {s.button_style for s in stars} == {""}  # the glyph in the text's colour, not white on orange


def test_a_cards_caption_is_two_short_lines(flux: Any) -> None:
    from tests.test_panel import generated

    panel, result = generated(flux, "a red kite over a hill")
    card = panel.gallery.children[0].children[1].value
    shown = html.unescape(re.sub(r"<[^>]+>", "\n", card)).strip().splitlines()
    assert shown == [
        f"seed {result.seed} · 512×512 · {result.model}",
        f"{result.cost:.2f} credits · {result.elapsed:.2f} s",
    ]
    assert "-webkit-line-clamp:2" in card and str(result.record_id) in card  # the whole caption is the tooltip


def test_the_panels_error_text_does_not_take_the_error_colour_variable(flux: Any) -> None:
    from flux_nb.notebook.panel import Panel

    panel = Panel(flux)
    panel.submit()  # no prompt
    text_colour = re.search(r'<div style="color:([^;]+);', panel.error.value).group(1)
    assert "the prompt is empty" in panel.error.value and "--jp-error-color1" not in text_colour


def test_the_format_toggle_and_size_boxes_are_compact(flux: Any) -> None:
    from flux_nb.notebook.panel import Panel

    panel = Panel(flux)
    assert panel.format.style.button_width == "4.5em"
    assert panel.width.style.description_width == panel.height.style.description_width == "1.5em"


def test_a_shown_waiting_result_has_no_endless_spinner(tmp_path: Path, ready_result: Any) -> None:
    from flux_nb.errors import FluxError

    still_running = ready_result(tmp_path, status="submitted", path=None, error=FluxError("interrupted"))
    shown = render.result_html(still_running)
    assert "flux-spinner" in shown and "infinite" not in shown
