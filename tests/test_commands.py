"""The %flux verbs for reading, reviewing and handing over an experiment, through a real IPython shell
against a local server; history, cost and grids read only the rows they show (filters pushed into SQL)."""

from __future__ import annotations

import html
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from PIL import Image

from flux_nb.core.results import SweepResult
from flux_nb.history.queries import Queries
from flux_nb.notebook import selection
from flux_nb.session import Flux


@pytest.fixture
def ipython(server: Any, history_dir: Path) -> Iterator[InteractiveShell]:
    """A terminal-like IPython shell (text output) with flux_nb loaded, on the test server and a fresh history."""
    InteractiveShell.clear_instance()
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "flux_nb")
    session = shell.user_ns["flux"]
    session.endpoint = server.url
    session.history_dir = str(history_dir)
    shell.display_formatter.active_types = ["text/plain"]
    yield shell
    session.close()
    InteractiveShell.clear_instance()


def run(shell: InteractiveShell, code: str) -> str:
    """Run a cell; its printed text (and any HTML, unescaped)."""
    with capture_output() as captured:
        shell.run_cell(code)
    parts = [o.data.get("text/html", "") for o in captured.outputs]
    return captured.stdout + html.unescape("\n".join(p for p in parts if p))


def session_of(shell: InteractiveShell) -> Flux:
    return shell.user_ns["flux"]


@pytest.fixture
def no_full_reads(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Fail any whole-history read (``to_frame``/``history()``); record every ``query`` filter."""
    queried: list[dict[str, Any]] = []
    original = Queries.query

    def query(self: Queries, **equals: Any) -> pd.DataFrame:
        queried.append(equals)
        return original(self, **equals)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the whole history was read")

    monkeypatch.setattr(Queries, "to_frame", refuse)
    monkeypatch.setattr(Flux, "history", refuse)
    monkeypatch.setattr(Queries, "query", query)
    return queried


def sweep(shell: InteractiveShell, options: str, prompts: str = "a cup\n---\na pot") -> list[str]:
    run(shell, f"%%flux {options} --size 64x64 -o out\n{prompts}")
    out = shell.user_ns["out"]
    return [r.record_id for r in (out if isinstance(out, SweepResult) else [out])]


def test_history_n_reads_only_the_newest_rows_and_filters_by_tag(
    ipython: InteractiveShell, no_full_reads: list[dict[str, Any]]
) -> None:
    first = sweep(ipython, "--seed 1,2 -t early")
    later = sweep(ipython, "--seed 3 -t late", prompts="a bowl")
    shown = run(ipython, "%flux history 2").splitlines()
    assert shown[0].split()[:3] == ["id", "time", "status"]
    assert [line.split()[0] for line in shown[1:]] == [later[0], first[3]]
    tagged = run(ipython, "%flux history 10 --tag early").splitlines()
    assert sorted(line.split()[0] for line in tagged[1:]) == sorted(first)


def test_cost_names_the_backend_keeps_totals_apart_and_filters_by_tag(
    ipython: InteractiveShell, no_full_reads: list[dict[str, Any]]
) -> None:
    sweep(ipython, "--seed 1,2 -t early")
    sweep(ipython, "--seed 3 -t late", prompts="a bowl")
    no_full_reads.clear()
    text = run(ipython, "%flux cost")
    assert "(not billed)" in text and "total not billed" in text and "total billed" not in text
    assert "True" not in text and "False" not in text
    total = next(line for line in text.splitlines() if line.startswith("total not billed"))
    assert total.split()[-2:] == ["5", "7.00"]  # all 5 requests, at 1.40 each
    assert text.splitlines()[-1].split()[-3:] == ["5", "7.00", "7.00"]  # estimated, then charged
    tagged = run(ipython, "%flux cost --tag late")
    assert tagged.splitlines()[-1].split()[-3:] == ["1", "1.40", "1.40"]
    assert no_full_reads == []  # summed in SQL, no frame of rows


def test_grid_where_pushes_equalities_into_sql_and_applies_the_rest_with_pandas(
    ipython: InteractiveShell, no_full_reads: list[dict[str, Any]], tmp_path: Path
) -> None:
    sweep(ipython, "--seed 1,2,3")
    target = tmp_path / "cup.png"
    out = run(ipython, f"%flux grid --where \"prompt == 'a cup' and seed > 1\" --save {target}")
    assert "grid saved to" in out
    assert no_full_reads[-1] == {"prompt": "a cup"}
    one_row = Image.open(target).size
    run(ipython, f'%flux grid --where "seed > 1" --save {tmp_path / "both.png"}')
    assert no_full_reads[-1] == {}
    assert Image.open(tmp_path / "both.png").size[1] > one_row[1]  # two prompt rows


def test_verb_option_mistakes_are_one_line_with_the_usage(ipython: InteractiveShell, server: Any) -> None:
    out = run(ipython, "%flux history --nope")
    assert "%flux history: unknown option --nope (usage: %flux history [N]" in out
    assert "Traceback" not in out
    assert "--nope (did you mean --tag?)" not in out
    assert "unknown option --whre; did you mean --where?" in run(ipython, "%flux grid --whre x")
    out = run(ipython, "%flux cost --experiment")
    assert "%flux cost: argument --experiment: expected one argument" in out
    assert "%flux rate ID [ID...] 0-5" in run(ipython, "%flux rate abc")
    assert "%flux tag takes record ids then +tag to add, -tag to remove" in run(ipython, "%flux tag abc")
    assert server.stats()["submits"] == 0


@pytest.mark.parametrize(
    ("where", "pushed"),
    [
        ("model == 'flux-2-pro' and seed > 3", {"model": "flux-2-pro"}),
        ("seed in [1, 2] & tag == 't'", {"seed": [1, 2], "tag": "t"}),
        ("1 == seed", {"seed": 1}),
        ("model == 'a' or seed == 1", {}),
        ("`seed` == 1", {}),
        ("seed == @chosen", {}),
        ("created_at == 5 and note == 'x' and tags == 'best'", {}),
        ("cached == True", {}),
        ("seed == [1, 2]", {}),
    ],
)
def test_only_plain_equalities_on_stored_columns_are_pushed_down(where: str, pushed: dict[str, Any]) -> None:
    assert selection.sql_part(where) == pushed


def test_review_verbs_change_the_review_columns(ipython: InteractiveShell) -> None:
    ids = sweep(ipython, "--seed 1,2")
    assert "rated 2 images 4 stars" in run(ipython, f"%flux rate {ids[0]} {ids[1]} 4")
    assert "note kept" in run(ipython, f"%flux note {ids[0]} too dark, try dusk")
    assert "tags +best -draft" in run(ipython, f"%flux tag {ids[0]} +best -draft")
    assert "marked favourite" in run(ipython, f"%flux favourite {ids[1]}")
    frame = session_of(ipython).history().set_index("record_id")
    assert list(frame.loc[ids[:2], "rating"]) == [4, 4]
    assert frame.loc[ids[0], "note"] == "too dark, try dusk"
    assert frame.loc[ids[0], "tags"] == "best"
    assert bool(frame.loc[ids[1], "favourite"]) and not bool(frame.loc[ids[0], "favourite"])
    run(ipython, f"%flux favourite {ids[1]} --off")
    assert "0 to 5" in run(ipython, f"%flux rate {ids[0]} 9")
    frame = session_of(ipython).history().set_index("record_id")
    assert not bool(frame.loc[ids[1], "favourite"]) and frame.loc[ids[0], "rating"] == 4


def test_experiment_verb_names_the_rows_and_filters_history_grid_and_cost(
    ipython: InteractiveShell, tmp_path: Path
) -> None:
    assert "no experiment" in run(ipython, "%flux experiment")
    assert "experiment 'study-3'" in run(ipython, "%flux experiment study-3")
    inside = sweep(ipython, "--seed 1,2")
    assert "no experiment" in run(ipython, "%flux experiment --off")
    sweep(ipython, "--seed 5", prompts="a bowl")
    frame = session_of(ipython).history()
    assert sorted(frame.loc[frame["experiment"] == "study-3", "record_id"]) == sorted(inside)
    listed = run(ipython, "%flux history 10 --experiment study-3").splitlines()[1:]
    assert sorted(line.split()[0] for line in listed) == sorted(inside)
    assert run(ipython, "%flux cost --experiment study-3").splitlines()[-1].split()[-2:][-1] == "5.60"
    out = run(ipython, f"%flux grid --experiment study-3 --save {tmp_path / 'g.png'}")
    assert "grid saved to" in out and (tmp_path / "g.png").is_file()


def test_export_and_report_write_the_selected_rows(ipython: InteractiveShell, tmp_path: Path) -> None:
    sweep(ipython, "--seed 1,2 -t keep")
    sweep(ipython, "--seed 3 -t other", prompts="a bowl")
    out = run(ipython, f"%flux export {tmp_path / 'study.zip'} --tag keep")
    assert "exported 4 row(s)" in out and zipfile.is_zipfile(tmp_path / "study.zip")
    out = run(ipython, f"%flux report {tmp_path / 'study.html'} --tag keep --title 'Cups and pots'")
    assert "report of 4 row(s)" in out
    assert "Cups and pots" in (tmp_path / "study.html").read_text()


def test_replay_from_an_image_file_sends_its_request_again(ipython: InteractiveShell, server: Any) -> None:
    run(ipython, "%%flux --seed 8 --size 64x64 -o pic\na kite")
    path = ipython.user_ns["pic"].path
    before = server.stats()["submits"]
    out = run(ipython, f"%flux replay {path}")
    assert f"replay of {path}" in out and "seed 8" in out
    assert server.stats()["submits"] == before + 1
