"""Which notebook a kernel runs, as each front end tells it (the history's ``notebook`` column).

- ``FLUX_NB_NOTEBOOK``: the user's own word, first.
- VS Code puts the notebook's path in the kernel namespace as ``__vsc_ipynb_file__``.
- JupyterLab and Notebook 7 start the kernel with ``JPY_SESSION_NAME`` holding the notebook's path.
- nbclassic passes an empty name, so ``JPY_SESSION_NAME`` holds the notebook's *folder*: that is never taken
  as a name. The notebook is found instead by asking the Jupyter server that started this kernel (its
  sessions API, on loopback only, with the token of its runtime file) which session owns this kernel.

Anything that fails gives "", never a folder or a guess.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from pathlib import PurePath
from typing import Any
from urllib.parse import urlsplit

from flux_nb.http.auth import is_loopback

OVERRIDE_ENV = "FLUX_NB_NOTEBOOK"
SESSION_ENV = "JPY_SESSION_NAME"
VSCODE_VARIABLE = "__vsc_ipynb_file__"
# A kernel's connection file is kernel-<id>.json; the server's sessions name that id.
KERNEL_FILE = re.compile(r"kernel-([0-9a-fA-F-]+)\.json$")
# The sessions API is asked once per kernel, briefly: a slow server costs a cell at most this long.
SERVER_TIMEOUT = 2.0


def name_from_path(path: str) -> str:
    """The file name of a notebook path; "" for a folder (a trailing separator, or an existing directory)."""
    path = path.strip()
    if not path or path.endswith(("/", os.sep)) or os.path.isdir(path):
        return ""
    return PurePath(path).name


def from_override(environ: Mapping[str, str]) -> str:
    return name_from_path(environ.get(OVERRIDE_ENV, ""))


def from_vscode(namespace: Mapping[str, Any] | None) -> str:
    value = (namespace or {}).get(VSCODE_VARIABLE)
    return name_from_path(value) if isinstance(value, str) else ""


def from_session_name(environ: Mapping[str, str]) -> str:
    """JupyterLab / Notebook 7: the notebook's path; nbclassic's folder gives ""."""
    return name_from_path(environ.get(SESSION_ENV, ""))


def kernel_id(connection_file: str | None) -> str:
    """The kernel id in a connection file's name ("" when it is not one)."""
    found = KERNEL_FILE.search(os.path.basename(connection_file or ""))
    return found.group(1) if found else ""


def loopback_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and is_loopback(parts.hostname or "")
    except ValueError:
        return False


def ask_sessions(url: str, token: str) -> list[dict[str, Any]]:
    """The sessions of the Jupyter server at ``url`` (loopback only; [] on any failure)."""
    if not loopback_url(url):
        return []
    import httpx

    headers = {"Authorization": f"token {token}"} if token else {}
    try:
        answer = httpx.get(url.rstrip("/") + "/api/sessions", headers=headers, timeout=SERVER_TIMEOUT, trust_env=False)
        sessions = answer.json() if answer.status_code == 200 else []
    except (httpx.HTTPError, ValueError):
        return []
    return [s for s in sessions if isinstance(s, dict)] if isinstance(sessions, list) else []


def from_servers(
    kernel: str, servers: Iterable[Mapping[str, Any]], ask: Callable[[str, str], list[dict[str, Any]]] = ask_sessions
) -> str:
    """The notebook whose session runs ``kernel``, from the first running server that knows it."""
    if not kernel:
        return ""
    for server in servers:
        url, token = str(server.get("url") or ""), str(server.get("token") or "")
        for session in ask(url, token):
            owner = session.get("kernel") or {}
            if isinstance(owner, dict) and owner.get("id") == kernel:
                name = name_from_path(str(session.get("path") or ""))
                if name:
                    return name
    return ""


def running_servers(environ: Mapping[str, str]) -> list[dict[str, Any]]:
    """Jupyter servers to ask: ``JUPYTER_SERVER_URL`` (with ``JUPYTER_TOKEN``), then every running one."""
    servers: list[dict[str, Any]] = []
    if environ.get("JUPYTER_SERVER_URL"):
        servers.append({"url": environ["JUPYTER_SERVER_URL"], "token": environ.get("JUPYTER_TOKEN", "")})
    try:
        from jupyter_server.serverapp import list_running_servers
    except ImportError:
        return servers
    with contextlib.suppress(OSError, ValueError):  # a runtime file being written, an unreadable folder
        servers.extend(list_running_servers())
    return servers


def current_kernel_id() -> str:
    """This kernel's id, from its connection file ("" outside a Jupyter kernel)."""
    try:
        from ipykernel.kernelapp import IPKernelApp
    except ImportError:
        return ""
    from traitlets.config import MultipleInstanceError

    if not IPKernelApp.initialized():
        return ""
    try:
        app = IPKernelApp.instance()
    except MultipleInstanceError:  # terminal IPython: its own app holds the singleton
        return ""
    return kernel_id(app.connection_file)


@lru_cache(maxsize=8)
def from_jupyter_server(kernel: str) -> str:
    """nbclassic (and any front end that names no notebook): ask the servers, once per kernel."""
    return from_servers(kernel, running_servers(os.environ))


def notebook_name(namespace: Mapping[str, Any] | None = None) -> str:
    """The notebook's file name where the front end exposes it, else "".

    >>> notebook_name({"__vsc_ipynb_file__": "/home/me/study.ipynb"})
    'study.ipynb'
    """
    environ = os.environ
    for found in (from_override(environ), from_vscode(namespace), from_session_name(environ)):
        if found:
            return found
    if environ.get(SESSION_ENV) or namespace is not None:
        return from_jupyter_server(current_kernel_id())
    return ""


__all__ = ["from_servers", "from_session_name", "from_vscode", "name_from_path", "notebook_name"]
