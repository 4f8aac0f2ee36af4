"""Prompt templates, alternatives, search-and-replace and reference expressions: pure, no server."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from flux_nb.core.batch import Defaults, build
from flux_nb.core.templates import (
    NOT_A_REFERENCE,
    choices,
    fill,
    parse_vary,
    reference,
    replacement_axes,
    with_replacements,
)
from flux_nb.errors import ValidationError

KEY = "sk-test-0123456789abcdef"


def combos(template: object) -> list[str]:
    return [p.request.prompt for p in build(template, Defaults(), seed=1)]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "text"),
    [("otter", "otter"), (3, "3"), (2.5, "2.5"), (np.int64(7), "7"), (np.float32(0.5), "0.5"), (True, "True")],
)
def test_scalars_are_written_in_as_str_format_writes_them(value: object, text: str) -> None:
    template = fill("a {thing} here", {"thing": value})
    assert template.axes == () and template.render({}) == f"a {text} here"


@pytest.mark.parametrize(
    "value",
    [["oil", "ink"], ("oil", "ink"), pd.Series(["oil", "ink"]), np.array(["oil", "ink"]), pd.Index(["oil", "ink"])],
    ids=["list", "tuple", "series", "ndarray", "index"],
)
def test_list_likes_become_an_axis_named_after_the_variable(value: object) -> None:
    template = fill("a cat, {styles}", {"styles": value})
    assert [(a.name, a.values) for a in template.axes] == [("styles", ("oil", "ink"))]
    assert template.label == "a cat, {styles}"
    assert combos(template) == ["a cat, oil", "a cat, ink"]


def test_a_range_and_numpy_numbers_label_by_plain_values() -> None:
    template = fill("{n} birds, {w}", {"n": range(1, 4), "w": np.array([0.5, 1.5])})
    assert template.axes[0].values == (1, 2, 3) and type(template.axes[1].values[0]) is float
    assert len(combos(template)) == 6


def test_filled_text_is_never_read_as_a_template_again() -> None:
    template = fill("say {v}", {"v": "{a|b} {flux._api_key} {{x}}"})
    assert template.axes == () and combos(template) == ["say {a|b} {flux._api_key} {{x}}"]


def test_a_variable_used_twice_is_one_axis() -> None:
    template = fill("{c} sky, {c} sea", {"c": ["red", "blue"]})
    assert len(template.axes) == 1
    assert combos(template) == ["red sky, red sea", "blue sky, blue sea"]


def test_alternatives_are_axes_alt1_alt2_in_order() -> None:
    template = fill("a {red|blue} {car|bike}{{x}}", {})
    assert [(a.name, a.values) for a in template.axes] == [("alt1", ("red", "blue")), ("alt2", ("car", "bike"))]
    assert template.label == "a {alt1} {alt2}{x}"
    assert combos(template) == ["a red car{x}", "a red bike{x}", "a blue car{x}", "a blue bike{x}"]


def test_an_empty_alternative_is_allowed() -> None:
    assert combos(fill("a {big |}dog", {})) == ["a big dog", "a dog"]


@pytest.mark.parametrize(
    "body",
    [
        "{flux._api_key}",
        "{flux.__init__.__globals__[os].environ[BFL_API_KEY]}",
        "{a[0]}",
        "{x!r}",
        "{x!s}",
        "{x:>10}",
        "{x:{y}}",
        "{}",
        "{0}",
        "{ x }",
        "{for}",
    ],
)
def test_templates_take_plain_names_only(body: str) -> None:
    namespace = {"flux": object(), "a": [1], "x": "v", "y": 3}
    with pytest.raises(ValidationError, match=r"only plain names are filled|not closed"):
        fill(f"a {body} b", namespace)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"a": 1}, "is a dict"),
        ({"a", "b"}, r"is a set \(it has no order: use a list\)"),
        (None, "is None"),
        (object(), "is a plain object"),
        ([], "is an empty list"),
        (["ok", {"a": 1}], r"\{v\}\[1\] is a dict; list items must be text or numbers"),
        ([["nested"]], "is a list object"),
        (list(range(1001)), "has 1001 values; at most 1000"),
    ],
)
def test_values_that_are_not_text_or_numbers_are_refused(value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        fill("a {v}", {"v": value})


@pytest.mark.parametrize("value", [KEY, f"key={KEY}", [f"x {KEY}"], pd.Series(["a", KEY])])
def test_a_value_holding_a_configured_key_is_refused_without_showing_it(value: object) -> None:
    with pytest.raises(ValidationError) as caught:
        fill("a {v}", {"v": value}, keys=[KEY])
    assert "holds an API key" in str(caught.value) and KEY not in str(caught.value)


def test_a_short_key_is_refused_only_when_equal() -> None:
    assert fill("{v}", {"v": "abc and more"}, keys=["abc"]).render({}) == "abc and more"
    with pytest.raises(ValidationError, match="API key"):
        fill("{v}", {"v": "abc"}, keys=["abc"])


def test_python_prompts_sweep_only_alternatives() -> None:
    assert choices("json {like: this} and {0}").axes == ()
    assert combos("a {red|blue} car, {x}") == ["a red car, {x}", "a blue car, {x}"]


def test_vary_replaces_the_first_value_by_each_value() -> None:
    batch = build("a dog on a hill", Defaults(), seed=1, vary={"animal": ["dog", "cat", "red fox"]})
    assert [p.request.prompt for p in batch] == ["a dog on a hill", "a cat on a hill", "a red fox on a hill"]
    assert [p.labels["animal"] for p in batch] == ["dog", "cat", "red fox"]
    assert {p.labels["prompt"] for p in batch} == {"a dog on a hill"}


def test_vary_applies_to_the_prompts_that_hold_its_text() -> None:
    batch = build(["a dog", "a tree"], Defaults(), seed=1, vary={"animal": ["dog", "cat"]})
    assert [p.request.prompt for p in batch] == ["a dog", "a cat", "a tree"]


@pytest.mark.parametrize(
    ("vary", "message"),
    [
        ({"animal": ["horse", "cat"]}, "vary animal: 'horse' is not in the prompt"),
        ({"animal": "dog"}, "give a list whose first value is the text to find"),
        ({"animal": []}, "empty list"),
        ({"animal": ["", "cat"]}, "the first value is the text to find in the prompt; it is empty"),
        ({"bad name": ["dog"]}, "must be a plain name"),
        ({"seed": ["dog", "cat"]}, "has the name of a request field"),
        (["dog", "cat"], "vary must be a dict"),
        ({"animal": ["dog", {"x": 1}]}, "is a dict"),
    ],
)
def test_bad_vary_is_refused(vary: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        build("a dog", Defaults(), seed=1, vary=vary)  # type: ignore[arg-type]


def test_vary_text_from_the_option() -> None:
    assert parse_vary(['animal=dog, cat,"red, fox"']) == {"animal": ["dog", "cat", "red, fox"]}
    with pytest.raises(ValidationError, match="NAME=FIND,REPLACEMENT"):
        parse_vary(["dog,cat"])
    with pytest.raises(ValidationError, match="given twice"):
        parse_vary(["a=x,y", "a=z"])


def test_vary_and_a_template_axis_may_not_share_a_name() -> None:
    template = fill("a dog, {animal}", {"animal": ["x", "y"]})
    with pytest.raises(ValidationError, match="has the name of a prompt template axis"):
        with_replacements(template, replacement_axes({"animal": ["dog", "cat"]}))


def test_vary_values_holding_a_key_are_refused() -> None:
    with pytest.raises(ValidationError, match="API key"):
        replacement_axes({"animal": ["dog", KEY]}, keys=[KEY])


class Holder:
    def __init__(self) -> None:
        self.image = "IMAGE"
        self._secret = KEY
        self.items = ["first", "second"]


@pytest.mark.parametrize(
    ("text", "value"),
    [("s1", [10, 20]), ("s1[0]", 10), ("s1[-1]", 20), ("h.image", "IMAGE"), ("h.items[1]", "second")],
)
def test_references_follow_names_attributes_and_indexes(text: str, value: object) -> None:
    assert reference(text, {"s1": [10, 20], "h": Holder()}, what="-i") == value


@pytest.mark.parametrize(
    "text", ["h._secret", "h.__class__", "s1[0:1]", "s1['a']", "s1[i]", "h.items.pop()", "getattr(h, 'x')"]
)
def test_references_reaching_further_are_refused(text: str) -> None:
    namespace = {"s1": [1], "h": Holder(), "i": 0, "getattr": getattr}
    with pytest.raises(ValidationError, match="nothing is called or evaluated"):
        reference(text, namespace, what=f"-i {text}")


@pytest.mark.parametrize(
    "text", ["cat.png", "photos/cat.png", "https://example.com/a.png", "undefined[0]", "C:\\x", "s1 + s1"]
)
def test_paths_urls_and_unknown_names_are_not_references(text: str) -> None:
    assert reference(text, {"s1": [1]}, what="-i") is NOT_A_REFERENCE


def test_reference_errors_and_keys() -> None:
    with pytest.raises(ValidationError, match=r"-i s1\[5\]: IndexError"):
        reference("s1[5]", {"s1": [1]}, what="-i s1[5]")
    with pytest.raises(ValidationError, match="API key"):
        reference("h.key", {"h": type("H", (), {"key": KEY})()}, what="-i h.key", keys=[KEY])
