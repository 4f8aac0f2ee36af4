"""Comparison grids: layout, labels, aspect ratios, failures, pages, display, accessor. Pure PIL, no server."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image, ImageFont

import flux_nb.accessor  # noqa: F401  (registers the DataFrame accessor)
from flux_nb.core.results import Result
from flux_nb.errors import ModeratedError, ValidationError
from flux_nb.grids import (
    BACKGROUND,
    CELL_BACKGROUND,
    DARK,
    DISPLAY_MAX_WIDTH,
    FAILED,
    GAP,
    LABEL_FONT,
    LINE,
    Grid,
    GridPages,
    grid,
    wrap_text,
)

COLOURS = [(220, 20, 20), (20, 180, 20), (20, 20, 220), (230, 200, 0), (200, 0, 200), (0, 200, 200)]
PROMPTS = ("a cat", "a dog")
SEEDS = (1, 2, 3)
CELLS = [(p, s) for p in PROMPTS for s in SEEDS]  # row i of ``frame`` is CELLS[i], coloured COLOURS[i]


def image_file(tmp_path: Path, name: str, size: tuple[int, int], colour: tuple[int, ...], mode: str = "RGB") -> str:
    path = tmp_path / name
    Image.new(mode, size, colour).save(path)
    return str(path)


def frame(tmp_path: Path, sizes: dict[int, tuple[int, int]] | None = None) -> pd.DataFrame:
    """Six ready records, two prompts by three seeds, each a solid colour, shaped like history."""
    rows = []
    for i, (prompt, seed) in enumerate(CELLS):
        size = (sizes or {}).get(i, (64, 64))
        rows.append(
            {
                "record_id": f"r{i}",
                "prompt": prompt,
                "seed": seed,
                "width": size[0],
                "height": size[1],
                "model": "flux-2-klein-4b",
                "status": "ready",
                "error": None,
                "image_path": image_file(tmp_path, f"{i}.png", size, COLOURS[i]),
                "out_width": size[0],
                "out_height": size[1],
                "tag": None,
            }
        )
    return pd.DataFrame(rows)


def centre(image: Image.Image, box: tuple[int, int, int, int]) -> tuple[int, ...]:
    return image.getpixel(((box[0] + box[2]) // 2, (box[1] + box[3]) // 2))


def colours_in(page: Grid, key: tuple[object, object]) -> set[tuple[int, ...]]:
    return {colour for _, colour in page.image.crop(page.cell_boxes[key]).getcolors(1_000_000)}


def extent(page: Grid, key: tuple[object, object], colour: tuple[int, ...]) -> tuple[int, int]:
    """Width and height of the pixels of ``colour`` inside one cell."""
    crop = page.image.crop(page.cell_boxes[key])
    points = [(x, y) for x in range(crop.width) for y in range(crop.height) if crop.getpixel((x, y)) == colour]
    xs, ys = [x for x, _ in points], [y for _, y in points]
    return max(xs) - min(xs) + 1, max(ys) - min(ys) + 1


def test_every_cell_holds_its_own_image(tmp_path: Path) -> None:
    page = grid(frame(tmp_path), x="seed", y="prompt", cell=100)
    assert isinstance(page, Grid) and (page.x, page.y) == ("seed", "prompt")
    for i, (prompt, seed) in enumerate(CELLS):
        assert centre(page.image, page.cell_boxes[(seed, prompt)]) == COLOURS[i]
        assert page.cells[(seed, prompt)] == f"r{i}"


def test_canvas_size_follows_the_counts(tmp_path: Path) -> None:
    cell = 100
    page = grid(frame(tmp_path), x="seed", y="prompt", cell=cell)
    title_h, header_h = LINE + 2 * GAP, LINE + GAP  # one caption line, one header line
    assert page.image.size == (cell + 3 * (cell + GAP) + GAP, title_h + header_h + 2 * (cell + GAP) + GAP)
    first, right, below = page.cell_boxes[(1, "a cat")], page.cell_boxes[(2, "a cat")], page.cell_boxes[(1, "a dog")]
    assert first == (cell + GAP, title_h + header_h + GAP, 2 * cell + GAP, title_h + header_h + GAP + cell)
    assert right[0] - first[0] == below[1] - first[1] == cell + GAP


def test_without_y_there_is_no_row_label_column(tmp_path: Path) -> None:
    page = grid(frame(tmp_path).head(3), x="seed", cell=80)
    assert page.image.width == 3 * (80 + GAP) + GAP
    assert page.cell_boxes[(1, None)][0] == GAP
    assert not any(key.startswith("y:") for key in page.label_boxes)


def test_labels_sit_above_columns_and_left_of_rows(tmp_path: Path) -> None:
    page = grid(frame(tmp_path), x="seed", y="prompt", cell=100)
    for seed in SEEDS:
        header, cell = page.label_boxes[f"x:{seed}"], page.cell_boxes[(seed, "a cat")]
        assert (header[0], header[2]) == (cell[0], cell[2]) and header[3] <= cell[1]
    for prompt in PROMPTS:
        label, cell = page.label_boxes[f"y:{prompt}"], page.cell_boxes[(1, prompt)]
        assert label[2] <= cell[0] and (label[1], label[3]) == (cell[1], cell[3])
    assert page.label_boxes["title"][3] <= page.label_boxes["x:1"][1]


def test_labels_are_drawn_as_text(tmp_path: Path) -> None:
    page = grid(frame(tmp_path), x="seed", y="prompt", cell=100)
    for key in ("title", "x:2", "y:a dog"):
        colours = {c for _, c in page.image.crop(page.label_boxes[key]).getcolors(1_000_000)}
        assert len(colours - {BACKGROUND}) > 1  # antialiased glyphs on white


def test_a_wide_image_keeps_its_aspect_ratio(tmp_path: Path) -> None:
    page = grid(frame(tmp_path, {0: (200, 100)}), x="seed", y="prompt", cell=100)
    assert extent(page, (1, "a cat"), COLOURS[0]) == (100, 50)
    assert centre(page.image, page.cell_boxes[(1, "a cat")]) == COLOURS[0]
    box = page.cell_boxes[(1, "a cat")]
    assert page.image.getpixel((box[0] + 50, box[1] + 5)) == CELL_BACKGROUND  # band above the image


def test_small_and_tall_images_are_fitted_to_the_cell(tmp_path: Path) -> None:
    page = grid(frame(tmp_path, {0: (32, 16), 1: (50, 200)}), x="seed", y="prompt", cell=100)
    assert extent(page, (1, "a cat"), COLOURS[0]) == (100, 50)
    assert extent(page, (2, "a cat"), COLOURS[1]) == (25, 100)


def test_transparent_images_show_the_cell_background(tmp_path: Path) -> None:
    data = frame(tmp_path)
    data.loc[0, "image_path"] = image_file(tmp_path, "clear.png", (64, 64), (255, 0, 0, 0), mode="RGBA")
    page = grid(data, x="seed", y="prompt", cell=100)
    assert centre(page.image, page.cell_boxes[(1, "a cat")]) == CELL_BACKGROUND


def test_failed_and_missing_cells_are_marked(tmp_path: Path) -> None:
    data = frame(tmp_path)
    data.loc[1, ["status", "error", "image_path"]] = ["moderated", "the generated image was moderated", None]
    data = data.drop(index=5)
    page = grid(data, x="seed", y="prompt", cell=120)
    failed, missing = colours_in(page, (2, "a cat")), colours_in(page, (3, "a dog"))
    for colours in (failed, missing):
        assert CELL_BACKGROUND in colours and len(colours) > 2  # background plus drawn text
        assert not colours & set(COLOURS)
    assert FAILED in failed and FAILED not in missing  # a failure reads in red, "missing" in grey
    assert page.cells[(2, "a cat")] == "r1" and page.cells[(3, "a dog")] is None


def test_a_ready_record_whose_file_is_gone_is_marked_not_fatal(tmp_path: Path) -> None:
    data = frame(tmp_path)
    Path(data.loc[2, "image_path"]).unlink()
    data.loc[3, "image_path"] = image_file(tmp_path, "junk.png", (1, 1), (0, 0, 0))
    Path(data.loc[3, "image_path"]).write_bytes(b"not an image")
    page = grid(data, x="seed", y="prompt", cell=100)
    assert FAILED in colours_in(page, (3, "a cat")) and FAILED in colours_in(page, (1, "a dog"))


def test_the_newest_of_several_records_fills_a_cell(tmp_path: Path) -> None:
    data = frame(tmp_path)
    again = data.iloc[[0]].assign(record_id="newer", image_path=image_file(tmp_path, "n.png", (64, 64), (9, 9, 9)))
    page = grid(pd.concat([data, again], ignore_index=True), x="seed", y="prompt", cell=64)
    assert page.cells[(1, "a cat")] == "newer"
    assert centre(page.image, page.cell_boxes[(1, "a cat")]) == (9, 9, 9)


def test_values_are_ordered_naturally(tmp_path: Path) -> None:
    data = pd.concat([frame(tmp_path)] * 2, ignore_index=True)
    data["seed"] = [10, 9, 100, 2, 10, 9, 1, 1, 1, 1, 1, 1]
    data["prompt"] = ["zebra", "apple", "mango", "zebra", "apple", None] * 2
    page = grid(data, x="seed", y="prompt", cell=40)
    assert list(dict.fromkeys(k[0] for k in page.cells)) == [1, 2, 9, 10, 100]
    assert list(dict.fromkeys(k[1] for k in page.cells)) == ["zebra", "apple", "mango", None]


def test_history_dtypes_with_missing_values_work(tmp_path: Path) -> None:
    data = frame(tmp_path).astype({"seed": "Int64", "prompt": "string", "status": "string", "image_path": "string"})
    data.loc[4, ["status", "image_path", "error"]] = ["failed", pd.NA, "Task failed: out of memory"]
    page = grid(data, x="seed", y="prompt", cell=64)
    assert centre(page.image, page.cell_boxes[(1, "a cat")]) == COLOURS[0]
    assert FAILED in colours_in(page, (2, "a dog"))
    assert all(type(k[0]) is int for k in page.cells)


def test_long_prompts_wrap_and_grow_the_header(tmp_path: Path) -> None:
    data = frame(tmp_path)
    short = grid(data, x="prompt", y="seed", cell=100)
    endings = {"a cat": " sitting on a windowsill in the late afternoon sun", "a dog": " running along a beach at noon"}
    data["prompt"] = data["prompt"] + data["prompt"].map(endings)  # nothing shared: each header says it all
    tall = grid(data, x="prompt", y="seed", cell=100)
    grown = tall.cell_boxes[(data.prompt[0], 1)][1] - short.cell_boxes[("a cat", 1)][1]
    assert grown > 0 and grown % LINE == 0
    assert tall.image.height == short.image.height + grown
    header = tall.label_boxes[f"x:{data.prompt[0]}"]
    assert header[2] - header[0] == 100  # a header stays within its column


def test_z_makes_one_page_per_value(tmp_path: Path) -> None:
    pages = grid(frame(tmp_path), x="seed", z="prompt", cell=64)
    assert isinstance(pages, GridPages) and len(pages) == 2
    assert [p.title for p in pages] == ["prompt: a cat", "prompt: a dog"]
    assert [(p.z, p.z_value) for p in pages] == [("prompt", "a cat"), ("prompt", "a dog")]
    assert centre(pages[1].image, pages[1].cell_boxes[(3, None)]) == COLOURS[5]
    assert "<img" in pages._repr_html_() and pages._repr_html_().count("<img") == 2


def test_z_pages_save_one_png_each_named_by_value(tmp_path: Path) -> None:
    pages = grid(frame(tmp_path), x="seed", z="prompt", cell=64)
    saved = pages.save(tmp_path / "out" / "grid.png")
    assert [p.name for p in saved] == ["grid_prompt_a_cat.png", "grid_prompt_a_dog.png"]
    for path, page in zip(saved, pages, strict=True):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == page.image.size


def test_a_folded_z_axis_pages_by_value_pairs(tmp_path: Path) -> None:
    data = frame(tmp_path)
    data["model"] = ["pro", "pro", "pro", "max", "max", "max"]
    pages = grid(data, x="seed", z="prompt+model", cell=64)
    assert [p.title for p in pages] == ["prompt: a cat · model: pro", "prompt: a dog · model: max"]


def test_save_writes_the_full_size_png(tmp_path: Path) -> None:
    page = grid(frame(tmp_path), x="seed", y="prompt")
    target = page.save(tmp_path / "nested" / "g.png")
    with Image.open(target) as image:
        assert image.format == "PNG" and image.size == page.image.size
        assert image.convert("RGB").getpixel((0, 0)) == BACKGROUND


def test_html_shows_a_jpeg_scaled_down_for_display(tmp_path: Path) -> None:
    data = pd.concat([frame(tmp_path)] * 2, ignore_index=True).assign(seed=range(12))
    page = grid(data, x="seed", cell=160)
    assert page.image.width > DISPLAY_MAX_WIDTH
    markup = page._repr_html_()
    encoded = re.search(r'src="data:image/jpeg;base64,([^"]+)"', markup)
    assert encoded and 'alt="x: seed"' in markup
    with Image.open(io.BytesIO(base64.b64decode(encoded.group(1)))) as shown:
        assert shown.width == DISPLAY_MAX_WIDTH
        assert shown.height == round(page.image.height * DISPLAY_MAX_WIDTH / page.image.width)


def test_the_title_can_be_chosen(tmp_path: Path) -> None:
    page = grid(frame(tmp_path), x="seed", y="prompt", title="Seeds & prompts")
    assert page.title == "Seeds & prompts" and 'alt="Seeds &amp; prompts"' in page._repr_html_()


def test_dataframe_accessor(tmp_path: Path) -> None:
    page = frame(tmp_path).flux.grid(x="seed", y="prompt", cell=64)
    assert page.cells[(1, "a cat")] == "r0"
    assert len(frame(tmp_path).flux.grid(x="seed", z="prompt")) == 2


def test_from_results_using_their_labels(tmp_path: Path) -> None:
    results = []
    for i, size in enumerate(((64, 64), (96, 64))):
        path = Path(image_file(tmp_path, f"{i}.png", size, COLOURS[i]))
        results.append(Result(f"r{i}", "ready", "p", "m", 1, size[0], size[1], path=path, labels={"size": size}))
    page = grid(results, x="size", cell=96)
    assert list(page.cells) == [((64, 64), None), ((96, 64), None)]
    assert {"x:64×64", "x:96×64"} <= page.label_boxes.keys()
    assert [centre(page.image, page.cell_boxes[key]) for key in page.cells] == COLOURS[:2]


def test_from_results_with_a_failure_and_attribute_axes(tmp_path: Path) -> None:
    ok = Result("r0", "ready", "p", "m", 1, 64, 64, path=Path(image_file(tmp_path, "0.png", (64, 64), COLOURS[0])))
    ok.engine = "preview"
    moderated = ModeratedError("output moderated", task_status="Content Moderated")
    failed = Result("r1", "moderated", "p", "m", 2, 64, 64, error=moderated, engine="preview")
    page = grid([ok, failed], x="seed", y="engine", cell=100)
    assert page.cells == {(1, "preview"): "r0", (2, "preview"): "r1"}
    assert centre(page.image, page.cell_boxes[(1, "preview")]) == COLOURS[0]
    assert FAILED in colours_in(page, (2, "preview"))


def test_unknown_axis_and_empty_data_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="grid axis 'colour' is not a column") as caught:
        grid(frame(tmp_path), x="colour")
    assert "seed" in str(caught.value)
    with pytest.raises(ValidationError, match="no rows"):
        grid(frame(tmp_path).iloc[0:0], x="seed")
    with pytest.raises(ValidationError, match="grid axes must differ"):
        grid(frame(tmp_path), x="seed", y="seed")
    with pytest.raises(ValidationError, match="takes a DataFrame or a list of Results"):
        grid(["not a result"], x="seed")


def test_wrapped_text_fits_its_width_and_marks_a_cut_off_end() -> None:
    text = "a lighthouse on a cliff at dusk " * 6 + "supercalifragilisticexpialidocious" * 3
    lines = wrap_text(text, 120, max_lines=50)
    font = ImageFont.load_default(size=LABEL_FONT)
    assert len(lines) > 6 and all(font.getlength(line) <= 120 for line in lines)
    assert " ".join(lines).replace(" ", "") == text.replace(" ", "")  # nothing lost, long words cut
    short = wrap_text(text, 120, max_lines=3)
    assert len(short) == 3 and short[-1].endswith("…") and font.getlength(short[-1]) <= 120


def test_characters_the_bundled_font_lacks_are_folded_not_boxed() -> None:
    assert wrap_text("café über 512×256 — 中", 1000) == ["cafe uber 512x256 - ?"]


def ink_height(page: Grid, key: str) -> int:
    """Rows of a label box with anything drawn in them (the text's height in pixels)."""
    crop = page.image.crop(page.label_boxes[key]).convert("L")
    background = crop.getpixel((crop.width - 1, crop.height - 1))
    rows = [
        y for y in range(crop.height) if any(abs(crop.getpixel((x, y)) - background) > 40 for x in range(crop.width))
    ]
    return max(rows) - min(rows) + 1 if rows else 0


def test_labels_of_a_wide_grid_stay_readable_where_it_is_shown(tmp_path: Path) -> None:
    data = pd.concat([frame(tmp_path)] * 2, ignore_index=True).assign(seed=range(12))
    wide = grid(data, x="seed", cell=256)
    shown = 1000 / wide.image.width  # a notebook shows it about 1000 pixels wide
    assert ink_height(wide, "x:10") * shown >= 9  # digits at least 9 px high on screen (was about 3)
    small = grid(frame(tmp_path), x="seed", y="prompt", cell=100)
    assert ink_height(small, "x:1") <= LINE  # small grids keep the 14 px labels


def test_prompts_show_only_what_varies_and_say_the_rest_once(tmp_path: Path) -> None:
    data = frame(tmp_path)
    data["prompt"] = data["prompt"].map(
        {
            "a cat": "a photo of a red fox in deep snow, oil painting",
            "a dog": "a photo of a grey wolf in deep snow, oil painting",
        }
    )
    page = grid(data, x="seed", y="prompt", cell=100)
    assert page.label_text["y:a photo of a red fox in deep snow, oil painting"] == ["red fox"]
    assert page.label_text["y:a photo of a grey wolf in deep snow, oil painting"] == ["grey wolf"]
    assert "prompt: a photo of a … in deep snow, oil painting" in " ".join(page.label_text["title"])
    plain = grid(frame(tmp_path), x="seed", y="prompt", cell=100)  # "a" alone is not worth a title
    assert plain.label_text["y:a cat"] == ["a cat"]


def test_a_dark_grid_has_a_dark_page_and_light_labels(tmp_path: Path) -> None:
    page = grid(frame(tmp_path), x="seed", y="prompt", cell=100, theme="dark")
    assert page.theme == "dark" and page.image.getpixel((0, 0)) == DARK.background
    assert centre(page.image, page.cell_boxes[(1, "a cat")]) == COLOURS[0]
    label = page.image.crop(page.label_boxes["x:2"]).convert("L")
    assert label.getextrema()[1] > 200  # light text on the dark page
    assert grid(frame(tmp_path), x="seed", cell=64).image.getpixel((0, 0)) == BACKGROUND  # light outside a notebook
    with pytest.raises(ValidationError, match="grid theme 'blue'"):
        grid(frame(tmp_path), x="seed", theme="blue")


def test_a_kernel_grid_follows_the_jupyter_theme_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flux_nb.grids import theme as theme_module

    settings = tmp_path / "settings" / "@jupyterlab" / "apputils-extension" / "themes.jupyterlab-settings"
    settings.parent.mkdir(parents=True)
    settings.write_text('{\n    // "theme": "JupyterLab Light" is the default\n    "theme": "JupyterLab Dark"\n}')
    monkeypatch.setenv("JUPYTERLAB_SETTINGS_DIR", str(tmp_path / "settings"))
    assert grid(frame(tmp_path), x="seed", cell=64).image.getpixel((0, 0)) == BACKGROUND  # not in a kernel
    monkeypatch.setattr(theme_module, "in_kernel", lambda: True)
    assert grid(frame(tmp_path), x="seed", cell=64).image.getpixel((0, 0)) == DARK.background
    assert grid(frame(tmp_path), x="seed", cell=64, theme="light").image.getpixel((0, 0)) == BACKGROUND
    settings.write_text('{"theme": "JupyterLab Dark"}')  # as the server writes it: one line
    assert grid(frame(tmp_path), x="seed", cell=64).image.getpixel((0, 0)) == DARK.background
    settings.write_text('{"theme": "JupyterLab Light"}')
    assert grid(frame(tmp_path), x="seed", cell=64).image.getpixel((0, 0)) == BACKGROUND


def test_z_pages_can_be_one_combined_image(tmp_path: Path) -> None:
    pages = grid(frame(tmp_path), x="seed", z="prompt", cell=64)
    combined = grid(frame(tmp_path), x="seed", z="prompt", cell=64, combined=True)
    assert isinstance(combined, Grid) and len(combined.pages) == 2
    assert combined.image.size == (pages[0].image.width, sum(p.image.height for p in pages) + GAP)
    assert combined.cells[(3, ("a dog", None))] == "r5"
    for i, (prompt, seed) in enumerate(CELLS):
        assert centre(combined.image, combined.cell_boxes[(seed, (prompt, None))]) == COLOURS[i]
    assert combined._repr_html_().count("<img") == 1


def test_cells_can_show_their_rating_and_grids_sort_and_filter_by_it(tmp_path: Path) -> None:
    data = frame(tmp_path).assign(rating=[None, 2, None, 5, 1, None])
    page = grid(data, x="seed", y="prompt", cell=120, label="rating", sort="rating")
    assert page.cell_text[(1, "a dog")] == "rating 5/5" and page.cell_text[(1, "a cat")] == "unrated"
    assert list(dict.fromkeys(k[1] for k in page.cells)) == ["a dog", "a cat"]  # the row with the 5 first
    assert list(dict.fromkeys(k[0] for k in page.cells)) == [1, 2, 3]  # 5, then 2, then unrated
    band = page.cell_boxes[(1, "a dog")]
    strip = page.image.crop((band[0], band[3] - LINE, band[2], band[3]))
    assert len({c for _, c in strip.getcolors(100_000)} - {COLOURS[3]}) > 2  # text drawn over the image's foot
    best = grid(data, x="seed", y="prompt", cell=64, min_rating=2)
    assert set(best.cells.values()) == {"r1", "r3", None}
    with pytest.raises(ValidationError, match="grid column 'rating' is not in the data"):
        grid(frame(tmp_path), x="seed", sort="rating")
