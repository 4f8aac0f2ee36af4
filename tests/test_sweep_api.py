"""Prompt axes from Python: ``{a|b}`` alternatives and ``vary=`` in ``Flux.sweep``, counted at a local server."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from flux_nb import Flux
from flux_nb.errors import ValidationError


def test_sweep_takes_alternatives_and_vary(flux: Flux, server: Any) -> None:
    sweep = flux.sweep("a dog in {snow|rain}", seed=np.int64(4), size=(64, 64), vary={"animal": ["dog", "cat"]})
    assert [r.prompt for r in sweep] == ["a dog in snow", "a cat in snow", "a dog in rain", "a cat in rain"]
    assert [(r.labels["alt1"], r.labels["animal"]) for r in sweep] == [
        ("snow", "dog"),
        ("snow", "cat"),
        ("rain", "dog"),
        ("rain", "cat"),
    ]
    drawn = sweep.grid()
    assert (drawn.x, drawn.y) == ("alt1", "animal")
    assert server.stats()["submits"] == 4
    assert sorted(flux.history()["prompt"]) == sorted(r.prompt for r in sweep)


def test_generate_sends_braces_as_written_and_refuses_vary(flux: Flux, server: Any) -> None:
    result = flux.generate("a sign reading {open|closed}", seed=1, width=64, height=64)
    assert result.prompt == "a sign reading {open|closed}"
    with pytest.raises(ValidationError, match=r"use flux\.sweep"):
        flux.generate("a dog", vary={"animal": ["dog", "cat"]})
    assert server.stats()["submits"] == 1
