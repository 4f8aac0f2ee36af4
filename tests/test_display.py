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
from flux_nb.core.results import Result
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


def test_cached_results_say_so(tmp_path: Path) -> None:
    text = html.unescape(display.result_html(ready(tmp_path, cached=True, cost=0.0)))
    assert "0 credits (cached)" in text and "cached" in text


def test_failures_are_one_line_without_traceback(tmp_path: Path) -> None:
    error = ModeratedError("the generated image was moderated (not charged)", status="Content Moderated")
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
    assert "3/3 done" in [o for o in updates if "flux-progress" in o.data["text/html"]][-1].data["text/html"]


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
    assert "queued · " in lines[0] and "generating · 40% · " in lines[1] and "downloading · " in lines[2]
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
        (TaskNotFoundError("task t1 is unknown to the API"), "run the cell again"),
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
