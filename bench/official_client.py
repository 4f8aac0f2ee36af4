"""BFL's official Python client (``blackforest`` on PyPI) in a venv of its own: it pins its own Pillow.

The benchmarks race it, and the tests run it as an independent client against the local server. Its
model registry has no klein entry; ``PREAMBLE`` adds one the way its documentation shows: its own generic
inputs (which send ``prompt_upsampling`` and ``safety_tolerance`` too) with a size. Like BFL's API, the
local server ignores the fields a model does not take.
"""

from __future__ import annotations

import os
import subprocess
import venv
from pathlib import Path

VERSION = "0.1.3"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "flux-nb-bench"
VENV = CACHE / f"blackforest-{VERSION}"

PREAMBLE = """
import sys, time, requests
from blackforest import BFLClient
from blackforest.client import BFLError
from blackforest.types.general.client_config import ClientConfig
from blackforest.types.inputs.generic import GenericImageInput

class Klein4bInputs(GenericImageInput):
    width: int | None = None
    height: int | None = None

BFLClient.model_input_registry["flux-2-klein-4b"] = Klein4bInputs
"""


def installed_python() -> Path | None:
    """The cached venv's Python when ``blackforest`` is installed there, else None (nothing is installed)."""
    python = VENV / "bin" / "python"
    if not python.exists():
        return None
    works = subprocess.run([str(python), "-c", "import blackforest"], capture_output=True).returncode == 0
    return python if works else None


def python(install: bool = True) -> Path | None:
    """The venv's Python, made and filled once when ``install``; None when pip could not install it."""
    found = installed_python()
    if found is not None or not install:
        return found
    venv.create(VENV, with_pip=True, clear=True)  # clear: a half-made venv from an interrupted install
    done = subprocess.run(
        [str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", f"blackforest=={VERSION}"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        print(f"  (blackforest {VERSION} could not be installed: {done.stderr.strip()[-200:]})")
        return None
    return VENV / "bin" / "python"
