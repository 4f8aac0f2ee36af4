"""Judging, the rest: edit results show the references they were made from (card and grid cell), the panel's
gallery opens the whole history in the browser, and the panel says which size a side off the 16 grid comes back as."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import ipywidgets as w
import pytest
from PIL import Image

from flux_nb import Flux, grids
from flux_nb.export import report
from flux_nb.notebook.browse import Browser
from flux_nb.notebook.panel import Panel
from flux_nb.notebook.render import result_html, result_text

SMALL = "256x256"


def red_png(path: Path) -> Path:
    buffer = io.BytesIO()
    Image.new("RGB", (96, 96), (230, 10, 10)).save(buffer, "PNG")
    path.write_bytes(buffer.getvalue())
    return path


def test_an_edit_names_and_shows_its_references(flux: Flux, tmp_path: Path) -> None:
    base = flux.generate("a harbour at dawn", seed=1, size=SMALL)
    edit = flux.generate("the harbour at night", seed=2, size=SMALL, images=[base, red_png(tmp_path / "red.png")])
    names = [reference.name for reference in edit.references]
    assert names[0] == base.record_id and names[1].startswith("image ") and len(names[1]) == len("image ") + 8
    page = result_html(edit)
    assert f"made from {base.record_id}, {names[1]}" in page and f"made from {base.record_id}" in result_text(edit)
    strip = page.split('class="flux-references"', 1)[1]
    assert strip.count("<img") == 2 and f'alt="{base.record_id}"' in strip
    assert base.references == () and "made from" not in result_html(base) and "flux-references" not in result_html(base)
    again = flux.generate("the harbour at night", seed=2, size=SMALL, images=[base, tmp_path / "red.png"])
    assert again.cached and [r.name for r in again.references] == names  # a cache hit says it too
    assert [r.name for r in flux.result_of(edit.record_id).references] == names


def test_a_grid_cell_of_an_edit_shows_its_references(flux: Flux, tmp_path: Path) -> None:
    red = red_png(tmp_path / "red.png")
    sweep = flux.sweep("the harbour, repainted", seed=[5, 6], size=SMALL, images=[red])
    page = sweep.grid(x="seed")
    assert all(text.startswith("made from image ") for text in page.cell_text.values()), page.cell_text
    left, top, _, _ = next(iter(page.cell_boxes.values()))
    r, g, b = page.image.convert("RGB").getpixel((left + 10, top + 10))
    assert r > 200 and g < 60 and b < 60  # the red reference, small, in the cell's corner
    plain = flux.sweep("the harbour, plain", seed=[5, 6], size=SMALL).grid(x="seed")
    assert not any("made from" in text for text in plain.cell_text.values())


def test_a_grid_drawn_from_the_history_shows_the_references_too(
    ipython: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``flux_history.flux.grid`` and ``%flux grid`` draw the cells as the sweep's own grid does."""
    flux = ipython.user_ns["flux"]
    base = flux.generate("a harbour at dawn", seed=1, size=SMALL)
    flux.sweep("the harbour, repainted", seed=[5, 6], size=SMALL, images=[base, red_png(tmp_path / "red.png")])
    frame = ipython.user_ns["flux_history"]
    drawn: list[Any] = []
    draw = grids.grid
    monkeypatch.setattr(grids, "grid", lambda *args, **kwargs: drawn.append(draw(*args, **kwargs)) or drawn[-1])
    ipython.run_line_magic("flux", "grid --x seed --where \"prompt == 'the harbour, repainted'\"")
    assert len(drawn) == 1
    for page in (frame[frame.prompt == "the harbour, repainted"].flux.grid(x="seed"), *drawn):
        texts = list(page.cell_text.values())
        assert len(texts) == 2 and all(t.startswith(f"made from {base.record_id}, image ") for t in texts), texts
        left, top, _, _ = next(iter(page.cell_boxes.values()))
        assert page.image.convert("RGB").getpixel((left + 10, top + 10)) != (255, 255, 255)  # a thumbnail there
    in_report: list[Any] = []
    monkeypatch.setattr(
        report, "grid", lambda *args, **kwargs: in_report.append(draw(*args, **kwargs)) or in_report[-1]
    )
    flux.report(tmp_path / "report.html")  # a grid per batch: the sweep's has the two edits
    assert any(
        all(t.startswith("made from ") for t in p.cell_text.values()) and len(p.cell_text) == 2 for p in in_report
    )
    plain = flux.history()
    plain = plain[plain.record_id == base.record_id].flux.grid(x="seed")
    assert not any("made from" in text for text in plain.cell_text.values())


def test_the_gallery_opens_and_closes_the_whole_history(flux: Flux) -> None:
    earlier = flux.generate("made before the panel", seed=3, size=SMALL)
    panel = Panel(flux)
    toggle = panel.whole_history.button
    assert toggle.description == "Whole history" and panel.whole_history in panel.children
    toggle.value = True
    browser = panel.whole_history.browser
    assert isinstance(browser, Browser) and panel.whole_history.children == (toggle, browser.widget)
    assert earlier.record_id in [row["record_id"] for row in browser.rows]  # not a panel image: the whole history
    toggle.value = False
    assert panel.whole_history.browser is None and panel.whole_history.children == (toggle,)
    assert browser.widget.comm is None  # closed, not only hidden


def test_a_browser_that_cannot_open_is_said_and_the_toggle_goes_off(flux: Flux) -> None:
    flux.browse = lambda: (_ for _ in ()).throw(OSError("no history here"))  # type: ignore[method-assign]
    panel = Panel(flux)
    panel.whole_history.button.value = True
    assert panel.whole_history.button.value is False and "no history here" in panel.error.value
    assert isinstance(panel.whole_history.children[0], w.ToggleButton) and len(panel.whole_history.children) == 1


def test_the_panel_says_which_size_comes_back_off_the_16_grid(flux: Flux) -> None:
    panel = Panel(flux)
    panel.size.value = "custom"
    panel.width.value, panel.height.value = 1000, 1080
    assert "1000x1080 comes back as 992x1072" in panel.size_note.value and not panel.generate.disabled
    panel.width.value = 64
    assert "64x1080 comes back as 64x1072" in panel.size_note.value
    panel.height.value = 1088
    assert "comes back" not in panel.size_note.value and "MP" in panel.size_note.value
