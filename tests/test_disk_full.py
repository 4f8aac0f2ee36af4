"""A full disk mid-sweep: per-request results, task ids and images kept in memory, nothing lost or sent twice."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flux_nb import Flux
from flux_nb.history import database, store
from flux_nb.history.store import HistoryError, HistoryStore


class Disk:
    """A history disk that fills up on cue: SQLite's and the file system's own errors, through the history layer."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full = False
        self.fill_after: str | None = None  # fill up right after the first write doing this succeeds
        self.refused: list[str] = []
        real_write, real_file = database.Database.write, store.write_file

        def write(db: database.Database, work: Callable[[sqlite3.Connection], Any], doing: str) -> Any:
            def guarded(connection: sqlite3.Connection) -> Any:
                if self.full:
                    self.refused.append(doing)
                    raise sqlite3.OperationalError("database or disk is full")
                return work(connection)

            result = real_write(db, guarded, doing)
            if self.fill_after and self.fill_after in doing:
                self.full = True
            return result

        def write_file(target: Path, data: bytes) -> None:
            if self.full:
                self.refused.append(f"file {target.name}")
                raise OSError(28, "No space left on device", str(target))
            real_file(target, data)

        monkeypatch.setattr(database.Database, "write", write)
        monkeypatch.setattr(store, "write_file", write_file)


def test_a_disk_filling_mid_sweep_loses_nothing_and_resume_finishes_it(
    server_factory: Any, history_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = server_factory(latency=0.3)
    disk = Disk(monkeypatch)
    flux = Flux(endpoint=server.url, history_dir=history_dir, max_concurrency=2)
    try:
        batch = flux.batch("disk", seed=list(range(6)), width=64, height=64)
        assert flux.store.count() == 0  # the history exists before the disk fills
        disk.fill_after = "complete a record"  # the first image stored fills the disk
        results = flux.run(batch)  # no exception for the whole sweep: one result per request
        assert disk.full and disk.refused
        assert len(results) == 6
        ready = [r for r in results if r.status == "ready"]
        assert len(ready) == 1 and ready[0].image.size == (64, 64)  # stored before the disk filled: returned
        for result in results:
            if result.status != "ready":
                assert isinstance(result.error, HistoryError) and result.error.retryable
                assert result.status in ("submitted", "pending") and "resume" in result.error.one_line()
        sent = server.stats()["submits"]
        # While the disk is full, resume says so rather than losing what it holds.
        with pytest.raises(HistoryError, match="full"):
            flux.resume()
        disk.full, disk.fill_after = False, None  # space is back
        finished = flux.resume(unsent=True)
        assert {r.status for r in finished} == {"ready"}
        frame = HistoryStore(history_dir).to_frame()
        assert sorted(frame["status"]) == ["ready"] * 6
        assert all(Path(p).exists() for p in frame["image_path"])
        stats = server.stats()
        # Every request reached the server once: held task ids were finished, never-sent ones sent now.
        assert stats["submits"] == 6 and stats["most_tasks_for_one_request"] == 1 and sent <= 6
    finally:
        flux.close()


def test_a_record_that_cannot_be_written_is_not_sent(
    server: Any, history_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = Disk(monkeypatch)
    flux = Flux(endpoint=server.url, history_dir=history_dir)
    try:
        assert flux.store.count() == 0
        disk.full = True
        results = flux.sweep("nowhere", seed=[1, 2], width=64, height=64)
        assert [r.status for r in results] == ["failed", "failed"]
        assert all(isinstance(r.error, HistoryError) and "nothing was sent" in r.error.one_line() for r in results)
        assert server.stats()["submits"] == 0
    finally:
        flux.close()


def _small_tmpfs(where: Path) -> bool:
    """Mount a 2 MB tmpfs at ``where`` when this machine lets us (root, or a user namespace); True on success."""
    where.mkdir()
    if shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)], capture_output=True)
    return done.returncode == 0


@pytest.mark.slow
def test_a_real_small_tmpfs_fills_up_mid_sweep(server_factory: Any, tmp_path: Path) -> None:
    mount = tmp_path / "small"
    if not _small_tmpfs(mount):
        pytest.skip("mounting a small tmpfs needs root (or CAP_SYS_ADMIN), which this machine does not give")
    try:
        server = server_factory(latency=0.1)
        flux = Flux(endpoint=server.url, history_dir=mount / "history")
        try:
            results = flux.sweep("big", seed=list(range(40)), width=1024, height=1024, output_format="png")
            assert len(results) == 40 and any(r.status != "ready" for r in results)
            assert all(r.status == "ready" or isinstance(r.error, HistoryError) for r in results)
        finally:
            flux.close()
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)  # lazy: open handles never block it
        os.sync()
