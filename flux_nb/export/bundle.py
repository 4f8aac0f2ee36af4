"""Experiment bundles: selected history rows, their images and references, in one self-contained zip.

    manifest.json           format, versions (flux_nb, python, pandas, pyarrow, pillow), per-file sha256
    records.parquet         the rows as given (extra columns such as ratings included), typed;
                            written where pyarrow is installed (the ``arrow`` extra)
    records.csv             the same rows for any spreadsheet (``image_path`` relative, lists as JSON)
    history.sqlite          the rows exactly as the history stores them (its ``records`` table), and the
                            reviews (stars, notes, tags, favourites) of the images they show
    images/<sha[:2]>/<sha>.<ext>, inputs/<sha>.<ext>   as in a history folder

``open_bundle`` unpacks it into a new folder that is a history folder: ``HistoryStore(folder)`` (and
``Flux(history_dir=folder)``) read the rows, and image paths resolve there. A bundle comes from someone
else: it is checked whole and streamed under limits, and nothing in it is ever polled, resumed or fetched.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import platform
import re
import shutil
import sqlite3
import stat
import tempfile
import uuid
import zipfile
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as installed_version
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from flux_nb.errors import ValidationError
from flux_nb.history.files import IMAGE_PATH, image_file, url_reference
from flux_nb.history.records import SHA256, RecordStatus
from flux_nb.history.schema import DATABASE, REVIEW_KEY, create_schema, table_columns
from flux_nb.metadata.provenance import version as flux_nb_version
from flux_nb.sqlite import in_immediate_transaction

BUNDLE_FORMAT = "flux_nb-bundle/1"
MANIFEST = "manifest.json"
STORED = {".png", ".jpeg", ".jpg", ".webp", ".parquet"}  # already compressed: deflating gains nothing
# What a bundle holds, and nothing else: its tables, and images and inputs named by their SHA-256.
MEMBER = re.compile(
    r"history\.sqlite|records\.parquet|records\.csv"
    r"|images/(?P<pre>[0-9a-f]{2})/(?P<image>(?P=pre)[0-9a-f]{62})\.[a-z0-9]{1,8}"
    r"|inputs/(?P<input>[0-9a-f]{64})\.[a-z0-9]{1,8}"
)
BUNDLE_TABLES = {"records", "reviews", "review_tags"}
# Limits on what opening a bundle reads and writes: the manifest is parsed in memory, the rest is streamed.
MANIFEST_MAX = 32 * 2**20
URL_MAX = 64 * 2**10
MEMBER_MAX = 512 * 2**20
TOTAL_MAX = 8 * 2**30
CHUNK = 2**20
CSV_ROWS = 50_000


def versions() -> dict[str, str]:
    """The versions a bundle records: flux_nb, Python and the libraries that read it back."""
    found = {"flux_nb": flux_nb_version(), "python": platform.python_version()}
    for package in ("pandas", "pyarrow", "pillow", "numpy"):
        try:
            found[package] = installed_version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def _record_ids(frame: pd.DataFrame) -> list[str]:
    if "record_id" not in frame.columns:
        raise ValidationError("the frame has no record_id column; export rows of a history frame (flux.history())")
    ids = [str(value) for value in frame["record_id"].dropna()]
    if not ids:
        raise ValidationError("the frame has no rows to export; select some rows of the history first")
    return list(dict.fromkeys(ids))


def _copy_records(source: Path, target: Path, ids: list[str]) -> list[str]:
    """Copy the history's ``records`` rows for ``ids`` into a new SQLite file; returns ids not found."""
    if not source.is_file():
        raise ValidationError(f"history_dir has no {DATABASE}: {str(source.parent)!r} is not a history folder")
    db = sqlite3.connect(target.as_uri(), uri=True)  # URI names on: the ATTACH below opens the history read-only
    try:
        db.execute("ATTACH DATABASE ? AS src", (f"{source.as_uri()}?mode=ro",))
        (schema,) = db.execute("SELECT sql FROM src.sqlite_master WHERE type = 'table' AND name = 'records'").fetchone()
        db.execute(schema)
        db.execute(
            "INSERT INTO records SELECT * FROM src.records WHERE record_id IN (SELECT value FROM json_each(?))",
            (json.dumps(ids),),
        )
        _copy_reviews(db)
        db.commit()
        found = {row[0] for row in db.execute("SELECT record_id FROM records")}
        db.execute("DETACH DATABASE src")
    finally:
        db.close()
    return [record_id for record_id in ids if record_id not in found]


def _copy_reviews(db: sqlite3.Connection) -> None:
    """Copy the reviews (stars, notes, favourites, tags) of the images the copied rows show."""
    tables = {row[0] for row in db.execute("SELECT name FROM src.sqlite_master WHERE type = 'table'")}
    shown = f"SELECT {REVIEW_KEY.format(r='records')} FROM records"
    for table in ("reviews", "review_tags"):
        if table not in tables:
            continue
        (schema,) = db.execute(
            "SELECT sql FROM src.sqlite_master WHERE type = 'table' AND name = ?", (table,)
        ).fetchone()
        db.execute(schema)
        db.execute(f"INSERT INTO {table} SELECT * FROM src.{table} WHERE (experiment, image) IN ({shown})")


def _relative_image(path: Any, root: Path) -> str | None:
    """An image path of the frame as a path inside the history folder, or None."""
    if not isinstance(path, (str, os.PathLike)):
        return None
    try:
        return Path(str(path)).resolve().relative_to(root).as_posix()
    except ValueError:
        return None


def _files(database: Path, root: Path) -> list[str]:
    """The images and reference inputs the exported records use, relative to the history folder."""
    db = sqlite3.connect(database)
    try:
        rows = db.execute("SELECT image_path, input_hashes FROM records").fetchall()
    finally:
        db.close()
    found = {str(path) for path, _ in rows if path and image_file(root, str(path)).is_file()}
    for sha in {sha for _, hashes in rows for sha in _hashes(hashes) or []}:
        found.update(c.relative_to(root).as_posix() for c in (root / "inputs").glob(f"{sha}.*") if c.is_file())
    return sorted(found)


def _tables(frame: pd.DataFrame, root: Path) -> dict[str, bytes]:
    """The rows as CSV, and as Parquet where pyarrow is installed, with image paths made relative to the bundle."""
    rows = frame.copy()
    if "image_path" in rows.columns:
        rows["image_path"] = pd.array([_relative_image(p, root) for p in rows["image_path"]], dtype="string")
    tables = {}
    if importlib.util.find_spec("pyarrow") is not None:
        parquet = io.BytesIO()
        try:
            rows.to_parquet(parquet, engine="pyarrow", index=False)
        except (TypeError, ValueError) as exc:  # pyarrow's ArrowInvalid and ArrowTypeError derive from these
            raise ValidationError(f"a column of the frame cannot be stored as Parquet ({exc}); drop it first") from None
        tables["records.parquet"] = parquet.getvalue()
    if "input_hashes" in rows.columns:
        rows["input_hashes"] = [json.dumps(list(v)) if v is not None else "[]" for v in rows["input_hashes"]]
    tables["records.csv"] = rows.to_csv(index=False).encode()
    return tables


def export_bundle(frame: pd.DataFrame, history_dir: str | os.PathLike[str], path_zip: str | os.PathLike[str]) -> Path:
    """Write the frame's rows, their images and reference inputs to one zip; returns its path.

    >>> export_bundle(flux.history().query("tag == 'sweep-1'"), ".flux", "sweep-1.zip")  # doctest: +SKIP
    """
    root = Path(history_dir).expanduser().resolve()
    ids = _record_ids(frame)
    target = Path(path_zip).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="flux-bundle-") as scratch:
        database = Path(scratch) / DATABASE
        missing = _copy_records(root / DATABASE, database, ids)
        if missing:
            raise ValidationError(
                f"{len(missing)} row(s) of the frame are not in the history at {str(root)!r} "
                f"(first: {missing[0]}); export rows of that folder's history"
            )
        members: dict[str, bytes | Path] = {**_tables(frame, root)}
        members[DATABASE] = database
        members.update({relative: root / relative for relative in _files(database, root)})
        _write_zip(target, members, ids)
    return target


def _write_zip(target: Path, members: dict[str, bytes | Path], ids: list[str]) -> None:
    """Write the zip under a temporary name, then move it into place (no half-written bundle)."""
    temp = target.with_name(f".{target.name}.tmp")
    try:
        _fill_zip(temp, members, ids)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    temp.replace(target)


def _fill_zip(temp: Path, members: dict[str, bytes | Path], ids: list[str]) -> None:
    files: dict[str, dict[str, Any]] = {}
    with zipfile.ZipFile(temp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for name, content in members.items():
            data = content.read_bytes() if isinstance(content, Path) else content
            files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            kind = zipfile.ZIP_STORED if PurePosixPath(name).suffix in STORED else zipfile.ZIP_DEFLATED
            archive.writestr(name, data, compress_type=kind)
        manifest = {
            "format": BUNDLE_FORMAT,
            "created_at": datetime.now(UTC).isoformat(),
            "rows": len(ids),
            "record_ids": ids,
            "versions": versions(),
            "files": files,
        }
        archive.writestr(MANIFEST, json.dumps(manifest, indent=2))


def _safe_name(info: zipfile.ZipInfo) -> PurePosixPath:
    """A member's name, refused when it could land outside the folder (zip slip) or is a link."""
    name = info.filename
    path = PurePosixPath(name)
    if (
        not name
        or "\\" in name
        or path.is_absolute()
        or ".." in path.parts
        or (path.parts and ":" in path.parts[0])
        or stat.S_ISLNK(info.external_attr >> 16)
    ):
        raise ValidationError(f"the bundle holds an unsafe path {name!r}; refusing to unpack it")
    return path


def open_bundle(path_zip: str | os.PathLike[str], into_dir: str | os.PathLike[str]) -> Path:
    """Unpack a bundle into a new (or empty) folder and check every file; returns the folder.

    The whole bundle is checked (names, sizes, each file's sha256 against the manifest and, for images
    and inputs, against its name; the history's tables and rows) while it is streamed into a temporary
    folder beside ``into_dir``, which becomes ``into_dir`` only once all is well: a refused bundle leaves
    nothing behind. Its rows are archived: a request still open in it is its sender's, never resumed here.
    The folder is then a history folder: ``HistoryStore(folder).to_frame()`` has the rows.
    """
    into = Path(into_dir).expanduser().resolve()
    if into.exists() and (not into.is_dir() or any(into.iterdir())):
        raise ValidationError(f"into_dir {str(into)!r} is not empty; open the bundle into a new folder")
    try:
        archive = zipfile.ZipFile(Path(path_zip).expanduser())
    except (OSError, zipfile.BadZipFile) as exc:
        raise ValidationError(f"cannot open bundle {str(path_zip)!r}: {exc}") from None
    with archive:
        infos = _members(archive)
        manifest, files = _manifest(archive, infos, path_zip)
        made = [folder for folder in (into.parent, *into.parent.parents) if not folder.exists()]
        temp = into.parent / f".flux-bundle-{uuid.uuid4().hex[:12]}"
        try:
            temp.mkdir(parents=True)
            _unpack(archive, infos, files, temp)
            _check_tables(temp)
            _rebuild_history(temp)
            (temp / MANIFEST).write_bytes(manifest)
            temp.replace(into)
        except BaseException as exc:
            shutil.rmtree(temp, ignore_errors=True)
            for folder in made:
                with contextlib.suppress(OSError):
                    folder.rmdir()
            if isinstance(exc, OSError):
                raise ValidationError(f"cannot unpack the bundle into {str(into)!r}: {exc.strerror or exc}") from None
            raise
    return into


def _members(archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """The bundle's files by name: every name safe, none twice, each stored or deflated (as bundles are)."""
    infos: dict[str, zipfile.ZipInfo] = {}
    for info in archive.infolist():
        name = str(_safe_name(info))
        if info.is_dir():
            continue
        if name in infos:
            raise ValidationError(f"the bundle holds {name!r} twice; refusing it")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ValidationError(f"bundle file {name!r} is compressed in a way bundles never are; refusing it")
        infos[name] = info
    return infos


def _manifest(
    archive: zipfile.ZipFile, infos: dict[str, zipfile.ZipInfo], path_zip: Any
) -> tuple[bytes, dict[str, str]]:
    """The manifest's bytes and its files (name -> sha256), checked against the zip's members."""
    if MANIFEST not in infos:
        raise ValidationError(f"{str(path_zip)!r} is not a flux_nb bundle (no {MANIFEST})")
    raw = _read(archive, infos[MANIFEST], MANIFEST_MAX)
    try:
        manifest = json.loads(raw)
    except (ValueError, RecursionError):
        raise ValidationError(f"{str(path_zip)!r} is not a flux_nb bundle ({MANIFEST} is not JSON)") from None
    if not isinstance(manifest, dict) or not str(manifest.get("format")).startswith("flux_nb-bundle/"):
        shown = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ValidationError(f"{str(path_zip)!r} is not a flux_nb bundle (format {shown!r})")
    listed = manifest.get("files")
    if not isinstance(listed, dict) or not all(isinstance(entry, dict) for entry in listed.values()):
        raise ValidationError(f"the manifest of {str(path_zip)!r} does not list its files; refusing it")
    unlisted = sorted(set(infos) - set(listed) - {MANIFEST})
    absent = sorted(set(listed) - set(infos))
    if unlisted or absent:
        name = (unlisted or absent)[0]
        raise ValidationError(
            f"bundle file {name!r} is {'not in the manifest' if unlisted else 'missing'}; refusing it"
        )
    files: dict[str, str] = {}
    for name, entry in listed.items():
        size = infos[name].file_size
        if not MEMBER.fullmatch(name):
            raise ValidationError(f"bundle file {name!r} is not one a bundle holds (its tables, images, inputs)")
        if not isinstance(entry.get("sha256"), str) or not SHA256.fullmatch(entry["sha256"]):
            raise ValidationError(f"the manifest gives bundle file {name!r} no sha256; refusing it")
        if entry.get("bytes") != size or size > MEMBER_MAX:
            raise ValidationError(
                f"bundle file {name!r} holds {size} bytes: not the size its manifest gives, or over the "
                f"{MEMBER_MAX // 2**20} MiB a bundle file may hold"
            )
        files[name] = entry["sha256"]
    total = sum(infos[name].file_size for name in files)
    if total > TOTAL_MAX:
        raise ValidationError(f"the bundle unpacks to {total} bytes, over the {TOTAL_MAX // 2**20} MiB limit")
    if DATABASE not in files:
        raise ValidationError(f"{str(path_zip)!r} holds no {DATABASE}; it is not a whole bundle")
    return raw, files


def _read(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """A small member's bytes (refused unread when it says it holds more than ``limit``)."""
    if info.file_size > limit:
        raise ValidationError(f"bundle file {info.filename!r} is over the {limit // 2**20} MiB it may hold")
    with _reading(info.filename), archive.open(info) as source:
        return source.read()  # zipfile reads no more than the size it was told, which the limit bounds


@contextlib.contextmanager
def _reading(name: str) -> Iterator[None]:
    """Turn a damaged or odd zip member's failure into one clear error."""
    try:
        yield
    except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError) as exc:
        raise ValidationError(f"bundle file {name!r} cannot be read ({exc}); the bundle is damaged") from None


def _unpack(archive: zipfile.ZipFile, infos: dict[str, zipfile.ZipInfo], files: dict[str, str], into: Path) -> None:
    """Stream each file into ``into`` (a chunk at a time), checking its sha256 against the manifest and its name."""
    for name, expected in sorted(files.items()):
        out = into.joinpath(*PurePosixPath(name).parts)
        out.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with _reading(name), archive.open(infos[name]) as source, out.open("xb") as target:
            while chunk := source.read(CHUNK):
                digest.update(chunk)
                target.write(chunk)
        if digest.hexdigest() != expected:
            raise ValidationError(f"bundle file {name!r} does not match its sha256 in the manifest; it is damaged")
        _check_named(name, out, expected)


def _check_named(name: str, path: Path, digest: str) -> None:
    """An image or input is the file its name says: its sha256, or for a ``.url`` an http(s) URL of that name."""
    found = MEMBER.fullmatch(name)
    named = found and (found["image"] or found["input"])
    if not named:
        return
    if name.endswith(".url"):
        if path.stat().st_size > URL_MAX:
            raise ValidationError(f"bundle file {name!r} is too long to be a URL; refusing it")
        url_reference(path.read_text(errors="replace"), named)
    elif digest != named:
        raise ValidationError(f"bundle file {name!r} is not the file its name says (its sha256 differs)")


def _check_tables(folder: Path) -> None:
    """The Parquet and CSV tables name images only inside the bundle (``image_path`` relative, under images/).

    Without pyarrow a ``records.parquet`` cannot be checked, so it is not kept (its rows are in the other tables).
    """
    for name in ("records.parquet", "records.csv"):
        path = folder / name
        if not path.is_file():
            continue
        if name.endswith(".parquet") and importlib.util.find_spec("pyarrow") is None:
            path.unlink()
            continue
        try:
            paths = _parquet_paths(path) if name.endswith(".parquet") else _csv_paths(path)
            inside = all(re.fullmatch(IMAGE_PATH, value) for value in paths)
        except (OSError, ValueError) as exc:  # pandas' parser errors are ValueErrors
            raise ValidationError(f"bundle file {name!r} is not a table flux_nb can read ({exc})") from None
        if not inside:
            raise ValidationError(f"bundle file {name!r} names an image outside the bundle's images/; refusing it")


def _parquet_paths(path: Path) -> Iterator[str]:
    """The image paths a Parquet table names, a batch at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
        names = table.schema_arrow.names
        for batch in table.iter_batches(columns=["image_path"]) if "image_path" in names else ():
            yield from (value for value in batch.column(0).to_pylist() if value is not None)
    except pa.ArrowException as exc:
        raise ValueError(str(exc)) from exc


def _csv_paths(path: Path) -> Iterator[str]:
    """The image paths a CSV table names (empty cells name none), a chunk at a time."""
    only = "image_path".__eq__
    for chunk in pd.read_csv(path, usecols=only, dtype=str, keep_default_na=False, chunksize=CSV_ROWS):
        yield from (value for value in chunk.get("image_path", ()) if value)


def _rebuild_history(folder: Path) -> None:
    """Replace the bundle's ``history.sqlite`` by a fresh history holding the rows of its plain tables, checked."""
    target = folder / DATABASE
    bundled = folder / ".bundled.sqlite"
    target.rename(bundled)
    db = sqlite3.connect(target, isolation_level=None)
    try:
        db.execute("PRAGMA trusted_schema = OFF")
        in_immediate_transaction(db, create_schema)
        db.execute("ATTACH DATABASE ? AS bundle", (str(bundled),))
        in_immediate_transaction(db, _copy_tables)
    except sqlite3.Error as exc:
        raise ValidationError(f"the bundle's {DATABASE} is not a history flux_nb can read ({exc})") from None
    finally:
        db.close()
        for leftover in folder.glob(".bundled.sqlite*"):
            leftover.unlink()


def _copy_tables(db: sqlite3.Connection) -> None:
    """Copy the bundle's records and reviews (plain tables only, known columns only), check the rows, archive them."""
    found = db.execute("SELECT type, name, sql FROM bundle.sqlite_master").fetchall()
    odd = [f"{kind} {name!r}" for kind, name, sql in found if not _plain(kind, name, sql)]
    if odd or "records" not in {name for _, name, _ in found}:
        what = odd[0] if odd else "no records table"
        raise ValidationError(f"the bundle's {DATABASE} holds {what}; a bundle holds plain tables only")
    for table in sorted(BUNDLE_TABLES & {name for _, name, _ in found}):
        columns = {row[1]: row[6] for row in db.execute(f"PRAGMA bundle.table_xinfo({table})")}
        if any(columns.values()):
            raise ValidationError(f"the bundle's {DATABASE} has computed columns in {table}; refusing it")
        shared = ", ".join(c for c in table_columns(db, table) if c in columns)
        db.execute(f"INSERT INTO main.{table} ({shared}) SELECT {shared} FROM bundle.{table}")
    _check_rows(db)
    db.execute(
        "UPDATE main.records SET status = ?, error_kind = 'bundled', error = 'it came in a bundle while ' || status || "
        "': its sender followed it, so it is kept as history and never resumed or polled here' "
        "WHERE status IN (?, ?, ?)",
        (RecordStatus.UNKNOWN.value, RecordStatus.PENDING.value, RecordStatus.SENDING.value,
         RecordStatus.SUBMITTED.value),
    )  # fmt: skip
    db.execute(
        "UPDATE main.changes SET seq = MAX(seq, IFNULL((SELECT MAX(seq) FROM main.records), 0), "
        "IFNULL((SELECT MAX(seq) FROM main.reviews), 0))"
    )


def _plain(kind: str, name: str, sql: str | None) -> bool:
    """A plain table flux_nb writes into bundles, or the index SQLite itself keeps for a primary key."""
    return (kind == "table" and name in BUNDLE_TABLES) or (kind == "index" and sql is None)


def _check_rows(db: sqlite3.Connection) -> None:
    """Every row has a known status, an image path inside the bundle's images/ (of its image's sha256), and
    reference hashes that name inputs."""
    statuses = {row[0] for row in db.execute("SELECT DISTINCT status FROM main.records")}
    unknown = statuses - {status.value for status in RecordStatus}
    if unknown:
        raise ValidationError(f"a row of the bundle has the status {sorted(map(str, unknown))[0]!r}; refusing it")
    rows = db.execute("SELECT record_id, image_path, image_sha256, input_hashes FROM main.records")
    for record_id, path, digest, hashes in rows:
        found = MEMBER.fullmatch(path) if isinstance(path, str) else None
        if path is not None and (found is None or not found["image"] or digest not in (None, found["image"])):
            raise ValidationError(
                f"row {record_id!r} of the bundle names the image {path!r}, not an image of the bundle; refusing it"
            )
        if _hashes(hashes) is None:
            raise ValidationError(f"row {record_id!r} of the bundle has reference hashes {hashes!r}; refusing it")


def _hashes(text: Any) -> list[str] | None:
    """The reference hashes a row's ``input_hashes`` holds, or None when it is not a JSON list of SHA-256s."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and SHA256.fullmatch(v) for v in value):
        return None
    return value
