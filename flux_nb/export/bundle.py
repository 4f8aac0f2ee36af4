"""Experiment bundles: selected history rows, their images and references, in one self-contained zip.

    manifest.json           format, versions (flux_nb, python, pandas, pyarrow, pillow), per-file sha256
    records.parquet         the rows as given (extra columns such as ratings included), typed
    records.csv             the same rows for any spreadsheet (``image_path`` relative, lists as JSON)
    history.sqlite          the rows exactly as the history stores them (its ``records`` table), and the
                            reviews (stars, notes, tags, favourites) of the images they show
    images/<sha[:2]>/<sha>.<ext>, inputs/<sha>.<ext>   as in a history folder

``open_bundle`` unpacks it into a new folder that is a history folder: ``HistoryStore(folder)`` (and
``Flux(history_dir=folder)``) read the rows, and image paths resolve there.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import sqlite3
import stat
import tempfile
import zipfile
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as installed_version
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from flux_nb.errors import ValidationError
from flux_nb.history.store import DATABASE, HistoryStore
from flux_nb.metadata.provenance import version as flux_nb_version

BUNDLE_FORMAT = "flux_nb-bundle/1"
MANIFEST = "manifest.json"
STORED = {".png", ".jpeg", ".jpg", ".webp", ".parquet"}  # already compressed: deflating gains nothing


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
    shown = "SELECT COALESCE(cached_from, record_id) FROM records"
    for table in ("reviews", "review_tags"):
        if table not in tables:
            continue
        (schema,) = db.execute(
            "SELECT sql FROM src.sqlite_master WHERE type = 'table' AND name = ?", (table,)
        ).fetchone()
        db.execute(schema)
        db.execute(f"INSERT INTO {table} SELECT * FROM src.{table} WHERE record_id IN ({shown})")


def _relative_image(path: Any, root: Path) -> str | None:
    """An image path of the frame as a path inside the history folder, or None."""
    if path is None or path is pd.NA or (isinstance(path, float) and path != path):
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
    found = {path for path, _ in rows if path and (root / path).is_file()}
    for sha in {sha for _, hashes in rows for sha in json.loads(hashes or "[]")}:
        found.update(c.relative_to(root).as_posix() for c in (root / "inputs").glob(f"{sha}.*") if c.is_file())
    return sorted(found)


def _tables(frame: pd.DataFrame, root: Path) -> tuple[bytes, bytes]:
    """The rows as Parquet and as CSV, with image paths made relative to the bundle."""
    rows = frame.copy()
    if "image_path" in rows.columns:
        rows["image_path"] = pd.array([_relative_image(p, root) for p in rows["image_path"]], dtype="string")
    parquet = io.BytesIO()
    try:
        rows.to_parquet(parquet, engine="pyarrow", index=False)
    except ImportError:
        raise ValidationError("pyarrow is not installed; pip install pyarrow to export bundles") from None
    except (TypeError, ValueError) as exc:  # pyarrow's ArrowInvalid and ArrowTypeError derive from these
        raise ValidationError(f"a column of the frame cannot be stored as Parquet ({exc}); drop it first") from None
    if "input_hashes" in rows.columns:
        rows["input_hashes"] = [json.dumps(list(v)) if v is not None else "[]" for v in rows["input_hashes"]]
    return parquet.getvalue(), rows.to_csv(index=False).encode()


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
        parquet, csv = _tables(frame, root)
        members: dict[str, bytes | Path] = {"records.parquet": parquet, "records.csv": csv}
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
        infos = {str(_safe_name(info)): info for info in archive.infolist() if not info.is_dir()}
        manifest = _manifest(archive, infos, path_zip)
        into.mkdir(parents=True, exist_ok=True)
        for name, expected in manifest["files"].items():
            data = archive.read(infos[name])
            if hashlib.sha256(data).hexdigest() != expected["sha256"]:
                raise ValidationError(f"bundle file {name!r} does not match its sha256 in the manifest; it is damaged")
            out = into.joinpath(*PurePosixPath(name).parts)
            if not out.resolve().is_relative_to(into):
                raise ValidationError(f"the bundle holds an unsafe path {name!r}; refusing to unpack it")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)
        (into / MANIFEST).write_bytes(archive.read(infos[MANIFEST]))
    HistoryStore(into)  # brings the table up to this flux_nb's schema and indexes it
    return into


def _manifest(archive: zipfile.ZipFile, infos: dict[str, zipfile.ZipInfo], path_zip: Any) -> dict[str, Any]:
    if MANIFEST not in infos:
        raise ValidationError(f"{str(path_zip)!r} is not a flux_nb bundle (no {MANIFEST})")
    manifest = json.loads(archive.read(infos[MANIFEST]))
    if not str(manifest.get("format", "")).startswith("flux_nb-bundle/"):
        raise ValidationError(f"{str(path_zip)!r} is not a flux_nb bundle (format {manifest.get('format')!r})")
    listed = set(manifest["files"])
    unlisted = sorted(set(infos) - listed - {MANIFEST})
    absent = sorted(listed - set(infos))
    if unlisted or absent:
        name = (unlisted or absent)[0]
        raise ValidationError(
            f"bundle file {name!r} is {'not in the manifest' if unlisted else 'missing'}; refusing it"
        )
    for name in listed:
        _safe_name(infos[name])
    return manifest
