"""The protocol's rules as data (flux_nb/protocol.py): each rule at its boundaries, each message word for word.

Pure and fast: this file is also the test selection of the mutation run over protocol.py (bench/mutation.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from flux_nb import protocol
from flux_nb.errors import ValidationError
from flux_nb.protocol import (
    MODELS,
    FluxRequest,
    Status,
    aspect_size,
    check_side,
    check_size,
    estimate_cost,
    is_bfl_hostname,
    megapixels,
    model_spec,
    nearest_sides,
    output_size,
    parse_size,
    parse_status,
)


def refused(call: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
    """The message of the ValidationError ``call`` raises."""
    with pytest.raises(ValidationError) as caught:
        call(*args, **kwargs)
    return str(caught.value)


def invalid(**fields: Any) -> str:
    fields.setdefault("prompt", "p")
    return refused(FluxRequest(**fields).validate)


def test_the_apis_constants() -> None:
    assert protocol.BFL_HOSTS == {
        "global": "https://api.bfl.ai",
        "eu": "https://api.eu.bfl.ai",
        "us": "https://api.us.bfl.ai",
    }
    assert (protocol.DEFAULT_MODEL, protocol.KEY_HEADER, protocol.KEY_ENV) == (
        "flux-2-klein-4b",
        "x-key",
        "BFL_API_KEY",
    )
    assert (protocol.MIN_SIDE, protocol.SIDE_STEP, protocol.MAX_PIXELS) == (64, 16, 4 * 1024 * 1024)
    assert (protocol.DEFAULT_SIDE, protocol.PIXELS_PER_MP) == (1024, 1024 * 1024)
    assert (protocol.SAFETY_RANGE, protocol.DEFAULT_SAFETY) == ((0, 5), 2)
    assert (protocol.OUTPUT_FORMATS, protocol.DEFAULT_FORMAT) == (("jpeg", "png", "webp"), "jpeg")
    assert (protocol.WEBHOOK_URL_MAX, protocol.SEED_RANGE, protocol.PROMPT_MAX) == (2083, (0, 2**64 - 1), 512_000)
    assert (protocol.MAX_ACTIVE_TASKS, protocol.DELIVERY_TTL_SECONDS) == (24, 600.0)


def test_bfl_hostnames_are_bfl_ai_and_its_subdomains_only() -> None:
    assert is_bfl_hostname("bfl.ai") and is_bfl_hostname("api.eu2.bfl.ai")
    for host in ("evilbfl.ai", "bfl.ai.example.com", "bfl.aix", "", "ai"):
        assert not is_bfl_hostname(host), host


def test_statuses_and_which_are_final() -> None:
    assert [s.value for s in Status] == [
        "Pending",
        "Ready",
        "Error",
        "Request Moderated",
        "Content Moderated",
        "Task not found",
    ]
    assert parse_status("Ready") is Status.READY and parse_status("Content Moderated") is Status.CONTENT_MODERATED
    for unknown in ("Generating", "ready", "", None):
        assert parse_status(unknown) is Status.PENDING


def test_the_model_table_holds_bfls_prices_limits_and_extras() -> None:
    table = {name: (s.max_images, s.first_mp_credits, s.extra_mp_credits) for name, s in MODELS.items()}
    assert table == {
        "flux-2-klein-4b": (4, 1.4, 0.1),
        "flux-2-klein-9b": (4, 1.5, 0.2),
        "flux-2-klein-9b-preview": (4, 1.5, 0.2),
        "flux-2-pro": (8, 3.0, 1.5),
        "flux-2-pro-preview": (8, 3.0, 1.5),
        "flux-2-max": (8, 7.0, 3.0),
        "flux-2-flex": (8, 5.0, 5.0),
    }
    flex = MODELS["flux-2-flex"]
    assert [(f.name, f.kind, f.minimum, f.maximum, f.default) for f in flex.extra_fields] == [
        ("steps", int, 1, 50, 50),
        ("guidance", float, 1.5, 10.0, 5.0),
    ]
    assert flex.flag_fields == ("prompt_upsampling",) == MODELS["flux-2-pro"].flag_fields
    assert all(not s.extra_fields for n, s in MODELS.items() if n != "flux-2-flex")
    assert all(not s.flag_fields for n, s in MODELS.items() if n not in ("flux-2-flex", "flux-2-pro"))
    assert model_spec("flux-2-pro").path == "/v1/flux-2-pro"
    assert model_spec("flux-2-klein-4b").image_fields() == [
        "input_image",
        "input_image_2",
        "input_image_3",
        "input_image_4",
    ]
    assert model_spec("flux-2-max").image_fields()[-1] == "input_image_8"
    assert refused(model_spec, "flux-3") == (
        "model 'flux-3' is not a FLUX.2 model flux_nb knows (known: flux-2-klein-4b, flux-2-klein-9b, "
        "flux-2-klein-9b-preview, flux-2-pro, flux-2-pro-preview, flux-2-max, flux-2-flex)"
    )


def test_sides_at_their_boundaries() -> None:
    assert check_side("width", 64) == 64 and check_side("height", 4096) == 4096
    assert nearest_sides(1000) == (992, 1008) and nearest_sides(10) == (64, 80) and nearest_sides(1008) == (1008, 1024)
    assert refused(check_side, "width", 63) == "width 63 is below the minimum of 64 pixels"
    assert refused(check_side, "height", 48) == "height 48 is below the minimum of 64 pixels"
    assert check_side("width", 1000) == 1000 and check_side("height", 65) == 65  # BFL renders them to 16s
    assert refused(check_side, "width", True) == "width must be a whole number of pixels, got True"
    assert refused(check_side, "width", 512.0) == "width must be a whole number of pixels, got 512.0"
    assert refused(check_side, "height", "512") == "height must be a whole number of pixels, got '512'"


def test_sizes_together_at_four_megapixels() -> None:
    check_size(None, None)
    check_size(2048, 2048)
    check_size(4096, None)
    check_size(None, 4096)
    check_size(2560, 1632)
    assert refused(check_size, 2048, 2064) == (
        "size 2048x2064 is 4.23 megapixels; the API allows at most 4.19 (4 MP), e.g. 2048x2048 or 2560x1632"
    )
    assert refused(check_size, None, 4112).startswith("size 1024x4112 is 4.21 megapixels")
    assert refused(check_size, 4112, None).startswith("size 4112x1024 is 4.21 megapixels")
    assert refused(check_size, 1232, 6944).startswith("size 1232x6944 is 8.56 megapixels")  # 8.555008 MP, in MB
    assert refused(check_size, 63, None) == "width 63 is below the minimum of 64 pixels"
    check_size(None, 70)  # any side from 64: the API renders it in 16s
    assert refused(check_size, None, 48) == "height 48 is below the minimum of 64 pixels"


def test_aspect_ratios_give_valid_sizes_near_the_megapixels_asked() -> None:
    assert aspect_size("1:1") == (1024, 1024)
    assert aspect_size("16:9") == (1360, 768)
    assert aspect_size("1.5", 2.0) == (1776, 1184)
    assert aspect_size("1:16") == (256, 4096) and aspect_size("16:1") == (4096, 256)
    assert aspect_size("1:1", 0.001) == (64, 64)  # never below the minimum side
    assert aspect_size("1:1", 4.0) == (2048, 2048)
    assert refused(aspect_size, "a:b") == "aspect 'a:b' is not a ratio like 16:9 or 1.5"
    assert refused(aspect_size, "1:0") == "aspect '1:0' is not a ratio like 16:9 or 1.5"
    assert refused(aspect_size, "wide") == "aspect 'wide' is not a ratio like 16:9 or 1.5"
    assert refused(aspect_size, "20:1") == "aspect '20:1' must be between 1:16 and 16:1"
    assert refused(aspect_size, "1:17") == "aspect '1:17' must be between 1:16 and 16:1"
    assert refused(aspect_size, "16.5") == "aspect '16.5' must be between 1:16 and 16:1"
    assert refused(aspect_size, "1:2:3") == "aspect '1:2:3' is not a ratio like 16:9 or 1.5"
    assert refused(aspect_size, "inf") == "aspect 'inf' must be between 1:16 and 16:1"
    assert refused(aspect_size, "1:1", 5.0).startswith("size 2288x2288 is")


def test_size_text_is_parsed_and_checked() -> None:
    assert parse_size("1024x768") == (1024, 768)
    assert parse_size("1024X768") == (1024, 768)
    assert parse_size("512*512") == (512, 512)
    assert parse_size("64 x 64") == (64, 64)
    for text in ("12x", "x", "1024", "1024x768x2", "axb", "-64x64"):
        assert refused(parse_size, text) == f"size {text!r} is not of the form WIDTHxHEIGHT, e.g. 1024x768"
    assert parse_size("1920x1080") == (1920, 1080)
    assert refused(parse_size, "2048x2064").startswith("size 2048x2064 is 4.23 megapixels")


def test_cost_follows_the_megapixel_formula() -> None:
    assert megapixels(1024, 1024) == 1.0 and megapixels(2048, 1024) == 2.0
    assert estimate_cost("flux-2-klein-4b", 1024, 1024) == 1.4
    assert estimate_cost("flux-2-klein-4b", 512, 512) == 1.4  # the first MP is the least
    assert estimate_cost("flux-2-klein-4b", 2048, 1024) == 1.5
    assert estimate_cost("flux-2-klein-4b", 1024, 1024, [1.0]) == 1.5
    assert estimate_cost("flux-2-pro", 2048, 2048, [2.0]) == 3.0 + 5.0 * 1.5
    assert estimate_cost("flux-2-klein-9b", 1024, 1024, [1 / 3]) == 1.7  # a reference counts at least 1 MP
    assert estimate_cost("flux-2-flex", 1024, 1024) == 5.0
    assert refused(estimate_cost, "nope", 64, 64).startswith("model 'nope' is not a FLUX.2 model")


def test_a_request_passes_every_rule_at_its_edges() -> None:
    edges = FluxRequest(
        "p" * protocol.PROMPT_MAX,
        images=("a",) * 4,
        seed=2**64 - 1,
        width=2048,
        height=2048,
        safety_tolerance=5,
        output_format="webp",
        webhook_url="https://" + "x" * (2083 - 8),
        webhook_secret="s",
    )
    assert edges.validate() is edges
    FluxRequest("p", seed=0, safety_tolerance=0).validate()
    FluxRequest("p", model="flux-2-max", images=("a",) * 8, output_format="png").validate()
    FluxRequest("p", model="flux-2-flex", steps=1, guidance=1.5, prompt_upsampling=False).validate()
    FluxRequest("p", model="flux-2-flex", steps=50, guidance=10.0, prompt_upsampling=True).validate()
    FluxRequest("p", model="flux-2-flex", steps=50.0).validate()
    FluxRequest("p", webhook_url="http://h").validate()


def test_each_broken_rule_is_named() -> None:
    assert invalid(prompt="") == "prompt is empty: describe the image you want"
    assert invalid(prompt="   ") == "prompt is empty: describe the image you want"
    assert invalid(prompt=None) == "prompt is empty: describe the image you want"
    assert invalid(prompt="p" * 512_001) == (
        "prompt is 512,001 characters; BFL takes up to 32,000 tokens, and flux_nb sends at most 512,000 characters"
    )
    assert invalid(images=("a",) * 5) == "5 reference images given; flux-2-klein-4b takes at most 4"
    assert invalid(model="flux-2-pro", images=("a",) * 9) == "9 reference images given; flux-2-pro takes at most 8"
    assert invalid(seed=True) == "seed must be a whole number, got True"
    assert invalid(seed=1.5) == "seed must be a whole number, got 1.5"
    assert invalid(seed=-1) == "seed -1 is out of range (0 to 2**64-1)"
    assert invalid(seed=2**64) == f"seed {2**64} is out of range (0 to 2**64-1)"
    assert invalid(width=2048, height=2064).startswith("size 2048x2064 is 4.23 megapixels")
    assert invalid(safety_tolerance=True) == "safety_tolerance must be a whole number from 0 to 5, got True"
    assert invalid(safety_tolerance=2.0) == "safety_tolerance must be a whole number from 0 to 5, got 2.0"
    assert invalid(safety_tolerance=6) == "safety_tolerance 6 is out of range (0 strictest to 5 most permissive)"
    assert invalid(safety_tolerance=-1) == "safety_tolerance -1 is out of range (0 strictest to 5 most permissive)"
    assert invalid(output_format="gif") == "output_format 'gif' is not one of jpeg, png, webp"


def test_webhook_rules() -> None:
    assert invalid(webhook_secret="s") == "webhook_secret was given without a webhook_url"
    assert invalid(webhook_url="") == "webhook_url must be 1 to 2083 characters, got 0"
    long = "https://" + "x" * (2084 - 8)
    assert invalid(webhook_url=long) == "webhook_url must be 1 to 2083 characters, got 2084"
    assert invalid(webhook_url="ftp://h") == "webhook_url 'ftp://h' must be an http(s) URL"
    assert invalid(webhook_url="https://") == "webhook_url 'https://' must be an http(s) URL"
    assert invalid(webhook_url="h") == "webhook_url 'h' must be an http(s) URL"


def test_flex_settings_are_flex_only_and_within_range() -> None:
    assert invalid(steps=4) == "steps is not a setting of flux-2-klein-4b (only of flux-2-flex)"
    assert invalid(guidance=4.0, model="flux-2-pro") == "guidance is not a setting of flux-2-pro (only of flux-2-flex)"
    flex = {"model": "flux-2-flex"}
    assert invalid(steps=True, **flex) == "steps must be a number, got True"
    assert invalid(steps="4", **flex) == "steps must be a number, got '4'"
    assert invalid(steps=4.5, **flex) == "steps must be a whole number, got 4.5"
    assert invalid(steps=0, **flex) == "steps 0 is out of range (1 to 50)"
    assert invalid(steps=51, **flex) == "steps 51 is out of range (1 to 50)"
    assert invalid(guidance=1.4, **flex) == "guidance 1.4 is out of range (1.5 to 10)"
    assert invalid(guidance=10.5, **flex) == "guidance 10.5 is out of range (1.5 to 10)"
    assert invalid(prompt_upsampling=True) == (
        "prompt_upsampling is not a setting of flux-2-klein-4b (only of flux-2-pro, flux-2-flex)"
    )
    assert invalid(prompt_upsampling=1, **flex) == "prompt_upsampling must be True or False, got 1"
    FluxRequest("p", model="flux-2-flex", guidance=4).validate()  # an int guidance is fine


def test_the_payload_leaves_unset_fields_out() -> None:
    bare = FluxRequest("a fox").to_payload()
    assert bare == {"prompt": "a fox", "safety_tolerance": 2, "output_format": "jpeg"}
    full = FluxRequest(
        "a fox",
        model="flux-2-flex",
        images=("u1", "u2"),
        seed=0,
        width=512,
        height=768,
        safety_tolerance=0,
        output_format="png",
        webhook_url="https://h/x",
        webhook_secret="s",
        steps=10,
        guidance=3.0,
        prompt_upsampling=False,
    ).to_payload()
    assert full == {
        "prompt": "a fox",
        "input_image": "u1",
        "input_image_2": "u2",
        "seed": 0,
        "width": 512,
        "height": 768,
        "webhook_url": "https://h/x",
        "webhook_secret": "s",
        "steps": 10,
        "guidance": 3.0,
        "prompt_upsampling": False,
        "safety_tolerance": 0,
        "output_format": "png",
    }


def test_copies_and_reprs_keep_secrets_and_images_out() -> None:
    request = FluxRequest("p", images=("big",), seed=3, webhook_url="https://h", webhook_secret="hush")
    assert request.with_(seed=4).seed == 4 and request.seed == 3
    assert "hush" not in repr(request)


def test_the_output_size_is_as_asked_else_the_first_references_else_1024() -> None:
    assert output_size(FluxRequest("p", width=512, height=768)) == (512, 768)
    assert output_size(FluxRequest("p", width=512, height=768), (4000, 3000)) == (512, 768)
    assert output_size(FluxRequest("p"), (4000, 3000)) == (1168, 880)  # scaled to about 1 MP
    assert output_size(FluxRequest("p"), (500, 300)) == (496, 288)  # small references are not enlarged
    assert output_size(FluxRequest("p"), (30, 20)) == (64, 64)
    assert output_size(FluxRequest("p"), (1024, 1024)) == (1024, 1024)
    assert output_size(FluxRequest("p", width=512), (4000, 3000)) == (512, 1024)
    assert output_size(FluxRequest("p", height=512)) == (1024, 512)
    assert output_size(FluxRequest("p")) == (1024, 1024)


def test_a_request_is_validated_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The builder validates; the client's own check then finds it done (no second or third pass)."""
    from flux_nb.protocol import FluxRequest

    calls: list[int] = []
    check = FluxRequest._check
    monkeypatch.setattr(FluxRequest, "_check", lambda self: calls.append(1) or check(self))
    request = FluxRequest("a fox", seed=1, width=64, height=64)
    assert request.validate() is request and request.validate() is request
    assert len(calls) == 1
    assert request == FluxRequest("a fox", seed=1, width=64, height=64)  # the mark is not a field
    changed = request.with_(seed=2)
    changed.validate()
    assert len(calls) == 2  # a changed copy is checked again
