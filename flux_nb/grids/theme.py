"""Grid colours for light and dark pages, and the notebook's own theme when it can be known.

A kernel started by JupyterLab or Notebook 7 can read the user's theme setting (the files the
server reads); anywhere else the theme is not known and grids are light.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from flux_nb.errors import ValidationError

RGB = tuple[int, int, int]
THEME_SETTING = Path("@jupyterlab") / "apputils-extension" / "themes.jupyterlab-settings"
OVERRIDE_KEY = "@jupyterlab/apputils-extension:themes"


@dataclass(frozen=True)
class Theme:
    """Colours of a grid: page, empty cell, labels, the title, failures (each label reads at 4.5:1 or more)."""

    name: str
    background: RGB
    cell: RGB
    text: RGB
    muted: RGB
    failed: RGB


LIGHT = Theme("light", background=(255, 255, 255), cell=(236, 236, 236), text=(20, 20, 20), muted=(100, 100, 100),
              failed=(176, 0, 32))  # fmt: skip
DARK = Theme("dark", background=(17, 17, 17), cell=(48, 48, 48), text=(235, 235, 235), muted=(175, 175, 175),
             failed=(255, 128, 128))  # fmt: skip
THEMES = {"light": LIGHT, "dark": DARK}


def theme_named(name: str | None) -> Theme:
    """The theme called ``name``; None: the notebook's theme when known, else light."""
    if name is None:
        return THEMES.get(notebook_theme() or "light", LIGHT)
    if name not in THEMES:
        raise ValidationError(f"grid theme {name!r} is not known: use 'light', 'dark' or None (the notebook's)")
    return THEMES[name]


def in_kernel() -> bool:
    """True inside a Jupyter kernel (its shell is ipykernel's), where the theme setting is the user's."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def notebook_theme() -> str | None:
    """ "dark" or "light" from the Jupyter theme setting, when running in a kernel that can read it."""
    if not in_kernel():
        return None
    for chosen in (_user_setting(), _override()):
        if chosen:
            return "dark" if "dark" in chosen.lower() else "light"
    return None


def _settings_dir() -> Path:
    given = os.environ.get("JUPYTERLAB_SETTINGS_DIR")
    if given:
        return Path(given)
    config = os.environ.get("JUPYTER_CONFIG_DIR") or str(Path.home() / ".jupyter")
    return Path(config) / "lab" / "user-settings"


def _user_setting() -> str | None:
    """The theme the user chose (the settings file is JSON with comments: read the one field)."""
    try:
        text = (_settings_dir() / THEME_SETTING).read_text()
    except OSError:
        return None
    settings = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//"))
    found = re.search(r'"theme"\s*:\s*"([^"]+)"', settings)
    return found.group(1) if found else None


def _override() -> str | None:
    """The theme an installation sets for everyone (``share/jupyter/lab/settings/overrides.json``)."""
    try:
        overrides = json.loads(
            (Path(sys.prefix) / "share" / "jupyter" / "lab" / "settings" / "overrides.json").read_text()
        )
    except (OSError, ValueError):
        return None
    chosen = overrides.get(OVERRIDE_KEY, {}).get("theme") if isinstance(overrides, dict) else None
    return chosen if isinstance(chosen, str) else None
