"""A request's provenance written into its image file, and read back from files we or other tools wrote.

The history stores the API's bytes with the request that made them written in, no pixel re-encoded
and nothing per record (no id, task, times or cost: an identical answer to an identical request stays
one file). The file is named by the SHA-256 of its own bytes (the record's ``image_sha256``); its
provenance keeps ``api_sha256``, the SHA-256 of the bytes as the API sent them (the bytes the delivery
checks passed). ``source_sha256`` reads that back and ``pixel_hash`` compares decoded pixels, equal for
a file with or without metadata. Exported copies (``save_with_provenance``) carry the whole record. What
goes in:

- PNG: ``iTXt`` ``parameters`` (A1111 style: the prompt, then ``Steps: 4, Seed: 42, Size: 1024x768,
  Model: ...``), ``iTXt`` ``flux_nb`` (the JSON below) and the XMP packet as ``iTXt`` ``XML:com.adobe.xmp``.
- JPEG and WebP: the XMP packet (the JSON in ``fluxnb:provenance``), and EXIF with a short
  ``ImageDescription`` and the ``parameters`` text as ``UserComment`` (where A1111 puts it).

The JSON: ``{"format": "flux_nb/1", "kind": "image", "flux_nb": <version>, "record_id": ...,
"request": {prompt, model, seed, width, height, safety_tolerance, output_format, steps, guidance,
input_hashes}, "record": {backend, task_id, cost, status, times as ISO 8601, ...}}``. Machine-local or
possibly secret fields (the owner process, webhook and polling URLs, local paths) are left out.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from flux_nb.errors import ValidationError
from flux_nb.images import open_image, sha256_hex
from flux_nb.metadata.containers import (
    JPEG_SEGMENT_MAX,
    JPEG_XMP,
    exif_comment,
    image_format,
    read_embedded,
    write_embedded,
)
from flux_nb.protocol import PROMPT_MAX

FORMAT = "flux_nb/1"
REQUEST_FIELDS = (
    *("prompt", "model", "seed", "width", "height"),
    *("safety_tolerance", "output_format", "steps", "guidance"),
)
#: What a request restored from a file carries: the fields the restored request shows, and nothing else.
RESTORED_FIELDS = (*REQUEST_FIELDS, "prompt_upsampling", "input_hashes")
LEFT_OUT = frozenset({"owner", "webhook_url", "polling_url", "image_path", "root", "image_file"})
CELL_FIELDS = ("record_id", "x", "y", "status", "image_sha256")
NAMESPACE = "https://github.com/flux-nb/flux_nb/ns/provenance/1.0/"
DESCRIPTION_MAX = 300
COMMENT_PROMPT_MAX = 8000  # of the prompt in EXIF's UserComment (UTF-16: 16 KB)
PARAMETERS_MAX = 100_000  # characters of A1111 text read: a prompt takes 32,000, a negative one as many
# A1111's "Key: value" pairs; a value holding a comma is JSON-quoted. A key of at most 64 characters, with
# no leading spaces to try from each position, keeps ``findall`` linear in the text.
_PARAM = re.compile(r'(\w[\w \-/]{1,63}):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
# Characters XML 1.0 cannot hold, even escaped.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_INTS = {"Seed": "seed", "Steps": "steps", "Safety tolerance": "safety_tolerance"}
# A1111's extra networks in a prompt (``<lora:name:0.8>``): settings of that tool, not words for the model.
_EXTRA_NETWORK = re.compile(r"<(?:lora|lyco|hypernet):[^<>\n]{1,200}>", re.IGNORECASE)
_NOTE_VALUE_MAX = 40

Source = str | Path | bytes


@functools.cache
def version() -> str:
    """The installed flux_nb version ("unknown" when running from a bare source tree)."""
    try:
        return importlib.metadata.version("flux-nb")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _is_missing(value: Any) -> bool:
    """pandas' NA or NaT (pandas is only looked at when something has loaded it: then only can they occur)."""
    pandas = sys.modules.get("pandas")
    return pandas is not None and (value is pandas.NA or value is pandas.NaT)


def _is_series(value: Any) -> bool:
    pandas = sys.modules.get("pandas")
    return pandas is not None and isinstance(value, pandas.Series)


def _plain(value: Any, *, time: bool = False) -> Any:
    """A JSON value: NA and NaN become None, NumPy scalars Python ones, times ISO 8601 (UTC)."""
    numpy = sys.modules.get("numpy")  # NumPy values can only occur once something has loaded it
    if isinstance(value, (list, tuple)) or (numpy is not None and isinstance(value, numpy.ndarray)):
        return [_plain(v) for v in value]
    if value is None or _is_missing(value):
        return None
    if numpy is not None and isinstance(value, numpy.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if time and isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, UTC).isoformat()
    if isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _as_mapping(values: Any) -> dict[str, Any]:
    """A record (any dataclass), a DataFrame row or a dict, as a dict."""
    if dataclasses.is_dataclass(values) and not isinstance(values, type):
        return {f.name: getattr(values, f.name) for f in dataclasses.fields(values)}
    if isinstance(values, Mapping) or _is_series(values):
        return {str(k): v for k, v in values.items()}
    raise ValidationError(f"provenance comes from a history record or row, not a {type(values).__name__}")


def _request(values: dict[str, Any]) -> dict[str, Any]:
    request = {name: _plain(values.get(name)) for name in REQUEST_FIELDS}
    request["input_hashes"] = _plain(values.get("input_hashes")) or []
    return request


def provenance(record: Any) -> dict[str, Any]:
    """The provenance document of a history record (a ``Record``, a history DataFrame row or a dict)."""
    values = _as_mapping(record)
    rest = {k: v for k, v in values.items() if k not in (*REQUEST_FIELDS, "input_hashes", "record_id")}
    details = {k: _plain(v, time=k.endswith("_at")) for k, v in rest.items() if k not in LEFT_OUT}
    if details.get("notebook"):
        details["notebook"] = Path(str(details["notebook"])).name  # the name, not where it lives
    return {
        "format": FORMAT,
        "kind": "image",
        "flux_nb": version(),
        "record_id": _plain(values.get("record_id")),
        "request": _request(values),
        "record": details,
    }


def _quoted(value: Any) -> str:
    text = _label(value)
    return json.dumps(text) if any(c in text for c in ',"\n:') else text


def _label(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def parameters_text(document: Mapping[str, Any]) -> str:
    """A provenance document as A1111-style ``parameters``: the prompt, then one line of settings."""
    request, record = document.get("request", {}), document.get("record", {})
    width = request.get("width") or record.get("out_width")
    height = request.get("height") or record.get("out_height")
    pairs = {
        "Steps": request.get("steps"),
        "Seed": request.get("seed") if request.get("seed") is not None else record.get("result_seed"),
        "Size": f"{width}x{height}" if width and height else None,
        "Model": request.get("model"),
        "CFG scale": request.get("guidance"),
        "Safety tolerance": request.get("safety_tolerance"),
        "Output format": request.get("output_format"),
        "Backend": record.get("backend"),
        "Record": document.get("record_id"),
        "Version": f"flux_nb {document.get('flux_nb', version())}",
    }
    settings = ", ".join(f"{key}: {_quoted(value)}" for key, value in pairs.items() if value is not None)
    return f"{request.get('prompt') or ''}\n{settings}"


def parse_parameters(text: str) -> dict[str, Any]:
    """Request fields from A1111-style ``parameters`` text (ours or another tool's).

    Reads the prompt, ``Seed``, ``Size``, ``Model``, ``Steps``, ``CFG scale`` (as guidance), ``Safety
    tolerance`` and ``Output format``; other settings are ignored. The negative prompt comes back as
    ``negative_prompt`` and extra networks (``<lora:...>``), taken out of the prompt, as ``extra_networks``:
    neither is a request field, so a restored request leaves them out and says so.

    >>> parse_parameters("a cat\\nSteps: 4, Seed: 42, Size: 512x768, Model: flux-2-klein-4b")["height"]
    768
    """
    if len(text) > PARAMETERS_MAX:
        raise ValidationError(
            f"the A1111-style parameters are {len(text):,} characters; flux_nb reads at most {PARAMETERS_MAX:,} "
            f"(a prompt takes at most {PROMPT_MAX:,})"
        )
    lines = text.strip().replace("\r\n", "\n").split("\n")
    settings = lines[-1] if len(_PARAM.findall(lines[-1])) >= 3 else ""  # A1111's own test for the line
    if settings:
        lines = lines[:-1]
    prompt: list[str] = []
    negative: list[str] = []
    for line in lines:
        if negative or line.startswith("Negative prompt:"):
            negative.append(line.removeprefix("Negative prompt:"))
        else:
            prompt.append(line)
    text = "\n".join(prompt).strip()
    fields: dict[str, Any] = {"prompt": text}
    if _EXTRA_NETWORK.search(text):
        fields["prompt"] = re.sub(r"[ \t]{2,}", " ", _EXTRA_NETWORK.sub("", text)).strip(" ,\n")
        fields["extra_networks"] = _EXTRA_NETWORK.findall(text)
    if "\n".join(negative).strip():
        fields["negative_prompt"] = "\n".join(negative).strip()
    for key, raw in _PARAM.findall(settings):
        _set_field(fields, key.strip(), raw.strip())
    return fields


def _set_field(fields: dict[str, Any], key: str, value: str) -> None:
    try:
        if value.startswith('"') and value.endswith('"'):
            value = json.loads(value)
        if key in _INTS:
            fields[_INTS[key]] = int(value)
        elif key == "Size":
            width, _, height = value.lower().partition("x")
            fields["width"], fields["height"] = int(width), int(height)
        elif key == "CFG scale":
            fields["guidance"] = float(value)
        elif key == "Model":
            fields["model"] = value
        elif key == "Output format":
            fields["output_format"] = value
    except ValueError:
        pass  # a setting another tool wrote in its own way: not a request field we can use


def xmp_packet(document: Mapping[str, Any], *, describe: bool = True) -> str:
    """An XMP packet holding the document as JSON (``fluxnb:provenance``), the tool and (``describe``)
    the prompt again as ``dc:description``, for tools that show it."""
    prompt = str(document.get("request", {}).get("prompt") or document.get("kind", "")) if describe else ""
    prompt = _NOT_XML.sub("\ufffd", prompt)
    # Such characters only occur inside JSON strings, where a \u escape stands for them exactly.
    payload = _NOT_XML.sub(_json_escape, json.dumps(document, ensure_ascii=False, sort_keys=True))
    description = f'<rdf:Alt><rdf:li xml:lang="x-default">{escape(prompt)}</rdf:li></rdf:Alt>'
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
        f'xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:fluxnb="{NAMESPACE}">'
        f"<xmp:CreatorTool>flux_nb {escape(version())}</xmp:CreatorTool>"
        f"{f'<dc:description>{description}</dc:description>' if prompt else ''}"
        f"<fluxnb:provenance>{escape(payload)}</fluxnb:provenance>"
        '</rdf:Description></rdf:RDF></x:xmpmeta>\n<?xpacket end="w"?>'
    )


def _json_escape(found: re.Match[str]) -> str:
    return f"\\u{ord(found.group()):04x}"


def _from_xmp(packet: str) -> str | None:
    if "<!DOCTYPE" in packet or "<!ENTITY" in packet:
        return None  # we never write these; refusing them keeps entity expansion out
    start, end = packet.find("<x:xmpmeta"), packet.rfind("</x:xmpmeta>")
    if start < 0 or end < 0:
        return None
    try:
        root = ElementTree.fromstring(packet[start : end + len("</x:xmpmeta>")])
    except ElementTree.ParseError:
        return None
    found = root.find(f".//{{{NAMESPACE}}}provenance")
    return found.text if found is not None else None


def embed(data: bytes, document: Mapping[str, Any]) -> bytes:
    """Image bytes with a provenance document written in (pixels untouched)."""
    payload = json.dumps(document, ensure_ascii=False, sort_keys=True)
    image = document.get("kind") == "image"
    parameters = parameters_text(document) if image else ""
    texts = {"flux_nb": payload, **({"parameters": parameters} if parameters else {})}
    described = f"flux_nb {document.get('kind')} {document.get('record_id') or ''}".rstrip()
    prompt = " ".join(str(document.get("request", {}).get("prompt") or "").split())
    description = f"{described}: {prompt}"[:DESCRIPTION_MAX] if prompt else described
    # A JPEG segment holds 64 KB: EXIF gets a shortened prompt, XMP drops its second copy if it must.
    request = document.get("request", {})
    if image and len(str(request.get("prompt") or "")) > COMMENT_PROMPT_MAX:
        cut = {**request, "prompt": str(request["prompt"])[:COMMENT_PROMPT_MAX] + "…"}
        comment = parameters_text({**document, "request": cut})
    else:
        comment = parameters or described
    exif = {"description": description, "comment": comment, "software": f"flux_nb {version()}"}
    xmp = xmp_packet(document)
    if image_format(data) == "jpeg" and len(xmp.encode()) > JPEG_SEGMENT_MAX - len(JPEG_XMP):
        xmp = xmp_packet(document, describe=False)
    return write_embedded(data, texts=texts, xmp=xmp, exif=exif)


def embed_provenance(data: bytes, record: Any) -> bytes:
    """Image bytes (PNG, JPEG or WebP) with a record's provenance written in, pixels untouched.

    >>> Path("cat.png").write_bytes(embed_provenance(record.image_file.read_bytes(), record))  # doctest: +SKIP
    """
    return embed(data, provenance(record))


def _read_bytes(source: Source) -> tuple[bytes, str]:
    if isinstance(source, bytes):
        return source, "the image bytes"
    path = Path(source).expanduser()
    try:
        return path.read_bytes(), str(path)
    except OSError as exc:
        raise ValidationError(f"cannot read image file {str(path)!r}: {exc.strerror or exc}") from None


def _write_bytes(target: str | Path, data: bytes) -> Path:
    path = Path(target).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_bytes(data)
    temp.replace(path)
    return path


def save_with_provenance(source: Source, record: Any, target: str | Path) -> Path:
    """Copy an image (bytes or a file) to ``target`` with the record's provenance in it; returns the path."""
    data, _ = _read_bytes(source)
    return _write_bytes(target, embed_provenance(data, record))


def grid_document(cells: Sequence[Any], **details: Any) -> dict[str, Any]:
    """The provenance of a grid: its record ids in cell order and each cell's request."""
    described = []
    for cell in cells:
        values = _as_mapping(cell)
        entry = {k: _plain(values[k]) for k in CELL_FIELDS if k in values}
        entry["request"] = _request(values)
        described.append(entry)
    ids = [cell.get("record_id") for cell in described]
    return {"format": FORMAT, "kind": "grid", "flux_nb": version(), "record_ids": ids, "cells": described} | {
        k: _plain(v) for k, v in details.items()
    }


def write_grid_provenance(path: str | Path, cells: Sequence[Any], **details: Any) -> Path:
    """Write a saved grid's provenance into its file: the record ids and each cell's request.

    ``cells`` are dicts (or history rows) with ``record_id``, the request fields and, optionally,
    ``x``/``y`` (the cell's axis values); ``details`` (e.g. ``x="seed"``) are stored beside them.
    """
    data, _ = _read_bytes(path)
    return _write_bytes(path, embed(data, grid_document(cells, **details)))


def read_provenance(source: Source) -> dict[str, Any] | None:
    """The flux_nb provenance document a file carries (an image's or a grid's), or None."""
    data, _ = _read_bytes(source)
    found = read_embedded(data)
    payload = found.texts.get("flux_nb") or (_from_xmp(found.xmp) if found.xmp else None)
    if not payload:
        return None
    try:
        document = json.loads(payload)
    except json.JSONDecodeError:
        return None
    return document if isinstance(document, dict) and str(document.get("format", "")).startswith("flux_nb/") else None


def read_parameters(source: Source) -> str | None:
    """The A1111-style ``parameters`` text a file carries (PNG text chunk, or EXIF UserComment), or None."""
    data, _ = _read_bytes(source)
    found = read_embedded(data)
    return found.texts.get("parameters") or exif_comment(found.exif)


def request_from_file(source: Source) -> dict[str, Any]:
    """The request fields (and reference hashes) that made an image, from its provenance or its parameters.

    Every key of ``REQUEST_FIELDS`` plus ``input_hashes`` is present (None where the file does not say),
    and ``prompt_upsampling`` where it does; anything else the file asks for is left out (``read_request``
    names it).
    """
    return read_request(source)[0]


def read_request(source: Source) -> tuple[dict[str, Any], list[str]]:
    """``request_from_file``'s fields, and the names of what the file asked for beyond them (a webhook,
    a tag, a cache switch, an unknown key): a file is data, so those are left out, never sent."""
    data, name = _read_bytes(source)
    document = read_provenance(data)
    if document is not None and document.get("kind") == "grid":
        cells = document.get("cells")
        raise ValidationError(
            f"{name} is a grid of {len(cells) if isinstance(cells, list) else 'several'} images, not one; "
            "read its cells with read_provenance and pick one"
        )
    if document is not None:
        asked = document.get("request")
        fields = asked if isinstance(asked, dict) else {}
        if not isinstance(fields.get("input_hashes") or [], list):
            raise ValidationError(f"{name}'s provenance names its reference images as something other than a list")
    else:
        fields = foreign_fields(data, name)
    kept = {k: v for k, v in fields.items() if k in RESTORED_FIELDS}
    return {**dict.fromkeys(REQUEST_FIELDS), "input_hashes": [], **kept}, sorted(set(fields) - set(kept))


def foreign_fields(source: Source, name: str = "") -> dict[str, Any]:
    """The fields another tool's file names: A1111-style ``parameters``, else ComfyUI's ``prompt`` graph
    (see ``parse_parameters`` and ``comfyui.parse_comfyui``); ValidationError when it names no prompt."""
    data, found_name = _read_bytes(source)
    name = name or found_name
    parameters = read_parameters(data)
    fields = parse_parameters(parameters) if parameters else {}
    texts = read_embedded(data).texts
    if not fields.get("prompt") and "prompt" in texts:
        from flux_nb.metadata.comfyui import parse_comfyui

        return parse_comfyui(texts["prompt"], name)
    if not fields.get("prompt") and "workflow" in texts:
        raise ValidationError(
            f"{name} carries a ComfyUI workflow but not its prompt graph (the 'prompt' chunk ComfyUI's Save Image "
            "writes); flux_nb reads only that graph: save the image from ComfyUI again, or give the request yourself"
        )
    if not fields.get("prompt"):
        raise ValidationError(
            f"{name} carries neither flux_nb provenance nor A1111-style parameters nor a ComfyUI graph; "
            "use an image exported by flux_nb or one whose tool wrote its settings"
        )
    return fields


def _note_value(value: Any) -> str:
    text = _label(value)
    text = text if len(text) <= _NOTE_VALUE_MAX else text[: _NOTE_VALUE_MAX - 3] + "..."
    return text if re.fullmatch(r"[\w.:<>/ -]*", text, re.ASCII) else json.dumps(text)


def import_note(name: str, fields: Mapping[str, Any], left_out: Sequence[str], model: str) -> str:
    """One line naming what a request restored from another tool's file left out, with the file's values.

    >>> import_note("a.png", {"steps": 20}, ["negative_prompt", "steps"], "flux-2-klein-4b")
    'flux_nb: a.png was made by another tool; left out: steps 20, the negative prompt'
    """
    said = {
        "model": f"model {_note_value(fields.get('model'))} (not a FLUX.2 model: {model} is used)",
        "steps": f"steps {_note_value(fields.get('steps'))}",
        "guidance": f"CFG scale {_note_value(fields.get('guidance'))}",
        "negative_prompt": "the negative prompt",
        "extra_networks": ", ".join(_note_value(n) for n in fields.get("extra_networks", ()))
        + " (taken out of the prompt)",
    }
    order = [*said, *sorted(set(left_out) - set(said))]
    parts = [said.get(k) or _note_value(k) for k in order if k in left_out]
    return f"flux_nb: {name} was made by another tool; left out: {', '.join(parts)}"


def source_sha256(source: Source) -> str:
    """The SHA-256 of an image as its maker sent it: the ``api_sha256`` its provenance names (flux_nb
    writes metadata into the API's bytes when it stores them), else the SHA-256 of the file as it is.

    Two stored results with equal ``source_sha256`` came from byte-identical API answers.
    """
    data, _ = _read_bytes(source)
    try:
        document = read_provenance(data)
    except ValidationError:
        document = None
    recorded = (document or {}).get("record", {}).get("api_sha256") if document else None
    return str(recorded) if isinstance(recorded, str) and len(recorded) == 64 else sha256_hex(data)


def pixel_hash(source: Source) -> str:
    """SHA-256 of the decoded pixels (mode, size, then the raw samples): the same for a file with or
    without metadata, so an exported copy can be checked against the history's image."""
    data, name = _read_bytes(source)
    with open_image(data, name, "the file") as image:
        head = f"{image.mode} {image.width}x{image.height}\n".encode()
        return sha256_hex(head + image.tobytes())
