"""``flux_history`` in the notebook: a real DataFrame, read on first use, refreshed by reading only what changed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from flux_nb import Flux
from flux_nb.history.store import HistoryStore
from flux_nb.notebook.live_history import HistoryVariable


class Reads:
    """Counts whole-history reads and the rows each incremental read returned."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full = 0
        self.since: list[int] = []
        query, frame_since = HistoryStore.query, HistoryStore.frame_since

        def counting_query(store: HistoryStore, **equals: Any) -> pd.DataFrame:
            self.full += 1
            return query(store, **equals)

        def counting_since(store: HistoryStore, token: int, **equals: Any) -> tuple[pd.DataFrame, int]:
            frame, new = frame_since(store, token, **equals)
            self.since.append(len(frame))
            return frame, new

        monkeypatch.setattr(HistoryStore, "query", counting_query)
        monkeypatch.setattr(HistoryStore, "frame_since", counting_since)


@pytest.fixture
def filled(server: Any, history_dir: Path) -> Path:
    """A history of 30 ready records."""
    with_rows = Flux(endpoint=server.url, history_dir=history_dir)
    try:
        assert all(r.ok for r in with_rows.sweep("an old picture", seed=list(range(30)), width=64, height=64))
    finally:
        with_rows.close()
    return history_dir


@pytest.fixture
def shell(server: Any, filled: Path) -> Iterator[InteractiveShell]:
    InteractiveShell.clear_instance()
    ipython = InteractiveShell.instance()
    ipython.config.Flux.history_dir = str(filled)
    ipython.config.Flux.endpoint = server.url
    yield ipython
    ipython.user_ns["flux"].close()
    InteractiveShell.clear_instance()


def run(shell: InteractiveShell, code: str) -> Any:
    with capture_output():
        return shell.run_cell(code)


def test_a_large_history_is_not_read_at_load_but_on_first_use(
    shell: InteractiveShell, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(HistoryVariable, "EAGER_ROWS", 10)
    reads = Reads(monkeypatch)
    shell.run_line_magic("load_ext", "flux_nb")
    assert reads.full == 0 and "flux_history" not in shell.user_ns
    run(shell, "x = 1")
    assert reads.full == 0
    outcome = run(shell, "rows, kind = len(flux_history), type(flux_history).__name__")
    assert outcome.success and shell.user_ns["rows"] == 30 and shell.user_ns["kind"] == "DataFrame"
    assert isinstance(shell.user_ns["flux_history"], pd.DataFrame) and reads.full == 1
    run(shell, "flux_history.shape")
    assert reads.full == 1


def test_a_small_history_is_there_at_load(shell: InteractiveShell, monkeypatch: pytest.MonkeyPatch) -> None:
    reads = Reads(monkeypatch)
    shell.run_line_magic("load_ext", "flux_nb")
    frame = shell.user_ns["flux_history"]
    assert isinstance(frame, pd.DataFrame) and len(frame) == 30 and reads.full == 1
    assert frame.attrs["history_dir"] == shell.user_ns["flux"].history_dir
    assert hasattr(frame, "flux")  # frame.flux.grid(...) is registered


def test_after_a_request_only_the_changed_rows_are_read(
    shell: InteractiveShell, server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    shell.run_line_magic("load_ext", "flux_nb")
    reads = Reads(monkeypatch)
    run(shell, "%%flux --seed 99 --size 64x64\na new picture")
    frame = shell.user_ns["flux_history"]
    assert len(frame) == 31 and frame.iloc[-1]["prompt"] == "a new picture" and frame.iloc[-1]["status"] == "ready"
    assert reads.full == 0 and sum(reads.since) == 1  # one row read, not 31
    run(shell, "r = flux.generate('from python', seed=5, width=64, height=64)")
    assert len(shell.user_ns["flux_history"]) == 32 and reads.full == 0 and sum(reads.since) == 2
    assert server.stats()["submits"] == 32


def test_changes_a_user_makes_to_the_frame_do_not_break_the_refresh(
    shell: InteractiveShell, monkeypatch: pytest.MonkeyPatch
) -> None:
    shell.run_line_magic("load_ext", "flux_nb")
    run(shell, "flux_history['mine'] = 1\nflux_history.loc[0, 'prompt'] = 'edited'")
    reads = Reads(monkeypatch)
    run(shell, "%%flux --seed 98 --size 64x64\nanother")
    frame = shell.user_ns["flux_history"]
    assert len(frame) == 31 and "mine" not in frame.columns and reads.full == 0
    assert frame.loc[0, "prompt"] == "an old picture"


def test_a_new_history_folder_is_read_afresh(shell: InteractiveShell, tmp_path: Path) -> None:
    shell.run_line_magic("load_ext", "flux_nb")
    shell.user_ns["flux"].history_dir = str(tmp_path / "elsewhere")
    run(shell, "%%flux --seed 97 --size 64x64\nin a new folder")
    assert list(shell.user_ns["flux_history"]["prompt"]) == ["in a new folder"]


def test_a_history_that_cannot_be_read_does_not_stop_the_extension(tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "history.sqlite").write_text("not a database, just text" * 10)
    InteractiveShell.clear_instance()
    ipython = InteractiveShell.instance()
    ipython.config.Flux.history_dir = str(folder)
    try:
        with capture_output() as captured:
            ipython.run_line_magic("load_ext", "flux_nb")
        assert "flux" in ipython.magics_manager.magics["cell"] and "flux_history" not in ipython.user_ns
        shown = "".join(o.data.get("text/html", "") for o in captured.outputs) + captured.stdout
        assert "history.sqlite" in shown and "Traceback" not in shown + captured.stderr
    finally:
        ipython.user_ns["flux"].close()
        InteractiveShell.clear_instance()


def test_a_new_folder_is_not_made_at_load(tmp_path: Path, server: Any) -> None:
    folder = tmp_path / "fresh"
    InteractiveShell.clear_instance()
    ipython = InteractiveShell.instance()
    ipython.config.Flux.history_dir = str(folder)
    ipython.config.Flux.endpoint = server.url
    try:
        ipython.run_line_magic("load_ext", "flux_nb")
        assert not folder.exists() and "flux_history" not in ipython.user_ns
        run(ipython, "%%flux --seed 1 --size 64x64\nthe first picture")
        assert list(ipython.user_ns["flux_history"]["prompt"]) == ["the first picture"]
    finally:
        ipython.user_ns["flux"].close()
        InteractiveShell.clear_instance()
