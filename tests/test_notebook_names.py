"""The notebook's name as each front end tells it, from the very variables each one sets.

JupyterLab / Notebook 7 and nbclassic values come from jupyter_server's own ``SessionManager.get_kernel_env``
(what the server puts in a kernel's environment); VS Code's from the variable its Jupyter extension defines.
"""

from __future__ import annotations

import http.server
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from jupyter_server.services.kernels.kernelmanager import MappingKernelManager
from jupyter_server.services.sessions.sessionmanager import SessionManager

from flux_nb import Flux
from flux_nb.core import notebooks
from flux_nb.core.notebooks import from_servers, kernel_id, notebook_name, running_servers
from flux_nb.server import create_app

KERNEL = "1f2e3d4c-5b6a-4789-8abc-def012345678"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in ("FLUX_NB_NOTEBOOK", "JPY_SESSION_NAME", "JUPYTER_SERVER_URL", "JUPYTER_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    notebooks.from_jupyter_server.cache_clear()
    return monkeypatch


def kernel_env(root: Path, path: str, name: str) -> str:
    """JPY_SESSION_NAME as jupyter_server sets it for a session of ``path`` named ``name``."""
    (root / "work").mkdir(exist_ok=True)
    manager = SessionManager(kernel_manager=MappingKernelManager(root_dir=str(root)))
    return manager.get_kernel_env(path, name)["JPY_SESSION_NAME"]


def test_jupyterlab_and_notebook_7_name_the_notebook_in_jpy_session_name(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    """Both send the notebook's path and name; the kernel gets its absolute path (no FLUX_NB_NOTEBOOK set)."""
    value = kernel_env(tmp_path, "work/analysis.ipynb", "analysis.ipynb")
    assert value == str(tmp_path / "work" / "analysis.ipynb")
    clean_env.setenv("JPY_SESSION_NAME", value)
    assert notebook_name() == "analysis.ipynb"
    assert notebook_name({"__session__": value}) == "analysis.ipynb"


def test_nbclassic_hands_a_folder_which_is_never_taken_as_a_name(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    """nbclassic sends an empty name: the kernel gets the notebook's folder ("work/"), not a notebook."""
    value = kernel_env(tmp_path, "work/analysis.ipynb", "")
    assert value.rstrip(os.sep) == str(tmp_path / "work")
    clean_env.setenv("JPY_SESSION_NAME", value)
    assert notebooks.from_session_name(os.environ) == ""
    assert notebook_name() == ""  # no server knows this process's kernel: nothing, rather than "work"
    clean_env.setenv("JPY_SESSION_NAME", str(tmp_path / "work"))  # the folder without its trailing slash
    assert notebook_name() == ""


def test_vscode_names_the_notebook_in_the_kernel_namespace(clean_env: pytest.MonkeyPatch) -> None:
    namespace = {"__vsc_ipynb_file__": "/home/me/project/study.ipynb"}
    assert notebook_name(namespace) == "study.ipynb"
    assert notebook_name({"__vsc_ipynb_file__": 42}) == ""  # not a path: ignored


def test_the_users_own_name_wins(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("JPY_SESSION_NAME", "/home/me/a.ipynb")
    clean_env.setenv("FLUX_NB_NOTEBOOK", "chosen.ipynb")
    assert notebook_name({"__vsc_ipynb_file__": "/x/b.ipynb"}) == "chosen.ipynb"


def test_a_session_records_the_name_jupyterlab_gives(
    tmp_path: Path, history_dir: Path, clean_env: pytest.MonkeyPatch
) -> None:
    """The history's notebook column, from JPY_SESSION_NAME alone (the project's own variable unset)."""
    clean_env.setenv("JPY_SESSION_NAME", kernel_env(tmp_path, "work/lab.ipynb", "lab.ipynb"))
    app = create_app()
    flux = Flux(endpoint="http://127.0.0.1:9", history_dir=history_dir, transport=httpx.ASGITransport(app=app))
    try:
        assert flux.notebook == "lab.ipynb"
        assert flux.generate("named", seed=1, width=64, height=64).ok
        assert list(flux.store.query()["notebook"]) == ["lab.ipynb"]
    finally:
        flux.close()


def test_a_kernel_id_is_read_from_its_connection_file() -> None:
    assert kernel_id(f"/root/.local/share/jupyter/runtime/kernel-{KERNEL}.json") == KERNEL
    assert kernel_id("/tmp/tmpabc.json") == ""
    assert kernel_id(None) == ""


class Sessions(http.server.BaseHTTPRequestHandler):
    """A Jupyter server's ``/api/sessions``, answering only with the right token."""

    token = "t0ken"
    sessions: ClassVar[list[dict[str, Any]]] = [
        {"path": "work/other.ipynb", "kernel": {"id": "0000"}},
        {"path": "work/classic.ipynb", "kernel": {"id": KERNEL}},
    ]
    asked: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.asked.append(self.path)
        ok = self.path == "/api/sessions" and self.headers.get("Authorization") == f"token {self.token}"
        body = json.dumps(self.sessions if ok else {"message": "Forbidden"}).encode()
        self.send_response(200 if ok else 403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def jupyter_server() -> Iterator[str]:
    """A stand-in Jupyter server on 127.0.0.1 serving its sessions."""
    Sessions.asked = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sessions)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def test_nbclassic_notebook_is_found_through_the_servers_sessions(
    jupyter_server: str, tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    """The running-server file jupyter_server writes (jpserver-<pid>.json) leads to the session of our kernel."""
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    info = {"url": jupyter_server, "token": Sessions.token, "pid": os.getpid(), "root_dir": str(tmp_path)}
    (runtime / f"jpserver-{os.getpid()}.json").write_text(json.dumps(info))
    clean_env.setenv("JUPYTER_RUNTIME_DIR", str(runtime))
    servers = running_servers(os.environ)
    assert [s["url"] for s in servers] == [jupyter_server]
    assert from_servers(KERNEL, servers) == "classic.ipynb"
    assert from_servers("not-this-kernel", servers) == ""
    assert from_servers(KERNEL, [{"url": jupyter_server, "token": "wrong"}]) == ""
    assert Sessions.asked == ["/api/sessions"] * 3

    clean_env.setenv("JPY_SESSION_NAME", str(tmp_path / "work") + "/")
    clean_env.setattr(notebooks, "current_kernel_id", lambda: KERNEL)
    assert notebook_name() == "classic.ipynb"


def test_a_server_off_this_machine_is_never_asked(clean_env: pytest.MonkeyPatch) -> None:
    """The token goes to loopback only: another address is refused before any socket opens."""
    opened: list[str] = []
    clean_env.setattr(httpx, "get", lambda url, **kw: opened.append(url))
    for url in ("http://10.0.0.5:8888/", "https://hub.example.org/user/me/", "http://169.254.169.254/"):
        assert notebooks.ask_sessions(url, "t0ken") == []
    assert opened == []
