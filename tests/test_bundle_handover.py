"""Handing a bundle over: what a colleague's zip holds is checked at ``open_bundle`` and never makes the
recipient read, upload, fetch or poll anything outside it; a history row's paths stay inside its folder."""

from __future__ import annotations

import hashlib
import io
import json
import re
import sqlite3
import threading
import tracemalloc
import zipfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from flux_nb.core.batch import Defaults
from flux_nb.errors import ValidationError
from flux_nb.export import bundle as bundles
from flux_nb.export.bundle import export_bundle, open_bundle
from flux_nb.export.mlflow import _image as mlflow_image
from flux_nb.export.report import write_report
from flux_nb.history.store import HistoryStore
from flux_nb.recovery import Recovery
from flux_nb.server import EmbeddedServer
from flux_nb.session import Flux
from tests.experiments import make_experiment, picture


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def url_name(url: str) -> str:
    """The name a URL reference is stored under: ``inputs/<sha256 of "url:" + URL>.url``."""
    return f"inputs/{sha(f'url:{url}'.encode())}.url"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> HistoryStore:
    """Six records (the last failed), a reference image on every third, reviews on the first two."""
    store = make_experiment(tmp_path_factory.mktemp("source") / "history", count=6, size=(64, 64), failed=1)
    ids = list(store.to_frame()["record_id"])
    store.rate(ids[0], 5)
    store.note(ids[1], "private: do not share")
    store.tag(ids[:2], add="keep")
    return store


@pytest.fixture(scope="module")
def good(source: HistoryStore, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_bundle(source.to_frame(), source.root, tmp_path_factory.mktemp("bundles") / "good.zip")


@pytest.fixture(scope="module")
def ids(source: HistoryStore) -> list[str]:
    """The records' ids, oldest first (the last one failed)."""
    return [str(i) for i in source.to_frame()["record_id"]]


def rebundle(
    good: Path,
    target: Path,
    *,
    sql: str = "",
    members: dict[str, bytes] | None = None,
    drop: tuple[str, ...] = (),
    manifest: Any = None,
    edit: Callable[[dict[str, Any]], Any] | None = None,
    raw_manifest: bytes | None = None,
    stored: bool = False,
) -> Path:
    """``good`` with its history changed by ``sql``, ``members`` added and ``drop`` left out, listed in a true
    manifest (unless ``manifest``, ``edit`` or ``raw_manifest`` says otherwise): a colleague's crafted zip."""
    with zipfile.ZipFile(good) as archive:
        files = {name: archive.read(name) for name in archive.namelist() if name != "manifest.json"}
    if sql:
        database = target.with_suffix(".sqlite")
        database.write_bytes(files["history.sqlite"])
        db = sqlite3.connect(database)
        db.executescript(sql)
        db.close()
        files["history.sqlite"] = database.read_bytes()
        database.unlink()
    files.update(members or {})
    files = {name: data for name, data in files.items() if name not in drop}
    listed = {name: {"sha256": sha(data), "bytes": len(data)} for name, data in files.items()}
    default = {"format": "flux_nb-bundle/1", "files": listed}
    if edit is not None:
        edit(default)
    if raw_manifest is None:
        raw_manifest = json.dumps(manifest if manifest is not None else default).encode()
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED) as archive:
        if "manifest.json" not in drop:
            archive.writestr("manifest.json", raw_manifest)
        for name, data in files.items():
            archive.writestr(name, data)
    return target


def damaged(bundle: Path, name: str) -> Path:
    """``bundle`` (written stored) with one byte of ``name``'s data flipped: its CRC no longer matches."""
    with zipfile.ZipFile(bundle) as archive:
        info = archive.getinfo(name)
    data = bytearray(bundle.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + 1] ^= 0xFF
    bundle.write_bytes(bytes(data))
    return bundle


def assert_nothing_left(into: Path) -> None:
    """No folder, and no half-unpacked temporary folder beside it."""
    assert not into.exists() and not list(into.parent.glob(".flux-bundle-*"))


class Counter:
    """A loopback HTTP service that counts the requests it gets (an admin page, a polling URL)."""

    def __init__(self) -> None:
        hits: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                body = json.dumps({"id": "t", "status": "Pending"}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.hits = hits
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def counter() -> Iterator[Counter]:
    service = Counter()
    yield service
    service.close()


# -- finding 1: a row's image path never leads outside its history folder ----------------------------------


@pytest.mark.parametrize(
    "path", ["../../victim/secret.png", "/etc/hostname", "history.sqlite", "images/../../x.png", "images/ab/.x"]
)
def test_a_bundle_row_naming_a_file_outside_its_images_is_refused_at_open(
    good: Path, tmp_path: Path, path: str
) -> None:
    bad = rebundle(good, tmp_path / "bad.zip", sql=f"UPDATE records SET image_path = '{path}'")
    into = tmp_path / "into" / "history"
    with pytest.raises(ValidationError, match="not an image of the bundle"):
        open_bundle(bad, into)
    assert_nothing_left(into)
    assert not (tmp_path / "into").exists()
    assert HistoryStore(open_bundle(good, into)).count() == 6  # a retry into the same folder works


def test_a_history_row_naming_a_file_outside_its_folder_is_never_read(
    source: HistoryStore, server: EmbeddedServer, tmp_path: Path
) -> None:
    """As if a bundle had been opened by an older flux_nb: every reader refuses the outside file."""
    folder = open_bundle(export_bundle(source.to_frame(), source.root, tmp_path / "b.zip"), tmp_path / "opened")
    secret = tmp_path / "victim" / "secret.png"
    secret.parent.mkdir()
    secret.write_bytes(picture(7, (32, 32)))
    store = HistoryStore(folder)
    record_id = str(store.to_frame()["record_id"].iloc[0])
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE records SET image_path = '../victim/secret.png' WHERE record_id = ?", (record_id,))
    db.close()
    frame = store.to_frame()
    assert frame.set_index("record_id")["image_path"].isna()[record_id]  # the frame never names the file
    record = store.get(record_id)
    assert record is not None
    with pytest.raises(ValidationError, match="outside the history folder"):
        _ = record.image_file
    with pytest.raises(ValidationError, match="outside the history folder"):
        export_bundle(frame, folder, tmp_path / "again.zip")
    assert not (tmp_path / "again.zip").exists()
    relative = frame.assign(image_path=["../victim/secret.png"] + [None] * (len(frame) - 1))
    with pytest.raises(ValidationError, match="outside the history folder"):
        write_report(relative, folder, tmp_path / "r.html", grids=[])
    with pytest.raises(ValidationError, match="outside the history folder"):
        mlflow_image({"image_path": "../victim/secret.png", "status": "ready"}, folder)
    flux = Flux(endpoint=server.url, history_dir=folder)
    try:
        with pytest.raises(ValidationError, match="outside the history folder"):
            flux.result_of(record_id)
        with pytest.raises(ValidationError, match="outside the history folder"):
            flux.export_image(record_id, tmp_path / "copy.png")
    finally:
        flux.close()
    assert not (tmp_path / "copy.png").exists()


def test_a_link_inside_the_history_folder_is_not_followed_out_of_it(source: HistoryStore, tmp_path: Path) -> None:
    folder = open_bundle(export_bundle(source.to_frame(), source.root, tmp_path / "b.zip"), tmp_path / "opened")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "x.png").write_bytes(picture(3, (16, 16)))
    (folder / "images" / "zz").symlink_to(outside)
    store = HistoryStore(folder)
    record_id = str(store.to_frame()["record_id"].iloc[0])
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE records SET image_path = 'images/zz/x.png' WHERE record_id = ?", (record_id,))
    db.close()
    record = store.get(record_id)
    assert record is not None
    with pytest.raises(ValidationError, match="outside the history folder"):
        _ = record.image_file


# -- finding 2: a URL input is data: never read as a path, never fetched ------------------------------------


def test_a_bundle_url_input_that_is_not_an_http_url_of_its_name_is_refused(
    good: Path, tmp_path: Path, source: HistoryStore
) -> None:
    secret = str(tmp_path / "id_rsa")
    for index, (name, text) in enumerate(
        [
            (url_name(secret), secret),  # a local path, under the name its text gives
            (url_name("file:///etc/passwd"), "file:///etc/passwd"),
            (url_name("https://example.com/a.png"), "https://example.com/b.png"),  # edited after it was named
        ]
    ):
        bad = rebundle(good, tmp_path / f"url{index}.zip", members={name: text.encode()})
        with pytest.raises(ValidationError, match="http\\(s\\) URL it is named after"):
            open_bundle(bad, tmp_path / f"into{index}")
        assert_nothing_left(tmp_path / f"into{index}")


def _with_url_input(good: Path, tmp_path: Path, url: str, record_id: str) -> Path:
    """A bundle whose record ``record_id`` used the URL ``url`` as its reference image."""
    digest = url_name(url).split("/")[1].split(".")[0]
    return rebundle(
        good,
        tmp_path / "url.zip",
        sql=f"UPDATE records SET input_hashes = '[\"{digest}\"]' WHERE record_id = '{record_id}'",
        members={url_name(url): url.encode()},
    )


def test_a_url_input_from_a_bundle_replays_as_the_url_and_is_never_fetched(
    good: Path, ids: list[str], tmp_path: Path, server_factory: Callable[..., EmbeddedServer], counter: Counter
) -> None:
    url = f"{counter.url}/internal/admin?delete=all"
    record_id = ids[0]
    bundle = _with_url_input(good, tmp_path, url, record_id)
    server = server_factory(allow_fetch=frozenset())  # as the local server runs by default: public URLs only
    flux = Flux(endpoint=server.url, history_dir=tmp_path / "mine")
    opened = flux.open_bundle(bundle, into=tmp_path / "opened")
    try:
        prepared = Recovery(opened.store, Defaults).rebuild(record_id)  # priced without measuring the URL
        assert [(i.value, i.is_url) for i in prepared.inputs] == [(url, True)]
        assert prepared.request.images == (url,) and prepared.estimate_is_bound
        result = opened.replay(record_id)  # sent as the URL: the server (public addresses only) refuses it
        assert result.status == "failed" and "input_image: could not fetch the image at this URL" in str(result.error)
    finally:
        opened.close()
        flux.close()
    assert counter.hits == []


def test_a_url_input_edited_into_a_local_path_is_never_read(
    good: Path, ids: list[str], tmp_path: Path, server: EmbeddedServer
) -> None:
    url = "https://example.com/cat.png"
    record_id = ids[0]
    bundle = _with_url_input(good, tmp_path, url, record_id)
    folder = open_bundle(bundle, tmp_path / "opened")
    secret = tmp_path / "secret.png"
    secret.write_bytes(picture(5, (16, 16)))
    (folder / url_name(url)).write_text(str(secret))  # edited after the open
    flux = Flux(endpoint=server.url, history_dir=folder)
    try:
        with pytest.raises(ValidationError, match="not read, fetched or sent"):
            flux.replay(record_id)
    finally:
        flux.close()


# -- finding 3: streamed, capped ---------------------------------------------------------------------------


def peak_bytes(work: Callable[[], Any]) -> int:
    """The peak of Python allocations while ``work`` runs."""
    tracemalloc.start()
    try:
        work()
    except ValidationError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_open_bundle_streams_each_file_never_holding_it_whole(good: Path, tmp_path: Path) -> None:
    zeros = bytes(32 * 2**20)
    big = rebundle(good, tmp_path / "big.zip", members={f"images/{sha(zeros)[:2]}/{sha(zeros)}.png": zeros})
    del zeros
    into = tmp_path / "into"
    assert peak_bytes(lambda: open_bundle(big, into)) < 8 * 2**20
    assert HistoryStore(into).count() == 6


def test_a_zip_bomb_is_refused_before_a_byte_of_it_is_read(
    good: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bundles, "MEMBER_MAX", 2**20)
    zeros = bytes(16 * 2**20)
    bomb = rebundle(good, tmp_path / "bomb.zip", members={f"images/{sha(zeros)[:2]}/{sha(zeros)}.png": zeros})
    del zeros
    into = tmp_path / "into"
    with pytest.raises(ValidationError, match="over the 1 MiB"):
        open_bundle(bomb, into)
    assert peak_bytes(lambda: open_bundle(bomb, into)) < 2**20
    assert_nothing_left(into)
    monkeypatch.setattr(bundles, "MEMBER_MAX", 64 * 2**20)
    monkeypatch.setattr(bundles, "TOTAL_MAX", 8 * 2**20)
    with pytest.raises(ValidationError, match="over the 8 MiB limit"):
        open_bundle(bomb, into)
    assert_nothing_left(into)


def test_a_huge_manifest_is_refused_without_parsing_it(good: Path, tmp_path: Path) -> None:
    padded = json.dumps({"format": "flux_nb-bundle/1", "files": {}, "pad": "x" * (bundles.MANIFEST_MAX + 1)})
    huge = rebundle(good, tmp_path / "huge.zip", raw_manifest=padded.encode())
    del padded
    into = tmp_path / "into"
    with pytest.raises(ValidationError, match="over the 32 MiB"):
        open_bundle(huge, into)
    assert peak_bytes(lambda: open_bundle(huge, into)) < 2**20
    assert_nothing_left(into)


# -- finding 4: records from elsewhere are archived ----------------------------------------------------------


def test_open_requests_in_a_bundle_are_archived_never_polled_or_sent(
    good: Path, ids: list[str], tmp_path: Path, server: EmbeddedServer, counter: Counter
) -> None:
    polling = f"{counter.url}/v1/get_result?id=theirs"
    bundle = rebundle(
        good,
        tmp_path / "open.zip",
        sql=(
            f"UPDATE records SET status = 'submitted', polling_url = '{polling}', owner = 'colleague:41' "
            f"WHERE record_id = '{ids[0]}'; "
            f"UPDATE records SET status = 'pending', owner = 'colleague:42' WHERE record_id = '{ids[1]}'; "
            f"UPDATE records SET status = 'sending', owner = 'colleague:43' WHERE record_id = '{ids[2]}';"
        ),
    )
    flux = Flux(endpoint=server.url, history_dir=tmp_path / "mine")
    opened = flux.open_bundle(bundle, into=tmp_path / "opened")
    try:
        assert list(opened.resume(unsent=True)) == [] and opened.unsent() == []
        frame = opened.history()
    finally:
        opened.close()
        flux.close()
    assert counter.hits == []
    archived = frame.iloc[:3]
    assert list(archived["status"]) == ["unknown"] * 3 and set(archived["error_kind"]) == {"bundled"}
    assert list(archived["error"]) == [
        f"it came in a bundle while {status}: its sender followed it, so it is kept as history and never resumed "
        "or polled here"
        for status in ("submitted", "pending", "sending")
    ]
    assert archived["polling_url"].iloc[0] == polling  # kept, as history
    assert list(frame["status"].iloc[3:]) == ["ready", "ready", "failed"]


# -- finding 5: one clear error for every malformed bundle, nothing left behind ------------------------------

VIEW = (
    "DROP TABLE records; CREATE VIEW records AS WITH RECURSIVE n(x) AS "
    "(SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT printf('%012d', x) AS record_id FROM n;"
)
NO_CONSTRAINTS = "ALTER TABLE records RENAME TO kept; CREATE TABLE records AS SELECT * FROM kept; DROP TABLE kept;"
OUTSIDE_CSV = b"record_id,image_path\nx,/home/someone/.ssh/id_rsa\n"
LONG_URL = "https://example.com/" + "a" * 70_000


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


# Each case: how the zip differs from a good bundle, and the whole message ({zip}: the zip's path, as repr).
MALFORMED: dict[str, tuple[dict[str, Any], str]] = {
    "no manifest": ({"drop": ("manifest.json",)}, r"{zip} is not a flux_nb bundle \(no manifest\.json\)"),
    "manifest a list": ({"manifest": []}, r"{zip} is not a flux_nb bundle \(format 'list'\)"),
    "another format": (
        {"edit": lambda m: m.update(format="zip/2")},
        r"{zip} is not a flux_nb bundle \(format 'zip/2'\)",
    ),
    "manifest not JSON": ({"raw_manifest": b"{nope"}, r"{zip} is not a flux_nb bundle \(manifest\.json is not JSON\)"),
    "manifest nested too deep": (
        {"raw_manifest": b"[" * 200_000 + b"]" * 200_000},
        r"{zip} is not a flux_nb bundle \(manifest\.json is not JSON\)",
    ),
    "manifest without files": (
        {"manifest": {"format": "flux_nb-bundle/1"}},
        r"the manifest of {zip} does not list its files; refusing it",
    ),
    "files not a table": (
        {"manifest": {"format": "flux_nb-bundle/1", "files": ["history.sqlite"]}},
        r"the manifest of {zip} does not list its files; refusing it",
    ),
    "a listed file missing": (
        {"edit": lambda m: m["files"].update({"inputs/" + "0" * 64 + ".png": {"sha256": "0" * 64, "bytes": 1}})},
        r"bundle file 'inputs/0{64}\.png' is missing; refusing it",
    ),
    "a sha256 that is not text": (
        {"edit": lambda m: m["files"]["records.csv"].update(sha256=5)},
        r"the manifest gives bundle file 'records\.csv' no sha256; refusing it",
    ),
    "a size the manifest does not give": (
        {"edit": lambda m: m["files"]["records.csv"].update(bytes=1)},
        r"bundle file 'records\.csv' holds \d+ bytes: not the size its manifest gives, or over the 512 MiB a "
        r"bundle file may hold",
    ),
    "no history": ({"drop": ("history.sqlite",)}, r"{zip} holds no history\.sqlite; it is not a whole bundle"),
    "a file and a folder of one name": (
        {"members": {"images/ab": b"x", "images/ab/x.png": b"y"}},
        r"bundle file 'images/ab' is not one a bundle holds \(its tables, images, inputs\)",
    ),
    "a 300-byte name": (
        {"members": {f"images/{'a' * 300}.png": b"x"}},
        r"bundle file 'images/a{300}\.png' is not one a bundle holds \(its tables, images, inputs\)",
    ),
    "an image that is not its name": (
        {"members": {f"images/{sha(b'a')[:2]}/{sha(b'a')}.png": b"b"}},
        r"bundle file 'images/.*\.png' is not the file its name says \(its sha256 differs\)",
    ),
    "a URL that is not UTF-8": (
        {"members": {url_name("https://example.com/a.png"): b"\xff\xfe"}},
        r"the stored reference [0-9a-f]{12}\.url does not hold the http\(s\) URL it is named after; "
        r"it is not read, fetched or sent",
    ),
    "a URL too long": (
        {"members": {url_name(LONG_URL): LONG_URL.encode()}},
        r"bundle file 'inputs/[0-9a-f]{64}\.url' is too long to be a URL; refusing it",
    ),
    "records an endless view": (
        {"sql": VIEW},
        r"the bundle's history\.sqlite holds view 'records'; a bundle holds plain tables only",
    ),
    "no records table": (
        {"sql": "DROP TABLE records;"},
        r"the bundle's history\.sqlite holds no records table; a bundle holds plain tables only",
    ),
    "a trigger": (
        {"sql": "CREATE TRIGGER t AFTER UPDATE ON records BEGIN DELETE FROM reviews; END;"},
        r"the bundle's history\.sqlite holds trigger 't'; a bundle holds plain tables only",
    ),
    "an index": (
        {"sql": "CREATE INDEX i ON records (prompt);"},
        r"the bundle's history\.sqlite holds index 'i'; a bundle holds plain tables only",
    ),
    "a computed column": (
        {"sql": "ALTER TABLE records ADD COLUMN g AS (1);"},
        r"the bundle's history\.sqlite has computed columns in records; refusing it",
    ),
    "an unknown status": (
        {"sql": "UPDATE records SET status = 'weird';"},
        r"a row of the bundle has the status 'weird'; refusing it",
    ),
    "an image row not of its hash": (
        {"sql": "UPDATE records SET image_sha256 = '" + "0" * 64 + "';"},
        r"row '[0-9a-f]{12}' of the bundle names the image 'images/.*', not an image of the bundle; refusing it",
    ),
    "reference hashes that are paths": (
        {"sql": "UPDATE records SET input_hashes = '[\"../../x\"]';"},
        r"row '[0-9a-f]{12}' of the bundle has reference hashes '\[\"\.\./\.\./x\"\]'; refusing it",
    ),
    "a row without a creation time": (
        {"sql": NO_CONSTRAINTS + "UPDATE records SET created_at = NULL;"},
        r"the bundle's history\.sqlite is not a history flux_nb can read \(NOT NULL constraint failed: .*\)",
    ),
    "not a database": (
        {"members": {"history.sqlite": b"not sqlite at all" * 10}},
        r"the bundle's history\.sqlite is not a history flux_nb can read \(file is not a database\)",
    ),
    "a CSV naming an outside image": (
        {"members": {"records.csv": OUTSIDE_CSV}},
        r"bundle file 'records\.csv' names an image outside the bundle's images/; refusing it",
    ),
    "a CSV naming an outside image, no Parquet": (
        {"members": {"records.csv": OUTSIDE_CSV}, "drop": ("records.parquet",)},
        r"bundle file 'records\.csv' names an image outside the bundle's images/; refusing it",
    ),
    "a Parquet naming an outside image": (
        {"members": {"records.parquet": _parquet(pd.DataFrame({"image_path": ["/etc/hostname"]}))}},
        r"bundle file 'records\.parquet' names an image outside the bundle's images/; refusing it",
    ),
    "a Parquet that is not one": (
        {"members": {"records.parquet": b"PAR1 not really"}},
        r"bundle file 'records\.parquet' is not a table flux_nb can read \(.*\)",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_bundle_is_one_clear_error_and_a_retry_works(good: Path, tmp_path: Path, case: str) -> None:
    changes, message = MALFORMED[case]
    bad = rebundle(good, tmp_path / "bad.zip", **changes)
    into = tmp_path / "nested" / "into"
    with pytest.raises(ValidationError, match="^" + message.replace("{zip}", re.escape(repr(str(bad)))) + "$"):
        open_bundle(bad, into)
    assert not (tmp_path / "nested").exists()
    assert HistoryStore(open_bundle(good, into)).count() == 6


@pytest.mark.parametrize("name", ["manifest.json", "records.csv"])
def test_a_damaged_member_is_named(good: Path, tmp_path: Path, name: str) -> None:
    bad = damaged(rebundle(good, tmp_path / "bad.zip", stored=True), name)
    with pytest.raises(ValidationError, match=f"^bundle file {re.escape(repr(name))} cannot be read \\(Bad CRC-32"):
        open_bundle(bad, tmp_path / "into")
    assert_nothing_left(tmp_path / "into")


def test_duplicate_members_and_odd_compression_are_refused(good: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(good) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    twice = tmp_path / "twice.zip"
    with zipfile.ZipFile(twice, "w") as archive, pytest.warns(UserWarning, match="Duplicate name"):
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr("records.csv", b"record_id\nsomething else\n")
    with pytest.raises(ValidationError, match=r"holds 'records\.csv' twice"):
        open_bundle(twice, tmp_path / "a")
    packed = tmp_path / "bzip2.zip"
    with zipfile.ZipFile(packed, "w", zipfile.ZIP_BZIP2) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    with pytest.raises(ValidationError, match="compressed in a way bundles never are"):
        open_bundle(packed, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# -- finding 6: an export carries the reviews of what it exports and nothing more ----------------------------


def test_an_export_carries_only_the_reviews_of_the_records_it_exports(source: HistoryStore, tmp_path: Path) -> None:
    frame = source.to_frame()
    first, second = list(frame["record_id"].iloc[:2])
    image = dict(zip(frame["record_id"], frame["image_sha256"], strict=True))  # a review is of an image
    assert image[first] != image[second]
    for chosen in (first, second):
        bundle = export_bundle(frame[frame["record_id"] == chosen], source.root, tmp_path / f"{chosen}.zip")
        with zipfile.ZipFile(bundle) as archive:
            (tmp_path / "h.sqlite").write_bytes(archive.read("history.sqlite"))
        db = sqlite3.connect(tmp_path / "h.sqlite")
        reviews = db.execute("SELECT image, rating, note FROM reviews").fetchall()
        tags = db.execute("SELECT image, tag FROM review_tags").fetchall()
        db.close()
        (tmp_path / "h.sqlite").unlink()
        assert {r[0] for r in reviews} == {image[chosen]} and tags == [(image[chosen], "keep")]
    opened = HistoryStore(open_bundle(tmp_path / f"{first}.zip", tmp_path / "opened")).to_frame()
    assert opened["note"].isna().all() and list(opened["rating"]) == [5]  # the other record's note stayed home


# -- opening: where it lands, what it says, its limits --------------------------------------------------------


def test_a_bundle_opens_into_an_empty_folder_with_nothing_but_its_files(good: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(good) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    with_folders = tmp_path / "folders.zip"
    with zipfile.ZipFile(with_folders, "w") as archive:  # folder entries first, as some zip tools write them
        archive.writestr("images/", b"")
        archive.writestr("inputs/", b"")
        for name, data in files.items():
            archive.writestr(name, data)
    into = tmp_path / "empty"
    into.mkdir()
    assert open_bundle(with_folders, into) == into
    assert sorted(p.name for p in into.iterdir()) == [
        "history.sqlite",
        "images",
        "inputs",
        "manifest.json",
        "records.csv",
        "records.parquet",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "folders.zip"]
    db = sqlite3.connect(into / "history.sqlite")
    (rows,) = db.execute("SELECT MAX(seq) FROM records").fetchone()
    (reviews,) = db.execute("SELECT MAX(seq) FROM reviews").fetchone()
    db.close()
    store = HistoryStore(into)
    assert store.change_token() == max(rows, reviews) > 0  # the next write gets a newer number than any row's
    first = str(store.to_frame()["record_id"].iloc[2])
    store.rate(first, 2)
    assert store.changed_ids(max(rows, reviews)) == [first]


def test_where_a_bundle_cannot_go_is_said_with_the_folder(good: Path, tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("mine")
    with pytest.raises(ValidationError, match=f"^into_dir {re.escape(repr(str(tmp_path / 'full')))} is not empty"):
        open_bundle(good, tmp_path / "full")
    with pytest.raises(ValidationError, match=f"^cannot open bundle {re.escape(repr(str(tmp_path / 'no.zip')))}: "):
        open_bundle(tmp_path / "no.zip", tmp_path / "x")
    (tmp_path / "afile").write_text("a file, not a folder")
    into = tmp_path / "afile" / "sub" / "into"
    message = f"cannot unpack the bundle into {str(into)!r}: Not a directory"
    with pytest.raises(ValidationError, match=f"^{re.escape(message)}$"):
        open_bundle(good, into)
    assert (tmp_path / "full" / "mine.txt").read_text() == "mine"


def test_the_limits_are_inclusive(good: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = "https://example.com/cat.png"
    bundle = rebundle(good, tmp_path / "url.zip", members={url_name(url): url.encode()})
    with zipfile.ZipFile(bundle) as archive:
        sizes = {info.filename: info.file_size for info in archive.infolist()}
    manifest = sizes.pop("manifest.json")
    limits = {"MEMBER_MAX": max(sizes.values()), "TOTAL_MAX": sum(sizes.values()), "MANIFEST_MAX": manifest}
    limits["URL_MAX"] = len(url)
    for name, limit in limits.items():
        monkeypatch.setattr(bundles, name, limit)
    assert HistoryStore(open_bundle(bundle, tmp_path / "at")).count() == 6
    for index, name in enumerate(limits):
        monkeypatch.setattr(bundles, name, limits[name] - 1)
        with pytest.raises(ValidationError, match=r"over the|too long"):
            open_bundle(bundle, tmp_path / f"over{index}")
        monkeypatch.setattr(bundles, name, limits[name])
        assert_nothing_left(tmp_path / f"over{index}")


# -- exporting: what the zip holds, and why it refuses -------------------------------------------------------


def test_an_export_lists_its_versions_and_stores_images_as_they_are(
    source: HistoryStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import platform

    import numpy
    import PIL
    import pyarrow

    from flux_nb.metadata.provenance import version

    before = datetime.now(UTC)
    bundle = export_bundle(source.to_frame(), source.root, tmp_path / "a" / "b" / "x.zip")  # folders made
    with zipfile.ZipFile(bundle) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        kinds = {info.filename: info.compress_type for info in archive.infolist()}
    assert manifest["versions"] == {
        "flux_nb": version(),
        "python": platform.python_version(),
        "pandas": pd.__version__,
        "pyarrow": pyarrow.__version__,
        "pillow": PIL.__version__,
        "numpy": numpy.__version__,
    }
    created = datetime.fromisoformat(manifest["created_at"])
    assert created.tzinfo is not None and before <= created <= datetime.now(UTC)
    stored = {name for name, kind in kinds.items() if kind == zipfile.ZIP_STORED}
    assert stored == {n for n in kinds if n.startswith("images/") or n.endswith((".png", ".parquet"))}
    assert {kinds[n] for n in ("manifest.json", "history.sqlite", "records.csv")} == {zipfile.ZIP_DEFLATED}

    def missing(package: str) -> str:
        raise bundles.PackageNotFoundError(package)

    monkeypatch.setattr(bundles, "installed_version", missing)
    assert set(bundles.versions().values()) - {version(), platform.python_version()} == {"not installed"}


def test_the_tables_hold_the_frames_columns_and_open_without_image_paths(source: HistoryStore, tmp_path: Path) -> None:
    frame = source.to_frame().iloc[[1, 2, 5]].copy()  # an index that is no range
    frame["input_hashes"] = [None, ["a" * 64], []]
    bundle = export_bundle(frame, source.root, tmp_path / "t.zip")
    with zipfile.ZipFile(bundle) as archive:
        parquet = pq.read_table(io.BytesIO(archive.read("records.parquet")))  # as any Parquet reader sees it
        csv = pd.read_csv(io.BytesIO(archive.read("records.csv")))
    assert parquet.column_names == list(csv.columns) == list(frame.columns)
    assert list(csv["input_hashes"]) == ["[]", json.dumps(["a" * 64]), "[]"]
    bare = export_bundle(frame.drop(columns="image_path"), source.root, tmp_path / "bare.zip")
    assert HistoryStore(open_bundle(bare, tmp_path / "opened")).count() == 3


def test_export_refusals_say_exactly_why(source: HistoryStore, tmp_path: Path) -> None:
    frame = source.to_frame()

    def refused(message: str, *args: Any) -> None:
        with pytest.raises(ValidationError, match=f"^{re.escape(message)}$"):
            export_bundle(*args)

    target = tmp_path / "x.zip"
    refused(
        "the frame has no record_id column; export rows of a history frame (flux.history())",
        frame.drop(columns="record_id"),
        source.root,
        target,
    )
    refused(
        "the frame has no rows to export; select some rows of the history first", frame.iloc[:0], source.root, target
    )
    nowhere = tmp_path / "nowhere"
    refused(f"history_dir has no history.sqlite: {str(nowhere)!r} is not a history folder", frame, nowhere, target)
    stranger = frame.iloc[:1].assign(record_id="0123456789ab")
    refused(
        f"1 row(s) of the frame are not in the history at {str(source.root)!r} (first: 0123456789ab); "
        "export rows of that folder's history",
        stranger,
        source.root,
        target,
    )
    odd = frame.assign(odd=[{"a": 1}, 2, "x", None, 1.5, b"b"])
    with pytest.raises(ValidationError, match=r"^a column of the frame cannot be stored as Parquet .*; drop it first$"):
        export_bundle(odd, source.root, target)
    assert not target.exists() and list(tmp_path.iterdir()) == []
