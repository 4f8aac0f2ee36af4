"""A unique API key is planted and then searched for everywhere it must never appear."""

from __future__ import annotations

import importlib.util
import logging
import os
import time
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

import flux_nb
from flux_nb import Flux
from flux_nb.errors import FluxError
from flux_nb.http.client import AsyncFluxClient, RetryPolicy
from flux_nb.protocol import FluxRequest
from tests.test_cli import serving

ROOT = Path(__file__).resolve().parent.parent
KEY = f"bfl-canary-{uuid.uuid4().hex}"


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def logs() -> Iterator[Collect]:
    handler = Collect()
    handler.setFormatter(logging.Formatter("%(name)s %(message)s %(exc_info)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def keyed_server(server_factory: Any) -> Any:
    return server_factory(api_keys=frozenset({KEY}))


def files_under(folder: Path) -> Iterator[bytes]:
    for path in folder.rglob("*"):
        if path.is_file():
            yield path.read_bytes()


def test_the_key_is_nowhere_in_history_reprs_errors_or_logs(
    keyed_server: Any, history_dir: Path, logs: Collect
) -> None:
    flux = Flux(endpoint=keyed_server.url, api_key=KEY, history_dir=history_dir)
    seen: list[str] = [repr(flux)]
    result = flux.generate("a canary", seed=1, width=64, height=64)
    sweep = flux.sweep("canaries", seed=[1, 2], width=64, height=64, fresh=True)
    seen += [
        repr(result),
        repr(sweep),
        repr(flux._ready_executor()),
        repr(flux._ready_executor().client),
        repr(flux.backend),
    ]
    seen += [str(result._repr_mimebundle_()), str(sweep._repr_mimebundle_())]
    seen.append(flux.history().to_csv())
    for bad in ({"width": 1000}, {"images": ["/no/such.png"]}):
        try:
            flux.generate("bad", **bad)
        except FluxError as exc:
            seen.append(library_frames(exc))
    flux.endpoint = "http://127.0.0.1:9"  # unreachable: a transport error, raised from deep in the client
    flux.login(KEY)
    flux._ready_executor().client.retry = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.02)
    failed = flux.run([flux.prepare("unreachable", seed=3, width=64, height=64)])[0]
    seen.append(library_frames(failed.error))
    flux.close()
    seen.append(repr(FluxRequest("x", webhook_url="https://h", webhook_secret=KEY)))
    seen += logs.lines
    assert logs.lines, "logging was not captured"
    for text in seen:
        assert KEY not in text
    for data in files_under(history_dir):
        assert KEY.encode() not in data


PACKAGE = str(Path(flux_nb.__file__).resolve().parent) + os.sep


def in_package(filename: str) -> bool:
    """Whether a frame's file is the library's own (not a test's, whatever the clone's folder is called)."""
    return str(Path(filename).resolve()).startswith(PACKAGE)


def library_frames(error: BaseException) -> str:
    """The traceback of flux_nb's own frames, with every local variable's repr."""
    frames = traceback.StackSummary.extract(traceback.walk_tb(error.__traceback__), capture_locals=True)
    return "".join(traceback.format_list([f for f in frames if in_package(f.filename)])) + str(error)


async def test_a_wrong_key_error_does_not_echo_the_key(keyed_server: Any) -> None:
    async with AsyncFluxClient(f"wrong-{KEY}", keyed_server.url, retry=RetryPolicy(attempts=1)) as client:
        with pytest.raises(FluxError) as caught:
            await client.generate(FluxRequest("x", seed=1, width=64, height=64))
    text = library_frames(caught.value)
    assert "client.py" in text and KEY not in text and "refused the key" in text


@pytest.mark.slow
def test_a_saved_notebook_never_holds_the_key(keyed_server: Any, tmp_path: Path, logs: Collect) -> None:
    spec = importlib.util.spec_from_file_location("notebook_runner", ROOT / "notebooks" / "run.py")
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    cells = [
        new_code_cell("%load_ext flux_nb"),
        new_code_cell("%%flux --seed 5 --size 64x64 -o pic\na canary in a notebook"),
        new_code_cell("flux"),
        new_code_cell("pic"),
        new_code_cell("%flux history"),
        new_code_cell("%%flux --width 1000\nbad"),
        new_code_cell("%xmode Verbose\nflux.generate('bad again', width=77)"),
        new_code_cell("flux_history.to_dict('records')"),
    ]
    source = tmp_path / "canary.ipynb"
    nbformat.write(
        new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}}), source
    )
    env = {"FLUX_NB_API_KEY": KEY, "FLUX_NB_ENDPOINT": keyed_server.url}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        executed, page = runner.run_notebook(source, tmp_path / "out", allow_errors=True)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    notebook_text = executed.read_text()
    assert "canary in a notebook" in notebook_text and "seed 5" in notebook_text  # it did run, with the key
    assert KEY not in notebook_text and KEY not in page.read_text()
    for data in files_under(tmp_path / "out" / ".flux"):
        assert KEY.encode() not in data
    assert keyed_server.stats()["ready"] == 1
    assert all(KEY not in line for line in logs.lines)


@pytest.mark.slow
def test_the_serve_command_never_logs_the_key() -> None:
    output: dict[str, str] = {}
    with serving("--access-log", env={"FLUX_NB_SERVER_KEYS": KEY}, output=output) as url, httpx.Client() as http:
        good, wrong = {"x-key": KEY}, {"x-key": f"{KEY}-wrong"}

        def ready(polling_url: str) -> dict[str, Any]:
            deadline = time.monotonic() + 20
            while (answer := http.get(polling_url, headers=good).json())["status"] == "Pending":
                assert time.monotonic() < deadline, answer
                time.sleep(0.02)
            return answer

        body = {"prompt": "a canary", "width": 64, "height": 64, "seed": 1}
        polling_url = http.post(f"{url}/v1/flux-2-klein-4b", json=body, headers=good).json()["polling_url"]
        assert http.get(ready(polling_url)["result"]["sample"]).status_code == 200
        assert http.post(f"{url}/v1/flux-2-klein-4b", json=body, headers=wrong).status_code == 403
        assert http.get(polling_url, headers=wrong).status_code == 403
        assert http.get(f"{url}/v1/credits", headers=wrong).status_code == 403
        assert http.post(f"{url}/v1/flux-2-klein-4b", json={"prompt": ""}, headers=good).status_code == 422
        hook = {**body, "webhook_url": "http://127.0.0.1:9/hook", "webhook_secret": KEY}  # nobody listens there
        hooked = http.post(f"{url}/v1/flux-2-klein-4b", json=hook, headers=good).json()["id"]
        assert ready(f"{url}/v1/get_result?id={hooked}")["status"] == "Ready"
    logged = output["stdout"] + output["stderr"]
    assert '"POST /v1/flux-2-klein-4b HTTP/1.1" 403' in logged, logged  # the access log was on
    assert '"GET /v1/credits HTTP/1.1" 403' in logged and "/delivery/" in logged, logged
    assert KEY not in logged


XMODES = ["Plain", "Context", "Verbose", "Minimal"]


def client_errors() -> list[BaseException]:
    """Errors raised from inside the client, each with a traceback through its frames."""
    from flux_nb.server import ServerConfig, create_app

    async def collect() -> list[BaseException]:
        keyed = httpx.ASGITransport(create_app(ServerConfig(api_keys=frozenset({f"{KEY}-other"}))))

        def broken(request: httpx.Request) -> httpx.Response:
            raise RuntimeError("the transport broke")

        attempts = [
            lambda: AsyncFluxClient(f"{KEY} é", "http://127.0.0.1:9"),  # a key no header can carry
            lambda: AsyncFluxClient(KEY, "http://10.1.2.3:8800"),  # plain http beyond loopback
        ]
        caught: list[BaseException] = []
        for make in attempts:
            try:
                make()
            except FluxError as exc:
                caught.append(exc)
        for url, transport in (
            ("http://127.0.0.1:8800", keyed),  # the server refuses the key
            ("http://127.0.0.1:9", None),  # nobody listens: a transport error after retries
            ("http://127.0.0.1:8800", httpx.MockTransport(broken)),  # a raw exception through httpx
        ):
            async with AsyncFluxClient(KEY, url, transport=transport, retry=RetryPolicy(attempts=1)) as client:
                try:
                    await client.generate(FluxRequest("x", seed=1, width=64, height=64))
                except Exception as exc:
                    caught.append(exc)
        return caught

    import asyncio

    return asyncio.run(collect())


def test_tracebacks_from_the_client_never_show_the_key_in_any_xmode() -> None:
    from IPython.core.ultratb import FormattedTB, VerboseTB

    errors = client_errors()
    assert [type(e).__name__ for e in errors] == [
        "ValidationError",
        "ValidationError",
        "AuthError",
        "TransportError",
        "RuntimeError",
    ]
    texts = []
    for error in errors:
        tb = error.__traceback__
        while tb is not None and not in_package(tb.tb_frame.f_code.co_filename):
            tb = tb.tb_next  # the test's own frames hold the key on purpose: start at the library's
        info = (type(error), error, tb)
        for mode in XMODES:
            for include_vars in (False, True):
                formatter = FormattedTB(mode=mode, theme_name="nocolor", include_vars=include_vars)
                texts.append(formatter.stb2text(formatter.structured_traceback(*info)))
        verbose = VerboseTB(theme_name="nocolor", include_vars=True)
        texts.append(verbose.stb2text(verbose.structured_traceback(*info)))
    assert any("client.py" in t and "self = " in t for t in texts)  # the frames and their variables were shown
    for text in texts:
        assert KEY not in text


def test_the_http_client_imports_without_pandas_traitlets_widgets_or_pil(tmp_path: Path) -> None:
    import subprocess
    import sys

    # flux_nb/__init__.py imports the notebook layer; load the http package beneath it on its own.
    code = (
        "import sys, types\n"
        f"pkg = types.ModuleType('flux_nb'); pkg.__path__ = [{str(ROOT / 'flux_nb')!r}]\n"
        "sys.modules['flux_nb'] = pkg\n"
        "import flux_nb.http.client\n"
        "heavy = ('pandas', 'traitlets', 'ipywidgets', 'IPython', 'PIL')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert done.stdout.strip() == "[]", done.stdout


async def test_an_answer_echoing_the_key_is_masked_in_the_error_and_its_answer() -> None:
    def echo(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, json={"detail": f"invalid key {request.headers['x-key']}"})

    transport = httpx.MockTransport(echo)
    async with AsyncFluxClient(KEY, "http://127.0.0.1:8800", transport=transport) as client:
        with pytest.raises(FluxError) as caught:
            await client.generate(FluxRequest("x", seed=1, width=64, height=64))
    error = caught.value
    assert error.status == 403 and error.answer == {"detail": "invalid key ***"}
    assert KEY not in str(error) and KEY not in library_frames(error)
