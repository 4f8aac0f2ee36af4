"""What a person sees: thumbnails with captions, one-line failures, live progress, history tables."""

from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from PIL import Image

from flux_nb.core.events import Finished, Progress
from flux_nb.core.results import Result, SweepResult
from flux_nb.errors import (
    DeliveryError,
    ModeratedError,
    RejectedError,
    TaskFailedError,
    TaskNotFoundError,
    TransportError,
    ValidationError,
)
from flux_nb.notebook import progress as progress_module
from flux_nb.notebook import render as display
from flux_nb.notebook import tables
from flux_nb.notebook.progress import BatchProgress


def noisy(path: Path, size: tuple[int, int] = (1024, 1024)) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, "JPEG", quality=92)
    return path


def ready(tmp_path: Path, **fields: Any) -> Result:
    base = {
        "record_id": "abc123def456",
        "status": "ready",
        "prompt": "a <script>cat</script>",
        "model": "flux-2-klein-4b",
        "seed": 42,
        "width": 1024,
        "height": 1024,
        "path": noisy(tmp_path / "img.jpeg"),
        "cost": 1.4,
        "billed": False,
        "elapsed": 0.84,
        "engine": "preview",
    }
    return Result(**{**base, **fields})


def embedded_image(markup: str) -> Image.Image:
    data = re.search(r'src="data:image/(?:jpeg|webp);base64,([^"]+)"', markup).group(1)
    return Image.open(io.BytesIO(base64.b64decode(data)))


@pytest.fixture(autouse=True)
def shell() -> InteractiveShell:
    InteractiveShell.clear_instance()
    yield InteractiveShell.instance()
    InteractiveShell.clear_instance()


@pytest.mark.parametrize(("fmt", "pil"), [("jpeg", "JPEG"), ("webp", "WEBP")])
def test_a_result_shows_a_compact_thumbnail_and_one_caption_line(
    tmp_path: Path, fmt: str, pil: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(display, "settings", display.DisplaySettings(thumbnail_size=256, thumbnail_format=fmt))
    result = ready(tmp_path)
    bundle = display.result_bundle(result)
    thumb = embedded_image(bundle["text/html"])
    assert thumb.format == pil and max(thumb.size) == 256
    text = html.unescape(bundle["text/html"])
    caption = (
        "seed 42 · 1024×1024 · flux-2-klein-4b · 1.40 credits (not billed: local server) · 0.84 s · id abc123def456"
    )
    assert caption in text and "preview" in text


def test_a_displayed_result_adds_only_tens_of_kilobytes(tmp_path: Path) -> None:
    from flux_nb.server.engines import RenderJob, get_engine

    path = tmp_path / "full.png"
    get_engine("preview").render(RenderJob("a harbour at dawn", 7, 1024, 1024, "flux-2-klein-4b")).save(path)
    bundle = display.result_bundle(ready(tmp_path, path=path))
    assert path.stat().st_size > 5 * len(bundle["text/html"])
    assert len(bundle["text/html"]) < 40_000


def test_prompts_are_escaped(tmp_path: Path) -> None:
    assert "<script>" not in display.result_bundle(ready(tmp_path))["text/html"]


def test_cached_results_say_so_once(tmp_path: Path) -> None:
    text = html.unescape(display.result_html(ready(tmp_path, cached=True, cost=0.0)))
    assert "0 credits · cached" in text
    assert display.caption(ready(tmp_path, cached=True, cost=0.0)).count("cached") == 1


def test_captions_show_paths_relative_to_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = ready(tmp_path)
    shown = html.unescape(display.result_html(result))
    assert f'title="{tmp_path / "img.jpeg"}"' in shown  # the card's path is its image's tooltip, not a line
    assert str(tmp_path) not in shown.split("title=")[1].split('"')[2]
    monkeypatch.chdir(tmp_path.parent)
    assert display.result_text(result).endswith(f" · {tmp_path.name}/img.jpeg")
    # a saved notebook carries no folder of the machine it ran on: the tooltip and the plain text are relative too
    bundle = display.result_bundle(result)
    assert f'title="{tmp_path.name}/img.jpeg"' in html.unescape(bundle["text/html"])
    assert bundle["text/plain"] == display.result_text(result) and str(tmp_path) not in bundle["text/plain"]


EMOJI = ("⏳", "⚠", "⛔", "❓", "✋")


def test_marks_and_spinners_are_css_not_emoji(tmp_path: Path) -> None:
    failures = [
        display.result_html(ready(tmp_path, status=status, path=None, error=ValidationError("no")))
        for status in ("failed", "moderated", "unknown", "cancelled", "submitted")
    ]
    progress = BatchProgress(rich=True)
    progress.started([object()])
    lines = [progress._line_html(), display.error_html(ValidationError("bad width"))]
    progress.started([object(), object()])
    lines.append(progress._line_html())
    for markup in failures + lines:
        assert not any(glyph in markup for glyph in EMOJI), markup
    assert all("flux-icon" in m for m in failures[:4]) and "flux-spinner" in failures[4]
    assert "flux-spinner" in lines[0] and "flux-spinner" in lines[2] and "flux-icon" in lines[1]
    assert "@keyframes flux-spin" in lines[0]


def test_text_takes_its_colours_from_the_notebook_theme(tmp_path: Path) -> None:
    sweep_html = display.sweep_bundle(SweepResult([ready(tmp_path)]))["text/html"]
    progress = BatchProgress(rich=True)
    progress.started([object()])
    checks = {
        display.result_html(ready(tmp_path)): ("--jp-content-font-color1",),
        display.error_html("oops"): ("--jp-error-color1",),
        sweep_html: ("--jp-content-font-color1",),
        progress._line_html(): ("--jp-content-font-color1",),
    }
    for markup, variables in checks.items():
        for variable in variables:
            assert f"var({variable}, var(--vscode-" in markup  # VS Code's colour, then a fixed one, as fallbacks
        assert "#444" not in markup and "#888" not in markup


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_single_requests_line_moves_on_ticks_and_learns_the_time_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    monkeypatch.setattr(progress_module.time, "monotonic", clock)
    durations = progress_module.Durations()
    monkeypatch.setattr(progress_module, "DURATIONS", durations)
    request = type("Request", (), {"model": "flux-2-klein-4b", "width": 512, "height": 512})()
    first = BatchProgress(rich=True)
    with capture_output() as captured:
        first.started([request])
        first.progress(Progress(0, "Submitted", 0.0))
        clock.now += 1.3
        first.tick()
        clock.now += 1.2
        first.tick()
        clock.now += 1.5
        first.finished(Finished(0, ready(tmp_path)))
    texts = [html.unescape(o.data["text/html"]) for o in captured.outputs if "flux-progress" in o.data["text/html"]]
    queued = [re.search(r"generating · [\d.]+ s", t).group(0) for t in texts[1:]]
    assert queued == ["generating · 0.0 s", "generating · 1.3 s", "generating · 2.5 s"]
    assert "left" not in "".join(texts)  # nothing learned yet: no guess
    assert durations.expected(progress_module.kind_of(request)) == pytest.approx(4.0)

    second = BatchProgress(rich=True)
    second.started([request])
    second.progress(Progress(0, "Submitted", 0.0))
    clock.now += 1.0
    assert second.status_line() == "generating · 1.0 s · about 3 s left"
    batch = BatchProgress(rich=True)
    batch.started([request] * 3)
    batch.progress(Progress(0, "Submitted", 0.0))
    clock.now += 1.0
    assert "1 running, 2 queued · 1.0 s · about 11 s left" in batch.status_line()  # 3 s, then two more in one slot
    other = BatchProgress(rich=True)
    other.started([type("Request", (), {"model": "flux-2-pro", "width": 512, "height": 512})()])
    assert "left" not in other.status_line()  # another model: not guessed from this one


def test_failures_are_one_line_without_traceback(tmp_path: Path) -> None:
    error = ModeratedError("the generated image was moderated (not charged)", task_status="Content Moderated")
    failed = ready(tmp_path, status="moderated", path=None, error=error)
    text = html.unescape(display.result_html(failed))
    assert "moderated: the generated image was moderated" in text and "rephrase the prompt" in text
    assert "Traceback" not in text and "<img" not in text and text.count("\n") == 0


def test_show_error_prints_one_line_in_a_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(display, "is_rich", lambda: False)
    display.show_error(ValidationError("width 1000 is not a multiple of 16 (try 992 or 1008)"))
    assert capsys.readouterr().out == "flux_nb: width 1000 is not a multiple of 16 (try 992 or 1008)\n"


def test_batch_progress_updates_one_line_in_place(tmp_path: Path) -> None:
    results = [ready(tmp_path, record_id=f"r{i}", seed=i) for i in range(3)]
    results[1] = ready(tmp_path, record_id="r1", status="failed", path=None, error=ValidationError("bad"))
    progress = BatchProgress(rich=True)
    with capture_output() as captured:
        progress.started([object()] * 3)
        for i in range(20):
            progress.progress(Progress(i % 3, "Pending", 0.5))
        for i, result in enumerate(results):
            progress.finished(Finished(i, result))
    assert progress.status_line().startswith("3/3 done · 1 failed")
    assert "2.80 credits" in progress.status_line()
    first = [o for o in captured.outputs if not o.update]
    updates = [o for o in captured.outputs if o.update]
    assert len(first) == 2  # the progress line and the gallery; everything after updates them in place
    ids = {o.transient["display_id"] for o in first}
    assert {o.transient["display_id"] for o in updates} <= ids
    assert len(updates) <= 1 + 2 * len(results)  # 20 progress events in a burst redraw at most once
    assert "0/3 done" in first[0].data["text/html"]
    final = [o for o in updates if "flux-progress" in o.data["text/html"]][-1].data["text/html"]
    assert "finished in" in final and "done" not in final  # the sweep's summary below says the totals


def test_batch_progress_prints_paths_in_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    progress = BatchProgress(rich=False)
    progress.started([object(), object()])
    progress.finished(Finished(0, ready(tmp_path)))
    progress.finished(
        Finished(1, ready(tmp_path, record_id="zz", status="failed", path=None, error=ValidationError("nope")))
    )
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"saved {tmp_path / 'img.jpeg'} (seed 42")
    assert out[1] == "flux_nb: failed: nope (record zz)"
    assert out[2].startswith("flux_nb: 2/2 done · 1 failed")


def test_a_single_request_shows_its_state_then_the_result_in_its_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(progress_module, "UPDATE_INTERVAL", 0.0)
    progress = BatchProgress(rich=True)
    with capture_output() as captured:
        progress.started([object()])
        progress.progress(Progress(0, "Submitted", 0.0))
        progress.progress(Progress(0, "Pending", 0.4))
        progress.progress(Progress(0, "Downloading", 1.0))
        progress.finished(Finished(0, ready(tmp_path)))
    first = [o for o in captured.outputs if not o.update]
    updates = [o for o in captured.outputs if o.update]
    assert len(first) == 1 and "sending" in first[0].data["text/html"]
    assert {o.transient["display_id"] for o in updates} == {first[0].transient["display_id"]}
    lines = [html.unescape(o.data["text/html"]) for o in updates]
    assert "generating · " in lines[0] and "generating · 40% · " in lines[1] and "downloading · " in lines[2]
    assert "flux-result" in lines[3] and "flux-progress" not in lines[3]


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_status_line_redrawn_in_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(progress_module, "UPDATE_INTERVAL", 0.0)
    terminal = FakeTerminal()
    progress = BatchProgress(rich=False, stream=terminal)
    progress.started([object()])
    progress.progress(Progress(0, "Pending", None))
    progress.finished(Finished(0, ready(tmp_path)))
    drawn = terminal.getvalue()
    assert drawn.startswith("\rflux_nb: sending · ") and "\rflux_nb: generating · " in drawn
    assert drawn.endswith("\r" + " " * len(drawn.rsplit("\r", 3)[1].rstrip()) + "\r")  # cleared before the result
    assert capsys.readouterr().out.startswith(f"saved {tmp_path / 'img.jpeg'} (seed 42")
    quiet = io.StringIO()  # not a terminal (a log file, a pipe): no \r lines
    progress = BatchProgress(rich=False, stream=quiet)
    progress.started([object()])
    progress.progress(Progress(0, "Pending", None))
    assert quiet.getvalue() == ""


@pytest.mark.parametrize(
    ("error", "hint"),
    [
        (TaskFailedError("task t1 failed"), "run the cell again"),
        (TaskNotFoundError("task t1 is unknown to the API"), "may be charged twice"),
        (TransportError("could not reach http://x"), "check the network and Flux.endpoint"),
        (DeliveryError("downloading the image failed"), "run the cell again"),
        (RejectedError("the API rejected the request: width: too small"), "fix the field the API names"),
    ],
)
def test_errors_say_what_to_do_next(
    error: Exception, hint: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(display, "is_rich", lambda: False)
    assert error.one_line() == f"{error} ({error.hint})" and "%flux" not in error.hint  # neutral below
    assert isinstance(error, ValidationError) == isinstance(error, RejectedError)
    display.show_error(error)
    shown = capsys.readouterr().out
    assert shown.startswith(f"flux_nb: {error} (") and hint in shown  # the notebook's own words


def test_history_table_is_newest_first_and_limited(tmp_path: Path) -> None:
    path = noisy(tmp_path / "h.jpeg", (64, 64))
    rows = [
        {
            "record_id": f"id{i}",
            "created_at": pd.Timestamp(1_700_000_000 + i, unit="s", tz="UTC"),
            "status": "ready",
            "prompt": f"prompt {i}",
            "seed": i,
            "width": 64,
            "height": 64,
            "out_width": 64,
            "out_height": 64,
            "model": "m",
            "cost": 1.4,
            "duration_s": 0.5,
            "tag": pd.NA,
            "image_path": str(path) if i % 2 else pd.NA,
        }
        for i in range(5)
    ]
    table = tables.history_html(pd.DataFrame(rows), limit=3)
    assert table.count("<tr>") == 4
    assert [m for m in re.findall(r"id\d", table)] == ["id4", "id3", "id2"]
    assert table.count("<img") == 1
    text = tables.history_text(pd.DataFrame(rows), limit=3).splitlines()
    assert [line.split()[0] for line in text] == ["id", "id4", "id3", "id2"]
    assert text[2].endswith(str(path)) and "64×64" in text[1]
    assert tables.history_text(pd.DataFrame(rows).iloc[:0]) == "no history yet: run a %%flux cell"


def test_cost_table_names_the_backend_and_keeps_billed_and_not_billed_totals_apart() -> None:
    summary = pd.DataFrame(
        {
            "model": ["a", "a", "b"],
            "backend": ["local:preview", "bfl", "bfl"],
            "requests": [2, 3, 1],
            "credits": [2.8, 4.5, 1.5],
            "billed": [0, 1, 1],
        }
    ).astype({"billed": bool})
    text = tables.cost_text(summary)
    lines = text.splitlines()
    assert lines[0].split() == ["model", "backend", "requests", "credits"]
    assert "local preview server (not billed)" in lines[1] and "BFL API (billed)" in lines[2]
    assert lines[-2].split() == ["total", "billed", "4", "6.00"]
    assert lines[-1].split() == ["total", "not", "billed", "2", "2.80"]
    assert "True" not in text and "False" not in text and "7.30" not in text
    page = tables.cost_html(summary)
    assert "<td>total billed</td><td></td><td>4</td><td>6.00</td>" in page
    assert "<td>total not billed</td><td></td><td>2</td><td>2.80</td>" in page


def test_side_by_side_says_whether_images_are_identical(tmp_path: Path) -> None:
    a = ready(tmp_path)
    copy = tmp_path / "copy.jpeg"
    copy.write_bytes(a.path.read_bytes())
    other = noisy(tmp_path / "other.jpeg", (64, 64))
    assert "byte-identical" in display.side_by_side_html(a, ready(tmp_path, path=copy), "old", "new")
    assert "differ" in display.side_by_side_html(a, ready(tmp_path, path=other), "old", "new")


def theme_variables(name: str) -> dict[str, str]:
    """The CSS variables of an installed JupyterLab theme ("light" or "dark")."""
    jupyterlab = pytest.importorskip("jupyterlab")
    css = Path(jupyterlab.__file__).parent / "themes" / "@jupyterlab" / f"theme-{name}-extension" / "index.css"
    return dict(re.findall(r"(--[\w-]+):([^;}]+)", css.read_text()))


def resolve(value: str, variables: dict[str, str]) -> tuple[float, float, float, float]:
    """A CSS colour (hex, rgba(), white, or var() with a fallback) as RGBA."""
    value = value.strip()
    if found := re.fullmatch(r"var\((--[\w-]+)\s*,\s*(.+)\)", value):
        name, fallback = found.groups()
        return resolve(variables.get(name, fallback), variables)
    if value == "white":
        return (255, 255, 255, 1.0)
    if value.startswith("#"):
        digits = value[1:] if len(value) == 7 else "".join(c * 2 for c in value[1:])
        return (*(int(digits[i : i + 2], 16) for i in (0, 2, 4)), 1.0)
    parts = [float(p) for p in re.findall(r"[\d.]+", value)]
    return (parts[0], parts[1], parts[2], parts[3] if len(parts) > 3 else 1.0)


def contrast_ratio(text: tuple[float, ...], background: tuple[float, ...]) -> float:
    blended = [text[i] * text[3] + background[i] * (1 - text[3]) for i in range(3)]

    def luminance(rgb: list[float] | tuple[float, ...]) -> float:
        linear = [(c / 255 / 12.92) if c / 255 <= 0.03928 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in rgb]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    a, b = luminance(blended), luminance(background[:3])
    return (max(a, b) + 0.05) / (min(a, b) + 0.05)


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_own_colours_reach_4_5_to_1_on_jupyterlabs_themes_and_without_them(theme: str) -> None:
    variables = theme_variables(theme)
    page = resolve(variables["--jp-layout-color0"], variables)
    for colour in (display.TEXT, display.MUTED, display.ERROR):
        assert contrast_ratio(resolve(colour, variables), page) >= 4.5, colour
        assert contrast_ratio(resolve(colour, {}), (255, 255, 255, 1.0)) >= 4.5, colour  # fallbacks on white


def test_the_caption_says_what_the_engine_changed(tmp_path: Path) -> None:
    result = ready(tmp_path, details={"engine": "diffusers", "warnings": ["prompt truncated to 512 tokens"]})
    assert display.caption(result).endswith("note: prompt truncated to 512 tokens")
    assert "note:" not in display.caption(ready(tmp_path))
