"""Sweep parsing, expansion and grid-axis choice: pure, no server."""

from __future__ import annotations

import pytest

from flux_nb.core.axes import (
    AXIS_FIELDS,
    MAX_COMBINATIONS,
    Axis,
    PromptAxis,
    expand,
    grid_axes,
    parse_floats,
    parse_numbers,
    split_prompts,
)
from flux_nb.core.batch import Defaults, build
from flux_nb.errors import ValidationError


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("42", [42]),
        ("1,2,3", [1, 2, 3]),
        ("1:4", [1, 2, 3, 4]),
        ("0:1024:256", [0, 256, 512, 768, 1024]),
        ("0:10:4", [0, 4, 8]),
        ("1,5:7", [1, 5, 6, 7]),
        ("5:7,1", [5, 6, 7, 1]),
        (" 3 , 4 ", [3, 4]),
        (" 1 : 3 ", [1, 2, 3]),
        ("-2", [-2]),
        ("+2", [2]),
        ("-5:-3", [-5, -4, -3]),
        ("7:7", [7]),
        ("3,3", [3, 3]),
    ],
)
def test_numbers_read_lists_and_inclusive_ranges(text: str, values: list[int]) -> None:
    assert parse_numbers(text, "seed") == values


def test_a_thousand_values_are_allowed() -> None:
    assert parse_numbers("1:1000", "seed") == list(range(1, 1001))


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("4", [4.0]),
        ("2.5,4", [2.5, 4.0]),
        ("2:3:0.5", [2.0, 2.5, 3.0]),
        ("1.5:2", [1.5]),
        ("-1:-0.5:0.25", [-1.0, -0.75, -0.5]),
    ],
)
def test_floats_allow_decimals_and_decimal_steps(text: str, values: list[float]) -> None:
    assert parse_floats(text, "guidance") == values


def test_float_range_reaches_its_end_despite_rounding() -> None:
    values = parse_floats("2:3:0.1", "guidance")
    assert len(values) == 11 and values[0] == 2.0 and values[-1] == 3.0 and values[3] == 2.3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "--seed is empty: give a value (42), a list (1,2,3) or a range (1:8)"),
        ("  ", "--seed is empty"),
        (",", "--seed is empty"),
        ("a", "--seed: 'a' is not a whole number"),
        ("1.5", "--seed: '1.5' is not a whole number"),
        ("1:x", "--seed: 'x' is not a whole number"),
        ("1,,2", "--seed '1,,2' has an empty item between commas"),
        ("1,", "--seed '1,' has an empty item"),
        ("5:1", "--seed range '5:1' runs backwards (write 1:5)"),
        ("1:5:0", "--seed range '1:5:0' needs a positive step"),
        ("1:5:-1", "--seed range '1:5:-1' needs a positive step"),
        ("1:2:3:4", "--seed range '1:2:3:4' must be START:END or START:END:STEP"),
        ("1:", "--seed: '' is not a whole number"),
        ("0:5000", "--seed '0:5000' gives more than 1000 values"),
        ("0:10000000000000000000", "gives more than 1000 values"),
        ("1:600,1:600", "gives more than 1000 values"),
        (",".join(["1"] * 1001), "gives more than 1000 values"),
    ],
)
def test_bad_numbers_are_errors_naming_the_option(text: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_numbers(text, "seed")
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nan", "--guidance: 'nan' is not a number"),
        ("inf", "--guidance: 'inf' is not a number"),
        ("four", "--guidance: 'four' is not a number"),
        ("4:2", "runs backwards"),
        ("2:4:0", "needs a positive step"),
        ("0:1000:0.5", "more than 1000 values"),
    ],
)
def test_bad_floats_are_errors_naming_the_option(text: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_floats(text, "guidance")
    assert message in str(caught.value)


def test_an_option_name_with_dashes_is_used_as_given() -> None:
    with pytest.raises(ValidationError, match=r"^--safety: 'x' is not a whole number$"):
        parse_numbers("x", "--safety")


def test_prompts_split_on_a_line_of_three_dashes() -> None:
    body = "a cat\non a mat\n---\n  a dog  \n  ---  \n\n"
    assert split_prompts(body) == ["a cat\non a mat", "a dog"]
    assert split_prompts("one\r\n---\r\ntwo") == ["one", "two"]


def test_dashes_inside_a_line_or_four_dashes_do_not_split() -> None:
    assert split_prompts("a --- b") == ["a --- b"]
    assert split_prompts("a\n----\nb") == ["a\n----\nb"]


def test_a_cell_without_a_prompt_is_an_error() -> None:
    for body in ("", "   \n", "\n---\n  \n---"):
        with pytest.raises(ValidationError, match="the cell holds no prompt"):
            split_prompts(body)


def test_expansion_is_the_full_product_with_the_first_axis_slowest() -> None:
    points = expand({"width": 64}, [Axis("prompt", ("a", "b")), Axis("seed", (1, 2, 3))])
    assert [(p.labels["prompt"], p.labels["seed"]) for p in points] == [
        ("a", 1),
        ("a", 2),
        ("a", 3),
        ("b", 1),
        ("b", 2),
        ("b", 3),
    ]
    assert [p.fields for p in points][4] == {"width": 64, "prompt": "b", "seed": 2}


def test_labels_follow_axis_order_and_include_single_value_axes() -> None:
    axes = [Axis("seed", (1, 2)), Axis("model", ("flux-2-pro",)), Axis("prompt", ("a",))]
    points = expand({}, axes)
    assert len(points) == 2
    assert list(points[0].labels) == ["seed", "model", "prompt"]
    assert points[1].labels == {"seed": 2, "model": "flux-2-pro", "prompt": "a"}


def test_axis_values_override_the_base_which_is_left_untouched() -> None:
    base = {"seed": 0, "output_format": "png"}
    points = expand(base, [Axis("seed", (7,))])
    assert points[0].fields == {"seed": 7, "output_format": "png"}
    assert base == {"seed": 0, "output_format": "png"}


def test_no_axes_give_one_point_holding_the_base() -> None:
    points = expand({"prompt": "p"}, [])
    assert len(points) == 1 and points[0].fields == {"prompt": "p"} and points[0].labels == {}


def test_axis_values_given_as_a_list_become_a_tuple() -> None:
    assert Axis("seed", [1, 2]).values == (1, 2)  # type: ignore[arg-type]


def test_size_axis_sets_width_and_height_and_keeps_the_pair_as_label() -> None:
    points = expand({}, [Axis("size", ((512, 256), (256, 512)))])
    assert [p.fields for p in points] == [{"width": 512, "height": 256}, {"width": 256, "height": 512}]
    assert points[0].labels == {"size": (512, 256)}


def test_unknown_axis_names_the_sweepable_fields() -> None:
    with pytest.raises(ValidationError, match="cannot sweep 'colour'") as caught:
        expand({}, [Axis("colour", (1,))])
    assert all(name in str(caught.value) for name in AXIS_FIELDS)


@pytest.mark.parametrize(
    ("axes", "message"),
    [
        ([Axis("seed", (1,)), Axis("seed", (2,))], "axis seed is given twice"),
        ([Axis("seed", ())], "axis 'seed' has no values"),
        ([Axis("size", ((64, 64),)), Axis("width", (64,))], "sweep either size or width/height"),
        ([Axis("size", ((64, 64), 64))], "size 64 must be a (width, height) pair"),
        ([Axis("seed", tuple(range(50))), Axis("width", tuple(range(30)))], "the sweep has 1500 combinations"),
    ],
)
def test_bad_sweeps_are_clear_errors(axes: list[Axis], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        expand({}, axes)
    assert message in str(caught.value)


def test_the_combination_limit_is_inclusive_and_adjustable() -> None:
    assert len(expand({}, [Axis("seed", tuple(range(32))), Axis("width", tuple(range(32)))])) == MAX_COMBINATIONS
    with pytest.raises(ValidationError, match="the sweep has 6 combinations; at most 4 run at once"):
        expand({}, [Axis("seed", (1, 2, 3)), Axis("prompt", ("a", "b"))], limit=4)


def test_grid_axes_put_seed_across_then_follow_sweep_order() -> None:
    labels = [{"prompt": p, "seed": s, "model": "m"} for p in "ab" for s in (1, 2)]
    assert grid_axes(labels) == ("seed", "prompt", None)
    labels = [{"prompt": p, "width": w, "model": m} for p in "ab" for w in (1, 2) for m in "xy"]
    assert grid_axes(labels) == ("prompt", "width", "model")


def test_grid_axes_ignore_axes_that_do_not_vary() -> None:
    assert grid_axes([{"prompt": "a", "seed": 1}]) == (None, None, None)
    assert grid_axes([{"prompt": "a", "seed": s} for s in (1, 2)]) == ("seed", None, None)
    assert grid_axes([]) == (None, None, None)


def test_grid_axes_fold_a_fourth_axis_into_z() -> None:
    labels = [
        {"prompt": p, "seed": s, "model": m, "steps": n, "guidance": 3.0}
        for p in "ab"
        for s in (1, 2)
        for m in "xy"
        for n in (10, 20)
    ]
    assert grid_axes(labels) == ("seed", "prompt", "model+steps")


def test_grid_axes_handle_unhashable_label_values() -> None:
    labels = [{"images": [f"{i}.png"], "size": (64, 64)} for i in range(2)]
    assert grid_axes(labels) == ("images", None, None)


def test_prompt_axes_label_points_without_setting_request_fields() -> None:
    points = expand({"seed": 1}, [Axis("prompt", ("a {alt1}",)), PromptAxis("alt1", ("red", "blue"))])
    assert [p.labels for p in points] == [{"prompt": "a {alt1}", "alt1": "red"}, {"prompt": "a {alt1}", "alt1": "blue"}]
    assert all(p.fields == {"seed": 1, "prompt": "a {alt1}"} for p in points)


@pytest.mark.parametrize("name", [*AXIS_FIELDS, "aspect", "labels", "status", "image_path", "error"])
def test_a_prompt_axis_may_not_take_a_request_field_name(name: str) -> None:
    with pytest.raises(ValidationError, match="has the name of a request field or of a result's detail"):
        expand({}, [PromptAxis(name, ("a", "b"))])


def test_prompt_axes_count_toward_the_combination_limit() -> None:
    with pytest.raises(ValidationError, match="2000 combinations"):
        build("a {x|y}", Defaults(), seed=list(range(1000)))
    assert len(build(["a {x|y}", "b"], Defaults(), seed=list(range(341)))) == 1023
    with pytest.raises(ValidationError, match="1026 combinations"):
        build(["a {x|y}", "b"], Defaults(), seed=list(range(342)))
