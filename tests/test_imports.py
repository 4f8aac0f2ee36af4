"""Import cost: ``import flux_nb`` and ``%load_ext flux_nb`` load nothing heavy until it is used.

Checked by the modules a fresh process holds afterwards (no timing: bench/import_time.py measures that).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("pandas", "pyarrow", "PIL.PngImagePlugin", "PIL.JpegImagePlugin", "ipywidgets", "fastapi", "uvicorn", "numpy")
LOAD_EXT = (
    "from IPython.core.interactiveshell import InteractiveShell\n"
    "InteractiveShell.instance().run_line_magic('load_ext', 'flux_nb')\n"
)


def loaded_after(code: str, cwd: Path) -> list[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("BFL_API_KEY", None)
    done = subprocess.run([sys.executable, "-c", probe], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("code", ["import flux_nb", "from flux_nb import Flux, Result, FluxError", LOAD_EXT])
def test_importing_and_loading_the_extension_stay_light(code: str, tmp_path: Path) -> None:
    assert loaded_after(code, tmp_path) == []
    assert not (tmp_path / ".flux").exists()  # %load_ext with no history yet makes no folder


def test_the_probe_sees_a_heavy_import(tmp_path: Path) -> None:
    assert "pandas" in loaded_after("import flux_nb, pandas", tmp_path)
