"""Provenance inside image files: written without touching pixels, read back by Pillow, exiftool and raw bytes."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from flux_nb.errors import ValidationError
from flux_nb.history.store import KEY_FIELDS, HistoryStore, Record
from flux_nb.metadata import (
    REQUEST_FIELDS,
    embed_provenance,
    parse_parameters,
    pixel_hash,
    read_parameters,
    read_provenance,
    request_from_file,
    save_with_provenance,
    write_grid_provenance,
)
from flux_nb.metadata.containers import _png_chunks, _webp_chunks
from tests.experiments import make_experiment, picture

EXIFTOOL = shutil.which("exiftool")
needs_exiftool = pytest.mark.skipif(
    EXIFTOOL is None, reason="exiftool is not installed (apt-get install -y libimage-exiftool-perl)"
)


def exiftool(path: Path) -> dict[str, object]:
    """Every tag exiftool reads, keyed by group and name (an independent reader of PNG, EXIF and XMP)."""
    out = subprocess.run([EXIFTOOL or "exiftool", "-j", "-a", "-G1", str(path)], capture_output=True, check=True)
    return json.loads(out.stdout)[0]


@pytest.fixture
def store(tmp_path: Path) -> HistoryStore:
    return make_experiment(tmp_path / "history", count=4, failed=0)


def ready_record(store: HistoryStore) -> Record:
    record = next(r for r in store._records("ORDER BY created_at") if r.input_hashes)  # one with a reference
    assert record.image_file is not None
    return record


def image_bytes(fmt: str, mode: str = "RGB") -> bytes:
    if mode == "RGBA":
        buffer = io.BytesIO()
        image = Image.open(io.BytesIO(picture(3, (40, 30)))).convert("RGBA")
        image.putalpha(Image.linear_gradient("L").resize(image.size))  # real transparency, kept by every format
        image.save(buffer, fmt, lossless=True)
        return buffer.getvalue()
    return picture(7, (40, 30), fmt)


def compressed_pixels(data: bytes) -> bytes:
    """The compressed image data itself: PNG IDAT bodies, the JPEG scan, the WebP bitstream."""
    if data.startswith(b"\x89PNG"):
        return b"".join(body for kind, body, _ in _png_chunks(data) if kind == b"IDAT")
    if data.startswith(b"\xff\xd8"):
        return data[data.index(b"\xff\xda") :]
    return b"".join(body for kind, body in _webp_chunks(data) if kind in (b"VP8 ", b"VP8L", b"ALPH"))


CASES = [("png", "RGB"), ("png", "RGBA"), ("jpeg", "RGB"), ("webp", "RGB"), ("webp", "RGBA")]


@pytest.mark.parametrize(("fmt", "mode"), CASES)
def test_provenance_round_trips_and_pixels_stay_bit_identical(store: HistoryStore, fmt: str, mode: str) -> None:
    record = ready_record(store)
    original = image_bytes(fmt, mode)
    written = embed_provenance(original, record)
    assert written != original
    assert compressed_pixels(written) == compressed_pixels(original)  # not re-encoded: the same compressed bytes
    assert pixel_hash(written) == pixel_hash(original)
    with Image.open(io.BytesIO(written)) as after, Image.open(io.BytesIO(original)) as before:
        assert after.tobytes() == before.tobytes() and after.mode == before.mode == mode
    document = read_provenance(written)
    assert document is not None and document["record_id"] == record.record_id
    assert document["request"] == {**record.request_fields(), "input_hashes": record.input_hashes}
    assert document["record"]["backend"] == record.backend and document["record"]["task_id"] == record.task_id
    assert document["record"]["cost"] == record.cost and document["flux_nb"]
    assert document["record"]["created_at"].endswith("+00:00")
    assert request_from_file(written) == {**record.request_fields(), "input_hashes": record.input_hashes}


@pytest.mark.parametrize(("fmt", "mode"), CASES)
def test_pillow_reads_what_was_written(store: HistoryStore, fmt: str, mode: str) -> None:
    record = ready_record(store)
    with Image.open(io.BytesIO(embed_provenance(image_bytes(fmt, mode), record))) as image:
        image.load()
        if fmt == "png":
            assert json.loads(image.text["flux_nb"])["record_id"] == record.record_id
            assert image.text["parameters"].startswith(record.prompt + "\n")
            assert "fluxnb:provenance" in image.text["XML:com.adobe.xmp"]
        else:
            xmp = image.getxmp()["xmpmeta"]["RDF"]["Description"]
            assert json.loads(xmp["provenance"])["record_id"] == record.record_id
            exif = image.getexif()
            assert exif[0x010E].startswith(f"flux_nb image {record.record_id}: ")
            assert exif.get_ifd(0x8769)[0x9286].startswith(b"UNICODE\x00")


@needs_exiftool
@pytest.mark.parametrize(("fmt", "mode"), CASES)
def test_exiftool_reads_what_was_written(store: HistoryStore, tmp_path: Path, fmt: str, mode: str) -> None:
    record = ready_record(store)
    target = tmp_path / f"out.{fmt}"
    target.write_bytes(embed_provenance(image_bytes(fmt, mode), record))
    tags = exiftool(target)
    assert not any(key.endswith(":Warning") or key.endswith(":Error") for key in tags), tags
    assert json.loads(str(tags["XMP-fluxnb:Provenance"]))["record_id"] == record.record_id
    assert tags["XMP-dc:Description"] == record.prompt
    if fmt == "png":
        assert json.loads(str(tags["PNG:Flux_nb"]))["request"]["seed"] == record.seed
        assert str(tags["PNG:Parameters"]).startswith(record.prompt)
    else:
        assert str(tags["ExifIFD:UserComment"]).startswith(record.prompt)
        assert f"Seed: {record.seed}, Size: {record.width}x{record.height}" in str(tags["ExifIFD:UserComment"])
        assert str(tags["IFD0:ImageDescription"]).startswith(f"flux_nb image {record.record_id}")


def test_png_chunks_are_valid_itxt_placed_before_the_image_data(store: HistoryStore) -> None:
    written = embed_provenance(image_bytes("png"), ready_record(store))
    kinds = [kind for kind, _, _ in _png_chunks(written)]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND"
    texts = [body for kind, body, _ in _png_chunks(written) if kind == b"iTXt"]
    keywords = sorted(body.split(b"\x00", 1)[0] for body in texts)
    assert keywords == [b"XML:com.adobe.xmp", b"flux_nb", b"parameters"]
    assert max(i for i, k in enumerate(kinds) if k == b"iTXt") < kinds.index(b"IDAT")
    for _, _, raw in _png_chunks(written):  # every CRC checks out
        assert struct.unpack(">I", raw[-4:])[0] == zlib.crc32(raw[4:-4]) & 0xFFFFFFFF


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_writing_twice_leaves_one_copy(store: HistoryStore, fmt: str) -> None:
    record = ready_record(store)
    once = embed_provenance(image_bytes(fmt), record)
    assert embed_provenance(once, record) == once
    assert once.count(b"fluxnb:provenance>") == 2  # the opening and the closing tag of one packet


def test_private_and_local_fields_stay_out(store: HistoryStore) -> None:
    record = ready_record(store)
    document = read_provenance(embed_provenance(image_bytes("png"), record))
    assert document is not None
    text = json.dumps(document)
    for value in (record.owner, record.polling_url, str(store.root)):
        assert value and value not in text
    assert document["record"]["notebook"] == "fox.ipynb"


def test_save_with_provenance_copies_a_history_image(store: HistoryStore, tmp_path: Path) -> None:
    record = ready_record(store)
    assert record.image_file is not None
    target = save_with_provenance(record.image_file, record, tmp_path / "out" / "fox.png")
    assert pixel_hash(target) == pixel_hash(record.image_file)
    assert record.image_file.read_bytes() != target.read_bytes()  # the history's own file is left as it was
    assert read_provenance(target)["record_id"] == record.record_id  # type: ignore[index]


def test_a_history_frame_row_gives_the_same_request_as_the_record(store: HistoryStore) -> None:
    record = ready_record(store)
    row = store.to_frame().set_index("record_id", drop=False).loc[record.record_id]
    document = read_provenance(embed_provenance(image_bytes("jpeg"), row))
    assert document is not None and document["request"] == {
        **record.request_fields(),
        "input_hashes": record.input_hashes,
    }


A1111 = (
    "masterpiece, a castle on a hill,\nsunset\n"
    "Negative prompt: blurry, lowres\n"
    "Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 1234567890, Size: 832x1216, Model hash: 31e35c80fc, "
    'Model: sd_xl_base_1.0, Lora hashes: "a: 1, b: 2", Version: v1.9.4'
)


def test_parse_parameters_reads_a1111_text() -> None:
    assert parse_parameters(A1111) == {
        "prompt": "masterpiece, a castle on a hill,\nsunset",
        "negative_prompt": "blurry, lowres",
        "steps": 28,
        "guidance": 6.5,
        "seed": 1234567890,
        "width": 832,
        "height": 1216,
        "model": "sd_xl_base_1.0",
    }
    assert parse_parameters("just a prompt, no settings") == {"prompt": "just a prompt, no settings"}


def test_request_from_a_png_another_tool_wrote(tmp_path: Path) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", A1111)
    path = tmp_path / "a1111.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    request = request_from_file(path)
    assert request["prompt"].startswith("masterpiece") and request["seed"] == 1234567890
    assert (request["width"], request["height"], request["guidance"]) == (832, 1216, 6.5)
    assert request["safety_tolerance"] is None and request["input_hashes"] == []


def test_request_from_a_jpeg_whose_user_comment_holds_parameters(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + A1111.encode("utf-16-be")
    path = tmp_path / "a1111.jpeg"
    Image.new("RGB", (8, 8)).save(path, exif=exif.tobytes())
    assert read_parameters(path) == A1111
    assert request_from_file(path)["steps"] == 28


def test_request_from_a_file_without_provenance_says_so(tmp_path: Path) -> None:
    path = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(path)
    with pytest.raises(ValidationError, match="carries neither flux_nb provenance nor A1111-style parameters"):
        request_from_file(path)
    assert read_provenance(path) is None
    gif = tmp_path / "x.gif"
    Image.new("RGB", (8, 8)).save(gif)
    with pytest.raises(ValidationError, match="not a PNG, JPEG or WebP"):
        read_provenance(gif)
    with pytest.raises(ValidationError, match="cannot read image file"):
        request_from_file(tmp_path / "missing.png")


def test_an_xmp_packet_with_a_doctype_is_not_parsed(store: HistoryStore, tmp_path: Path) -> None:
    from flux_nb.metadata.provenance import provenance, xmp_packet

    packet = xmp_packet(provenance(ready_record(store)))
    for name, text, found in (("plain", packet, True), ("doctype", '<!DOCTYPE x [<!ENTITY a "b">]>' + packet, False)):
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", text)
        path = tmp_path / f"{name}.png"
        Image.new("RGB", (8, 8)).save(path, pnginfo=info)
        assert (read_provenance(path) is not None) is found


def test_grid_files_carry_record_ids_and_each_cells_request(store: HistoryStore, tmp_path: Path) -> None:
    from flux_nb.grids import grid

    frame = store.to_frame()
    path = grid(frame, x="seed", y="prompt").save(tmp_path / "grid.png")  # type: ignore[union-attr]
    before = pixel_hash(path)
    cells = [{**row, "x": row["seed"], "y": row["prompt"]} for row in frame.to_dict("records")]
    write_grid_provenance(path, cells, x="seed", y="prompt")
    document = read_provenance(path)
    assert document is not None and document["kind"] == "grid" and document["x"] == "seed"
    assert document["record_ids"] == list(frame["record_id"])
    assert [cell["request"]["seed"] for cell in document["cells"]] == list(frame["seed"])
    assert document["cells"][0]["request"]["input_hashes"] == list(frame["input_hashes"][0])
    assert pixel_hash(path) == before
    with pytest.raises(ValidationError, match="is a grid of 4 images"):
        request_from_file(path)
    if EXIFTOOL:
        assert json.loads(str(exiftool(path)["PNG:Flux_nb"]))["record_ids"] == list(frame["record_id"])


def test_the_request_fields_match_the_history_key_fields() -> None:
    assert set(REQUEST_FIELDS) == set(KEY_FIELDS)


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_a_prompt_of_the_longest_kind_still_fits(store: HistoryStore, tmp_path: Path, fmt: str) -> None:
    record = ready_record(store)
    long = dataclasses.replace(record, prompt="a fox in the snöw, " * 1684)  # 31,996 characters, the API takes 32,000
    target = tmp_path / f"long.{fmt}"
    target.write_bytes(embed_provenance(image_bytes(fmt), long))
    assert request_from_file(target)["prompt"] == long.prompt  # the full prompt, from the JSON
    parameters = read_parameters(target)
    assert parameters is not None and parse_parameters(parameters)["seed"] == record.seed
    if EXIFTOOL:
        tags = exiftool(target)
        assert not any(key.endswith((":Warning", ":Error")) for key in tags), tags
        assert json.loads(str(tags["XMP-fluxnb:Provenance"]))["request"]["prompt"] == long.prompt


def test_a_jpeg_keeps_its_own_exif_and_colour_profile(store: HistoryStore) -> None:
    from PIL import ImageCms

    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90
    exif[0x010F] = "Camera Maker"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    buffer = io.BytesIO()
    Image.open(io.BytesIO(picture(5, (40, 30)))).save(buffer, "JPEG", exif=exif.tobytes(), icc_profile=icc)
    written = embed_provenance(buffer.getvalue(), ready_record(store))
    with Image.open(io.BytesIO(written)) as image:
        kept = image.getexif()
        assert kept[0x0112] == 6 and kept[0x010F] == "Camera Maker" and kept[0x010E].startswith("flux_nb image")
        assert image.info["icc_profile"] == icc
    assert compressed_pixels(written) == compressed_pixels(buffer.getvalue())
