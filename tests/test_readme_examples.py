"""The README's examples, run as written against a local server on 127.0.0.1: the README cannot drift.

Python blocks run as notebook cells (top-level ``await`` included), the magic's in a real IPython shell, and the
``flux-nb`` commands in process through ``cli.main(argv)``. What cannot run here (installs, a GUI, a fixed port,
a GPU) is checked against the repository instead: the extra exists, the file is there, the options parse.
"""

from __future__ import annotations

import ast
import asyncio
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from PIL import Image

from flux_nb import Flux, Result, SweepResult
from flux_nb.cli import build_parser
from flux_nb.server.engines.diffusers import DEFAULT_MODEL
from tests.test_cli import flux_nb

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def section(heading: str) -> str:
    """The text between ``heading`` and the next heading of its level."""
    markdown = README.read_text(encoding="utf-8")
    start = markdown.index(f"\n{heading}\n")
    level = heading.split(" ")[0]
    end = markdown.find(f"\n{level} ", start + len(heading) + 2)
    return markdown[start : end if end >= 0 else len(markdown)]


def code_blocks(text: str, language: str) -> list[str]:
    """The fenced blocks of ``language`` ("" for plain fences) in ``text``, in order."""
    return [code for lang, code in re.findall(r"```(\w*)\n(.*?)```", text, flags=re.DOTALL) if lang == language]


def notebook_cells(text: str) -> list[str]:
    """The ```python and plain blocks of ``text`` (a cell each), in order."""
    return re.findall(r"```(?:python)?\n(.*?)```", text, flags=re.DOTALL)


def python_blocks(markdown: str, heading: str) -> list[str]:
    """The ```python blocks between ``heading`` and the next heading of its level."""
    start = markdown.index(f"\n{heading}\n")
    end = markdown.find("\n## ", start + len(heading) + 2)
    return code_blocks(markdown[start : end if end >= 0 else len(markdown)], "python")


def execute(source: str, namespace: dict[str, Any]) -> None:
    """Run a block as a notebook cell would: top-level ``await`` included."""
    code = compile(source, "README.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    outcome = eval(code, namespace)  # the README's own text, nothing else
    if asyncio.iscoroutine(outcome):
        asyncio.run(outcome)


@pytest.fixture
def readme_dir(server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh folder, with every session of the README pointed at the test server and no key anywhere."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FLUX_NB_ENDPOINT", server.url)
    for name in ("BFL_API_KEY", "FLUX_NB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    yield tmp_path


def test_the_section_has_python_examples() -> None:
    blocks = python_blocks(README.read_text(encoding="utf-8"), "## From Python")
    assert blocks and any("flux.generate(" in block for block in blocks)
    assert any("images=[result]" in block for block in blocks)


def test_the_python_examples_run_as_written(server: Any, readme_dir: Path) -> None:
    namespace: dict[str, Any] = {"__name__": "readme"}
    try:
        for block in python_blocks(README.read_text(encoding="utf-8"), "## From Python"):
            execute(block, namespace)
        flux = namespace["flux"]
        assert isinstance(flux, Flux) and flux.backend.base_url.rstrip("/") == server.url.rstrip("/")
        edit, sweep, frame = namespace["edit"], namespace["sweep"], namespace["frame"]
        assert isinstance(edit, Result) and edit.ok and edit.prompt == "make it night"
        assert isinstance(sweep, SweepResult) and len(sweep) == 6 and all(r.ok for r in sweep)
        assert isinstance(namespace["result"], Result) and namespace["result"].ok  # the awaited owl
        assert Image.open(readme_dir / "foxes.png").size[0] > 0
        assert isinstance(frame, pd.DataFrame) and len(frame) == 8
        rows = frame.set_index("record_id")
        assert len(rows.loc[edit.record_id, "input_hashes"]) == 1  # the earlier Result went as a reference
        assert (readme_dir / ".flux").is_dir()
        assert server.stats()["submits"] == 9
    finally:
        if isinstance(namespace.get("flux"), Flux):
            namespace["flux"].close()


def test_the_magic_and_panel_examples_run_as_cells(server: Any, readme_dir: Path) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    cells = [cell for heading in ("## Magic", "## Panel") for cell in notebook_cells(section(heading))]
    assert cells[0].strip() == "%load_ext flux_nb" and sum(cell.startswith("%%flux") for cell in cells) == 2
    InteractiveShell.clear_instance()
    shell = InteractiveShell.instance()
    try:
        for cell in cells:
            outcome = shell.run_cell(cell)
            assert outcome.success, (cell, outcome.error_in_exec)
        flux = shell.user_ns["flux"]
        assert flux.backend.base_url.rstrip("/") == server.url.rstrip("/")
        boats = shell.user_ns["boats"]
        assert isinstance(boats, SweepResult) and len(boats) == 8 and all(r.ok for r in boats)
        assert {r.prompt for r in boats} == {
            f"a fishing harbour at {t}, watercolour, soft light" for t in ("dawn", "night")
        }
        assert type(shell.user_ns["panel"]).__name__ == "Panel"
        frame = flux.history()
        assert len(frame) == 9 and set(frame["status"]) == {"ready"}
        assert (readme_dir / ".flux").is_dir() and server.stats()["submits"] == 9
    finally:
        if isinstance(shell.user_ns.get("flux"), Flux):
            shell.user_ns["flux"].close()
        InteractiveShell.clear_instance()


def shell_commands() -> list[tuple[str, list[str]]]:
    """Every command of the README's ```bash blocks, by its section, split as a shell would (comments dropped)."""
    markdown = README.read_text(encoding="utf-8")
    commands = []
    for heading in re.findall(r"^## .*$", markdown, flags=re.MULTILINE):
        for block in code_blocks(section(heading), "bash"):
            for line in block.splitlines():
                for command in line.split(";"):  # no README command quotes a ";"
                    if words := shlex.split(command, comments=True):
                        commands.append((heading, words))
    return commands


def extras() -> set[str]:
    return set(PYPROJECT["project"]["optional-dependencies"])


def check_without_running(words: list[str]) -> None:
    """Commands that install, open a GUI, bind a fixed port or need a GPU: what they name must exist."""
    env = {}
    while "=" in words[0]:
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    match words:
        case ["pip", "install", target]:
            named = re.fullmatch(r"\.(?:\[(\w+)\])?", target)
            dependencies = str(PYPROJECT["project"])
            assert (named and (named[1] is None or named[1] in extras())) or f"'{target}>=" in dependencies, target
        case ["jupyter", "lab", notebook]:
            assert (ROOT / notebook).is_file() and notebook.endswith(".ipynb")
        case ["bash", script]:
            assert (ROOT / script).is_file()
        case ["huggingface-cli", "download", model]:
            assert model == DEFAULT_MODEL
        case [".venv/bin/python", "-m", "pytest", *options]:
            assert options[options.index("-m") + 1] == "not slow"
            assert any(marker.startswith("slow:") for marker in PYPROJECT["tool"]["pytest"]["ini_options"]["markers"])
            assert any(d.startswith("pytest-xdist") for d in PYPROJECT["project"]["optional-dependencies"]["dev"])
        case ["python", "-m", "bench", *_]:
            assert (ROOT / "bench" / "__main__.py").is_file()
        case ["python", "-m", module] if module.startswith("bench."):
            assert (ROOT / (module.replace(".", "/") + ".py")).is_file()
        case ["flux-nb", "serve", *options]:
            build_parser()[0].parse_args(["serve", *options])  # exits (2) on an unknown option or a bad value
            assert set(env) <= {"FLUX_NB_SERVER_KEYS"}
        case _:
            raise AssertionError(f"the README runs {shlex.join(words)!r}, which this test does not know")


def test_the_shell_examples_run_as_written(server: Any, readme_dir: Path) -> None:
    ran = []
    for heading, words in shell_commands():
        if words[0] == "flux-nb" and words[1] != "serve":
            out = flux_nb(*words[1:], cwd=readme_dir, env={"FLUX_NB_ENDPOINT": server.url})
            assert out.returncode == 0 and "Traceback" not in out.stderr, (heading, words, out.stdout, out.stderr)
            ran.append(words[1])
        else:
            check_without_running(list(words))
    assert ran == ["generate"] * 4 + ["history", "cost", "grid", "replay", "resume", "export", "report"]
    assert (readme_dir / "night.jpeg").is_file() and (readme_dir / "grid.png").is_file()
    assert len(list((readme_dir / "kites").glob("*.jpeg"))) == 4
    assert (readme_dir / "kites.zip").is_file() and (readme_dir / "kites.html").is_file()
    assert server.stats()["submits"] == 4 + 1 + 1 + 3 + 1  # the sweep, the kite, the edit, --vary, the replay


def test_every_shell_example_is_known_to_the_check() -> None:
    """A new kind of command in the README fails here until this test knows how to run or check it."""
    for heading, words in shell_commands():
        if words[0] != "flux-nb" or words[1] == "serve":
            check_without_running(list(words))
        assert heading in {"## Install", "## CLI", "## Local server and engine", "## Tests"}, heading
