"""``flux-nb`` and terminal IPython as a newcomer reads them: which value each image of a sweep is, short
relative paths, plain words when there is nothing to export, whether a replay matched, defaults in
``serve --help``, credits as the notebook writes them, and progress lines that never linger or glue
themselves to the next message. The CLI runs in process (``flux_nb.cli.main``) against a local server."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from flux_nb.cli import main
from flux_nb.core.events import Progress
from flux_nb.errors import BatchInterrupted
from flux_nb.history.store import HistoryStore
from flux_nb.session import Flux


class Terminal(io.StringIO):
    """A stream that says it is a terminal, keeping what was written to it."""

    def isatty(self) -> bool:
        return True


def screen(written: str) -> list[str]:
    """What a terminal shows for ``written``: each line as its carriage returns leave it (blank ones dropped)."""
    lines = []
    for raw in written.split("\n"):
        shown = ""
        for part in raw.split("\r"):
            shown = part + shown[len(part) :]
        if shown.strip():
            lines.append(shown.rstrip())
    return lines


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def flux_nb(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], str]:
    """Run ``flux-nb ARGV`` in process: its exit code, stdout lines and stderr."""
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out.splitlines(), out.err


def records(folder: Path) -> Any:
    return HistoryStore(folder / ".flux").query().set_index("record_id")


def record_of(line: str) -> str:
    return line.split(" · id ", 1)[1].split()[0].rstrip(")")


def test_vary_and_sweep_lines_say_which_value_each_image_is(server: Any, here: Path, capsys: Any) -> None:
    code, lines, _ = flux_nb(
        capsys, "generate", "a dog on a beach", "--vary", "animal=dog,cat", "--seed", "4,5", "--size", "64x64",
        "--endpoint", server.url,
    )  # fmt: skip
    assert code == 0
    rows = records(here)
    listed = lines[:4]
    for line in listed:
        row = rows.loc[record_of(line)]
        animal = "dog" if row["prompt"].startswith("a dog") else "cat"
        assert line.endswith(f"[animal: {animal} · seed: {row['seed']}]"), line


def test_sweep_listings_use_relative_paths_like_a_single_result(server: Any, here: Path, capsys: Any) -> None:
    code, lines, _ = flux_nb(
        capsys, "generate", "a cup", "--seed", "1,2", "--size", "64x64", "--endpoint", server.url
    )  # fmt: skip
    assert code == 0 and len(lines) == 3
    assert all(line.startswith(".flux/images/") for line in lines[:2])
    assert lines[2].startswith("grid saved to .flux/grids/")
    _, single, _ = flux_nb(capsys, "generate", "a pot", "--seed", "1", "--size", "64x64", "--endpoint", server.url)
    assert single[0].startswith(".flux/images/")
    assert str(here) not in "\n".join(lines + single)


def test_history_lines_are_short_with_relative_paths(server: Any, here: Path, capsys: Any) -> None:
    prompt = "a lighthouse on a cliff above a stormy sea at dusk, oil painting, dramatic light"
    flux_nb(capsys, "generate", prompt, "--seed", "1:3", "--size", "64x64", "-t", "coast", "--endpoint", server.url)
    code, lines, _ = flux_nb(capsys, "history")
    assert code == 0 and len(lines) == 4
    assert str(here) not in "\n".join(lines) and all(".flux/images/" in line for line in lines[1:])
    assert max(len(line) for line in lines) <= 200, max(len(line) for line in lines)


def test_export_of_nothing_says_so_in_plain_words(server: Any, here: Path, capsys: Any) -> None:
    code, _, err = flux_nb(capsys, "export", "study.zip")
    assert code == 2 and "nothing to export" in err and "select" not in err
    flux_nb(capsys, "generate", "a cup", "--seed", "1", "--size", "64x64", "--endpoint", server.url)
    code, _, err = flux_nb(capsys, "export", "study.zip", "--tag", "nope")
    assert code == 2
    assert err.strip() == "flux-nb: nothing to export: the history in .flux has no rows with tag 'nope'"
    assert not (here / "study.zip").exists()


def test_replay_says_whether_the_image_matched(server: Any, here: Path, capsys: Any) -> None:
    _, made, _ = flux_nb(capsys, "generate", "a kite", "--seed", "3", "--size", "64x64", "--endpoint", server.url)
    code, lines, _ = flux_nb(capsys, "replay", record_of(made[0]), "--endpoint", server.url)
    assert code == 0 and lines[-1] == "byte-identical images"
    assert lines[0].startswith(f"record {record_of(made[0])}: seed 3 · 64×64")


def test_serve_help_shows_the_defaults(capsys: Any) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert stopped.value.code == 0
    assert "(default: 8800)" in text and "--latency LATENCY simulated generation seconds (default: 0.0)" in text
    assert "(default: None)" not in text and "(default: False)" not in text


def test_report_writes_credits_as_the_notebook_does(server: Any, here: Path, capsys: Any) -> None:
    flux_nb(capsys, "generate", "a cup", "--seed", "1:3", "--size", "64x64", "--endpoint", server.url)
    code, lines, _ = flux_nb(capsys, "report", "study.html")
    assert code == 0 and lines == ["report of 3 row(s) written to study.html"]
    page = (here / "study.html").read_text()
    assert "credits not billed (local)</span><br><b>4.20 over 3 images" in page


def test_the_progress_line_does_not_stay_on_screen(
    server: Any, here: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    code = main(["generate", "a cup", "--seed", "1:4", "--size", "64x64", "--endpoint", server.url])
    assert code == 0 and terminal.getvalue()  # it was drawn...
    assert screen(terminal.getvalue()) == []  # ...and nothing of it is left


def interrupting_run(self: Flux, batch: Any, observer: Any = None, **options: Any) -> Any:
    """A run interrupted (Ctrl-C) while its progress line is drawn."""
    observer.started(batch)
    observer.progress(Progress(0, "Pending"))
    observer.tick()
    raise BatchInterrupted("interrupted: 0 of 4 finished", unsent=4)


def test_ctrl_c_in_the_cli_starts_its_message_on_its_own_line(
    here: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Flux, "run", lambda *args, **kwargs: (_ for _ in ()).throw(KeyboardInterrupt()))
    code, _, err = flux_nb(capsys, "generate", "a cup", "--size", "64x64", "--endpoint", "http://127.0.0.1:9")
    assert code == 130 and err == "\nflux-nb: interrupted\n"


def test_ctrl_c_in_terminal_ipython_clears_the_progress_line_first(
    ipython: InteractiveShell, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(Flux, "run", interrupting_run)
    ipython.display_formatter.active_types = ["text/plain"]
    with capture_output(stderr=False) as captured:
        outcome = ipython.run_cell("%%flux --seed 1:4 --size 64x64\na cup")
    assert not outcome.success and "interrupted: 0 of 4 finished" in captured.stdout
    assert terminal.getvalue() and screen(terminal.getvalue()) == []


def test_a_terminal_sweep_lists_relative_paths_and_leaves_no_progress_line(
    ipython: InteractiveShell, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    ipython.run_cell(f"import os; os.chdir({str(tmp_path)!r})")
    ipython.user_ns["flux"].history_dir = str(tmp_path / ".flux")
    ipython.display_formatter.active_types = ["text/plain"]
    with capture_output(stderr=False) as captured:
        ipython.run_cell("%%flux --seed 1,2 --size 64x64\na cup")
    assert terminal.getvalue() and screen(terminal.getvalue()) == []
    listed = [line for line in captured.stdout.splitlines() if "saved" in line]
    assert len(listed) == 3 and str(tmp_path) not in captured.stdout
    assert all("saved .flux/images/" in line for line in listed[:2])


def test_verbs_take_the_magics_words_in_the_shell_too(server: Any, here: Path, capsys: Any) -> None:
    _, made, _ = flux_nb(capsys, "generate", "a cup", "--seed", "1", "--size", "64x64", "--endpoint", server.url)
    record = record_of(made[0])
    assert flux_nb(capsys, "tag", record, "+best", "+draft")[:2] == (0, ["tags +best +draft on 1 image"])
    assert flux_nb(capsys, "tag", record, "-draft")[:2] == (0, ["tags -draft on 1 image"])
    assert records(here).loc[record, "tags"] == "best"
    with pytest.raises(SystemExit) as refused:
        main(["tag", record, "--add", "x", "--bogus"])
    assert refused.value.code == 2 and "unknown option --bogus" in capsys.readouterr().err
    assert records(here).loc[record, "tags"] == "best"


def test_a_mistyped_command_gets_the_nearest(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["histroy"])
    assert exited.value.code == 2
    assert "unknown command 'histroy' (did you mean history?)" in capsys.readouterr().err
