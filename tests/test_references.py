"""Reference images held to the API's limits before anything is stored or sent; shrunk only when asked."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from flux_nb import Flux
from flux_nb.errors import ValidationError
from flux_nb.images import REFERENCE_MAX_BYTES, REFERENCE_MAX_PIXELS, prepare_image
from flux_nb.reference_fitting import shrink


def png(width: int, height: int, noise: bool = False) -> bytes:
    pixels = np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8) if noise else None
    image = Image.fromarray(pixels) if noise else Image.new("RGB", (width, height), (40, 90, 160))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_a_valid_png_padded_past_the_byte_limit_is_refused_before_anything_is_kept(
    flux: Flux, server: Any, tmp_path: Path
) -> None:
    padded = tmp_path / "padded.png"
    padded.write_bytes(png(64, 64) + b"\0" * (REFERENCE_MAX_BYTES + 1))  # decodes fine: the junk is after IEND
    with pytest.raises(ValidationError) as caught:
        flux.generate("edit", seed=1, width=64, height=64, images=[padded])
    line = caught.value.one_line()
    assert "images[0]" in line and "20 MB" in line and "shrink" in line and "\n" not in line
    assert server.stats()["submits"] == 0
    assert not (Path(flux.history_dir) / "inputs").exists() or not any((Path(flux.history_dir) / "inputs").rglob("*"))
    assert not Path(flux.history_dir).exists() or flux.store.count() == 0


def test_the_byte_limit_is_exact(tmp_path: Path) -> None:
    base = png(64, 64)
    at = base + b"\0" * (REFERENCE_MAX_BYTES - len(base))
    assert prepare_image(at).size == (64, 64)
    with pytest.raises(ValidationError, match="over the reference limit"):
        prepare_image(at + b"\0")


def test_references_over_4_megapixels_are_refused_and_4_megapixels_pass() -> None:
    assert prepare_image(png(2048, 2048)).size == (2048, 2048)  # exactly 4 MP: the API's limit
    with pytest.raises(ValidationError, match="over the API's limit of 4 MP"):
        prepare_image(png(2048, 2049))
    with pytest.raises(ValidationError, match="4 MP"):
        prepare_image(Image.new("RGB", (4000, 3000)))
    assert REFERENCE_MAX_PIXELS == 2048 * 2048


@pytest.mark.slow
def test_shrink_downscales_and_reencodes_only_when_asked(flux: Flux, server: Any) -> None:
    big = png(4000, 3000)
    reference = prepare_image(shrink(big))
    assert reference.size[0] * reference.size[1] <= REFERENCE_MAX_PIXELS and reference.size[0] / reference.size[
        1
    ] == pytest.approx(4 / 3, rel=0.01)
    small = png(64, 64)
    assert prepare_image(shrink(small)).data == small  # within the limits: untouched
    noisy = prepare_image(shrink(png(2048, 2048, noise=True) + b"\0" * REFERENCE_MAX_BYTES))
    assert noisy.format in ("png", "jpeg") and len(noisy.data or b"") <= REFERENCE_MAX_BYTES
    result = flux.generate("edit", seed=1, width=64, height=64, images=[shrink(big)])
    assert result.ok and server.stats()["submits"] == 1
    with pytest.raises(ValidationError, match="URL reference cannot be shrunk"):
        prepare_image(shrink("https://example.com/cat.png"))
