"""The magics as a newcomer meets them: a failing cell fails (as one line), the verbs are listed alike
everywhere and typos get a suggestion, the extension unloads and reloads cleanly, and a ``flux`` made in a
cell is the one the magics use."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import nbformat
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from flux_nb.session import Flux

ROOT = Path(__file__).resolve().parents[1]


def run(shell: InteractiveShell, code: str) -> tuple[Any, str]:
    """Run a cell in a terminal-like shell (text only); its outcome and everything it printed."""
    shell.display_formatter.active_types = ["text/plain"]
    with capture_output() as captured:
        outcome = shell.run_cell(code)
    return outcome, captured.stdout + captured.stderr


def sessions(shell: InteractiveShell) -> list[Flux]:
    return [c for c in shell.configurables if isinstance(c, Flux)]


def test_a_failing_cell_fails_and_shows_one_line(ipython: InteractiveShell, server: Any) -> None:
    outcome, out = run(ipython, "%%flux --width 40 --height 64\na harbour")
    assert not outcome.success and isinstance(outcome.error_in_exec, UsageError)
    assert out.strip() == "flux_nb: width 40 is below the minimum of 64 pixels"
    outcome, out = run(ipython, "%%flux --sead 4\na harbour")
    assert isinstance(outcome.error_in_exec, UsageError)
    assert out.strip() == "flux_nb: %%flux: unknown option --sead; did you mean --seed?"
    outcome, out = run(ipython, "%flux grid --y model")
    assert not outcome.success and out.strip().startswith("flux_nb: %flux grid --y model needs --x too")
    assert server.stats()["submits"] == 0


def test_a_failure_shows_one_line_even_without_the_extensions_error_handler(ipython: InteractiveShell) -> None:
    ipython.set_custom_exc((), None)  # as when another extension takes IPython's one custom handler
    outcome, out = run(ipython, "%%flux --width 40 --height 64\na harbour")
    assert not outcome.success
    assert out.strip() == "flux_nb: width 40 is below the minimum of 64 pixels"
    assert "Traceback" not in out


def test_a_cell_whose_request_fails_fails_as_flux_generate_does(server_factory: Any, history_dir: Path) -> None:
    from flux_nb.server.fault_injection import Fault, FaultPlan

    server = server_factory(faults=FaultPlan(content_moderated=Fault(on=frozenset({1}))))
    InteractiveShell.clear_instance()
    shell = InteractiveShell.instance()
    shell.config.Flux.history_dir = str(history_dir)
    shell.run_line_magic("load_ext", "flux_nb")
    shell.user_ns["flux"].endpoint = server.url
    try:
        outcome, out = run(shell, "%%flux --seed 1 --size 64x64 -o pic\na harbour")
        assert not outcome.success and type(outcome.error_in_exec).__name__ == "FluxMagicError"
        assert "Traceback" not in out and out.strip().splitlines()[-1].startswith("flux_nb: ")
        assert "moderat" in out.strip().splitlines()[-1].lower()
        assert shell.user_ns["pic"].status == "moderated"  # kept, as the record is
        outcome, _ = run(shell, "%%flux --seed 2 --size 64x64\na harbour")
        assert outcome.success and server.stats()["submits"] == 2
    finally:
        shell.user_ns["flux"].close()
        InteractiveShell.clear_instance()


@pytest.mark.slow
def test_run_all_stops_at_a_failing_flux_cell(server: Any, tmp_path: Path) -> None:
    cells = [
        f"%load_ext flux_nb\nflux.endpoint = {server.url!r}",
        "%%flux --width 40 --height 64\na harbour",
        "after = 1",
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    env = {k: v for k, v in os.environ.items() if k not in ("BFL_API_KEY", "FLUX_NB_ENDPOINT")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    client = NotebookClient(notebook, timeout=60, kernel_name="python3", allow_errors=False)
    with pytest.raises(CellExecutionError) as caught:
        client.execute(cwd=str(tmp_path), env=env)
    assert caught.value.ename == "FluxUsageError"
    assert caught.value.evalue == "width 40 is below the minimum of 64 pixels"
    assert notebook.cells[1].execution_count is not None and notebook.cells[2].execution_count is None
    assert server.stats()["submits"] == 0


def listed(text: str) -> list[str]:
    """The verbs named in ``%flux VERB`` forms or after "use"/"command:" in a message."""
    found = re.search(r"(?:use|command:) ([a-z, ]+?)(?:;| \()", text)
    return [w.strip() for w in found[1].split(",")] if found else []


def test_no_command_the_help_and_an_unknown_verb_list_the_same_verbs(ipython: InteractiveShell) -> None:
    _, unknown = run(ipython, "%flux frobnicate")
    _, bare = run(ipython, "%flux")
    _, helped = run(ipython, "%flux?")
    verbs = listed(unknown)
    assert len(verbs) >= 14 and listed(bare) == verbs
    assert {"history", "experiment", "rate", "export", "report", "panel", "login"} <= set(verbs)
    assert all(f"%flux {verb}" in helped for verb in verbs)


def test_a_mistyped_verb_gets_the_nearest(ipython: InteractiveShell) -> None:
    _, out = run(ipython, "%flux histroy")
    assert "unknown %flux command 'histroy' (did you mean history?)" in out


def test_cost_explains_here_and_all(ipython: InteractiveShell) -> None:
    ipython.user_ns["flux"].notebook_detector = lambda: "study.ipynb"
    run(ipython, "%%flux --seed 1 --size 64x64\na cup")
    _, out = run(ipython, "%flux cost")
    assert "here: requests" in out
    assert "here: the requests of this notebook; all: every request in the history folder" in out


def test_unload_takes_the_magics_and_session_away(ipython: InteractiveShell) -> None:
    outcome, out = run(ipython, "%unload_ext flux_nb")
    assert outcome.success and "unload" not in out
    assert "flux" not in ipython.magics_manager.magics["cell"] and "flux" not in ipython.user_ns
    assert sessions(ipython) == [] and "flux_history" not in ipython.user_ns
    outcome, _ = run(ipython, "%%flux\na cup")
    assert not outcome.success  # no magic any more


def test_reload_leaves_exactly_one_session(ipython: InteractiveShell, server: Any) -> None:
    first = ipython.user_ns["flux"]
    run(ipython, "%reload_ext flux_nb")
    assert sessions(ipython) == [ipython.user_ns["flux"]] and ipython.user_ns["flux"] is not first
    ipython.user_ns["flux"].endpoint = server.url
    outcome, _ = run(ipython, "%%flux --seed 2 --size 64x64 -o pic\na cup")
    assert outcome.success and ipython.user_ns["pic"].ok


def test_the_magic_uses_a_flux_made_in_a_cell(ipython: InteractiveShell, server_factory: Any, tmp_path: Path) -> None:
    other = server_factory()
    folder = tmp_path / "mine"
    outcome, _ = run(
        ipython, f"from flux_nb import Flux\nflux = Flux(endpoint={other.url!r}, history_dir={str(folder)!r})"
    )
    assert outcome.success
    outcome, _ = run(ipython, "%%flux --seed 3 --size 64x64 -o pic\na kite")
    assert outcome.success and other.stats()["submits"] == 1
    assert Path(ipython.user_ns["pic"].path).is_relative_to(folder)
    _, out = run(ipython, "%flux history 1")
    assert ipython.user_ns["pic"].record_id in out
    ipython.user_ns["flux"].close()
