"""The large-batch guard and the settings behind spending: refused before anything is sent, exactly at the line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from traitlets.config import Config

from flux_nb import Flux
from flux_nb.core.backend import Backend
from flux_nb.errors import BudgetError, LargeBatchError, ValidationError
from flux_nb.history.store import HistoryStore


@pytest.fixture
def flux(server: Any, history_dir: Path) -> Flux:
    session = Flux(endpoint=server.url, history_dir=history_dir)
    yield session
    session.close()


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
