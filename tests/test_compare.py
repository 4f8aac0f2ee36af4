"""``flux.compare``: results, record ids and history rows side by side, with a slider, a flip and a
difference; a static PNG where widgets don't render. Images come from a real local server on 127.0.0.1."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from PIL import Image
from traitlets import TraitError

from flux_nb import Flux
from flux_nb.errors import ValidationError
from flux_nb.notebook.compare import Comparison, compare
from flux_nb.notebook.compare_fallback import fallback_widget
from flux_nb.notebook.compare_images import difference, png, slider_view
from flux_nb.notebook.compare_widget import CompareWidget

WIDGET = "application/vnd.jupyter.widget-view+json"


def _html_image(html: str) -> np.ndarray:
    return _decoded(html.split('src="', 1)[1].split('"', 1)[0])


def _decoded(url_or_bytes: str | bytes | memoryview) -> np.ndarray:
    data = base64.b64decode(url_or_bytes.split(",", 1)[1]) if isinstance(url_or_bytes, str) else bytes(url_or_bytes)
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture
def pair(flux: Flux) -> list[Any]:
    return list(flux.sweep("a lighthouse", seed=[1, 2], size=(96, 64)))


def test_two_results_compare_with_labels_that_name_what_differs(flux: Flux, pair: list[Any]) -> None:
    shown = flux.compare(*pair)
    assert isinstance(shown, Comparison)
    assert shown.labels == [f"{pair[0].record_id[:8]} · seed 1", f"{pair[1].record_id[:8]} · seed 2"]
    static = _decoded(png(shown.static()))
    assert static.shape == (256, 3 * round(96 * 256 / 64) + 2 * 8, 3)  # both, and their difference
    bundle = shown._repr_mimebundle_()
    assert {"text/plain", "text/html", WIDGET} <= set(bundle)
    assert np.array_equal(_html_image(bundle["text/html"]), static)
    assert "seed 1" in bundle["text/plain"] and "seed 2" in bundle["text/plain"]
    assert "<img" in shown._repr_html_()


def test_a_shown_comparison_carries_its_static_image_once(flux: Flux, pair: list[Any]) -> None:
    """A saved notebook holds the static view in its HTML only, not again as a PNG output."""
    data, _ = InteractiveShell.instance().display_formatter.format(flux.compare(*pair))
    assert "image/png" not in data
    assert "".join(str(v) for v in data.values()).count("base64,") == 1


def test_record_ids_rows_and_frames_name_the_same_images(flux: Flux, pair: list[Any]) -> None:
    frame = flux.history()
    by_id = flux.compare(pair[0].record_id, pair[1].record_id)
    by_row = flux.compare(frame.iloc[0], frame.iloc[1])
    by_frame = flux.compare(frame)
    for shown in (by_id, by_row, by_frame):
        assert [s.record_id for s in shown.items] == [r.record_id for r in pair]
        assert [s.path for s in shown.items] == [Path(r.path) for r in pair]
    three = flux.compare(*pair, flux.generate("a lighthouse", seed=3, size=(96, 64)))
    assert len(three.items) == 3 and len(_decoded(png(three.static()))[0]) == 3 * round(96 * 256 / 64) + 2 * 8


def test_what_cannot_be_compared_is_refused_before_anything_is_drawn(flux: Flux, pair: list[Any]) -> None:
    with pytest.raises(ValidationError, match="two or more"):
        flux.compare(pair[0])
    with pytest.raises(ValidationError, match="no record with id"):
        flux.compare(pair[0], "ffffffffffff")
    with pytest.raises(ValidationError, match="results, record ids or history rows"):
        flux.compare(pair[0], 42)
    with pytest.raises(ValidationError, match="no image to compare"):
        compare({"record_id": "x", "status": "failed", "image_path": None}, pair[0])


def test_the_difference_is_black_where_the_images_agree_and_the_slider_splits_them() -> None:
    red, blue = Image.new("RGB", (40, 20), (200, 0, 0)), Image.new("RGB", (40, 20), (0, 0, 60))
    assert not np.asarray(difference(red, red)).any()
    assert tuple(np.asarray(difference(red, blue))[5, 5]) == (255, 0, 240)
    split = np.asarray(slider_view(red, blue, 25.0))
    assert tuple(split[10, 2]) == (200, 0, 0) and tuple(split[10, 30]) == (0, 0, 60)
    assert tuple(split[10, 10]) == (255, 255, 255)  # the line at 25 %
    assert tuple(np.asarray(slider_view(red, blue.resize((10, 5)), 0.0))[10, 30]) == (0, 0, 60)  # fitted


def test_the_widget_remakes_the_difference_when_the_pair_changes(flux: Flux, pair: list[Any]) -> None:
    third = flux.generate("a lighthouse", seed=pair[0].seed, size=(96, 64), fresh=True)
    widget = flux.compare(pair[0], pair[1], third).widget()
    assert isinstance(widget, CompareWidget) and widget.mode == "slider" and widget.position == 50.0
    assert len(widget.images) == 3 and widget.labels[0].startswith(pair[0].record_id[:8])
    assert _decoded(widget.difference).any()
    widget.b = 2  # the same request again: the same pixels
    assert not _decoded(widget.difference).any()
    widget.mode = "difference"
    with pytest.raises(TraitError):
        widget.mode = "blend"


def test_the_plain_ipywidgets_view_redraws_each_mode(flux: Flux, pair: list[Any]) -> None:
    box = fallback_widget(flux.compare(*pair))
    mode, position, flip, view = box.children[0], box.children[1], box.children[2], box.children[3]
    first, second = (np.asarray(r.image.convert("RGB")) for r in pair)
    half = _decoded(view.value)
    assert np.array_equal(half[:, :40], first[:, :40]) and np.array_equal(half[:, 56:], second[:, 56:])
    position.value = 100.0
    assert np.array_equal(_decoded(view.value), first)
    position.value = 0.0
    assert np.array_equal(_decoded(view.value)[:, 1:], second[:, 1:])
    mode.value = "flip"
    assert np.array_equal(_decoded(view.value), first)
    flip.value = True
    assert np.array_equal(_decoded(view.value), second)
    mode.value = "difference"
    assert _decoded(view.value).shape == (64, 96, 3)
    mode.value = "side by side"
    assert _decoded(view.value).shape[1] > 2 * 96


def test_without_anywidget_the_comparison_uses_plain_ipywidgets(
    flux: Flux, pair: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    import ipywidgets

    monkeypatch.setitem(sys.modules, "flux_nb.notebook.compare_widget", None)  # as if anywidget were missing
    shown = flux.compare(*pair)
    assert isinstance(shown.widget(), ipywidgets.VBox)
    assert WIDGET in shown._repr_mimebundle_()


def test_percent_flux_compare_takes_ids(ipython: InteractiveShell) -> None:
    ipython.run_cell(
        "a = flux.generate('a kite', seed=1, size=(64, 64)); b = flux.generate('a kite', seed=2, size=(64, 64))"
    )
    with capture_output() as captured:
        ipython.run_cell("%flux compare {a.record_id} {b.record_id}")
    (shown,) = captured.outputs
    assert {"text/html", WIDGET} <= set(shown.data)
    assert "Comparison of 2 images" in shown.data["text/plain"] and "seed 1" in shown.data["text/plain"]
    with capture_output() as captured:
        ipython.run_cell("%flux compare {a.record_id}")
    said = captured.stdout + captured.stderr + " ".join(str(o.data) for o in captured.outputs)
    assert "two or more record ids" in said


def test_a_file_replay_shows_old_and_new_side_by_side_with_the_byte_identity_line(
    ipython: InteractiveShell, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    ipython.run_cell(f"r = flux.generate('a kite', seed=8, size=(64, 64)); flux.export_image(r, {str(out)!r})")
    path = next((tmp_path / "out").iterdir())
    with capture_output() as captured:
        ipython.run_cell(f"%flux replay {path}")
    (shown,) = captured.outputs
    assert {"text/html", WIDGET} <= set(shown.data)
    text = shown.data["text/plain"]
    assert f"replay of {path}: record " in text and "seed 8" in text
    assert text.splitlines()[-1].startswith("byte-identical images (sha256 ")
    assert _html_image(shown.data["text/html"]).shape == (256, 3 * 256 + 2 * 8, 3)
