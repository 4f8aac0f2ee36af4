"""Sweep parsing and expansion: pure, no server."""

from __future__ import annotations

import pytest

from flux_nb.errors import ValidationError
from flux_nb.sweep import Axis, expand, grid_axes, parse_floats, parse_numbers, split_prompts


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("42", [42]),
        ("1,2,3", [1, 2, 3]),
        ("1:4", [1, 2, 3, 4]),
        ("0:1024:256", [0, 256, 512, 768, 1024]),
        ("1,5:7", [1, 5, 6, 7]),
        (" 3 , 4 ", [3, 4]),
        ("-2", [-2]),
        ("7:7", [7]),
    ],
)
def test_numbers_lists_and_inclusive_ranges(text: str, values: list[int]) -> None:
    assert parse_numbers(text, "seed") == values


def test_floats_allow_decimal_steps() -> None:
    assert parse_floats("2:3:0.5", "guidance") == [2.0, 2.5, 3.0]
    assert parse_floats("2.5,4", "guidance") == [2.5, 4.0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("a", "'a' is not a whole number"),
        ("1,,2", "empty item"),
        ("5:1", "runs backwards"),
        ("1:5:0", "positive step"),
        ("1:2:3:4", "START:END"),
        ("0:5000", "more than 1000"),
        ("1.5", "not a whole number"),
    ],
)
def test_bad_numbers_name_the_option(text: str, message: str) -> None:
    with pytest.raises(ValidationError, match="--seed") as caught:
        parse_numbers(text, "seed")
    assert message in str(caught.value)


def test_prompts_split_on_a_line_of_three_dashes() -> None:
    body = "a cat\non a mat\n---\n  a dog  \n---\n\n"
    assert split_prompts(body) == ["a cat\non a mat", "a dog"]
    assert split_prompts("a --- b") == ["a --- b"]
    with pytest.raises(ValidationError, match="no prompt"):
        split_prompts("\n---\n  \n")


def test_expansion_is_the_full_product_first_axis_slowest() -> None:
    points = expand({"width": 64}, [Axis("prompt", ("a", "b")), Axis("seed", (1, 2, 3))])
    assert [(p.labels["prompt"], p.labels["seed"]) for p in points] == [
        ("a", 1),
        ("a", 2),
        ("a", 3),
        ("b", 1),
        ("b", 2),
        ("b", 3),
    ]
    assert all(p.fields["width"] == 64 for p in points)


def test_size_axis_sets_width_and_height() -> None:
    points = expand({}, [Axis("size", ((512, 256), (256, 512)))])
    assert [(p.fields["width"], p.fields["height"]) for p in points] == [(512, 256), (256, 512)]
    assert points[0].labels == {"size": (512, 256)}


def test_expansion_errors() -> None:
    with pytest.raises(ValidationError, match="cannot sweep 'colour'"):
        expand({}, [Axis("colour", (1,))])
    with pytest.raises(ValidationError, match="given twice"):
        expand({}, [Axis("seed", (1,)), Axis("seed", (2,))])
    with pytest.raises(ValidationError, match="1500 combinations"):
        expand({}, [Axis("seed", tuple(range(50))), Axis("width", tuple(range(30)))])


def test_grid_axes_put_seed_across_then_follow_order() -> None:
    labels = [{"prompt": p, "seed": s, "model": "m"} for p in "ab" for s in (1, 2)]
    assert grid_axes(labels) == ("seed", "prompt", None)
    labels = [{"prompt": p, "width": w, "model": m} for p in "ab" for w in (1, 2) for m in "xy"]
    assert grid_axes(labels) == ("prompt", "width", "model")
    assert grid_axes([{"prompt": "a"}]) == (None, None, None)
