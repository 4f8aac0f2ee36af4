"""Image files handed over from elsewhere are data: what a replay sends is what the restored request shows,
and reading a file's metadata is bounded in time and memory.

The replays go to a real local server on 127.0.0.1, which keeps every task it was sent (its webhook too).
"""

from __future__ import annotations

import io
import json
import struct
import time
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, PngImagePlugin

from flux_nb import cli
from flux_nb.errors import ValidationError
from flux_nb.metadata import (
    FORMAT,
    REQUEST_FIELDS,
    containers,
    embed_provenance,
    parse_parameters,
    read_parameters,
    read_provenance,
    read_request,
    request_from_file,
)
from flux_nb.metadata.containers import _png_chunk, _png_chunks, _webp_chunks, read_embedded
from flux_nb.metadata.provenance import PARAMETERS_MAX, embed, parameters_text, xmp_packet
from flux_nb.server import EmbeddedServer
from flux_nb.session import Flux

# What a file may ask for beyond the request a user sees (all of it valid for a request, so nothing else refuses it).
HIDDEN = {
    "webhook_url": "http://127.0.0.1:9/hook",
    "webhook_secret": "secret-from-the-file",
    "tag": "from-the-file",
    "labels": {"planted": "yes"},
    "fresh": True,
}
IGNORED_LINE = "flux_nb: ignored from the file {}: fresh, labels, tag, webhook_secret, webhook_url\n"
REQUEST = {"prompt": "a quiet harbour", "model": "flux-2-klein-4b", "seed": 7, "width": 80, "height": 64}


def plain_image(fmt: str, size: tuple[int, int] = (16, 12)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (40, 90, 140)).save(buffer, fmt.upper())
    return buffer.getvalue()


def planted(path: Path, fmt: str = "png", **request: Any) -> Path:
    """An image whose provenance asks for more than its visible ``parameters`` text shows."""
    document = {"format": FORMAT, "kind": "image", "request": {**REQUEST, **HIDDEN, **request}, "record": {}}
    path.write_bytes(embed(plain_image(fmt), document))
    return path


def sent_tasks(server: EmbeddedServer) -> list[Any]:
    return list(server.app.state.table.tasks.values())  # every task the server was sent, as it received it


def assert_nothing_hidden_was_sent(server: EmbeddedServer, flux: Flux) -> None:
    tasks = sent_tasks(server)
    assert len(tasks) == 1
    assert (tasks[0].webhook_url, tasks[0].webhook_secret) == (None, None)
    assert (tasks[0].job.prompt, tasks[0].job.seed, tasks[0].job.width, tasks[0].job.height) == (
        "a quiet harbour",
        7,
        80,
        64,
    )
    stats = server.stats()
    assert stats["webhooks_sent"] == stats["webhooks_refused"] == 0
    (record,) = [flux.record(r) for r in flux.history()["record_id"]]
    assert (record.tag, record.labels, record.webhook_url) == (None, None, None)


# -- 1. a file adds no field the user does not see -----------------------------------------------------


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_flux_replay_of_a_file_sends_only_the_request_it_shows(
    flux: Flux, server: EmbeddedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    path = planted(tmp_path / f"harbour.{fmt}", fmt)
    visible = read_parameters(path) or ""
    assert "a quiet harbour" in visible and "hook" not in visible and "from-the-file" not in visible
    result = flux.replay(path)
    assert result.ok and result.tag is None and result.labels == {}
    assert_nothing_hidden_was_sent(server, flux)
    captured = capsys.readouterr()
    assert captured.err == IGNORED_LINE.format(path.name)
    assert "secret-from-the-file" not in captured.out + captured.err


def test_percent_flux_replay_of_a_file_sends_only_the_request_it_shows(
    ipython: Any, server: EmbeddedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = planted(tmp_path / "harbour.png")
    ipython.run_line_magic("flux", f"replay {path}")
    assert_nothing_hidden_was_sent(server, ipython.user_ns["flux"])
    captured = capsys.readouterr()
    assert IGNORED_LINE.format(path.name) in captured.err
    assert captured.err.count("ignored from the file") == 1 and "secret-from-the-file" not in captured.err


def test_flux_nb_replay_of_a_file_sends_only_the_request_it_shows(
    server: EmbeddedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = planted(tmp_path / "harbour.webp", "webp")
    history = tmp_path / "cli-history"
    code = cli.main(["replay", str(path), "--endpoint", server.url, "--history-dir", str(history)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err == IGNORED_LINE.format(path.name)
    assert "secret-from-the-file" not in captured.out + captured.err
    flux = Flux(endpoint=server.url, history_dir=history)
    try:
        assert_nothing_hidden_was_sent(server, flux)
    finally:
        flux.close()


def test_request_from_a_file_shows_what_it_would_send_and_names_the_rest(
    flux: Flux, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = planted(tmp_path / "harbour.png", model="flux-2-flex", steps=12, guidance=3.5, prompt_upsampling=False)
    prepared = flux.request_from(path)
    request = prepared.request
    assert (request.webhook_url, request.webhook_secret) == (None, None)
    assert (prepared.tag, prepared.labels, prepared.fresh) == (None, {}, False)
    assert (request.model, request.steps, request.guidance, request.prompt_upsampling) == (
        "flux-2-flex",
        12,
        3.5,
        False,
    )
    assert capsys.readouterr().err == IGNORED_LINE.format(path.name)
    assert len(flux.history()) == 0  # nothing sent, nothing recorded


def test_read_request_keeps_the_request_fields_and_names_everything_else(tmp_path: Path) -> None:
    path = planted(tmp_path / "harbour.jpeg", "jpeg", x_unknown=1, prompt_upsampling=True, input_hashes=["ab" * 32])
    fields, ignored = read_request(path)
    assert fields == {
        **REQUEST,
        "safety_tolerance": None,
        "output_format": None,
        "steps": None,
        "guidance": None,
        "prompt_upsampling": True,
        "input_hashes": ["ab" * 32],
    }
    assert ignored == ["fresh", "labels", "tag", "webhook_secret", "webhook_url", "x_unknown"]
    assert request_from_file(path) == fields
    plain = tmp_path / "plain.png"  # our own files name nothing: their provenance holds only request fields
    plain.write_bytes(embed(plain_image("png"), {"format": FORMAT, "kind": "image", "request": REQUEST}))
    assert read_request(plain) == ({**dict.fromkeys(REQUEST_FIELDS), **REQUEST, "input_hashes": []}, [])


def test_unknown_keys_are_dropped_and_named_safely_in_one_line(
    flux: Flux, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    odd = {"line\nbreak\x1b[31m": 1, "k" * 100: 2, **{f"extra_{i:02}": i for i in range(12)}}
    path = tmp_path / "odd.png"
    path.write_bytes(embed(plain_image("png"), {"format": FORMAT, "kind": "image", "request": {**REQUEST, **odd}}))
    prepared = flux.request_from(path)
    assert prepared.request.prompt == "a quiet harbour"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err and "k" * 41 not in err
    assert err == (
        "flux_nb: ignored from the file odd.png: extra_00, extra_01, extra_02, extra_03, extra_04, extra_05, "
        "extra_06, extra_07, extra_08, extra_09, extra_10, extra_11 and 2 more\n"
    )
    shown = {"b\n": 1, "k" * 41: 2}
    path.write_bytes(embed(plain_image("png"), {"format": FORMAT, "kind": "image", "request": {**REQUEST, **shown}}))
    flux.request_from(path)
    assert capsys.readouterr().err == f'flux_nb: ignored from the file odd.png: "b\\n", "{"k" * 40}"\n'


def test_a1111_settings_that_do_not_map_are_named(
    flux: Flux, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a castle\nSteps: 20, CFG scale: 7, Seed: 12, Size: 512x768, Model: sd_xl_base_1.0")
    path = tmp_path / "a1111.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    request = flux.request_from(path).request
    assert (request.model, request.steps, request.guidance, request.seed) == (flux.model, None, None, 12)
    assert capsys.readouterr().err == (
        "flux_nb: a1111.png was made by another tool; left out: model sd_xl_base_1.0 "
        f"(not a FLUX.2 model: {flux.model} is used), steps 20, CFG scale 7\n"
    )
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a barn\nSteps: 30, CFG scale: 4.5, Seed: 9, Size: 512x512, Model: flux-2-flex")
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    assert flux.request_from(path).request.steps == 30
    assert capsys.readouterr().err == ""  # everything mapped: no line


def test_reference_hashes_that_are_not_a_list_are_refused_before_anything_is_sent(
    flux: Flux, server: EmbeddedServer, tmp_path: Path
) -> None:
    path = tmp_path / "odd.png"
    document = {"format": FORMAT, "kind": "image", "request": {**REQUEST, "input_hashes": 5}}
    path.write_bytes(embed(plain_image("png"), document))
    with pytest.raises(ValidationError, match="names its reference images as something other than a list"):
        flux.replay(path)
    grid = {"format": FORMAT, "kind": "grid", "cells": 3}
    path.write_bytes(embed(plain_image("png"), grid))
    with pytest.raises(ValidationError, match="is a grid of several images, not one"):
        flux.replay(path)
    info = PngImagePlugin.PngInfo()
    info.add_itxt("flux_nb", json.dumps({**document, "request": ["not", "a", "request"]}))
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    with pytest.raises(ValidationError, match="prompt is empty"):
        flux.replay(path)  # a request that is not an object: nothing of it is read
    assert sent_tasks(server) == [] and len(flux.history()) == 0


# -- 2. A1111 text: linear time, and a cap ----------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["a " * 12_000, "a" + " " * 24_000 + "b", "a-" * 12_000, 'k: "a, ' * 3_400, "x: 1, " * 4_000],
    ids=["words", "spaces", "dashes", "open-quotes", "pairs"],
)
def test_a1111_parameters_parse_in_linear_time(text: str) -> None:
    started = time.perf_counter()
    parse_parameters(text)
    assert time.perf_counter() - started < 1.0  # the quadratic reader took about 6 s on 24,000 characters


def test_a1111_parameters_over_the_cap_are_refused_at_once(tmp_path: Path) -> None:
    text = "a " * 500_000  # 1 MB
    started = time.perf_counter()
    with pytest.raises(ValidationError, match=r"parameters are 1,000,000 characters; flux_nb reads at most 100,000"):
        parse_parameters(text)
    assert time.perf_counter() - started < 0.5
    assert parse_parameters("a" * PARAMETERS_MAX)["prompt"] == "a" * PARAMETERS_MAX  # the cap itself is read
    with pytest.raises(ValidationError, match="are 100,001 characters"):
        parse_parameters("a" * (PARAMETERS_MAX + 1))
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    path = tmp_path / "long.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    with pytest.raises(ValidationError, match="flux_nb reads at most 100,000"):
        request_from_file(path)


def test_a1111_keys_and_quoted_values_still_read() -> None:
    key = "K" * 64
    text = f'a prompt\nSteps: 4, {key}: 1, Model: "flux-2-flex, quoted", Seed: 3, Size: 80x64, Long{key}: 2'
    assert parse_parameters(text) == {
        "prompt": "a prompt",
        "steps": 4,
        "model": "flux-2-flex, quoted",
        "seed": 3,
        "width": 80,
        "height": 64,
    }
    assert parse_parameters("a prompt\n  Seed: 5,Steps:6,  Size: 8x8")["seed"] == 5
    assert parse_parameters("a prompt\nSeed: 5, Steps: 6") == {"prompt": "a prompt\nSeed: 5, Steps: 6"}  # 2 pairs


# -- 3. metadata: a cap per chunk and per file ------------------------------------------------------------


def png_with_texts(chunks: list[bytes]) -> bytes:
    """A tiny PNG with these chunks (whole, with length and CRC) before its image data."""
    data = plain_image("png", (4, 4))
    parts = _png_chunks(data)
    return data[:8] + parts[0][2] + b"".join(chunks) + b"".join(raw for _, _, raw in parts[1:])


def ztxt(keyword: str, text: bytes) -> bytes:
    return _png_chunk(b"zTXt", keyword.encode() + b"\x00\x00" + zlib.compress(text, 9))


def itxt(keyword: str, text: bytes, *, compressed: bool) -> bytes:
    body = zlib.compress(text) if compressed else text
    return _png_chunk(b"iTXt", keyword.encode() + b"\x00" + bytes((compressed, 0)) + b"\x00\x00" + body)


def test_forty_zip_bombs_in_one_png_are_refused_within_the_per_file_cap() -> None:
    bomb = zlib.compress(b"\x00" * containers.TEXT_LIMIT, 9)  # 16 MB that inflates from 16 KB
    data = png_with_texts([_png_chunk(b"zTXt", f"k{i}".encode() + b"\x00\x00" + bomb) for i in range(40)])
    assert len(data) < 700_000
    tracemalloc.start()
    try:
        with pytest.raises(ValidationError, match=r"metadata is too large: flux_nb reads at most 16,777,216 bytes"):
            read_embedded(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 80 * 1024 * 1024  # about 50 MB: two chunks' text, then one byte of the third (it was 683 MB)


@pytest.fixture
def small_caps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(containers, "TEXT_LIMIT", 100)
    monkeypatch.setattr(containers, "FILE_TEXT_LIMIT", 250)


@pytest.mark.usefixtures("small_caps")
@pytest.mark.parametrize(
    "chunk",
    [
        lambda n: _png_chunk(b"tEXt", b"k\x00" + b"t" * n),
        lambda n: ztxt("k", b"z" * n),
        lambda n: itxt("k", b"i" * n, compressed=True),
        lambda n: itxt("k", b"u" * n, compressed=False),
    ],
    ids=["tEXt", "zTXt", "iTXt", "iTXt-plain"],
)
def test_each_kind_of_text_chunk_is_capped_at_its_limit(chunk: Callable[[int], bytes]) -> None:
    assert len(read_embedded(png_with_texts([chunk(100)])).texts["k"]) == 100
    with pytest.raises(ValidationError, match="the PNG file's metadata is too large"):
        read_embedded(png_with_texts([chunk(101)]))


@pytest.mark.usefixtures("small_caps")
def test_the_text_of_all_chunks_together_is_capped_per_file() -> None:
    full = [ztxt("a", b"a" * 100), ztxt("b", b"b" * 100), itxt("c", b"c" * 50, compressed=False)]
    assert read_embedded(png_with_texts(full)).texts == {"a": "a" * 100, "b": "b" * 100, "c": "c" * 50}
    with pytest.raises(ValidationError, match="too large"):
        read_embedded(png_with_texts([*full, _png_chunk(b"tEXt", b"d\x00d")]))
    with pytest.raises(ValidationError, match="too large"):
        read_embedded(png_with_texts([*full[:2], itxt("c", b"c" * 51, compressed=True)]))
    # Later chunks of a keyword already read are skipped, not inflated: they count for nothing.
    again = [ztxt("a", b"a" * 100), *[ztxt("a", b"x" * 100) for _ in range(5)], ztxt("b", b"b" * 100)]
    assert read_embedded(png_with_texts(again)).texts == {"a": "a" * 100, "b": "b" * 100}


@pytest.mark.usefixtures("small_caps")
def test_a_webp_xmp_packet_is_capped() -> None:
    data = plain_image("webp")
    packet = b"<x:xmpmeta>" + b"x" * 89
    grown = embed(data, {"format": FORMAT, "kind": "image", "request": REQUEST})
    chunks = [(f, b) for f, b in _webp_chunks(grown) if f != b"XMP "]
    for body, refused in ((packet, False), (packet + b"x", True)):
        riff = b"WEBP" + b"".join(containers._webp_chunk(f, b) for f, b in [*chunks, (b"XMP ", body)])
        webp = b"RIFF" + struct.pack("<I", len(riff)) + riff
        if refused:
            with pytest.raises(ValidationError, match="the WEBP file's metadata is too large"):
                read_embedded(webp)
        else:
            assert read_embedded(webp).xmp == packet.decode()


# -- 4. XMP escaping, and a PNG rewrite that keeps every other chunk --------------------------------------

AWKWARD = "fish & chips <b>bold</b> > \"quoted\" 'single' \x0c\x0b\x00\ufffe\uffff tab\there ]]> &amp;"


@pytest.mark.parametrize("fmt", ["jpeg", "webp", "png"])
def test_a_prompt_with_xml_characters_round_trips_in_every_format(fmt: str) -> None:
    document = {"format": FORMAT, "kind": "image", "request": {**REQUEST, "prompt": AWKWARD}, "record": {}}
    written = embed(plain_image(fmt), document)
    found = read_provenance(written)
    assert found is not None and found["request"]["prompt"] == AWKWARD
    packet = read_embedded(written).xmp or ""
    assert "fish &amp; chips &lt;b&gt;" in packet  # escaped in the XMP, where JPEG and WebP keep it
    from flux_nb.metadata.provenance import _from_xmp

    assert json.loads(_from_xmp(packet) or "")["request"]["prompt"] == AWKWARD  # PNG's XMP copy too


def test_the_xmp_description_holds_the_prompt_in_xml_it_can_carry() -> None:
    packet = xmp_packet({"request": {"prompt": "a\x0cb & c"}})
    assert '<rdf:li xml:lang="x-default">a\ufffdb &amp; c</rdf:li>' in packet


def test_a_png_rewrite_keeps_every_other_chunk_byte_for_byte() -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "GIMP 2.10")
    info.add_text("Comment", "shot at dawn", zip=True)
    info.add_itxt("Author", "Zoë", lang="fr", tkey="Auteur")
    info.add_text("parameters", "an old prompt\nSteps: 1, Seed: 2, Size: 8x8")
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, "PNG", pnginfo=info, dpi=(300, 300))
    original = buffer.getvalue()
    before = [(kind, raw) for kind, _, raw in _png_chunks(original)]
    document = {"format": FORMAT, "kind": "image", "request": REQUEST, "record": {}}
    written = embed(original, document)
    ours = {b"flux_nb", b"parameters", b"XML:com.adobe.xmp"}
    after = [(kind, raw) for kind, body, raw in _png_chunks(written) if body.split(b"\x00")[0] not in ours]
    assert after == [(kind, raw) for kind, raw in before if b"parameters" not in raw]
    assert {b"pHYs", b"tEXt", b"zTXt", b"iTXt"} <= {kind for kind, _ in after}
    texts = read_embedded(written).texts
    assert (texts["Software"], texts["Comment"], texts["Author"]) == ("GIMP 2.10", "shot at dawn", "Zoë")
    assert texts["parameters"] == parameters_text(document)  # the file's own parameters, replaced
    assert embed(written, document) == written  # writing again changes nothing


def test_a_record_embeds_with_the_same_escaping(tmp_path: Path) -> None:
    record = {**REQUEST, "record_id": "r1", "prompt": AWKWARD, "safety_tolerance": 2, "output_format": "jpeg"}
    written = embed_provenance(plain_image("jpeg"), record)
    assert request_from_file(written)["prompt"] == AWKWARD


# -- what the mutation run of flux_nb/metadata showed untested (bench/MUTATION.md) -------------------------


def exif_with_comment(raw: bytes | str) -> bytes:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = raw
    return exif.tobytes()


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"UNICODE\x00" + "Zoë ✓".encode("utf-16-be"), "Zoë ✓"),
        (b"UNICODE\x00" + "Zoë ✓\x00\x00".encode("utf-16-le"), "Zoë ✓"),  # a writer that used little-endian
        (b"UNICODE\x00A", "\ufffd"),  # one byte: not UTF-16 at all
        (b"UNICODE\x00A\x00", "A"),  # two bytes, little-endian
        (b"UNICODE\x00\x01\x00", "\x01"),
        (b"UNICODE\x00" + "ZoëX\x00".encode("utf-16-be"), "ZoëX"),
        (b"ASCII\x00\x00\x00caf\xffX\x00", "caf\ufffdX"),
        (b"\x00" * 8 + b"X\xff\x00", "X\ufffd"),
        (b"unmarked\xffX\x00", "unmarked\ufffdX"),
        (b"UNICODE\x00\x00A\x00", "A\ufffd"),
        (b"ASCII\x00\x00\x00plain\x00\x00", "plain"),
        (b"\x00" * 8 + "naïve\x00".encode(), "naïve"),
        (b"no header at all\x00", "no header at all"),
        (b"", None),
    ],
)
def test_exif_user_comments_in_every_encoding_read_back(raw: bytes, text: str | None) -> None:
    assert containers.exif_comment(exif_with_comment(raw)) == text


def test_exif_comment_of_no_exif_or_no_comment_is_none() -> None:
    assert containers.exif_comment(None) is None and containers.exif_comment(b"") is None
    exif = Image.Exif()
    exif[0x010E] = "a description only"
    assert containers.exif_comment(exif.tobytes()) is None


def test_a1111_text_with_windows_line_ends_and_odd_quotes_reads() -> None:
    text = 'line one\r\nline two\r\nSteps: 4, Model: flux 5", Seed: 1, Output format: png, Size: 80x64'
    assert parse_parameters(text) == {
        "prompt": "line one\nline two",
        "steps": 4,
        "model": 'flux 5"',
        "seed": 1,
        "output_format": "png",
        "width": 80,
        "height": 64,
    }
    assert parse_parameters('a\nModel: ", Seed: 1, Steps: 2') == {"prompt": "a", "seed": 1, "steps": 2}


def test_our_parameters_text_reads_back_into_the_same_request() -> None:
    request = {**REQUEST, "safety_tolerance": 3, "output_format": "webp", "steps": 9, "guidance": 2.5}
    text = parameters_text({"request": request, "record_id": "r1", "flux_nb": "1.0"})
    assert parse_parameters(text) == {k: v for k, v in request.items()}


def test_a_copy_goes_into_folders_made_for_it(tmp_path: Path) -> None:
    from flux_nb.metadata import save_with_provenance

    record = {**REQUEST, "record_id": "r1", "safety_tolerance": 2, "output_format": "png"}
    target = save_with_provenance(plain_image("png"), record, tmp_path / "new" / "deeper" / "copy.png")
    assert target == tmp_path / "new" / "deeper" / "copy.png"
    assert request_from_file(target)["prompt"] == "a quiet harbour"
    assert [p.name for p in target.parent.iterdir()] == ["copy.png"]  # no temporary file left beside it


def test_a_grid_document_names_its_version_and_cells() -> None:
    from flux_nb.metadata import grid_document
    from flux_nb.metadata.provenance import version

    document = grid_document([{**REQUEST, "record_id": "r1", "x": 1, "y": "a", "other": 5}], x="seed")
    assert document["flux_nb"] == version() and document["x"] == "seed" and document["record_ids"] == ["r1"]
    assert document["cells"][0] == {"record_id": "r1", "x": 1, "y": "a", "request": document["cells"][0]["request"]}


def test_the_pixel_hash_is_the_mode_size_and_samples(tmp_path: Path) -> None:
    import hashlib

    from flux_nb.metadata import pixel_hash

    data = plain_image("png", (5, 3))
    with Image.open(io.BytesIO(data)) as image:
        expected = hashlib.sha256(b"RGB 5x3\n" + image.tobytes()).hexdigest()
    assert pixel_hash(data) == expected
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ValidationError, match=rf"^{broken}: the file is not a readable image"):
        pixel_hash(broken)


def test_source_sha256_is_the_hash_the_provenance_names_else_the_files(tmp_path: Path) -> None:
    import hashlib

    from flux_nb.metadata import source_sha256

    named = "cd" * 32
    for recorded, expected in ((named, named), ("cd" * 31, None), (5, None), (None, None)):
        document = {"format": FORMAT, "kind": "image", "request": REQUEST, "record": {"api_sha256": recorded}}
        data = embed(plain_image("png"), document)
        assert source_sha256(data) == (expected or hashlib.sha256(data).hexdigest())
    data = embed(plain_image("png"), {"format": FORMAT, "kind": "image"})  # no request, no record
    assert source_sha256(data) == hashlib.sha256(data).hexdigest()
    path = tmp_path / "plain.webp"
    path.write_bytes(plain_image("webp"))
    assert source_sha256(path) == source_sha256(str(path)) == hashlib.sha256(path.read_bytes()).hexdigest()
    damaged = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 99) + b"tEXt"  # a chunk running past the end
    assert source_sha256(damaged) == hashlib.sha256(damaged).hexdigest()


def test_provenance_refuses_what_is_not_a_record() -> None:
    from flux_nb.metadata import provenance

    with pytest.raises(ValidationError, match="provenance comes from a history record or row, not a list"):
        provenance([1, 2])


def riff(*chunks: tuple[bytes, bytes]) -> bytes:
    body = b"WEBP" + b"".join(containers._webp_chunk(fourcc, data) for fourcc, data in chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def webp_image(**options: Any) -> tuple[bytes, Image.Image]:
    alpha = options.pop("alpha", False)
    image = Image.new("RGBA" if alpha else "RGB", (19, 7), (10, 20, 30, 128) if alpha else (10, 20, 30))
    buffer = io.BytesIO()
    image.save(buffer, "WEBP", **options)
    return buffer.getvalue(), image


@pytest.mark.parametrize(
    ("options", "first", "flags"),
    [({"lossless": True, "alpha": True}, b"VP8L", 0x1C), ({"lossless": True}, b"VP8L", 0x0C), ({}, b"VP8 ", 0x0C)],
    ids=["lossless-alpha", "lossless", "lossy"],
)
def test_a_simple_webp_gets_the_extended_header_it_needs(options: dict[str, Any], first: bytes, flags: int) -> None:
    data, image = webp_image(**options)
    assert _webp_chunks(data)[0][0] == first  # a simple file: no VP8X yet
    written = embed(data, {"format": FORMAT, "kind": "image", "request": REQUEST})
    chunks = _webp_chunks(written)
    assert [fourcc for fourcc, _ in chunks] == [b"VP8X", first, b"EXIF", b"XMP "]
    assert chunks[0][1] == bytes((flags, 0, 0, 0)) + (18).to_bytes(3, "little") + (6).to_bytes(3, "little")
    assert struct.unpack("<I", written[4:8])[0] == len(written) - 8
    with Image.open(io.BytesIO(written)) as after:
        assert after.size == (19, 7) and after.mode == image.mode


@pytest.mark.parametrize("prompt", ["a", "ab"])  # one of the two makes every chunk odd-sized somewhere
def test_odd_sized_webp_chunks_are_padded_and_read_past(prompt: str) -> None:
    document = {"format": FORMAT, "kind": "image", "request": {**REQUEST, "prompt": prompt}}
    written = embed(webp_image()[0], document)
    assert read_provenance(written)["request"]["prompt"] == prompt  # type: ignore[index]
    odd = riff((b"VP8X", bytes(10)), (b"EXIF", b"123"), (b"XMP ", b"<x/>"), (b"ABCD", b""))
    assert len(odd) == 12 + 18 + 12 + 12 + 8
    assert [(fourcc, data) for fourcc, data in _webp_chunks(odd)] == [
        (b"VP8X", bytes(10)),
        (b"EXIF", b"123"),
        (b"XMP ", b"<x/>"),
        (b"ABCD", b""),
    ]
    assert read_embedded(riff((b"VP8X", bytes(10)), (b"XMP ", b""))).xmp == ""  # an empty last chunk is read


def test_a_damaged_webp_is_named_so() -> None:
    data = webp_image()[0]
    cut = data[:-3]
    with pytest.raises(ValidationError, match=r"the WEBP file is damaged: .*the b'VP8 ' chunk runs past the end"):
        read_embedded(cut[:4] + struct.pack("<I", len(cut) - 8) + cut[8:])
    huge = b"RIFF" + bytes(4) + b"WEBPVP8X" + struct.pack("<I", 0xFFFFFFF0) + bytes(10)
    with pytest.raises(ValidationError, match="runs past the end of the file"):
        read_embedded(huge)
    with pytest.raises(
        ValidationError, match=r"the WebP file is damaged: its chunks cannot be read \(no image chunk\)"
    ):
        embed(riff((b"XMP ", b"<x/>")), {"format": FORMAT, "kind": "image", "request": REQUEST})


def test_the_xmp_reader_takes_our_packet_and_refuses_declarations() -> None:
    from flux_nb.metadata.provenance import _from_xmp

    document = {"format": FORMAT, "kind": "image", "request": REQUEST}
    packet = xmp_packet(document)
    bare = packet[packet.index("<x:xmpmeta") : packet.rindex("</x:xmpmeta>") + len("</x:xmpmeta>")]
    for readable in (packet, bare, packet + "<x:xmpmeta padding", "<?xpacket?>" + bare):
        assert json.loads(_from_xmp(readable) or "") == document
    for declared in ("<!DOCTYPE x>", '<!ENTITY a "b">'):
        assert _from_xmp(declared + packet) is None  # either one alone is refused
    inner = bare.replace("<xmp:CreatorTool>", "<xmp:CreatorTool><![CDATA[</x:xmpmeta>]]>")
    assert json.loads(_from_xmp(inner) or "") == document  # the packet ends at its last closing tag
    assert _from_xmp(bare.replace("fluxnb:provenance", "fluxnb:other")) is None
    assert _from_xmp("no packet here") is None and _from_xmp("<x:xmpmeta>broken") is None


def jpeg_parts() -> tuple[bytes, list[tuple[int, bytes]], bytes]:
    """A real JPEG as its JFIF APP0 payload, its other segments before the scan, and the scan onwards."""
    data = plain_image("jpeg")
    segments, scan = containers._jpeg_segments(data)
    assert segments[0][0] == 0xE0 and segments[0][1].startswith(b"JFIF\x00")
    return segments[0][1], segments[1:], data[scan:]


def jpeg(segments: list[tuple[int, bytes]], scan: bytes, *, fill: bytes = b"") -> bytes:
    head = b"".join(
        fill + (bytes((0xFF, m)) if m in containers.JPEG_STANDALONE else containers._jpeg_segment(m, p))
        for m, p in segments
    )
    return b"\xff\xd8" + head + scan


def markers(data: bytes) -> list[tuple[int, bytes]]:
    return [(m, p[:4]) for m, p in containers._jpeg_segments(data)[0]]


def test_a_jpeg_gets_our_segments_after_its_jfif_header_and_keeps_the_rest() -> None:
    jfif, rest, scan = jpeg_parts()
    foreign = (0xE1, b"FLIR\x00other maker's data")  # an APP1 that is neither EXIF nor XMP
    document = {"format": FORMAT, "kind": "image", "request": REQUEST}
    data = jpeg([(0xE0, jfif), foreign, (0x01, b""), *rest], scan, fill=b"\xff\xff")
    written = embed(data, document)
    found = markers(written)
    assert found[0] == (0xE0, b"JFIF") and found[1] == (0xE1, b"Exif") and found[2] == (0xE1, b"http")
    assert found[3:] == [(0xE1, b"FLIR"), (0x01, b""), *[(m, p[:4]) for m, p in rest]]
    assert written.endswith(scan) and read_provenance(written) == document
    without = embed(jpeg(rest, scan), document)  # no JFIF header: ours come first
    assert markers(without)[:2] == [(0xE1, b"Exif"), (0xE1, b"http")]
    assert markers(without)[2:] == [(m, p[:4]) for m, p in rest]
    other_app0 = embed(jpeg([(0xE0, b"JFXX\x00thumb"), *rest], scan), document)
    assert markers(other_app0)[:3] == [(0xE1, b"Exif"), (0xE1, b"http"), (0xE0, b"JFXX")]


def test_jpeg_segments_are_read_past_fill_bytes_and_found_after_other_segments() -> None:
    jfif, rest, scan = jpeg_parts()
    xmp = containers.JPEG_XMP + xmp_packet({"format": FORMAT, "kind": "image", "request": REQUEST}).encode()
    data = jpeg([(0xE0, jfif), *rest[:1], (0xE1, xmp), *rest[1:]], scan, fill=b"\xff\xff\xff")
    assert read_provenance(data) == {"format": FORMAT, "kind": "image", "request": REQUEST}
    assert read_embedded(b"\xff\xd8\xff\xd9").xmp is None  # an end marker before any scan: nothing to read


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff\xd8\x00\x00", "no JPEG marker at byte 2"),
        (b"\xff\xd8\xff\xe0\x00\x04ab", "the JPEG has no image data (no start-of-scan marker)"),
        (b"\xff\xd8\xff\x01", "the JPEG has no image data (no start-of-scan marker)"),
    ],
)
def test_a_damaged_jpeg_is_named_so(data: bytes, reason: str) -> None:
    message = f"the JPEG file is damaged: its metadata cannot be read ({reason})"
    for attempt in (lambda: read_embedded(data), lambda: embed(data, {"format": FORMAT, "request": REQUEST})):
        with pytest.raises(ValidationError) as refused:
            attempt()
        assert str(refused.value) == message


def test_a_jpeg_segment_holds_65533_bytes_and_not_one_more() -> None:
    assert len(containers._jpeg_segment(0xE1, b"x" * 65533)) == 65537
    with pytest.raises(ValidationError) as refused:
        containers._jpeg_segment(0xE1, b"x" * 65534)
    assert str(refused.value) == (
        "metadata of 65,534 bytes does not fit a JPEG segment (65,533 bytes); shorten the prompt or export as PNG"
    )


def test_a_png_without_image_data_gets_its_texts_before_the_end() -> None:
    bare = plain_image("png", (2, 2))
    chunks = _png_chunks(bare)
    no_data = bare[:8] + b"".join(raw for kind, _, raw in chunks if kind != b"IDAT")
    written = containers._png_write(no_data, {"k": "v"})
    assert [kind for kind, _, _ in _png_chunks(written)] == [b"IHDR", b"iTXt", b"IEND"]
    assert read_embedded(written).texts == {"k": "v"}


def test_a_png_chunk_past_the_end_is_named(tmp_path: Path) -> None:
    data = plain_image("png", (2, 2))
    for length in (99, 0xFFFFFFF0):
        damaged = data[:8] + struct.pack(">I", length) + b"tEXtk\x00v" + data[8:]
        with pytest.raises(
            ValidationError, match=r"^the PNG file is damaged: .* \(a chunk runs past the end of the file\)$"
        ):
            read_embedded(damaged)


def test_exif_carries_the_software_and_a_plain_description() -> None:
    from flux_nb.metadata.provenance import version

    document = {"format": FORMAT, "kind": "image", "record_id": "r1", "request": {**REQUEST, "prompt": "Zoë's cat"}}
    with Image.open(io.BytesIO(embed(plain_image("jpeg"), document))) as image:
        exif = image.getexif()
    assert exif[0x0131] == f"flux_nb {version()}" and exif[0x010E] == "flux_nb image r1: Zo?'s cat"


def test_parameters_text_quotes_what_would_split_it() -> None:
    request = {**REQUEST, "model": "odd, model", "guidance": 5.0, "steps": 4, "safety_tolerance": 2}
    document = {"request": {**request, "output_format": "png"}, "record": {"backend": "XL"}, "record_id": "r1"}
    text = parameters_text({**document, "flux_nb": "1"})
    assert text.splitlines()[1] == (
        'Steps: 4, Seed: 7, Size: 80x64, Model: "odd, model", CFG scale: 5, Safety tolerance: 2, '
        "Output format: png, Backend: XL, Record: r1, Version: flux_nb 1"
    )
    assert parse_parameters(text)["model"] == "odd, model"


def test_messages_name_the_file_or_the_bytes(tmp_path: Path) -> None:
    plain = tmp_path / "plain.png"
    plain.write_bytes(plain_image("png"))
    with pytest.raises(ValidationError) as refused:
        request_from_file(plain)
    assert str(refused.value) == (
        f"{plain} carries neither flux_nb provenance nor A1111-style parameters nor a ComfyUI graph; "
        "use an image exported by flux_nb or one whose tool wrote its settings"
    )
    with pytest.raises(ValidationError, match=r"^the image bytes carries neither"):
        request_from_file(plain.read_bytes())
    missing = tmp_path / "missing.png"
    with pytest.raises(ValidationError) as refused:
        request_from_file(missing)
    assert str(refused.value) == f"cannot read image file {str(missing)!r}: No such file or directory"
    grid = embed(plain_image("png"), {"format": FORMAT, "kind": "grid", "cells": [{}, {}]})
    with pytest.raises(ValidationError) as refused:
        request_from_file(grid)
    assert str(refused.value) == (
        "the image bytes is a grid of 2 images, not one; read its cells with read_provenance and pick one"
    )


def test_only_documents_of_our_format_are_provenance() -> None:
    for payload in ('{"format": "other/1", "request": {}}', '{"request": {}}', '["flux_nb/1"]', "{not json"):
        info = PngImagePlugin.PngInfo()
        info.add_itxt("flux_nb", payload)
        buffer = io.BytesIO()
        Image.new("RGB", (4, 4)).save(buffer, "PNG", pnginfo=info)
        assert read_provenance(buffer.getvalue()) is None


def test_a_records_provenance_keeps_its_id_and_hashes_out_of_the_details() -> None:
    from flux_nb.metadata import provenance

    document = provenance({**REQUEST, "record_id": "r1", "input_hashes": ["ab" * 32], "backend": "local"})
    assert document["record"] == {"backend": "local"} and document["record_id"] == "r1"
    assert document["request"]["input_hashes"] == ["ab" * 32]


def test_parameters_text_falls_back_on_what_the_record_learned() -> None:
    from flux_nb.metadata.provenance import version

    request = {"prompt": "an edit", "seed": None, "width": None, "height": None}
    record = {"result_seed": 5, "out_width": 96, "out_height": 64}
    assert parameters_text({"request": request, "record": record}) == (
        f"an edit\nSeed: 5, Size: 96x64, Version: flux_nb {version()}"
    )
    assert parameters_text({}) == f"\nVersion: flux_nb {version()}"
    assert parameters_text({"request": {"width": 80}}) == f"\nVersion: flux_nb {version()}"  # half a size: none


def test_what_each_format_carries_is_read_leniently_and_only_where_it_is() -> None:
    assert [read_embedded(plain_image(f)).format for f in ("png", "jpeg", "webp")] == ["png", "jpeg", "webp"]
    assert read_embedded(plain_image("jpeg")).xmp is None  # a JFIF header is not an XMP packet
    bad = png_with_texts([itxt("k", b"caf\xff", compressed=False)])
    assert read_embedded(bad).texts == {"k": "caf\ufffd"}
    jfif, rest, scan = jpeg_parts()
    packet = containers.JPEG_XMP + b"<x:xmpmeta>\xff</x:xmpmeta>"
    assert read_embedded(jpeg([(0xE0, jfif), (0xE1, packet), *rest], scan)).xmp == "<x:xmpmeta>\ufffd</x:xmpmeta>"
    assert read_embedded(riff((b"VP8X", bytes(10)), (b"XMP ", b"\xff"))).xmp == "\ufffd"
    with pytest.raises(ValidationError) as refused:
        read_embedded(b"RIFF\x00\x00\x00\x00WAVEfmt ")
    assert str(refused.value) == "the file is not a PNG, JPEG or WebP image; provenance is kept in those three formats"


def test_an_extended_webp_keeps_its_own_flags() -> None:
    data, _ = webp_image(alpha=True)  # lossy with alpha: already extended, with an ALPH chunk
    assert _webp_chunks(data)[0][0] == b"VP8X" and _webp_chunks(data)[0][1][0] & 0x10
    written = embed(data, {"format": FORMAT, "kind": "image", "request": REQUEST})
    assert _webp_chunks(written)[0][1][0] == 0x1C


def test_the_xmp_packet_is_the_standard_wrapper_in_plain_utf8() -> None:
    document = {"format": FORMAT, "kind": "image", "request": {**REQUEST, "prompt": "Zoë"}}
    packet = xmp_packet(document)
    assert packet.startswith('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n')
    assert packet.endswith('<?xpacket end="w"?>') and '"prompt": "Zoë"' in packet
    assert '<rdf:li xml:lang="x-default">Zoë</rdf:li>' in packet
    assert "</xmp:CreatorTool><fluxnb:provenance>" in xmp_packet(document, describe=False)
    assert "</xmp:CreatorTool><fluxnb:provenance>" in xmp_packet({"request": {}})  # nothing to describe
    assert '<rdf:li xml:lang="x-default">grid</rdf:li>' in xmp_packet({"kind": "grid"})
    written = embed(plain_image("png"), document)
    assert '"prompt": "Zoë"' in read_embedded(written).texts["flux_nb"]


def test_a_grid_file_carries_no_parameters_text() -> None:
    written = embed(plain_image("png"), {"format": FORMAT, "kind": "grid", "record_ids": []})
    assert set(read_embedded(written).texts) == {"flux_nb"}
    with Image.open(io.BytesIO(embed(plain_image("jpeg"), {"format": FORMAT, "kind": "grid"}))) as image:
        assert image.getexif()[0x010E] == "flux_nb grid"


def test_a_long_prompt_is_shortened_in_the_exif_comment_only() -> None:
    from flux_nb.metadata.provenance import COMMENT_PROMPT_MAX

    prompt = "x" * (COMMENT_PROMPT_MAX + 10)
    document = {"format": FORMAT, "kind": "image", "request": {**REQUEST, "prompt": prompt}}
    written = embed(plain_image("jpeg"), document)
    comment = containers.exif_comment(read_embedded(written).exif) or ""
    assert comment.startswith("x" * COMMENT_PROMPT_MAX + "…\nSeed: 7")
    assert read_provenance(written)["request"]["prompt"] == prompt  # type: ignore[index]
    document["request"]["prompt"] = prompt[:COMMENT_PROMPT_MAX]  # the longest kept whole
    written = embed(plain_image("jpeg"), document)
    assert (containers.exif_comment(read_embedded(written).exif) or "").startswith(prompt[:COMMENT_PROMPT_MAX] + "\n")


def test_provenance_values_become_plain_json() -> None:
    import numpy as np

    from flux_nb.metadata import provenance

    class Odd:
        def __str__(self) -> str:
            return "odd"

    document = provenance({**REQUEST, "input_hashes": np.array(["ab" * 32]), "engine": Odd(), "seed": np.int64(3)})
    assert document["request"]["input_hashes"] == ["ab" * 32] and document["request"]["seed"] == 3
    assert document["record"]["engine"] == "odd"


def test_the_same_document_writes_the_same_bytes_whatever_its_key_order() -> None:
    one = {"format": FORMAT, "kind": "image", "request": {"prompt": "a", "seed": 1}, "record": {"b": 1, "a": 2}}
    two = {"record": {"a": 2, "b": 1}, "request": {"seed": 1, "prompt": "a"}, "kind": "image", "format": FORMAT}
    for fmt in ("png", "jpeg", "webp"):
        assert embed(plain_image(fmt), one) == embed(plain_image(fmt), two)  # one answer, one file, one hash
