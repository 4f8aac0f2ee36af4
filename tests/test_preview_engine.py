"""The preview engine: deterministic, visibly different across seeds and prompts, honest, fast enough."""

from __future__ import annotations

import numpy as np
from PIL import Image

from flux_nb.server.engines import RenderJob, get_engine
from flux_nb.server.task_table import encode

ENGINE = get_engine("preview")


def render(prompt: str = "a lighthouse", seed: int = 1, size: tuple[int, int] = (256, 192), refs=()) -> Image.Image:
    return ENGINE.render(RenderJob(prompt, seed, size[0], size[1], "flux-2-klein-4b", tuple(refs)))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32)


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(pixels(a) - pixels(b)).mean())


def test_same_inputs_give_identical_bytes_in_every_format() -> None:
    for fmt in ("jpeg", "png", "webp"):
        assert encode(render(), fmt) == encode(render(), fmt)


def test_seeds_and_prompts_differ_visibly() -> None:
    base = render()
    assert mean_difference(base, render(seed=2)) > 10
    assert mean_difference(base, render(prompt="a red fox")) > 10


def test_size_is_honoured() -> None:
    for size in ((64, 64), (512, 128), (320, 768)):
        assert render(size=size).size == size


def test_the_preview_mark_is_drawn_in_the_top_right_corner() -> None:
    image = pixels(render(size=(512, 512)))
    corner = image[:40, -120:]
    assert (corner.sum(axis=2) < 30).mean() > 0.2  # the black label
    assert (corner.min(axis=2) > 225).any()  # white text on it


def test_references_show_through() -> None:
    red, blue = Image.new("RGB", (300, 300), (255, 0, 0)), Image.new("RGB", (300, 300), (0, 0, 255))
    plain = render(size=(256, 256))
    edited = render(size=(256, 256), refs=[red])
    assert pixels(edited)[..., 0].mean() > pixels(plain)[..., 0].mean() + 40
    with_inset = render(size=(256, 256), refs=[red, blue])
    assert mean_difference(edited, with_inset) > 1
    inset = pixels(with_inset)[200:240, 200:250]
    assert (inset[..., 2] > 200).mean() > 0.3  # the second reference as a tile near the bottom right


def test_engine_is_registered_by_name() -> None:
    assert ENGINE.name == "preview"
    try:
        get_engine("nope")
    except ValueError as exc:
        assert "preview" in str(exc)
    else:
        raise AssertionError("unknown engine accepted")


def test_captions_fold_characters_the_font_lacks() -> None:
    from flux_nb.fonts import drawable

    assert drawable("café × 2 — ok") == "cafe x 2 - ok"
    assert drawable("中") == "?"
    folded, exact = render(prompt="a café"), render(prompt="a cafe")
    assert folded.size == exact.size  # renders without error; the caption reads "a cafe"
