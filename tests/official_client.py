"""BFL's official Python client (``blackforest`` on PyPI), run in the venv ``scripts/test`` and the benchmarks cache.

It pins its own Pillow, so it lives in a venv of its own: ``$XDG_CACHE_HOME/flux-nb-bench/blackforest-VERSION``.
Under CI (``CI`` set) a missing client fails the tests that need it instead of skipping them.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

VERSION = "0.1.3"

# Generates one klein image (the client's registry has no klein entry: one is added the way its docs show).
SCRIPT = """
import sys, requests
from pydantic import BaseModel
from blackforest import BFLClient
from blackforest.client import BFLError
from blackforest.types.general.client_config import ClientConfig

class Klein4bInputs(BaseModel):
    prompt: str
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    output_format: str = "jpeg"

BFLClient.model_input_registry["flux-2-klein-4b"] = Klein4bInputs
client = BFLClient(api_key=sys.argv[2], base_url=sys.argv[1])
try:
    result = client.generate("flux-2-klein-4b", {"prompt": "a teapot", "seed": 3, "width": 256, "height": 256},
                             ClientConfig(sync=True, timeout=60))
except BFLError as exc:
    print("BFLError", exc)
    raise SystemExit(1)
print(result.result["seed"], len(requests.get(result.result["sample"], timeout=30).content))
"""


def python() -> str:
    """A Python with ``blackforest``: this one, or the cached venv; skips (fails under CI) when there is none."""
    if importlib.util.find_spec("blackforest") is not None:
        return sys.executable
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "flux-nb-bench"
    found = cache / f"blackforest-{VERSION}" / "bin" / "python"
    if found.exists():
        return str(found)
    reason = f"the official blackforest client is not installed (scripts/test makes {found.parent.parent})"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def generate(base_url: str, key: str = "local") -> tuple[int, str]:
    """Run the official client's ``generate`` against ``base_url``: its exit code and its last line."""
    out = subprocess.run([python(), "-c", SCRIPT, base_url, key], capture_output=True, text=True, timeout=120)
    last = (out.stdout.strip().splitlines() or [out.stderr.strip()[-500:]])[-1]
    return out.returncode, last
