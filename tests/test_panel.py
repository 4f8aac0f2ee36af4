"""The widget panel without a browser: form rules, one submit per click, cancel, errors, remix, references,
the magic that opens it, and a kernel thread that stays free while it works."""

from __future__ import annotations

import hashlib
import html
import io
import threading
import time
from pathlib import Path
from typing import Any

import ipywidgets as w
import numpy as np
import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from PIL import Image

from flux_nb import Flux
from flux_nb.core.backend import Backend
from flux_nb.core.results import Result
from flux_nb.http.client import RetryPolicy
from flux_nb.images import sha256_hex
from flux_nb.notebook.panel import MAX_SLOTS, Panel
from flux_nb.notebook.panel.observer import PanelObserver
from flux_nb.server.fault_injection import Fault, FaultPlan


@pytest.fixture
def flux(server_factory: Any, history_dir: Path) -> Flux:
    server = server_factory(latency=0.3)
    session = Flux(endpoint=server.url, history_dir=history_dir)
    session.server = server  # type: ignore[attr-defined]
    yield session
    session.close()


def wait_idle(panel: Panel, timeout: float = 20.0) -> None:
    """Wait for the batch in flight: its future resolves once the panel is back to idle."""
    batch = panel._future
    if batch is not None:
        batch.result(timeout)
    assert panel._future is None, "the panel did not finish"


DRAFT = "512×512 (fast drafts)"


def generated(flux: Flux, prompt: str, size: str = DRAFT) -> tuple[Panel, Result]:
    """A new panel that has generated one image for ``prompt`` at ``size``, and that result."""
    panel = Panel(flux)
    panel.prompt.value = prompt
    panel.size.value = size
    panel.submit()
    wait_idle(panel)
    return panel, panel.results[0]


def png_bytes(color: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (80, 60), color).save(buffer, "PNG")
    return buffer.getvalue()


def upload_label(panel: Panel) -> str:
    """The upload button's text as ipywidgets 8 renders it: ``f"{description} ({len(value)})"``."""
    return f"{panel.upload.description} ({len(panel.upload.value)})"


def browser_upload(panel: Panel, *names: str, content: bytes | None = None) -> None:
    """Files chosen in the browser (PNGs, or ``content``): the front end replaces the value with them, as JSON."""
    data = png_bytes() if content is None else content
    files = [
        {"name": n, "type": "image/png", "size": len(data), "content": memoryview(data), "last_modified": 0}
        for n in names
    ]
    panel.upload.set_state({"value": files})


def test_generate_fills_the_gallery_and_counts_credits(flux: Flux) -> None:
    panel = Panel(flux)
    panel.prompt.value = "a lighthouse"
    panel.size.value = DRAFT
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
    panel.size.value = DRAFT
    panel.generate.click()
    panel.generate.click()
    panel.submit()
    wait_idle(panel)
    assert flux.server.stats()["submits"] == 1  # type: ignore[attr-defined]


def test_invalid_custom_size_disables_generate_with_the_reason(flux: Flux) -> None:
    panel = Panel(flux)
    panel.size.value = "custom"
    panel.width.value = 63
    assert panel.generate.disabled and "below the minimum" in panel.size_note.value
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


@pytest.mark.slow  # seconds of real waiting; the full suite runs it
def test_cancel_stops_waiting_and_keeps_the_record_for_resume(server_factory: Any, history_dir: Path) -> None:
    server = server_factory(latency=3.0)
    flux = Flux(endpoint=server.url, history_dir=history_dir)
    try:
        panel = Panel(flux)
        panel.prompt.value = "slow"
        panel.size.value = DRAFT
        panel.submit()
        deadline = time.monotonic() + 10
        while not flux.store.resumable() and time.monotonic() < deadline:
            time.sleep(0.02)
        panel.stop()
        wait_idle(panel)
        assert "cancelled" in panel.status.value
        assert len(flux.store.resumable()) == 1
        # The cancelled request leaves this process's in-flight set on flux_nb's loop thread, a moment later.
        deadline = time.monotonic() + 10
        while flux._ledger.in_flight and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [r.status for r in flux.resume()] == ["ready"]
    finally:
        flux.close()


def test_remix_loads_a_results_settings(flux: Flux) -> None:
    panel, result = generated(flux, "remix me", "16:9 · 1360×768")
    panel.prompt.value = "something else"
    panel.size.value = DRAFT
    panel.remix(result)
    assert panel.prompt.value == "remix me" and panel.seed.value == result.seed and panel.lock_seed.value
    assert (panel.width.value, panel.height.value) == (1360, 768) and panel.size.value.startswith("16:9")


def test_references_upload_limit_remove_and_reuse(flux: Flux) -> None:
    panel = Panel(flux)
    browser_upload(panel, "a.png")
    assert len(panel.references.slots) == 1 and [f["name"] for f in panel.upload.value] == ["a.png"]
    browser_upload(panel, "bad.png", content=b"not an image")
    assert "not a readable image" in panel.error.value and len(panel.references.slots) == 1
    for _ in range(MAX_SLOTS):
        panel.add_reference(png_bytes("blue"))
    assert len(panel.references.slots) == MAX_SLOTS and f"at most {MAX_SLOTS}" in panel.error.value
    panel.references.remove(panel.references.slots[0])
    assert len(panel.references.slots) == MAX_SLOTS - 1
    panel.prompt.value = "edit with references"
    panel.size.value = DRAFT
    panel.submit()
    wait_idle(panel)
    assert panel.results[0].ok
    assert len(flux.history().iloc[-1]["input_hashes"]) == MAX_SLOTS - 1


def test_a_failed_request_is_shown_and_the_panel_keeps_working(flux: Flux) -> None:
    panel = Panel(flux)
    panel.prompt.value = "first"
    panel.size.value = DRAFT
    flux.endpoint = "http://127.0.0.1:9"  # nothing listens there
    flux._ready_executor().client.retry = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.02)
    panel.submit()
    wait_idle(panel)
    assert "could not reach" in panel.error.value
    flux.endpoint = flux.server.url  # type: ignore[attr-defined]
    panel.submit()
    wait_idle(panel)
    assert len(panel.gallery.children) == 1


def card_button(panel: Panel, css_class: str, index: int = 0) -> w.Button:
    """A gallery card's button by its CSS class (cards are newest first)."""
    card = panel.gallery.children[index]
    return next(b for b in card.children[2].children if css_class in b._dom_classes)


def test_status_line_counts_the_batchs_credits_as_it_goes(flux: Flux) -> None:
    panel = Panel(flux)
    statuses: list[str] = []
    costs: list[tuple[int, str]] = []  # (requests ended, cost line) at each change of the cost line
    panel.status.observe(lambda change: statuses.append(change["new"]), "value")
    panel.cost.observe(lambda change: costs.append((panel.observer.done, change["new"])), "value")
    panel.prompt.value = "credits as they come"
    panel.size.value = DRAFT
    panel.count.value = 2
    panel.submit()
    wait_idle(panel)
    each = panel.results[0].cost
    assert each and each > 0
    assert any("0.00 credits so far" in s for s in statuses)  # before anything has finished
    assert any(f"1 of 2 done · {each:.2f} credits so far" in s for s in statuses)
    assert f"· {2 * each:.2f} credits" in statuses[-1] and "done: 2 image(s)" in statuses[-1]
    # The running total moved after the first image, not at the end (the second may be paid for already).
    assert costs[0][0] == 1 and any(f"Credits spent: {n * each:.2f}" in costs[0][1] for n in (1, 2))
    assert f"Credits spent: {2 * each:.2f}" in panel.cost.value


def test_remix_restores_safety_format_and_reference_images(flux: Flux) -> None:
    panel = Panel(flux)
    panel.prompt.value = "remix everything"
    panel.size.value = DRAFT
    panel.safety.value, panel.format.value = 1, "png"
    panel.add_reference(png_bytes("red"))
    sent = panel.references.slots[0].image.sha256
    panel.submit()
    wait_idle(panel)
    result = panel.results[0]
    assert result.ok and not result.cached

    panel.safety.value, panel.format.value = 5, "jpeg"
    panel.clear_references()
    panel.add_reference(png_bytes("blue"))
    panel.add_reference(png_bytes("green"))
    panel.remix(result)
    assert (panel.safety.value, panel.format.value) == (1, "png")
    assert [s.image.sha256 for s in panel.references.slots] == [sent]
    assert len(panel.slots_box.children) == 1 and panel.error.value == ""
    panel.submit()  # the very same request: answered from the history, for free
    wait_idle(panel)
    assert panel.results[0].cached and panel.results[0].path == result.path  # a use of the same image


def test_remix_says_when_a_reference_image_is_gone(flux: Flux) -> None:
    panel = Panel(flux)
    panel.prompt.value = "lost reference"
    panel.size.value = DRAFT
    panel.add_reference(png_bytes("red"))
    panel.submit()
    wait_idle(panel)
    for stored in (flux.store.root / "inputs").iterdir():
        stored.unlink()
    panel.remix(panel.results[0])
    assert "no longer stored" in panel.error.value and panel.prompt.value == "lost reference"
    assert panel.references.slots == []


def test_a_failing_event_handler_is_shown_and_never_stops_the_batch(
    flux: Flux, monkeypatch: pytest.MonkeyPatch
) -> None:
    panel = Panel(flux)

    def broken(*args: Any) -> None:
        raise RuntimeError("display broke")

    monkeypatch.setattr(PanelObserver, "_progress", broken)
    unfinished_when_enabled: list[list[str]] = []
    panel.generate.observe(
        lambda change: (
            change["new"] or unfinished_when_enabled.append([s for s in flux.history()["status"] if s != "ready"])
        ),
        "disabled",
    )
    panel.prompt.value = "keep going"
    panel.size.value = DRAFT
    panel.count.value = 2
    panel.submit()
    wait_idle(panel)
    assert "display broke" in panel.error.value
    assert len(panel.gallery.children) == 2 and "done: 2 image(s)" in panel.status.value
    assert unfinished_when_enabled == [[]]  # re-enabled once, with every request ended


def test_generate_stays_disabled_while_any_request_is_in_flight(server_factory: Any, history_dir: Path) -> None:
    server = server_factory(latency=0.3, faults=FaultPlan(task_error=Fault(on=frozenset({1}))))
    flux = Flux(endpoint=server.url, history_dir=history_dir)
    try:
        panel = Panel(flux)
        panel.prompt.value = "one breaks, one runs"
        panel.size.value = DRAFT
        panel.count.value = 2
        statuses_when_enabled: list[list[str]] = []
        panel.generate.observe(
            lambda change: change["new"] or statuses_when_enabled.append(sorted(flux.history()["status"])),
            "disabled",
        )
        panel.submit()
        wait_idle(panel)
        assert statuses_when_enabled == [["failed", "ready"]]  # once, when neither request was still running
        assert "injected task_error" in panel.error.value
        assert "done: 1 image(s), 1 failed" in panel.status.value and len(panel.gallery.children) == 1
    finally:
        flux.close()


def test_a_batch_that_raises_is_shown_and_the_panel_keeps_working(flux: Flux, monkeypatch: pytest.MonkeyPatch) -> None:
    panel = Panel(flux)
    panel.prompt.value = "a bug, then a fix"
    panel.size.value = DRAFT
    executor = flux._ready_executor()

    async def failing_execute(*args: Any, **kwargs: Any) -> Result:
        raise RuntimeError("a bug in the request")

    monkeypatch.setattr(executor, "execute", failing_execute)
    panel.submit()
    wait_idle(panel)
    assert "unexpected error: a bug in the request" in panel.error.value
    assert "stopped by an error" in panel.status.value and not panel.generate.disabled
    monkeypatch.undo()
    panel.submit()
    wait_idle(panel)
    assert panel.error.value == "" and len(panel.gallery.children) == 1


def test_edit_this_puts_the_result_in_a_reference_slot(flux: Flux) -> None:
    panel, result = generated(flux, "the original")
    card_button(panel, "flux-reuse").click()
    assert len(panel.references.slots) == 1
    digest = hashlib.sha256(result.path.read_bytes()).hexdigest()  # type: ignore[union-attr]
    assert panel.references.slots[0].image.sha256 == digest == flux.history().iloc[-1]["image_sha256"]
    panel.prompt.value = "an edit of the original"
    panel.submit()
    wait_idle(panel)
    newest = flux.history().iloc[-1]
    assert newest["prompt"] == "an edit of the original" and list(newest["input_hashes"]) == [digest]
    failed = Result(
        record_id="r-failed", status="failed", prompt="p", model=flux.model, seed=1, width=None, height=None
    )
    panel.add_reference(failed)
    assert "has no image" in panel.error.value and len(panel.references.slots) == 1


def test_random_seed_button_and_seed_lock(flux: Flux) -> None:
    panel = Panel(flux)
    panel.seed.value = 7
    panel.random_seed.click()
    assert panel.seed.value != 7 and 0 <= panel.seed.value < 2**32
    panel.prompt.value = "seeds"
    panel.size.value = DRAFT
    panel.seed.value, panel.lock_seed.value = 1234, True
    panel.submit()
    wait_idle(panel)
    assert panel.seed.value == 1234 and flux.history().iloc[-1]["seed"] == 1234
    panel.seed.value, panel.lock_seed.value = 4321, False
    panel.submit()  # sends 4321, then draws the next seed
    wait_idle(panel)
    assert flux.history().iloc[-1]["seed"] == 4321 and panel.seed.value != 4321


def test_safety_and_format_reach_the_request(flux: Flux) -> None:
    panel = Panel(flux)
    panel.prompt.value = "strict png"
    panel.size.value = DRAFT
    panel.safety.value, panel.format.value = 4, "png"
    panel.submit()
    wait_idle(panel)
    row = flux.history().iloc[-1]
    assert (row["safety_tolerance"], row["output_format"]) == (4, "png")
    assert panel.results[0].path.suffix == ".png"  # type: ignore[union-attr]
    with Image.open(panel.results[0].path) as image:  # type: ignore[arg-type]
        assert image.format == "PNG"


def test_the_flux_panel_magic_opens_a_panel_on_the_session(server: Any, history_dir: Path) -> None:
    InteractiveShell.clear_instance()
    shell = InteractiveShell.instance()
    try:
        shell.run_line_magic("load_ext", "flux_nb")
        session: Flux = shell.user_ns["flux"]
        session.endpoint, session.history_dir = server.url, str(history_dir)
        opened: list[Panel] = []
        make_panel = session.panel
        session.panel = lambda: opened.append(make_panel()) or opened[-1]  # type: ignore[method-assign]
        with capture_output() as captured:
            outcome = shell.run_cell("%flux panel")
        assert outcome.success and len(opened) == 1
        panel = opened[0]
        shown = captured.outputs[-1].data  # displayed: a notebook shows it as the widget
        view = {"version_major": 2, "version_minor": 0, "model_id": panel.model_id}
        assert shown["application/vnd.jupyter.widget-view+json"] == view
        assert panel.session is session
        panel.prompt.value = "from the magic"
        panel.size.value = DRAFT
        panel.submit()
        wait_idle(panel)
        assert len(panel.gallery.children) == 1
        assert list(shell.user_ns["flux_history"]["prompt"]) == ["from the magic"]  # the magic's listener ran
    finally:
        shell.user_ns["flux"].close()
        InteractiveShell.clear_instance()


def test_the_kernel_thread_stays_free_while_the_panel_generates(
    server_factory: Any, history_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = server_factory(latency=1.5)
    flux = Flux(endpoint=server.url, history_dir=history_dir)
    try:
        panel = Panel(flux)
        threads: set[str] = set()
        for name in ("progress", "finished"):
            handler = getattr(PanelObserver, name)

            def spy(observer: PanelObserver, event: Any, handler: Any = handler) -> None:
                threads.add(threading.current_thread().name)
                handler(observer, event)

            monkeypatch.setattr(PanelObserver, name, spy)
        panel.prompt.value = "meanwhile"
        panel.size.value = DRAFT
        panel.count.value = 2
        assert flux._ready_executor() is not None  # built up front, so the timing below is the submit alone
        panel.submit()
        assert panel._future is not None and not panel._future.done(), "submit waited for the images"
        ticks, seen = 0, set()
        while panel._future is not None:  # the "kernel" keeps running code while the images are made
            ticks += 1
            seen.add(panel.status.value.split("·")[0])
            time.sleep(0.01)
        assert ticks > 0 and len(panel.gallery.children) == 2  # the calling thread ran on while they were made
        assert threads == {"flux-nb-loop"} and threading.current_thread().name not in threads
        assert len(seen) > 1  # the status line changed while the kernel thread was busy elsewhere
    finally:
        flux.close()


def test_a_variables_image_becomes_a_reference_and_reaches_the_request(flux: Flux, tmp_path: Path) -> None:
    path = tmp_path / "on-disk.png"
    path.write_bytes(png_bytes("yellow"))
    namespace: dict[str, Any] = {
        "pil": Image.new("RGB", (64, 48), "orange"),
        "array": np.full((40, 50, 3), 200, dtype=np.uint8),
        "raw": png_bytes("blue"),
        "path": str(path),
        "url": "https://example.com/cat.png",
    }
    panel = Panel(flux, namespace=namespace)
    for name in ("pil", "array", "raw", "path"):
        panel.variable.value = f" {name} "
        panel.add_variable.click()
        assert panel.error.value == "" and panel.variable.value == ""  # the field empties once added
    assert [s.name for s in panel.references.slots] == ["pil", "array", "raw", "path"]
    assert panel.references.slots[3].image.sha256 == sha256_hex(path.read_bytes())
    assert upload_label(panel) == "References (4)"
    panel.variable.value = "url"
    panel.add_variable.click()
    assert f"at most {MAX_SLOTS} reference images" in panel.error.value and len(panel.references.slots) == MAX_SLOTS
    assert panel.variable.value == "url"  # kept, to add once a slot is free

    sent = [s.image.sha256 for s in panel.references.slots]
    panel.prompt.value = "four variables"
    panel.size.value = DRAFT
    panel.submit()
    wait_idle(panel)
    assert panel.results[0].ok
    assert list(flux.history().iloc[-1]["input_hashes"]) == sent

    namespace["earlier"] = panel.results[0]
    panel.clear_references()
    panel.add_from_variable("url")
    panel.add_from_variable("earlier")
    url, earlier = panel.references.slots
    assert panel.error.value == ""
    assert url.image.is_url and url.image.value == "https://example.com/cat.png"
    assert earlier.image.sha256 == sha256_hex(panel.results[0].path.read_bytes())  # type: ignore[union-attr]
    assert (url.name, earlier.name) == ("url", f"result {panel.results[0].record_id}")
    panel.clear_references()
    panel.add_from_variable("earlier")
    panel.prompt.value = "an edit of a result held in a variable"
    panel.submit()
    wait_idle(panel)
    assert list(flux.history().iloc[-1]["input_hashes"]) == [flux.history().iloc[-2]["image_sha256"]]


def test_a_variable_that_is_unknown_or_no_image_is_refused_in_words(flux: Flux) -> None:
    failed = Result(record_id="r-gone", status="failed", prompt="p", model=flux.model, seed=1, width=None, height=None)
    namespace = {"number": 42, "items": [png_bytes()], "junk": b"not an image", "words": "a cat", "failed": failed}
    panel = Panel(flux, namespace=namespace)
    cases = {
        "": "type the name of a notebook variable",
        "missing": "no variable named 'missing' in the notebook",
        "items[0]": "give a plain variable name",
        "number": "variable 'number' holds a int, not an image; use a PIL image",
        "items": "it holds 1 items: pick one, e.g. img = items[0]",
        "junk": "junk: the data is not a readable image",
        "words": "words: no file at 'a cat'",
        "failed": "result r-gone has no image to use",
    }
    for name, reason in cases.items():
        panel.variable.value = name
        panel.add_variable.click()
        assert reason in html.unescape(panel.error.value), (name, panel.error.value)
        assert panel.references.slots == [] and panel.variable.value == name
    assert upload_label(panel) == "References (0)" and flux.server.stats()["submits"] == 0  # type: ignore[attr-defined]


def test_the_variable_field_reads_the_notebooks_namespace(flux: Flux) -> None:
    InteractiveShell.clear_instance()
    shell = InteractiveShell.instance()
    try:
        shell.run_cell("from PIL import Image\nsketch = Image.new('RGB', (32, 32), 'purple')")
        panel = Panel(flux)
        panel.variable.value = "sketch"
        panel.add_variable.click()
        assert panel.error.value == "" and [s.name for s in panel.references.slots] == ["sketch"]
    finally:
        InteractiveShell.clear_instance()
    panel = Panel(flux)  # outside IPython there is no namespace to look in
    panel.variable.value = "sketch"
    panel.add_variable.click()
    assert "not running in IPython" in panel.error.value and panel.references.slots == []


def test_the_upload_button_counts_the_attached_references(flux: Flux, tmp_path: Path) -> None:
    panel = Panel(flux, namespace={"pil": Image.new("RGB", (30, 30), "teal")})
    assert upload_label(panel) == "References (0)"
    browser_upload(panel, "a.png", "b.png")
    assert len(panel.references.slots) == 2 and upload_label(panel) == "References (2)"  # not "(0)" once consumed
    panel.add_from_variable("pil")
    assert upload_label(panel) == "References (3)"
    browser_upload(panel, "c.png")  # the next upload still arrives, and adds to the count
    assert [s.name for s in panel.references.slots] == ["a.png", "b.png", "pil", "c.png"]
    assert upload_label(panel) == "References (4)"
    assert [f["name"] for f in panel.upload.value] == ["a.png", "b.png", "pil", "c.png"]
    assert all(len(f["content"]) == 0 for f in panel.upload.value)  # names only: no bytes go back to the browser
    browser_upload(panel, "d.png")  # a fifth: refused, and the count stays true
    assert "at most 4" in panel.error.value and upload_label(panel) == "References (4)"
    panel.references.remove(panel.references.slots[0])
    assert upload_label(panel) == "References (3)"
    panel.clear_references()
    assert upload_label(panel) == "References (0)"
    browser_upload(panel, "again.png")
    assert upload_label(panel) == "References (1)" and panel.upload.get_state()["value"][0]["name"] == "again.png"


def test_credit_figures_say_when_nothing_is_billed(flux: Flux, monkeypatch: pytest.MonkeyPatch) -> None:
    panel = Panel(flux)  # the test server is a local endpoint: nothing is billed
    assert "Credits spent: 0.00 (not billed: local server)" in panel.cost.value
    panel.prompt.value = "free"
    panel.size.value = DRAFT
    panel.submit()
    wait_idle(panel)
    each = panel.results[0].cost
    assert each and not panel.results[0].billed
    assert f"Credits spent: {each:.2f} (not billed: local server)" in panel.cost.value
    assert f"{each:.2f} credits (not billed: local server)" in panel.status.value
    caption = panel.gallery.children[0].children[1].value
    assert f"{each:.2f} credits (not billed: local server)" in caption

    monkeypatch.setattr(flux, "_backend", Backend(flux.endpoint, "bfl", billed=True))
    billed = Panel(flux)
    assert "Credits spent: " in billed.cost.value and "not billed" not in billed.cost.value
    billed.gallery.add(Result("r-billed", "ready", "p", flux.model, 1, 512, 512, panel.results[0].path, cost=each))
    assert "not billed" not in billed.gallery.children[0].children[1].value


def test_a_panel_opens_even_when_the_backend_cannot_be_chosen(
    history_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BFL_API_KEY", raising=False)
    monkeypatch.delenv("FLUX_NB_API_KEY", raising=False)
    flux = Flux(endpoint="https://api.bfl.ai", history_dir=history_dir)  # needs a key, and has none
    try:
        panel = Panel(flux)
        assert "Credits spent: 0.00" in panel.cost.value and "not billed" not in panel.cost.value
        panel.prompt.value = "no key"
        panel.submit()
        assert "API key" in panel.error.value and panel._future is None
    finally:
        flux.close()


def stars_shown(panel: Panel, result: Result) -> int:
    """How many stars a card shows lit."""
    return sum(star.icon == "star" for star in panel.gallery.reviews[result.record_id].stars)


def test_a_cards_stars_and_heart_call_the_sessions_review_api(flux: Flux, monkeypatch: pytest.MonkeyPatch) -> None:
    panel, result = generated(flux, "a red kite over a hill")
    calls: list[tuple[str, str, object]] = []
    monkeypatch.setattr(
        flux, "rate", lambda target, stars: calls.append(("rate", target.record_id, stars)), raising=False
    )
    monkeypatch.setattr(
        flux, "favourite", lambda target, on=True: calls.append(("favourite", target.record_id, on)), raising=False
    )
    review = panel.gallery.reviews[result.record_id]
    assert stars_shown(panel, result) == 0 and review.heart.value is False
    review.stars[3].click()
    assert calls == [("rate", result.record_id, 4)] and stars_shown(panel, result) == 4
    review.heart.value = True
    review.heart.value = False
    assert calls[1:] == [("favourite", result.record_id, True), ("favourite", result.record_id, False)]
    assert panel.error.value == "" and "favourite" in panel.status.value


def test_a_review_that_fails_is_shown_and_the_card_keeps_what_is_stored(
    flux: Flux, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flux_nb.errors import ValidationError

    panel, result = generated(flux, "a red kite over a hill")

    def refuse(target: object, *args: object, **kwargs: object) -> None:
        raise ValidationError("stars must be 1 to 5, got 9")

    monkeypatch.setattr(flux, "rate", refuse, raising=False)
    monkeypatch.setattr(flux, "favourite", refuse, raising=False)
    review = panel.gallery.reviews[result.record_id]
    review.stars[1].click()
    assert "stars must be 1 to 5" in html.unescape(panel.error.value) and stars_shown(panel, result) == 0
    review.heart.value = True
    assert review.heart.value is False and review.heart.button_style == ""


def test_a_star_click_reaches_the_history(flux: Flux) -> None:
    panel, result = generated(flux, "a red kite over a hill")
    review = panel.gallery.reviews[result.record_id]
    review.stars[2].click()
    review.heart.value = True
    row = flux.history().set_index("record_id").loc[result.record_id]
    assert row["rating"] == 3 and bool(row["favourite"]) is True
    assert panel.error.value == "" and stars_shown(panel, result) == 3


def test_the_status_line_keeps_time_between_events_and_stops_with_the_batch(
    flux: Flux, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flux_nb.core.events import Progress
    from flux_nb.notebook.panel import observer as observer_module

    panel = Panel(flux)
    clock = [500.0]
    monkeypatch.setattr(observer_module.time, "monotonic", lambda: clock[0])
    watcher = PanelObserver(panel.messages, lambda result: None)
    monkeypatch.setattr(watcher, "_run_ticks", lambda: None)  # ticks driven by hand below
    watcher.started([object(), object()])
    watcher.progress(Progress(0, "Submitted", 0.0))
    said = [panel.status.value]
    for _ in range(2):
        clock[0] += 1.5
        watcher.tick()
        said.append(panel.status.value)
    assert [html.unescape(s).split(" · ")[:2] for s in said] == [
        ["<span>generating", "0.0 s"],
        ["<span>generating", "1.5 s"],
        ["<span>generating", "3.0 s"],
    ]
    watcher.stop_ticks()
    clock[0] += 1.0
    watcher.tick()
    assert panel.status.value == said[-1]  # over: no more redraws


def test_a_running_panel_batch_has_a_ticker_that_ends_with_it(flux: Flux) -> None:
    panel = Panel(flux)
    panel.prompt.value = "a ticking clock"
    panel.size.value = DRAFT
    panel.submit()
    ticker = panel.observer._ticker
    assert ticker is not None
    wait_idle(panel)
    ticker.join(timeout=5)
    assert not ticker.is_alive() and panel.status.value.startswith("<span>done: 1 image")


def test_a_large_batch_waits_for_the_send_anyway_button(flux: Flux) -> None:
    """Past Flux.confirm_over nothing is sent until the user confirms; then the same form goes out."""
    flux.confirm_over = 1.0  # two 512x512 klein images are estimated at 2.8 credits
    panel = Panel(flux)
    panel.prompt.value = "a guarded pair"
    panel.size.value = DRAFT
    panel.count.value = 2
    panel.submit()
    assert panel._future is None and flux.server.stats()["submits"] == 0  # type: ignore[attr-defined]
    assert "2 request" in panel.error.value and panel.confirm.layout.display == ""
    panel.confirm.click()
    wait_idle(panel)
    assert flux.server.stats()["submits"] == 2  # type: ignore[attr-defined]
    assert len(panel.gallery.children) == 2 and panel.confirm.layout.display == "none"
