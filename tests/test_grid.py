"""Comparison grids: layout, labels, aspect ratios, failures, pages, accessor. Pure PIL, no server."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

import flux_nb.grid  # noqa: F401  (registers the DataFrame accessor)
from flux_nb.errors import ValidationError
from flux_nb.grid import CELL_BACKGROUND, GAP, grid
from flux_nb.result import Result

COLOURS = [(220, 20, 20), (20, 180, 20), (20, 20, 220), (230, 200, 0), (200, 0, 200), (0, 200, 200)]


def frame(tmp_path: Path, sizes: dict[int, tuple[int, int]] | None = None) -> pd.DataFrame:
    rows = []
    for i, (prompt, seed) in enumerate((p, s) for p in ("a cat", "a dog") for s in (1, 2, 3)):
        size = (sizes or {}).get(i, (64, 64))
        path = tmp_path / f"{i}.png"
        Image.new("RGB", size, COLOURS[i]).save(path)
        rows.append(
            {
                "record_id": f"r{i}",
                "prompt": prompt,
                "seed": seed,
                "status": "ready",
                "error": None,
                "image_path": str(path),
                "width": size[0],
                "height": size[1],
                "model": "m",
            }
        )
    return pd.DataFrame(rows)


def centre(image: Image.Image, box: tuple[int, int, int, int]) -> tuple[int, ...]:
    return image.getpixel(((box[0] + box[2]) // 2, (box[1] + box[3]) // 2))


def test_every_cell_holds_its_image_in_order(tmp_path: Path) -> None:
    page = grid(frame(tmp_path), x="seed", y="prompt", cell=100)
    assert list(dict.fromkeys(k[0] for k in page.cells)) == [1, 2, 3]
    for i, (prompt, seed) in enumerate((p, s) for p in ("a cat", "a dog") for s in (1, 2, 3)):
        assert centre(page.image, page.cell_boxes[(seed, prompt)]) == COLOURS[i]
        assert page.cells[(seed, prompt)] == f"r{i}"


def test_canvas_size_follows_the_counts(tmp_path: Path) -> None:
    page = grid(frame(tmp_path), x="seed", y="prompt", cell=100)
    label_w = 100
    assert page.image.width == label_w + 3 * (100 + GAP) + GAP
    first = page.cell_boxes[(1, "a cat")]
    second_row = page.cell_boxes[(1, "a dog")]
    assert second_row[1] - first[1] == 100 + GAP
    assert page.image.height == second_row[3] + GAP


def test_labels_sit_above_columns_and_left_of_rows(tmp_path: Path) -> None:
    page = grid(frame(tmp_path), x="seed", y="prompt", cell=100)
    column = page.label_boxes["x:2"]
    cell = page.cell_boxes[(2, "a cat")]
    assert column[0] == cell[0] and column[3] <= cell[1]
    row = page.label_boxes["y:a dog"]
    assert row[2] <= page.cell_boxes[(1, "a dog")][0] and row[1] == page.cell_boxes[(1, "a dog")][1]


def test_aspect_ratio_is_kept(tmp_path: Path) -> None:
    page = grid(frame(tmp_path, {0: (200, 100)}), x="seed", y="prompt", cell=100)
    left, top, right, bottom = page.cell_boxes[(1, "a cat")]
    crop = page.image.crop((left, top, right, bottom))
    coloured = [(x, y) for x in range(crop.width) for y in range(crop.height) if crop.getpixel((x, y)) == COLOURS[0]]
    width = max(x for x, _ in coloured) - min(x for x, _ in coloured) + 1
    height = max(y for _, y in coloured) - min(y for _, y in coloured) + 1
    assert (width, height) == (100, 50)


def test_failed_and_missing_cells_are_marked(tmp_path: Path) -> None:
    data = frame(tmp_path)
    data.loc[1, ["status", "error", "image_path"]] = ["moderated", "the generated image was moderated", None]
    data = data.drop(index=5)
    page = grid(data, x="seed", y="prompt", cell=120)
    for key in ((2, "a cat"), (3, "a dog")):
        crop = page.image.crop(page.cell_boxes[key])
        colours = {c for _, c in crop.getcolors(100_000)}
        assert CELL_BACKGROUND in colours and len(colours) > 2  # background plus drawn text
        assert not colours & set(COLOURS)
    assert page.cells[(3, "a dog")] is None


def test_long_prompts_wrap_and_grow_the_header(tmp_path: Path) -> None:
    data = frame(tmp_path)
    short = grid(data, x="prompt", y="seed", cell=100)
    data["prompt"] = data["prompt"] + " sitting on a windowsill in the late afternoon sun, oil painting"
    tall = grid(data, x="prompt", y="seed", cell=100)
    assert tall.cell_boxes[(data.prompt[0], 1)][1] > short.cell_boxes[("a cat", 1)][1]


def test_z_makes_one_page_per_value_and_saves_each(tmp_path: Path) -> None:
    data = frame(tmp_path)
    pages = grid(data, x="seed", z="prompt", cell=64)
    assert [p.title for p in pages] == ["prompt: a cat", "prompt: a dog"]
    saved = pages.save(tmp_path / "out" / "grid.png")
    assert [p.name for p in saved] == ["grid_prompt_a_cat.png", "grid_prompt_a_dog.png"]
    assert all(Image.open(p).format == "PNG" for p in saved)


def test_save_and_html(tmp_path: Path) -> None:
    page = grid(frame(tmp_path), x="seed", y="prompt")
    target = page.save(tmp_path / "g.png")
    assert Image.open(target).size == page.image.size
    assert page._repr_html_().startswith('<img class="flux-grid" src="data:image/jpeg;base64,')


def test_dataframe_accessor(tmp_path: Path) -> None:
    assert frame(tmp_path).flux.grid(x="seed", y="prompt").cells[(1, "a cat")] == "r0"


def test_from_results_using_their_labels(tmp_path: Path) -> None:
    results = []
    for i, size in enumerate(((64, 64), (96, 64))):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", size, COLOURS[i]).save(path)
        results.append(Result(f"r{i}", "ready", "p", "m", 1, size[0], size[1], path=path, labels={"size": size}))
    page = grid(results, x="size")
    assert list(page.cells) == [((64, 64), None), ((96, 64), None)]
    assert page.label_boxes.keys() == {"x:64×64", "x:96×64"}


def test_unknown_axis_and_empty_data_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="'colour' is not a column"):
        grid(frame(tmp_path), x="colour")
    with pytest.raises(ValidationError, match="no rows"):
        grid(frame(tmp_path).iloc[0:0], x="seed")
