"""The Binder files install this package and point at a quickstart that exists."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_binder_requirements_install_this_package() -> None:
    lines = [line.strip() for line in (ROOT / "binder" / "requirements.txt").read_text().splitlines()]
    assert [line for line in lines if line and not line.startswith("#")] == ["-e ."]
    report = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--no-deps",
            "--quiet",
            "--report",
            "-",
            "-r",
            "binder/requirements.txt",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    installs = json.loads(report.stdout)["install"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert [(i["metadata"]["name"], i["metadata"]["version"]) for i in installs] == [
        (project["name"], project["version"])
    ]


def test_binder_runtime_satisfies_requires_python() -> None:
    # Without runtime.txt mybinder.org builds on its default Python (3.10), older than the package allows.
    runtime = (ROOT / "binder" / "runtime.txt").read_text().strip()
    found = re.fullmatch(r"python-(3\.\d+)", runtime)
    assert found is not None, f"binder/runtime.txt should read like 'python-3.12', not {runtime!r}"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert found.group(1) in SpecifierSet(requires), (runtime, requires)


def test_post_build_is_executable_and_checks_the_install() -> None:
    post_build = ROOT / "binder" / "postBuild"
    assert os.access(post_build, os.X_OK)
    assert "import flux_nb" in post_build.read_text()


def test_readme_badge_opens_the_quickstart_in_jupyterlab() -> None:
    readme = (ROOT / "README.md").read_text()
    badge = re.search(r"\(https://mybinder\.org/v2/gh/[^)]+\?urlpath=lab/tree/([^)]+)\)", readme)
    assert badge is not None
    assert (ROOT / badge.group(1)).exists() and badge.group(1) == "notebooks/01_quickstart.ipynb"
