"""The real terminal IPython app (not an embedded shell): a script run by ``ipython``, and a cell typed in a pty."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flux_nb.server import EmbeddedServer

pytestmark = pytest.mark.slow  # the real ipython app in a child process, and in a pty

pytest.importorskip("ipykernel")  # its IPKernelApp class is what the terminal app clashed with
pexpect = pytest.importorskip("pexpect")

ROOT = Path(__file__).resolve().parents[1]


def ipython_args(server: EmbeddedServer, history: Path) -> list[str]:
    """``ipython`` pointed at the test server and a temporary history, with no history file or colours."""
    return [
        "-m",
        "IPython",
        "--HistoryManager.enabled=False",
        "--colors=NoColor",
        f"--Flux.endpoint={server.url}",
        f"--Flux.history_dir={history}",
    ]


def child_env() -> dict[str, str]:
    """The child imports this checkout's flux_nb and holds no API key."""
    env = {k: v for k, v in os.environ.items() if k not in {"BFL_API_KEY", "FLUX_NB_API_KEY"}}
    env["PYTHONPATH"] = str(ROOT)
    env["PROMPT_TOOLKIT_NO_CPR"] = "1"
    env["TERM"] = "xterm"
    return env


def images(history: Path) -> list[Path]:
    return sorted((history / "images").rglob("*.jpeg"))


def test_a_script_run_by_terminal_ipython_generates_after_load_ext(server: EmbeddedServer, tmp_path: Path) -> None:
    script = tmp_path / "fox.ipy"
    script.write_text('%load_ext flux_nb\nresult = flux.generate("a red fox", seed=1)\nprint("seed", result.seed)\n')
    history = tmp_path / "history"
    done = subprocess.run(
        [sys.executable, *ipython_args(server, history), str(script)],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = done.stdout + done.stderr
    assert "MultipleInstanceError" not in output
    assert "seed 1" in done.stdout, output
    assert len(images(history)) == 1


def test_a_flux_cell_typed_in_terminal_ipython_waits_for_its_prompt(server: EmbeddedServer, tmp_path: Path) -> None:
    history = tmp_path / "history"
    child = pexpect.spawn(
        sys.executable,
        ipython_args(server, history),
        cwd=str(tmp_path),
        env=child_env(),
        encoding="utf-8",
        timeout=60,
        dimensions=(40, 200),
    )
    try:
        child.expect(r"In \[1\]")
        child.send("%load_ext flux_nb\r")
        child.expect(r"In \[2\]")
        child.send("%%flux -s 1\r")
        waits = child.expect([r"\.\.\.:", r"In \[3\]"])
        assert waits == 0, "Enter after the %%flux line ran the cell before its prompt was typed"
        child.send("a red fox\r")
        child.expect(r"\.\.\.:")
        child.send("\r")  # as for %%timeit: a blank line, then Enter on it, ends the cell
        child.expect(r"\.\.\.:")
        child.send("\r")
        child.expect(r"In \[3\]")
        shown = child.before
        child.send("exit\r")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert "seed 1" in shown
    assert len(images(history)) == 1
