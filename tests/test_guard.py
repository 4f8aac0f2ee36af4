"""The large-batch guard and the settings behind spending: refused before anything is sent, exactly at the line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from traitlets.config import Config

from flux_nb import Flux
from flux_nb.core.backend import Backend
from flux_nb.errors import BudgetError, LargeBatchError, ValidationError
from flux_nb.history.store import HistoryStore


def billed(flux: Flux, url: str) -> Flux:
    """The session as if its backend billed (a test double for BFL's cloud): requests still go to ``url``."""
    flux._backend = Backend(url, "endpoint:billed-double", billed=True)
    return flux


def test_a_billed_backend_refuses_a_batch_over_50_credits_until_confirmed(flux: Flux, server: Any) -> None:
    billed(flux, server.url)
    batch = flux.batch("a guarded sweep", seed=list(range(40)), width=1024, height=1024)
    estimate = sum(p.estimated_cost for p in batch)
    assert estimate > 50
    with pytest.raises(LargeBatchError) as caught:
        flux.run(batch)
    message = caught.value.one_line()
    assert "40 request(s)" in message and f"{estimate:.2f} credits" in message and "confirm=True" in message
    assert caught.value.count == 40 and caught.value.estimate == pytest.approx(estimate)
    assert server.stats()["submits"] == 0 and not (flux.store.count() if Path(flux.history_dir).exists() else 0)
    with pytest.raises(LargeBatchError):
        flux.start(batch)
    with pytest.raises(LargeBatchError):
        flux.sweep("a guarded sweep", seed=list(range(40)), width=1024, height=1024)
    assert server.stats()["submits"] == 0
    small = flux.sweep("small", seed=[1, 2], width=64, height=64)
    assert [r.status for r in small] == ["ready", "ready"] and server.stats()["submits"] == 2


def test_confirm_sends_the_batch(flux: Flux, server: Any) -> None:
    flux.confirm_over = 0.01
    results = flux.sweep("confirmed", seed=[1, 2, 3], width=64, height=64, confirm=True)
    assert [r.status for r in results] == ["ready"] * 3 and server.stats()["submits"] == 3
    assert flux.start(flux.batch("later", seed=[4, 5], width=64, height=64), confirm=True).result(60)[0].ok


def test_the_guard_refuses_above_the_threshold_and_sends_at_it(flux: Flux, server: Any) -> None:
    batch = flux.batch("boundary", seed=[1, 2, 3], width=64, height=64)
    estimate = sum(p.estimated_cost for p in batch)
    flux.confirm_over = estimate * 0.999
    with pytest.raises(LargeBatchError):
        flux.run(batch)
    assert server.stats()["submits"] == 0
    flux.confirm_over = estimate
    assert [r.status for r in flux.run(batch)] == ["ready"] * 3


def test_a_local_server_has_no_guard_unless_one_is_set(flux: Flux, server: Any) -> None:
    assert flux.confirm_over is None and not flux.backend.billed
    results = flux.sweep("local", seed=list(range(40)), width=1024, height=1024)
    assert len(results) == 40 and server.stats()["submits"] == 40


def test_generate_is_one_request_and_never_asks(flux: Flux, server: Any) -> None:
    flux.confirm_over = 0.0
    assert flux.generate("one", seed=1, width=64, height=64).ok
    with pytest.raises(LargeBatchError):
        flux.sweep("two", seed=[1, 2], width=64, height=64)


def test_duplicates_and_cache_hits_are_not_counted_twice(flux: Flux, server: Any) -> None:
    flux.generate("cached", seed=1, width=64, height=64)
    one = flux.prepare("cached", seed=1, width=64, height=64).estimated_cost
    flux.confirm_over = one * 1.5  # two new requests would pass it; one new, a duplicate and a cache hit do not
    results = flux.run([flux.prepare("cached", seed=s, width=64, height=64) for s in (1, 2, 2)])
    assert [r.status for r in results] == ["ready"] * 3 and server.stats()["submits"] == 2


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("budget", -1.0),
        ("budget", float("nan")),
        ("confirm_over", -0.5),
        ("confirm_over", float("nan")),
        ("task_timeout", -1.0),
        ("task_timeout", 0.0),
        ("task_timeout", float("nan")),
        ("task_timeout", float("inf")),
        ("max_concurrency", 0),
        ("max_concurrency", -3),
        ("thumbnail_size", 0),
        ("thumbnail_size", -10),
        ("thumbnail_size", 100_000),
    ],
)
def test_bad_settings_are_refused_when_set_in_one_line(server: Any, history_dir: Path, name: str, value: float) -> None:
    flux = Flux(endpoint=server.url, history_dir=history_dir)
    try:
        before = getattr(flux, name)
        with pytest.raises(ValidationError) as caught:
            setattr(flux, name, value)
        line = caught.value.one_line()
        assert f"Flux.{name}" in line and repr(value) in line and "\n" not in line
        assert getattr(flux, name) == before or (before != before)  # unchanged
        with pytest.raises(ValidationError):
            Flux(endpoint=server.url, history_dir=history_dir, **{name: value})
        with pytest.raises(ValidationError):
            Flux(endpoint=server.url, history_dir=history_dir, config=Config({"Flux": {name: value}}))
    finally:
        flux.close()
    assert server.stats()["submits"] == 0 and not history_dir.exists()


def test_good_settings_are_taken(flux: Flux) -> None:
    flux.budget, flux.confirm_over, flux.task_timeout = 0.0, float("inf"), 0.5
    flux.max_concurrency, flux.thumbnail_size = 1, 64
    flux.budget = flux.confirm_over = None
    assert (flux.task_timeout, flux.max_concurrency, flux.thumbnail_size) == (0.5, 1, 64)


def test_a_zero_budget_still_refuses_and_nan_is_no_longer_off(flux: Flux, server: Any) -> None:
    flux.budget = 0.0
    with pytest.raises(BudgetError):
        flux.generate("nothing", seed=1, width=64, height=64)
    assert server.stats()["submits"] == 0
    assert not HistoryStore(flux.history_dir).count() if Path(flux.history_dir).exists() else True


def test_a_url_reference_is_priced_at_the_most_it_can_cost(tmp_path: Path) -> None:
    """The API fetches a URL reference itself, so its size is unknown here: the estimate says "at most"."""
    flux = Flux(endpoint="http://127.0.0.1:9", history_dir=tmp_path, budget=4.0)
    try:
        prepared = flux.prepare("an edit", images=["https://images.example/ref.png"], model="flux-2-pro", seed=1)
        # pro: 3 for the first output MP, then 1.5 per further MP; the reference is counted at 4 MP
        assert prepared.estimate_is_bound and prepared.estimated_cost == pytest.approx(3 + 4 * 1.5)
        with pytest.raises(BudgetError, match=r"estimated cost at most 9\.00 credits"):
            flux.check_budget([prepared])
        known = flux.prepare("an edit", images=[Image.new("RGB", (1024, 1024))], model="flux-2-pro", seed=1)
        assert not known.estimate_is_bound and known.estimated_cost == pytest.approx(4.5)
    finally:
        flux.close()


def test_bfl_webhooks_must_be_https_before_anything_is_sent(tmp_path: Path) -> None:
    flux = Flux(api_key="sk-test-not-used", history_dir=tmp_path)  # the BFL cloud: refused before any socket
    try:
        with pytest.raises(ValidationError, match="https:// URLs only"):
            flux.generate("a kite", seed=1, webhook_url="http://hooks.example/flux")
        assert flux.history().empty
    finally:
        flux.close()
    local = Flux(endpoint="http://127.0.0.1:9", history_dir=tmp_path)  # a local server posts to http too
    try:
        local.check_budget([local.prepare("a kite", seed=1, webhook_url="http://127.0.0.1:9/hook")])
    finally:
        local.close()
