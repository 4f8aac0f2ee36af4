"""Reference images in every accepted form, every rejected one with a clear message, and outputs checked."""

from __future__ import annotations

import base64
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from flux_nb.errors import DeliveryError, ValidationError
from flux_nb.images import (
    ImageInput,
    decode_output,
    md5_base64,
    prepare_image,
    prepare_images,
    sha256_hex,
    thumbnail,
)


def encoded(size: tuple[int, int] = (40, 30), mode: str = "RGB", fmt: str = "PNG", color: object = 0) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, fmt)
    return buffer.getvalue()


def decoded(image: ImageInput) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(image.value)))


# -- accepted ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "ext"), [("PNG", "png"), ("JPEG", "jpeg"), ("WEBP", "webp")])
def test_png_jpeg_and_webp_files_are_sent_as_their_own_bytes(tmp_path: Path, fmt: str, ext: str) -> None:
    path = tmp_path / f"ref.{ext}"
    path.write_bytes(encoded(fmt=fmt))
    for form in (str(path), path):
        image = prepare_image(form)
        assert base64.b64decode(image.value) == image.data == path.read_bytes()
        assert image.sha256 == sha256_hex(path.read_bytes())
        assert (image.size, image.format, image.is_url) == ((40, 30), ext, False)


def test_home_relative_paths_expand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "me.png").write_bytes(encoded())
    assert prepare_image("~/me.png").size == (40, 30)
    assert prepare_image(Path("~/me.png")).size == (40, 30)


@pytest.mark.parametrize("fmt", ["BMP", "GIF", "TIFF"])
def test_other_formats_are_re_encoded_as_png(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"ref.{fmt.lower()}"
    path.write_bytes(encoded((20, 10), fmt=fmt))
    image = prepare_image(path)
    assert image.format == "png" and decoded(image).format == "PNG" and image.size == (20, 10)
    assert image.sha256 == sha256_hex(image.data or b"") != sha256_hex(path.read_bytes())


def test_cmyk_jpegs_are_re_encoded_as_rgb_png() -> None:
    image = prepare_image(encoded(mode="CMYK", fmt="JPEG"))
    assert image.format == "png" and decoded(image).mode == "RGB"


@pytest.mark.parametrize(
    ("mode", "sent"),
    [("RGB", "RGB"), ("RGBA", "RGBA"), ("L", "L"), ("P", "RGB"), ("LA", "RGBA"), ("CMYK", "RGB"), ("1", "RGB")],
)
def test_pil_images_are_sent_as_png_in_a_plain_mode(mode: str, sent: str) -> None:
    image = prepare_image(Image.new(mode, (16, 8)))
    assert (image.size, image.format) == ((16, 8), "png")
    assert decoded(image).mode == sent


def test_palette_images_with_transparency_keep_it() -> None:
    palette = Image.new("P", (8, 8))
    palette.info["transparency"] = 0
    assert decoded(prepare_image(palette)).mode == "RGBA"


def test_rgba_keeps_its_alpha() -> None:
    image = prepare_image(Image.new("RGBA", (4, 4), (10, 20, 30, 40)))
    assert decoded(image).getpixel((0, 0)) == (10, 20, 30, 40)


def test_16_bit_images_keep_their_tones_instead_of_turning_white() -> None:
    deep = Image.fromarray(np.full((4, 4), 40000, dtype=np.uint16))
    assert decoded(prepare_image(deep)).getpixel((0, 0)) == 40000 >> 8


def test_bytes_bytearrays_and_memoryviews() -> None:
    data = encoded()
    assert prepare_image(data).sha256 == prepare_image(memoryview(data)).sha256 == sha256_hex(data)
    assert prepare_image(bytearray(data)).size == (40, 30)


def test_numpy_arrays_of_every_accepted_shape() -> None:
    rgb = np.zeros((12, 20, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    assert decoded(prepare_image(rgb)).getpixel((0, 0)) == (255, 0, 0)
    assert prepare_image(rgb).size == (20, 12)  # PIL sizes are (width, height)
    assert decoded(prepare_image(np.zeros((4, 4, 4), dtype=np.uint8))).mode == "RGBA"
    assert decoded(prepare_image(np.full((5, 6), 7, dtype=np.uint8))).getpixel((0, 0)) == 7
    assert decoded(prepare_image(np.full((5, 6, 1), 9, dtype=np.uint8))).getpixel((0, 0)) == 9
    assert prepare_image(rgb[:, ::2]).size == (10, 12)  # a strided view


def test_float_arrays_in_0_to_1_are_scaled() -> None:
    gray = np.full((5, 6), 0.5, dtype=np.float32)
    assert decoded(prepare_image(gray)).getpixel((0, 0)) == 128
    ones = np.ones((2, 2, 3), dtype=np.float64)
    assert decoded(prepare_image(ones)).getpixel((1, 1)) == (255, 255, 255)


def test_urls_are_sent_as_given_and_hashed_with_a_prefix() -> None:
    for url in ("https://example.com/cat.png", "http://example.com:8080/a/b.jpg?x=1"):
        image = prepare_image(url)
        assert image.is_url and image.value == url
        assert (image.data, image.size, image.format, image.megapixels) == (None, None, None, 0.0)
        assert image.sha256 == sha256_hex(f"url:{url}".encode())
        assert "example.com" in repr(image)


def test_data_uris_are_decoded_to_raw_base64() -> None:
    data = encoded()
    image = prepare_image("data:image/png;base64," + base64.b64encode(data).decode())
    assert not image.is_url and image.data == data and not image.value.startswith("data:")


def test_megapixels_count_as_the_api_prices_them() -> None:
    assert prepare_image(np.zeros((1024, 1024), dtype=np.uint8)).megapixels == 1.0
    assert prepare_image(encoded((512, 512))).megapixels == 0.25


def test_repr_is_short_and_never_shows_the_base64() -> None:
    image = prepare_image(encoded((500, 500)))
    assert len(repr(image)) < 100 and image.value[:20] not in repr(image)
    assert "500x500" in repr(image)
    assert len(repr(prepare_image("https://example.com/" + "x" * 500))) < 120


def test_a_prepared_image_passes_through() -> None:
    image = prepare_image(encoded())
    assert prepare_image(image) is image


def test_prepare_images_accepts_none_one_or_many() -> None:
    assert prepare_images(None) == ()
    assert prepare_images([]) == ()
    assert len(prepare_images(encoded())) == 1
    assert len(prepare_images("https://example.com/a.png")) == 1  # one string, not its characters
    assert len(prepare_images(np.zeros((3, 4, 3), dtype=np.uint8))) == 1  # one array, not its rows
    assert len(prepare_images([encoded(), encoded()])) == 2
    assert len(prepare_images((encoded(), "https://example.com/a.png"))) == 2


# -- refused ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("/definitely/missing.png", "no file at '/definitely/missing.png'"),
        ("ftp://example.com/a.png", "'ftp://example.com/a.png' is not an http(s) URL"),
        ("file:///etc/passwd", "is not an http(s) URL"),
        ("javascript:alert(1)", "is not an http(s) URL"),
        ("mailto:me@example.com", "is not an http(s) URL"),
        ("http:///nohost.png", "has no host"),
        ("https://exa mple.com/a.png", "contains spaces"),
        ("https://example.com:99999/a.png", "invalid port"),
        ("data:image/png;base64,@@@", "does not hold valid base64"),
        (b"", "empty bytes are not an image"),
        (b"not an image at all", "the data is not a readable image (unknown format)"),
        (encoded()[:60], "the data is not a readable image"),
        (12345, "int is not an image"),
        ({"a": 1}, "dict is not an image"),
        (Image.new("RGB", (0, 5)), "has zero size"),
        (np.zeros((3, 3, 5), dtype=np.uint8), "array of shape (3, 3, 5) is not HxW, HxWx3 or HxWx4"),
        (np.zeros((3, 8, 8), dtype=np.uint8), "try array.transpose(1, 2, 0)"),
        (np.zeros((2, 2, 2, 3), dtype=np.uint8), "is not HxW"),
        (np.zeros((3, 3), dtype=np.int64), "dtype int64 is not supported"),
        (np.zeros((3, 3), dtype=bool), "dtype bool is not supported"),
        (np.full((3, 3), np.nan), "NaN"),
        (np.full((3, 3), 255.0), "floats must be in 0..1 (divide by 255"),
        (np.zeros((0, 3), dtype=np.uint8), "zero size"),
    ],
)
def test_bad_inputs_name_the_argument_and_the_problem(value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=r"^images\[1\]: ") as caught:
        prepare_images([encoded(), value])
    assert message in str(caught.value)


def test_a_missing_relative_path_says_where_it_was_looked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValidationError, match=r"^images\[0\]: no file at 'x.png' \(relative to ") as caught:
        prepare_images(["x.png"])
    assert str(tmp_path) in str(caught.value)


def test_folders_special_files_and_empty_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"^ref: '.*' is a folder, not an image file"):
        prepare_image(tmp_path, "ref")
    with pytest.raises(ValidationError, match="is not a regular file"):
        prepare_image("/dev/null")
    (tmp_path / "empty.png").touch()
    with pytest.raises(ValidationError, match="is an empty file"):
        prepare_image(tmp_path / "empty.png")


def test_a_text_file_named_png_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "notes.png"
    fake.write_text("this is text")
    with pytest.raises(ValidationError, match=r"^image: '.*notes\.png' is not a readable image \(unknown format\)"):
        prepare_image(fake)


def test_an_unreadable_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "locked.png"
    path.write_bytes(encoded())

    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(ValidationError, match=r"cannot read '.*locked\.png' \(Permission denied\)"):
        prepare_image(path)


@pytest.mark.parametrize(("side", "pixels"), [(40, "1,600"), (100, "10,000")])
def test_decompression_bombs_are_refused_with_the_pixel_count(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, side: int, pixels: str
) -> None:
    # 40x40 is between the limit and twice it (Pillow only warns); 100x100 is beyond (Pillow raises).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = tmp_path / "bomb.png"
    path.write_bytes(encoded((side, side)))
    with pytest.raises(ValidationError, match=r"^images\[0\]: '.*bomb\.png' is too large to decode safely") as caught:
        prepare_images([path])
    assert f"{pixels} pixels, over Pillow's limit of 1,000" in str(caught.value)


# -- outputs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_decode_output_loads_every_pixel_and_detects_truncation(fmt: str) -> None:
    good = encoded((64, 64), fmt=fmt, color=(200, 30, 30))
    assert decode_output(good).size == (64, 64)
    with pytest.raises(DeliveryError, match=r"^downloaded image is corrupt or truncated: "):
        decode_output(good[: len(good) // 2])


def noisy(fmt: str, size: tuple[int, int] = (128, 96)) -> bytes:
    """An image that compresses poorly, so a damaged middle lands in pixel data."""
    pixels = np.random.default_rng(7).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def flipped(data: bytes) -> bytes:
    """64 bytes in the middle XORed with 0xFF, as a damaged download would hold."""
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 64]) + data[middle + 64 :]


FORMATS = ["PNG", "JPEG", "WEBP"]


def test_md5_base64_is_the_content_md5_header_value() -> None:
    assert md5_base64(b"") == "1B2M2Y8AsgTpgAmY7PhCfg=="  # as Azure Blob storage reports an empty blob
    assert base64.b64decode(md5_base64(b"abc")) == hashlib.md5(b"abc").digest()


@pytest.mark.parametrize("fmt", FORMATS)
def test_decode_output_accepts_an_intact_body_with_its_md5(fmt: str) -> None:
    good = noisy(fmt)
    assert decode_output(good, md5_base64(good)).size == (128, 96)
    assert decode_output(good, " " + md5_base64(good) + " ").size == (128, 96)  # header whitespace


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_decode_output_refuses_damaged_bodies_when_the_md5_is_given(fmt: str, damage: str) -> None:
    good = noisy(fmt)
    bad = good[: len(good) // 2] if damage == "truncated" else flipped(good)
    with pytest.raises(DeliveryError, match=r"^downloaded image is corrupt or truncated: its MD5 .* does not match"):
        decode_output(bad, md5_base64(good))


@pytest.mark.parametrize("header", ["not base64!", "", "AAAA", "é"])
def test_decode_output_refuses_a_malformed_content_md5(header: str) -> None:
    with pytest.raises(DeliveryError, match=r"^downloaded image is corrupt or truncated: "):
        decode_output(noisy("PNG"), header)


def test_structural_checks_catch_a_flipped_png_without_md5() -> None:
    with pytest.raises(DeliveryError, match=r"^downloaded image is corrupt or truncated: .*(checksum|CRC)"):
        decode_output(flipped(noisy("PNG")))


def test_structural_checks_catch_a_png_short_of_its_last_bytes() -> None:
    good = noisy("PNG")
    Image.open(io.BytesIO(good[:-1])).load()  # every pixel is there: Pillow alone accepts it
    with pytest.raises(DeliveryError, match=r"^downloaded image is corrupt or truncated: .*IEND chunk"):
        decode_output(good[:-1])


@pytest.mark.parametrize(("fmt", "message"), [("PNG", "IEND chunk"), ("JPEG", "end-of-image marker")])
@pytest.mark.parametrize("keep", [0.5, -1])
def test_truncation_is_caught_even_when_pillow_is_told_to_load_truncated_images(
    monkeypatch: pytest.MonkeyPatch, fmt: str, message: str, keep: float
) -> None:
    # Notebooks often set ImageFile.LOAD_TRUNCATED_IMAGES = True; a cut-short delivery must still fail.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    good = noisy(fmt)
    short = good[: int(len(good) * keep)] if keep > 0 else good[: int(keep)]
    Image.open(io.BytesIO(short)).load()
    with pytest.raises(DeliveryError, match=f"^downloaded image is corrupt or truncated: .*{message}"):
        decode_output(short)


@pytest.mark.parametrize("bad", [b"garbage", b"", b"<html>expired</html>"])
def test_decode_output_refuses_what_is_not_an_image(bad: bytes) -> None:
    with pytest.raises(DeliveryError, match=r"^downloaded image is corrupt or truncated: unknown format"):
        decode_output(bad)


@pytest.mark.parametrize(("fmt", "pil"), [("jpeg", "JPEG"), ("webp", "WEBP"), ("JPG", "JPEG")])
def test_thumbnails_are_small_and_keep_the_aspect(fmt: str, pil: str) -> None:
    data = thumbnail(Image.new("RGB", (1024, 512), (1, 2, 3)), 128, fmt)
    image = Image.open(io.BytesIO(data))
    assert image.format == pil and image.size == (128, 64)
    assert len(data) < 5000


def test_thumbnails_never_enlarge() -> None:
    data = thumbnail(Image.new("RGB", (50, 20)), 128)
    assert Image.open(io.BytesIO(data)).size == (50, 20)


def test_transparent_parts_turn_white_in_jpeg_and_stay_transparent_in_webp() -> None:
    clear = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    jpeg = Image.open(io.BytesIO(thumbnail(clear, 32, "jpeg")))
    assert jpeg.mode == "RGB" and min(jpeg.getpixel((16, 16))) > 240
    webp = Image.open(io.BytesIO(thumbnail(clear, 32, "webp")))
    assert webp.mode == "RGBA" and webp.getpixel((16, 16))[3] == 0


@pytest.mark.parametrize("mode", ["P", "L", "LA", "CMYK", "I;16"])
def test_thumbnails_of_any_mode(mode: str) -> None:
    image = Image.open(io.BytesIO(thumbnail(Image.new(mode, (40, 40)), 20)))
    assert image.format == "JPEG" and image.size == (20, 20)


def test_thumbnail_rejects_unknown_formats_and_sizes() -> None:
    with pytest.raises(ValueError, match="'gif' is not one of jpeg, webp"):
        thumbnail(Image.new("RGB", (8, 8)), 4, "gif")
    with pytest.raises(ValueError, match="at least 1"):
        thumbnail(Image.new("RGB", (8, 8)), 0)
