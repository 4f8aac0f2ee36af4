"""The widget panel without a browser: form rules, one submit per click, cancel, errors, remix, references."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from flux_nb import Flux
from flux_nb.panel import MAX_SLOTS, Panel


@pytest.fixture
def flux(server_factory: Any, history_dir: Path) -> Flux:
    server = server_factory(latency=0.3)
    session = Flux(endpoint=server.url, history_dir=history_dir)
    session.server = server  # type: ignore[attr-defined]
    yield session
    session.close()


def wait_idle(panel: Panel, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while panel._future is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert panel._future is None, "the panel did not finish"


def png_bytes(color: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (80, 60), color).save(buffer, "PNG")
    return buffer.getvalue()


def test_generate_fills_the_gallery_and_counts_credits(flux: Flux) -> None:
    panel = Panel(flux)
    panel.prompt.value = "a lighthouse"
    panel.size.value = "512×512 (fast drafts)"
    panel.count.value = 2
    panel.submit()
    assert panel.generate.disabled and not panel.cancel.disabled
    wait_idle(panel)
    assert len(panel.gallery.children) == 2
    assert "done: 2 image(s)" in panel.status.value
    assert "Credits spent: 2.80" in panel.cost.value
    assert not panel.generate.disabled and panel.cancel.disabled
    frame = flux.history()
    assert sorted(frame["seed"]) == [frame["seed"].min(), frame["seed"].min() + 1]
    assert set(frame["tag"]) == {"panel"}


def test_a_double_click_submits_once(flux: Flux) -> None:
    panel = Panel(flux)
    panel.prompt.value = "once"
    panel.size.value = "512×512 (fast drafts)"
    panel.generate.click()
    panel.generate.click()
    panel.submit()
    wait_idle(panel)
    assert flux.server.stats()["submits"] == 1  # type: ignore[attr-defined]


def test_invalid_custom_size_disables_generate_with_the_reason(flux: Flux) -> None:
    panel = Panel(flux)
    panel.size.value = "custom"
    panel.width.value = 1000
    assert panel.generate.disabled and "not a multiple of 16" in panel.size_note.value
    panel.width.value = 1008
    assert not panel.generate.disabled and "MP" in panel.size_note.value


def test_errors_show_in_the_panel_and_send_nothing(flux: Flux) -> None:
    panel = Panel(flux)
    panel.prompt.value = "   "
    panel.submit()
    assert "prompt is empty" in panel.error.value
    flux.budget = 1.0
    panel.prompt.value = "too expensive"
    panel.submit()
    assert "budget" in panel.error.value
    assert flux.server.stats()["submits"] == 0  # type: ignore[attr-defined]
    assert panel._future is None and not panel.generate.disabled


def test_cancel_stops_waiting_and_keeps_the_record_for_resume(server_factory: Any, history_dir: Path) -> None:
    server = server_factory(latency=3.0)
    flux = Flux(endpoint=server.url, history_dir=history_dir)
    try:
        panel = Panel(flux)
        panel.prompt.value = "slow"
        panel.size.value = "512×512 (fast drafts)"
        panel.submit()
        deadline = time.monotonic() + 10
        while not flux.store.resumable() and time.monotonic() < deadline:
            time.sleep(0.02)
        panel.stop()
        wait_idle(panel)
        assert "cancelled" in panel.status.value
        assert len(flux.store.resumable()) == 1
        assert [r.status for r in flux.resume()] == ["ready"]
    finally:
        flux.close()


def test_remix_loads_a_results_settings(flux: Flux) -> None:
    panel = Panel(flux)
    panel.prompt.value = "remix me"
    panel.size.value = "16:9 · 1360×768"
    panel.submit()
    wait_idle(panel)
    result = panel._results[0]
    panel.prompt.value = "something else"
    panel.size.value = "512×512 (fast drafts)"
    panel.remix(result)
    assert panel.prompt.value == "remix me" and panel.seed.value == result.seed and panel.lock_seed.value
    assert (panel.width.value, panel.height.value) == (1360, 768) and panel.size.value.startswith("16:9")


def test_references_upload_limit_remove_and_reuse(flux: Flux) -> None:
    panel = Panel(flux)
    panel._on_upload({"new": ({"name": "a.png", "content": memoryview(png_bytes())},)})
    assert len(panel._slots) == 1 and panel.upload.value == ()
    panel._on_upload({"new": ({"name": "bad.png", "content": memoryview(b"not an image")},)})
    assert "not a readable image" in panel.error.value and len(panel._slots) == 1
    for _ in range(MAX_SLOTS):
        panel.add_reference(png_bytes("blue"))
    assert len(panel._slots) == MAX_SLOTS and f"at most {MAX_SLOTS}" in panel.error.value
    panel._remove_slot(panel._slots[0])
    assert len(panel._slots) == MAX_SLOTS - 1
    panel.prompt.value = "edit with references"
    panel.size.value = "512×512 (fast drafts)"
    panel.submit()
    wait_idle(panel)
    assert panel._results[0].ok
    assert len(flux.history().iloc[-1]["input_hashes"]) == MAX_SLOTS - 1


def test_a_failed_request_is_shown_and_the_panel_keeps_working(flux: Flux) -> None:
    panel = Panel(flux)
    panel.prompt.value = "first"
    panel.size.value = "512×512 (fast drafts)"
    flux.endpoint = "http://127.0.0.1:9"  # nothing listens there
    flux.executor.client.retry = type(flux.executor.client.retry)(attempts=2, base_delay=0.01, max_delay=0.02)
    panel.submit()
    wait_idle(panel)
    assert "could not reach" in panel.error.value
    flux.endpoint = flux.server.url  # type: ignore[attr-defined]
    panel.submit()
    wait_idle(panel)
    assert len(panel.gallery.children) == 1
