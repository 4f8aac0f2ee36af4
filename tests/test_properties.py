"""Properties of validation and pricing over many generated cases (Hypothesis).

- any size the validator accepts, the local server accepts too; every size it refuses is refused with the rule named;
- the estimate of a request equals BFL's pricing formula with every image's megapixels rounded up, at least 1
  each (written out here from shared/BFL_API.md, not read from ``protocol.MODELS``), so it is never below the
  fractional formula; the local server charges what the client estimated.

Examples are drawn deterministically (``derandomize``) and no example database is written: the runs repeat.
"""

from __future__ import annotations

import asyncio
import io
import math
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from PIL import Image

from flux_nb.core.batch import Defaults, prepare
from flux_nb.errors import ValidationError
from flux_nb.protocol import MODELS, check_size, estimate_cost
from flux_nb.server import ServerConfig, create_app

# Hypothesis keeps a cache in ./.hypothesis by default: tests never write into the source tree.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "flux_nb-hypothesis")
PROPERTY = settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
IN_PROCESS = "http://127.0.0.1:8800"

# BFL's price list (shared/BFL_API.md, "Cost"): credits for the first output MP, and for each further MP
# of output or input. Preview endpoints are priced as the model they preview.
PRICES: dict[str, tuple[float, float]] = {
    "flux-2-klein-4b": (1.4, 0.1),
    "flux-2-klein-9b": (1.5, 0.2),
    "flux-2-klein-9b-preview": (1.5, 0.2),
    "flux-2-pro": (3.0, 1.5),
    "flux-2-pro-preview": (3.0, 1.5),
    "flux-2-max": (7.0, 3.0),
    "flux-2-flex": (5.0, 5.0),
}
MP = 1024 * 1024

# The rule each refusal must name, by what broke it.
RULES = {
    "minimum": re.compile(r"(width|height) \d+ is below the minimum of 64 pixels"),
    "area": re.compile(r"size \d+x\d+ is [\d.]+ megapixels; the API allows at most 4\.19 \(4 MP\)"),
}


def formula(model: str, width: int, height: int, references: list[tuple[int, int]]) -> float:
    """The upper bound: output and each reference rounded up to whole megapixels, at least 1 each."""
    first, further = PRICES[model]
    out_mp = max(1, math.ceil(width * height / MP))
    in_mp = sum(max(1, math.ceil(w * h / MP)) for w, h in references)
    return first + (out_mp - 1 + in_mp) * further


def fractional(model: str, width: int, height: int, references: list[tuple[int, int]]) -> float:
    """The formula without rounding: what an estimate must never fall below."""
    first, further = PRICES[model]
    in_mp = sum(w * h for w, h in references) / MP
    return first + (max(0.0, width * height / MP - 1) + in_mp) * further


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[asyncio.AbstractEventLoop, httpx.AsyncClient]]:
    """One in-process local server for every example: tasks never finish rendering (latency of an hour)."""
    loop = asyncio.new_event_loop()
    app = create_app(ServerConfig(latency=3600.0, max_active=100_000, max_active_per_key=100_000))
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url=IN_PROCESS)
    yield loop, http
    loop.run_until_complete(http.aclose())
    for task in asyncio.all_tasks(loop):
        task.cancel()
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()


def submit(server: tuple[asyncio.AbstractEventLoop, httpx.AsyncClient], path: str, body: dict[str, Any]) -> Any:
    loop, http = server
    return loop.run_until_complete(http.post(path, json=body))


# Every boundary of the rules drawn on purpose: 64 and 48, 2048x2048 (4 MP exactly) and one step over.
EDGES = (0, 48, 63, 64, 65, 80, 1024, 2048, 2064, 4096, 4112)
sides = st.one_of(st.none(), st.sampled_from(EDGES), st.integers(0, 4200), st.integers(4, 262).map(lambda n: n * 16))


@PROPERTY
@given(width=sides, height=sides)
@example(width=64, height=64)
@example(width=2048, height=2048)
@example(width=2048, height=2064)
@example(width=4096, height=None)
def test_a_size_the_validator_accepts_the_server_accepts_and_a_refusal_names_its_rule(
    server: Any, width: int | None, height: int | None
) -> None:
    body: dict[str, Any] = {"prompt": "p", "seed": 1}
    body.update({k: v for k, v in (("width", width), ("height", height)) if v is not None})
    given_sides = [side for side in (width, height) if side is not None]
    w, h = width or 1024, height or 1024
    # The API's rule in its own words (shared/BFL_API.md): at least 64, at most 4 MP in total (rendered in 16s).
    valid = all(side >= 64 for side in given_sides) and w * h <= 4 * MP
    try:
        check_size(width, height)
    except ValidationError as exc:
        assert not valid, (width, height, str(exc))
        message = str(exc)
        broken = [rule for rule, pattern in RULES.items() if pattern.fullmatch(message.split(", e.g.")[0])]
        assert len(broken) == 1, message
        if broken[0] != "area":
            assert str(width if message.startswith("width") else height) in message
        answer = submit(server, "/v1/flux-2-klein-4b", body)
        assert answer.status_code == 422, (width, height, answer.text)
        return
    assert valid, (width, height)
    answer = submit(server, "/v1/flux-2-klein-4b", body)
    assert answer.status_code == 200, (width, height, answer.text)
    assert answer.json()["output_mp"] == pytest.approx((w // 16 * 16) * (h // 16 * 16) / MP, abs=1e-4)


def png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (size[0] % 256, size[1] % 256, 90)).save(buffer, "PNG")
    return buffer.getvalue()


valid_side = st.integers(4, 128).map(lambda n: n * 16)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, int, int, list[tuple[int, int]]]:
    model = draw(st.sampled_from(sorted(MODELS)))
    width = draw(valid_side)
    height = draw(valid_side.filter(lambda h: width * h <= 4 * MP))
    count = draw(st.integers(0, MODELS[model].max_images))
    references = draw(st.lists(st.tuples(st.integers(8, 640), st.integers(8, 640)), min_size=count, max_size=count))
    return model, width, height, references


@PROPERTY
@given(case=requests())
def test_the_estimate_is_bfls_pricing_formula_and_the_server_charges_it(
    server: Any, case: tuple[str, int, int, list[tuple[int, int]]]
) -> None:
    model, width, height, references = case
    prepared = prepare("p", Defaults(), model=model, width=width, height=height, images=[png(s) for s in references])
    assert prepared.estimated_cost == pytest.approx(formula(model, width, height, references), abs=1e-4)
    assert prepared.estimated_cost == estimate_cost(model, width, height, [w * h / MP for w, h in references])
    assert prepared.estimated_cost >= fractional(model, width, height, references) - 1e-9
    answer = submit(server, f"/v1/{model}", prepared.request.to_payload())
    assert answer.status_code == 200, answer.text
    assert answer.json()["cost"] == pytest.approx(prepared.estimated_cost, abs=1e-4)


@PROPERTY
@given(model=st.sampled_from(sorted(MODELS)), width=valid_side, height=valid_side)
def test_the_first_megapixel_is_the_least_a_request_costs(model: str, width: int, height: int) -> None:
    first = PRICES[model][0]
    cost = estimate_cost(model, width, height)
    assert cost >= first
    assert cost == pytest.approx(first if width * height <= MP else formula(model, width, height, []), abs=1e-4)
