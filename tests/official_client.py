"""BFL's official Python client (``blackforest``), run as a second, independent client against local servers.

``scripts/test`` installs it into its own venv (``bench.official_client``); under CI (``CI`` set) a missing
client fails the tests that need it instead of skipping them.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from bench import official_client

# Generates one klein image; prints the seed and the image's byte count, or the client's error.
SCRIPT = (
    official_client.PREAMBLE
    + """
client = BFLClient(api_key=sys.argv[2], base_url=sys.argv[1])
try:
    result = client.generate("flux-2-klein-4b", {"prompt": "a teapot", "seed": 3, "width": 256, "height": 256},
                             ClientConfig(sync=True, timeout=60))
except BFLError as exc:
    print("BFLError", exc)
    raise SystemExit(1)
print(result.result["seed"], len(requests.get(result.result["sample"], timeout=30).content))
"""
)


def python() -> str:
    """A Python with ``blackforest``: this one, or the cached venv; skips (fails under CI) when there is none."""
    if importlib.util.find_spec("blackforest") is not None:
        return sys.executable
    found = official_client.installed_python()
    if found is not None:
        return str(found)
    reason = f"the official blackforest client is not installed (scripts/test makes {official_client.VENV})"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def generate(base_url: str, key: str = "local") -> tuple[int, str]:
    """Run the official client's ``generate`` against ``base_url``: its exit code and its last line."""
    out = subprocess.run([python(), "-c", SCRIPT, base_url, key], capture_output=True, text=True, timeout=120)
    last = (out.stdout.strip().splitlines() or [out.stderr.strip()[-500:]])[-1]
    return out.returncode, last
