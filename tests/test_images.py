"""Reference images in every accepted form, every rejected one with a clear message, and outputs checked."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flux_nb.errors import DeliveryError, ValidationError
from flux_nb.images import decode_output, prepare_image, prepare_images, sha256_hex, thumbnail


def png(size: tuple[int, int] = (40, 30), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, "PNG")
    return buffer.getvalue()


def decoded(value: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(value)))


def test_a_png_path_is_sent_as_its_own_bytes(tmp_path: Path) -> None:
    path = tmp_path / "ref.png"
    path.write_bytes(png())
    for form in (str(path), path):
        image = prepare_image(form)
        assert base64.b64decode(image.value) == path.read_bytes()
        assert image.sha256 == sha256_hex(path.read_bytes())
        assert (image.size, image.format, image.is_url) == ((40, 30), "png", False)


def test_home_relative_paths_expand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "me.png").write_bytes(png())
    assert prepare_image("~/me.png").size == (40, 30)


def test_other_formats_are_re_encoded_as_png(tmp_path: Path) -> None:
    path = tmp_path / "ref.bmp"
    Image.new("RGB", (20, 10), "blue").save(path)
    image = prepare_image(path)
    assert image.format == "png" and decoded(image.value).format == "PNG"


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "LA", "CMYK"])
def test_pil_images_of_every_mode(mode: str) -> None:
    image = prepare_image(Image.new(mode, (16, 8)))
    assert image.size == (16, 8) and decoded(image.value).mode in ("RGB", "RGBA", "L")


def test_bytes_and_memoryviews() -> None:
    data = png()
    assert prepare_image(data).sha256 == prepare_image(memoryview(data)).sha256 == sha256_hex(data)
    assert prepare_image(bytearray(data)).size == (40, 30)


def test_numpy_arrays_uint8_and_float() -> None:
    rgb = np.zeros((12, 20, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    assert decoded(prepare_image(rgb).value).getpixel((0, 0)) == (255, 0, 0)
    gray = np.full((5, 6), 0.5, dtype=np.float32)
    assert decoded(prepare_image(gray).value).getpixel((0, 0)) == 128
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    assert prepare_image(rgba).size == (4, 4)


def test_urls_are_sent_as_given() -> None:
    image = prepare_image("https://example.com/cat.png")
    assert image.is_url and image.value == "https://example.com/cat.png" and image.data is None
    assert image.sha256 == sha256_hex(b"url:https://example.com/cat.png")
    assert "example.com" in repr(image)


def test_repr_is_short() -> None:
    assert len(repr(prepare_image(png((500, 500))))) < 100


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("/definitely/missing.png", "no file at"),
        ("ftp://example.com/a.png", "not an http(s) URL"),
        ("file:///etc/passwd", "not an http(s) URL"),
        ("javascript:alert(1)", "not an http(s) URL"),
        ("http:///nohost.png", "has no host"),
        (b"", "empty bytes"),
        (b"not an image at all", "not a readable image"),
        (png()[:60], "not a readable image"),
        (12345, "int is not an image"),
        (np.zeros((3, 3, 5), dtype=np.uint8), "is not HxW"),
        (np.zeros((3, 3), dtype=np.int64), "dtype int64"),
        (np.full((3, 3), np.nan), "NaN"),
        (np.zeros((0, 3), dtype=np.uint8), "empty"),
    ],
)
def test_bad_inputs_name_the_argument_and_the_problem(value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=r"^images\[1\]") as caught:
        prepare_images([png(), value])
    assert message in str(caught.value)


def test_a_text_file_named_png_and_a_folder_are_refused(tmp_path: Path) -> None:
    fake = tmp_path / "notes.png"
    fake.write_text("this is text")
    with pytest.raises(ValidationError, match=r"image \(notes.png\): not a readable image"):
        prepare_image(fake)
    with pytest.raises(ValidationError, match="is a folder"):
        prepare_image(tmp_path)


def test_decompression_bombs_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ValidationError, match="too large to decode safely"):
        prepare_image(png((100, 100)))


def test_prepare_images_accepts_none_one_or_many() -> None:
    assert prepare_images(None) == ()
    assert len(prepare_images(png())) == 1
    assert len(prepare_images([png(), png()])) == 2


def test_decode_output_detects_truncation_and_garbage() -> None:
    good = png((64, 64))
    assert decode_output(good).size == (64, 64)
    for bad in (good[: len(good) // 2], b"garbage", b""):
        with pytest.raises(DeliveryError, match="corrupt or truncated"):
            decode_output(bad)


@pytest.mark.parametrize(("fmt", "pil"), [("jpeg", "JPEG"), ("webp", "WEBP")])
def test_thumbnails_are_small_and_keep_aspect(fmt: str, pil: str) -> None:
    data = thumbnail(Image.new("RGBA", (1024, 512), (1, 2, 3, 4)), 128, fmt)
    image = Image.open(io.BytesIO(data))
    assert image.format == pil and image.size == (128, 64)
    assert len(data) < 5000
