"""``flux.browse()``: pages of thumbnails read by SQL, filters, reviews from the cards, and actions on a
selection. The images come from a real local server on 127.0.0.1."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from flux_nb import Flux
from flux_nb.errors import ValidationError
from flux_nb.history.queries import Queries
from flux_nb.notebook.browse import Browser, Pages
from flux_nb.notebook.compare import Comparison


@pytest.fixture
def filled(flux: Flux) -> Flux:
    """Ten rows: 'a fox' seeds 1-6 in experiment 'foxes', then '100% owl_x' seeds 1-4 on flux-2-pro."""
    with flux.experiment_scope("foxes") if hasattr(flux, "experiment_scope") else _experiment(flux, "foxes"):
        flux.sweep("a fox", seed=[1, 2, 3, 4, 5, 6], size=(64, 64))
    flux.sweep("100% owl_x", seed=[1, 2, 3, 4], size=(64, 64), model="flux-2-pro")
    return flux


class _experiment:
    def __init__(self, flux: Flux, name: str) -> None:
        self.flux, self.name = flux, name

    def __enter__(self) -> None:
        self.before, self.flux.experiment = self.flux.experiment, self.name

    def __exit__(self, *exc: object) -> None:
        self.flux.experiment = self.before


@pytest.fixture(autouse=True)
def closed(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Every browser a test opens is closed after it (its widgets, its reader)."""
    made: list[Browser] = []
    original = Browser.__init__

    def init(self: Browser, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(Browser, "__init__", init)
    yield
    for browser in made:
        browser.close()


def _shown(browser: Browser) -> list[str]:
    return [c.record_id for c in browser.cards if c.record_id]


def test_pages_run_newest_first_and_read_only_their_rows(filled: Flux, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[dict[str, Any]] = []
    original = Queries.query

    def query(self: Queries, **equals: Any) -> pd.DataFrame:
        asked.append(equals)
        return original(self, **equals)

    newest = list(filled.history()["record_id"])[::-1]
    monkeypatch.setattr(Queries, "query", query)
    monkeypatch.setattr(Queries, "to_frame", lambda *a, **k: pytest.fail("the whole history was read"))
    browser = filled.browse(page_size=4)
    assert _shown(browser) == newest[:4]
    assert browser.status.value == "1-4 of 10 rows · page 1 of 3"
    assert asked == [{"record_id": newest[:4]}]
    browser.next.click()
    browser.next.click()
    assert _shown(browser) == newest[8:] and browser.next.disabled and not browser.previous.disabled
    assert [c.box.layout.display for c in browser.cards] == ["", "", "none", "none"]
    browser.previous.click()
    assert _shown(browser) == newest[4:8]
    assert all(len(a["record_id"]) <= 4 for a in asked)


def test_filters_narrow_the_pages(filled: Flux) -> None:
    browser = filled.browse(page_size=24)
    assert "foxes" in browser.experiment.options and "flux-2-pro" in browser.model.options
    browser.experiment.value = "foxes"
    assert len(_shown(browser)) == 6 and browser.status.value.startswith("1-6 of 6 rows")
    browser.experiment.value = "(any)"
    browser.model.value = "flux-2-pro"
    assert len(_shown(browser)) == 4
    browser.model.value = "(any)"
    browser.text.value = "100% owl_"  # % and _ are the prompt's own characters, not wildcards
    assert len(_shown(browser)) == 4
    browser.text.value = "0% owl"
    assert len(_shown(browser)) == 4
    browser.text.value = "1_0"
    assert _shown(browser) == [] and browser.status.value.startswith("0 of 0 rows")
    browser.text.value = ""
    assert len(_shown(browser)) == 10
    only = filled.browse(experiment="foxes", page_size=3)
    assert only.experiment.value == "foxes" and only.total == 6


def test_reviews_made_on_cards_reach_the_history_and_filter(filled: Flux) -> None:
    browser = filled.browse(page_size=24)
    first, second = browser.cards[0], browser.cards[1]  # cards are reused: keep the ids they show now
    one, two = first.record_id, second.record_id
    first.stars.value = 4
    second.favourite.value = True
    second.note.value = "the keeper"
    frame = filled.history().set_index("record_id")
    assert frame.loc[one, "rating"] == 4
    assert bool(frame.loc[two, "favourite"]) and frame.loc[two, "note"] == "the keeper"
    assert frame["rating"].count() == 1 and frame["favourite"].sum() == 1
    browser.rating.value = 4
    assert _shown(browser) == [one] and browser.cards[0].stars.value == 4
    browser.rating.value = 0
    browser.only_favourites.value = True
    assert _shown(browser) == [two]
    assert browser.cards[0].favourite.value and browser.cards[0].note.value == "the keeper"
    filled.tag(two, add="best")
    browser.only_favourites.value = False
    browser.tag.value = "best"
    assert _shown(browser) == [two]
    browser.cards[0].favourite.value = False
    assert not filled.history().set_index("record_id").loc[two, "favourite"]


def test_showing_a_page_writes_no_review(filled: Flux) -> None:
    filled.rate(list(filled.history()["record_id"]), 3)
    before = filled.store.change_token()
    browser = filled.browse(page_size=4)
    browser.next.click()
    assert [c.stars.value for c in browser.cards] == [3, 3, 3, 3]
    assert filled.store.change_token() == before


def test_thumbnails_are_made_once_and_kept(filled: Flux, history_dir: Path) -> None:
    browser = filled.browse(page_size=24)
    kept = sorted((history_dir / "thumbnails").rglob("*.jpeg"))
    assert len(kept) == len(set(filled.history()["image_sha256"])) == 10
    assert all(c.image.value[:2] == b"\xff\xd8" for c in browser.cards if c.record_id)
    for path in filled.history()["image_path"]:
        Path(path).unlink()  # from now on only the kept thumbnails can show them
    again = filled.browse(page_size=24)
    assert [bytes(c.image.value) for c in again.cards] == [bytes(c.image.value) for c in browser.cards]


def test_a_selection_compares_grids_and_exports(filled: Flux, tmp_path: Path) -> None:
    browser = filled.browse(page_size=24)
    with pytest.raises(ValidationError, match="select one or more"):
        browser.compare()
    browser.cards[0].selected.value = browser.cards[1].selected.value = True
    shown = browser.compare()
    assert isinstance(shown, Comparison) and [s.record_id for s in shown.items] == _shown(browser)[1::-1]
    browser.cards[2].selected.value = True
    assert browser.grid() is not None
    path = browser.export(str(tmp_path / "picked.zip"))
    with zipfile.ZipFile(path) as bundle:
        assert sum(name.startswith("images/") for name in bundle.namelist()) == 3
    browser.compare_button.click()
    assert isinstance(browser.shown, Comparison) and len(browser.shown.items) == 3


def test_bad_filters_and_sizes_are_refused_before_drawing(flux: Flux) -> None:
    with pytest.raises(ValidationError, match="cannot filter on"):
        flux.browse(colour="red")
    with pytest.raises(ValidationError, match="page_size"):
        flux.browse(page_size=0)
    empty = flux.browse()
    assert _shown(empty) == [] and empty.status.value.startswith("0 of 0 rows")
    assert Pages(Path(flux.history_dir) / "nowhere").ids(0, {}) == []


def test_percent_flux_browse_shows_the_browser(ipython: Any) -> None:
    from IPython.utils.capture import capture_output

    ipython.run_cell("flux.generate('a kite', seed=1, size=(64, 64))")
    with capture_output() as captured:
        ipython.run_cell("%flux browse")
    (shown,) = captured.outputs
    assert "application/vnd.jupyter.widget-view+json" in shown.data
    assert shown.data["text/plain"] == "history browser: 1-1 of 1 rows · page 1 of 1"
