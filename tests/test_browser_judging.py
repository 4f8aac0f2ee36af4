"""Judging in a real JupyterLab and Notebook 7 (light and dark), through headless Chromium: drag the
compare slider, filter the history browser, rate from it, and see the review in ``flux_history``.

Reuses the Jupyter server, Chromium and helpers of ``tests/test_browser.py`` (same requirements: Debian's
chromium and the playwright package; skipped without them outside CI). Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import re

import pytest

from tests import test_browser as shared
from tests.test_browser import Lab, open_and_run_all, write_notebook

# The shared fixtures: one Jupyter server and one Chromium for the module, a page per test.
browser_requirements, lab, browser, page = shared.browser_requirements, shared.lab, shared.browser, shared.page
ACTIVE_STARS = (
    "() => [...document.querySelectorAll('.flux-browse-card')][0].querySelector('button.mod-active')?.innerText === '4'"
)
TWO_ROWS = "() => document.querySelector('.flux-browse .flux-browse-status').innerText.startsWith('1-2 of 2')"

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(900)]

CELLS = (
    "%load_ext flux_nb\nflux.history_dir = {history!r}  # a history of its own for each test",
    "a = flux.generate('an owl at night', seed=1, size=(256, 256))\n"
    "b = flux.generate('an owl at night', seed=2, size=(256, 256))\n"
    "c = flux.generate('a fox in snow', seed=3, size=(256, 256))",
    "flux.compare(a, b)",
    "flux.browse()",
    "print('RATINGS', flux_history.set_index('record_id')['rating'].dropna().astype(int).to_dict())",
)


def _run_cell(page: object, index: int) -> None:
    """Run one cell again: select it (command mode) and press Shift+Enter."""
    cell = page.locator(".jp-Notebook .jp-CodeCell").nth(index)
    cell.locator(".jp-InputPrompt").click()
    page.keyboard.press("Shift+Enter")


@pytest.mark.parametrize("theme", ["light", "dark"])
@pytest.mark.parametrize("front_end", ["jupyterlab", "notebook7"])
def test_compare_slider_browse_filter_and_rating_reach_flux_history(
    lab: Lab, page: object, front_end: str, theme: str
) -> None:
    lab.theme(theme)
    name = f"judging-{front_end}-{theme}.ipynb"
    write_notebook(lab, name, CELLS[0].format(history=f".flux-{front_end}-{theme}"), *CELLS[1:])
    open_and_run_all(page, lab, name, front_end)
    page.wait_for_selector(".flux-compare .fc-range", state="visible", timeout=120_000)
    page.wait_for_function("() => document.querySelector('.flux-compare .fc-under').naturalWidth > 0")

    slider = page.locator(".flux-compare .fc-range")
    box = slider.bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] / 2, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.2, y, steps=8)
    page.mouse.up()
    width = page.eval_on_selector(".flux-compare .fc-over", "e => parseFloat(e.style.width)")
    assert 10 < width < 30, width
    page.locator(".flux-compare .fc-bar button", has_text="difference").click()
    page.wait_for_function("() => document.querySelector('.flux-compare .fc-under').src.startsWith('data:image/png')")
    assert page.locator(".flux-compare .fc-range").is_hidden()

    page.wait_for_selector(".flux-browse .flux-browse-card img", state="visible", timeout=60_000)
    status = page.locator(".flux-browse .flux-browse-status")
    assert re.match(r"1-3 of 3 rows", status.inner_text()), status.inner_text()
    prompt = page.get_by_placeholder("words in the prompt")
    prompt.fill("owl")
    prompt.press("Enter")
    page.wait_for_function(TWO_ROWS)
    card = page.locator(".flux-browse .flux-browse-card").first
    card.locator("button", has_text=re.compile(r"^4$")).click()
    page.wait_for_function(ACTIVE_STARS)
    record = page.eval_on_selector(".flux-browse .flux-browse-card code", "e => e.innerText")

    _run_cell(page, len(CELLS) - 1)
    expected = f"RATINGS {{'{record}': 4}}"
    page.wait_for_function(
        "(want) => [...document.querySelectorAll('.jp-OutputArea-output')].some(e => e.innerText.includes(want))",
        arg=expected,
        timeout=60_000,
    )
