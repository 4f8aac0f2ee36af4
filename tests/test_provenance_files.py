"""Every stored image carries its request; a file restores its request (here or on another history).

Results come from a real local server on 127.0.0.1; files are read back with Pillow and with exiftool
(an independent reader), and compared with the bytes the server sent.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image, PngImagePlugin

from flux_nb.errors import ValidationError
from flux_nb.metadata import pixel_hash, read_provenance, source_sha256
from flux_nb.server import EmbeddedServer
from flux_nb.session import Flux

EXIFTOOL = shutil.which("exiftool")
needs_exiftool = pytest.mark.skipif(
    EXIFTOOL is None, reason="exiftool is not installed (apt-get install -y libimage-exiftool-perl)"
)
SIZE = {"width": 80, "height": 64}


def server_bytes(server: EmbeddedServer, task_id: str | None) -> bytes:
    return server.app.state.table.tasks[task_id].image  # what the server sent, read past the client


def reference_png(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_every_stored_image_carries_its_request_and_keeps_the_servers_pixels(
    flux: Flux, server: EmbeddedServer, fmt: str
) -> None:
    with flux.experimenting("formats"):
        result = flux.generate("a brass compass", seed=42, output_format=fmt, tag="fmt", **SIZE)
    row = flux.history().set_index("record_id").loc[result.record_id]
    data = Path(result.path).read_bytes()
    sent = server_bytes(server, result.task_id)
    # The file is named by the hash of its own bytes; its provenance names the hash of the server's bytes.
    assert hashlib.sha256(data).hexdigest() == row["image_sha256"] and data != sent
    assert source_sha256(result.path) == hashlib.sha256(sent).hexdigest()
    assert pixel_hash(result.path) == pixel_hash(sent)  # no pixel re-encoded
    document = read_provenance(result.path)
    assert document is not None and document["record_id"] is None  # nothing per record: see below
    assert document["request"] | {"input_hashes": []} == {
        "prompt": "a brass compass",
        "model": "flux-2-klein-4b",
        "seed": 42,
        "width": 80,
        "height": 64,
        "safety_tolerance": flux.safety_tolerance,
        "output_format": fmt,
        "steps": None,
        "guidance": None,
        "input_hashes": [],
    }
    details = document["record"]
    assert details == {
        "backend": row["backend"],
        "status": "ready",
        "out_width": 80,
        "out_height": 64,
        "engine": row["engine"],
        "result_seed": None if pd.isna(row["result_seed"]) else int(row["result_seed"]),
        "api_sha256": hashlib.sha256(sent).hexdigest(),
    }
    with Image.open(result.path) as image:
        image.load()
        if fmt == "png":
            assert json.loads(image.text["flux_nb"])["request"]["prompt"] == "a brass compass"
            assert image.text["parameters"] == (
                f"a brass compass\nSeed: 42, Size: 80x64, Model: flux-2-klein-4b, Safety tolerance: "
                f"{flux.safety_tolerance}, Output format: png, Backend: {json.dumps(row['backend'])}, "
                f"Version: flux_nb {document['flux_nb']}"
            )
        else:
            assert image.getexif()[0x010E] == "flux_nb image: a brass compass"
            provenance = image.getxmp()["xmpmeta"]["RDF"]["Description"]["provenance"]
            assert json.loads(provenance)["request"]["seed"] == 42


@needs_exiftool
@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_exiftool_reads_a_stored_image(flux: Flux, fmt: str) -> None:
    result = flux.generate("a glass lantern", seed=7, output_format=fmt, **SIZE)
    out = subprocess.run([EXIFTOOL or "exiftool", "-j", "-a", "-G1", str(result.path)], capture_output=True, check=True)
    tags = json.loads(out.stdout)[0]
    assert not any(key.endswith((":Warning", ":Error")) for key in tags), tags
    assert json.loads(str(tags["XMP-fluxnb:Provenance"]))["request"]["seed"] == 7
    settings = str(tags["PNG:Parameters"] if fmt == "png" else tags["ExifIFD:UserComment"])
    assert settings.startswith("a glass lantern") and "Seed: 7, Size: 80x64, Model: flux-2-klein-4b" in settings


def test_an_identical_answer_is_one_file_and_a_file_replays(flux: Flux, server: EmbeddedServer) -> None:
    old = flux.generate("a tin robot", seed=3, **SIZE)
    new = flux.replay(old.path)  # a path: the request comes from the file
    assert new.record_id != old.record_id and server.stats()["submits"] == 2
    # The same request answered with the same bytes is the same file: one hash, here and as a reference.
    assert (
        new.path == old.path
        and source_sha256(new.path) == hashlib.sha256(server_bytes(server, new.task_id)).hexdigest()
    )
    frame = flux.history().set_index("record_id")
    assert frame.loc[new.record_id, "replay_of"] == old.record_id  # the stored image names its request
    assert frame.loc[new.record_id, "image_sha256"] == frame.loc[old.record_id, "image_sha256"]
    assert flux.replay(str(old.path), fresh=False).cached  # a str path too; not fresh: the cache answers


def test_export_image_writes_a_clean_copy_with_the_request_and_review(flux: Flux, tmp_path: Path) -> None:
    result = flux.generate("a paper boat", seed=11, **SIZE)  # JPEG by default
    again = flux.generate("a paper boat", seed=11, tag="again", **SIZE)  # a use (under another tag: a row)
    flux.rate(again, 4)
    flux.note(result, "keep this one")
    copy = flux.export_image(again, tmp_path / "exports")  # a folder: named after the record
    assert copy == tmp_path / "exports" / f"{again.record_id}.jpeg"
    document = read_provenance(copy)
    assert document is not None and document["record_id"] == again.record_id  # a copy carries the whole record
    details = document["record"]
    assert details["cached_from"] == result.record_id and details["task_id"] == result.task_id
    assert details["rating"] == 4 and details["note"] == "keep this one" and details["cost"] == 0
    assert details["api_sha256"] == source_sha256(result.path) and "owner" not in details
    assert pixel_hash(copy) == pixel_hash(result.path)
    named = flux.export_image(result.record_id, tmp_path / "boat.jpg")
    assert read_provenance(named)["record_id"] == result.record_id  # type: ignore[index]
    with pytest.raises(ValidationError, match=r"the image is JPEG; name the copy with \.jpg or \.jpeg"):
        flux.export_image(result, tmp_path / "boat.png")
    assert not (tmp_path / "boat.png").exists()


def test_a_file_from_another_history_restores_when_its_references_are_present(
    server_factory: Callable[..., EmbeddedServer], tmp_path: Path
) -> None:
    server = server_factory()
    blue, green = reference_png((0, 0, 200)), reference_png((0, 160, 0))
    (tmp_path / "blue.png").write_bytes(blue)
    (tmp_path / "green.png").write_bytes(green)
    there = Flux(endpoint=server.url, history_dir=tmp_path / "there")
    here = Flux(endpoint=server.url, history_dir=tmp_path / "here")
    try:
        edit = there.generate("blend them", seed=5, images=[tmp_path / "blue.png", tmp_path / "green.png"], **SIZE)
        sent = there.export_image(edit, tmp_path / "mail" / "edit.jpeg")
        hashes = list(there.record(edit.record_id).input_hashes)
        with pytest.raises(ValidationError) as missing:
            here.request_from(sent)
        message = str(missing.value)
        assert "edit.jpeg was made with 2 reference image(s) not in the history" in message
        assert hashes[0][:12] in message and hashes[1][:12] in message
        here.generate("uses the blue one", seed=1, images=[blue], **SIZE)  # now this history holds blue only
        with pytest.raises(ValidationError, match=f"1 reference image.*{hashes[1][:12]}"):
            here.request_from(sent)
        here.generate("uses the green one", seed=1, images=[green], **SIZE)
        prepared = here.request_from(sent)
        assert prepared.input_hashes == hashes and prepared.replay_of is None  # not a record of this history
        assert (prepared.request.prompt, prepared.request.seed, prepared.request.width) == ("blend them", 5, 80)
        replayed = here.replay(sent)
        assert replayed.ok and source_sha256(replayed.path) == source_sha256(edit.path)
    finally:
        there.close()
        here.close()


def test_a1111_parameters_from_another_tool_restore_as_far_as_they_map(flux: Flux, tmp_path: Path) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text(
        "parameters",
        "a castle on a hill\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1234, "
        "Size: 512x768, Model hash: 31e35c80fc, Model: sd_xl_base_1.0",
    )
    other = tmp_path / "a1111.png"
    Image.new("RGB", (8, 8)).save(other, pnginfo=info)
    request = flux.request_from(other).request
    assert (request.prompt, request.seed, request.width, request.height) == ("a castle on a hill", 1234, 512, 768)
    assert request.model == flux.model and request.steps is None and request.guidance is None
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a barn\nSteps: 30, CFG scale: 4.5, Seed: 9, Size: 512x512, Model: flux-2-flex")
    Image.new("RGB", (8, 8)).save(other, pnginfo=info)
    request = flux.request_from(other).request
    assert (request.model, request.steps, request.guidance) == ("flux-2-flex", 30, 4.5)
    Image.new("RGB", (8, 8)).save(other)
    with pytest.raises(ValidationError, match="carries neither flux_nb provenance nor A1111-style parameters"):
        flux.request_from(other)
    assert len(flux.history()) == 0
