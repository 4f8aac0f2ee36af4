"""The README's Python examples, executed as written against a local server: the README cannot drift."""

from __future__ import annotations

import ast
import asyncio
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from PIL import Image

from flux_nb import Flux, Result, SweepResult

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## From Python"


def python_blocks(markdown: str, heading: str) -> list[str]:
    """The ```python blocks between ``heading`` and the next heading of its level."""
    start = markdown.index(f"\n{heading}\n")
    end = markdown.find("\n## ", start + len(heading) + 2)
    section = markdown[start : end if end >= 0 else len(markdown)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def execute(source: str, namespace: dict[str, Any]) -> None:
    """Run a block as a notebook cell would: top-level ``await`` included."""
    code = compile(source, "README.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    outcome = eval(code, namespace)  # the README's own text, nothing else
    if asyncio.iscoroutine(outcome):
        asyncio.run(outcome)


def test_the_section_has_python_examples() -> None:
    blocks = python_blocks(README.read_text(encoding="utf-8"), SECTION)
    assert blocks and any("flux.generate(" in block for block in blocks)
    assert any("images=[result]" in block for block in blocks)


def test_the_python_examples_run_as_written(server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FLUX_NB_ENDPOINT", server.url)
    for name in ("BFL_API_KEY", "FLUX_NB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    namespace: dict[str, Any] = {"__name__": "readme"}
    try:
        for block in python_blocks(README.read_text(encoding="utf-8"), SECTION):
            execute(block, namespace)
        flux = namespace["flux"]
        assert isinstance(flux, Flux) and flux.backend.base_url.rstrip("/") == server.url.rstrip("/")
        edit, sweep, frame = namespace["edit"], namespace["sweep"], namespace["frame"]
        assert isinstance(edit, Result) and edit.ok and edit.prompt == "make it night"
        assert isinstance(sweep, SweepResult) and len(sweep) == 6 and all(r.ok for r in sweep)
        assert isinstance(namespace["result"], Result) and namespace["result"].ok  # the awaited owl
        assert Image.open(tmp_path / "foxes.png").size[0] > 0
        assert isinstance(frame, pd.DataFrame) and len(frame) == 8
        rows = frame.set_index("record_id")
        assert len(rows.loc[edit.record_id, "input_hashes"]) == 1  # the earlier Result went as a reference
        assert (tmp_path / ".flux").is_dir()
        assert server.stats()["submits"] == 9
    finally:
        if isinstance(namespace.get("flux"), Flux):
            namespace["flux"].close()
