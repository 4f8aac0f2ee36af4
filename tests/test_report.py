"""The HTML report: one self-contained page, checked as text and in headless Chromium.

The browser test needs Debian's chromium and the Python ``playwright`` package; it is skipped with
the reason when either is missing, except under CI (``CI`` set), where a missing one fails it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from flux_nb.errors import ValidationError
from flux_nb.export.report import write_report
from flux_nb.grids import grid
from flux_nb.history.store import HistoryStore
from tests.experiments import make_experiment
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, missing_requirement, under_ci


@pytest.fixture
def store(tmp_path: Path) -> HistoryStore:
    return make_experiment(tmp_path / "history", count=12, failed=1)


@pytest.fixture
def rated(store: HistoryStore) -> pd.DataFrame:
    ratings = [3, 5, 1, 2, 4, 5, 1, 2, 3, 4, 5, None]
    notes = ["<b>keep</b> this one", *[""] * 11]
    return store.to_frame().assign(rating=pd.array(ratings, dtype="Int64"), notes=notes)


def test_the_page_is_self_contained_and_escapes_what_it_shows(
    store: HistoryStore, rated: pd.DataFrame, tmp_path: Path
) -> None:
    page = write_report(rated, store.root, tmp_path / "out" / "report.html", title="Fox <sweep>").read_text()
    assert re.findall(r'(?:src|href)="(?!data:)', page) == []  # nothing is fetched from anywhere
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert page.count('class="thumb" src="data:image/jpeg;base64,') == 11  # every ready row; the failed one has none
    assert page.count('class="grid" src="data:image/jpeg;base64,') == 1
    assert "<title>Fox &lt;sweep&gt;</title>" in page and "&lt;b&gt;keep&lt;/b&gt; this one" in page
    assert "<b>keep</b>" not in page
    assert str(store.root) not in page  # no local paths leak into a page meant to be shared


def test_the_summary_splits_billed_from_not_billed_credits(store: HistoryStore, tmp_path: Path) -> None:
    frame = store.to_frame()
    page = write_report(frame, store.root, tmp_path / "r.html").read_text()
    ready = frame[frame["status"] == "ready"]
    billed = ready[ready["backend"] == "bfl"]
    assert len(billed) == 6 and billed["cost"].sum() == pytest.approx(8.4)
    assert "credits billed (BFL API)</span><br><b>8.40 over 6 images" in page
    assert "credits not billed (local)</span><br><b>0.00 over 5 images" in page
    assert "not ready</span><br><b>1<" in page


def test_grids_can_be_given_or_left_out(store: HistoryStore, tmp_path: Path) -> None:
    frame = store.to_frame()
    given = [grid(frame, x="prompt", y="seed"), {"x": "seed", "z": "prompt"}]  # one page, then three
    page = write_report(frame, store.root, tmp_path / "a.html", grids=given).read_text()
    assert page.count('class="grid"') == 4
    assert 'class="grid"' not in write_report(frame, store.root, tmp_path / "b.html", grids=[]).read_text()
    with pytest.raises(ValidationError, match="takes a history DataFrame"):
        write_report(frame.to_dict("records"), store.root, tmp_path / "c.html")  # type: ignore[arg-type]


def test_relative_image_paths_are_read_from_the_history_dir(store: HistoryStore, tmp_path: Path) -> None:
    frame = store.to_frame()
    frame["image_path"] = [None if pd.isna(p) else str(Path(p).relative_to(store.root)) for p in frame["image_path"]]
    page = write_report(frame, store.root, tmp_path / "r.html", grids=[]).read_text()
    assert page.count('class="thumb"') == 11


@pytest.fixture
def browser() -> Iterator[Any]:
    missing = missing_requirement()
    if missing is not None:
        if under_ci():
            pytest.fail(f"{missing}; CI must run the browser tests, not skip them", pytrace=False)
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


def column(page: Any, index: int) -> list[str]:
    return page.eval_on_selector_all("table.records tbody tr", f"rows => rows.map(r => r.cells[{index}].textContent)")


@pytest.mark.browser
def test_in_chromium_images_load_and_headers_sort_the_table(
    store: HistoryStore, rated: pd.DataFrame, tmp_path: Path, browser: Any
) -> None:
    seconds = [9.0, 10.0, 100.0, 0.5, 2.0, 30.0, 7.0, 11.0, 1.0, 3.0, 200.0, None]
    rated = rated.assign(duration_s=pd.array(seconds, dtype="Float64"))
    path = write_report(rated, store.root, tmp_path / "report.html", title="Fox sweep")
    context = browser.new_context(viewport={"width": 1280, "height": 900}, offline=True)
    page = context.new_page()
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : -1)")
    assert len(widths) == 12 and all(width > 0 for width in widths)  # 11 thumbnails and the grid
    assert all(url.startswith(("file:", "data:")) for url in requests)
    headers = page.eval_on_selector_all("table.records th", "hs => hs.map(h => h.textContent)")
    seed, rating, prompt = (headers.index(name) for name in ("seed", "rating", "prompt"))
    assert column(page, seed) == [str(s) for s in rated["seed"]]  # history order: oldest first

    page.get_by_role("button", name="rating").click()
    ascending = [int(v) if v else None for v in column(page, rating)]
    assert ascending == [None, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 5]
    assert page.get_attribute(f"table.records th:nth-child({rating + 1})", "aria-sort") == "ascending"
    page.get_by_role("button", name="rating").click()
    assert [int(v) if v else None for v in column(page, rating)] == [5, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, None]

    page.get_by_role("button", name="seconds").click()  # numbers sort as numbers: 9 before 10, 10 before 100
    expected = ["", "0.50", "1.00", "2.00", "3.00", "7.00", "9.00", "10.00", "11.00", "30.00", "100.00", "200.00"]
    assert column(page, headers.index("seconds")) == expected

    page.get_by_role("button", name="prompt").click()
    assert column(page, prompt) == sorted(rated["prompt"], key=str.lower)
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    context.close()
