"""The flux-nb command: generate from a shell, read the history, refuse to serve without keys."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from flux_nb import cli


def flux_nb(
    *args: str, cwd: Path, env: dict[str, str] | None = None, own_process: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run ``flux-nb ARGS`` in ``cwd``: through ``cli.main(argv)`` in this process, as the console script calls it
    (``own_process``: ``python -m flux_nb`` in a child process), with its output and exit code."""
    base = {k: v for k, v in os.environ.items() if k not in ("BFL_API_KEY", "FLUX_NB_ENDPOINT")}
    if own_process:
        command = [sys.executable, "-m", "flux_nb", *args]
        return subprocess.run(command, cwd=cwd, capture_output=True, text=True, env={**base, **(env or {})})
    saved_env, saved_cwd = dict(os.environ), Path.cwd()
    out, err = io.StringIO(), io.StringIO()
    try:
        os.environ.clear()
        os.environ.update({**base, **(env or {})})
        os.chdir(cwd)
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = cli.main(list(args))
            except SystemExit as exc:  # argparse's usage errors and --help
                code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(["flux-nb", *args], code, out.getvalue(), err.getvalue())


@contextmanager
def serving(
    *args: str,
    env: dict[str, str],
    output: dict[str, str] | None = None,
    announced: list[str] | None = None,
    pids: list[int] | None = None,
) -> Iterator[str]:
    """Run ``flux-nb serve --port 0 ARGS`` and yield its base URL; stopped on exit.

    ``output``, when given, receives the server's whole ``stdout`` and ``stderr`` once it has stopped;
    ``announced``, the addresses it printed on starting (the polling listener's second, with --poll-port);
    ``pids``, the server process's pid.
    """
    base = {k: v for k, v in os.environ.items() if k not in ("BFL_API_KEY", "FLUX_NB_ENDPOINT", "FLUX_NB_SERVER_KEYS")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "flux_nb", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**base, **env},
    )
    first = ""
    if pids is not None:
        pids.append(proc.pid)
    try:
        first = proc.stdout.readline() if proc.stdout else ""
        assert "http://127.0.0.1:" in first, first + (proc.stderr.read() if proc.stderr else "")
        if announced is not None:
            lines = [first] + ([proc.stdout.readline()] if "--poll-port" in args and proc.stdout else [])
            announced.extend("http://" + line.split("http://", 1)[1].split()[0] for line in lines)
        yield "http://" + first.split("http://", 1)[1].split()[0]
    finally:
        proc.terminate()
        try:  # a bound, not a measure: on a loaded machine Ray Serve alone can take tens of seconds to stop
            rest, errors = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            rest, errors = proc.communicate()
            raise AssertionError(f"flux-nb serve {' '.join(args)} did not stop within 120 s of SIGTERM") from None
        if output is not None:
            output.update(stdout=first + rest, stderr=errors)


@pytest.mark.slow
def test_serve_checks_keys_whenever_they_are_given() -> None:
    with serving(env={"FLUX_NB_SERVER_KEYS": "cli-key-1, cli-key-2"}) as url:
        submit, body = f"{url}/v1/flux-2-klein-4b", {"prompt": "x", "width": 64, "height": 64}
        assert httpx.post(submit, json=body).status_code == 403
        assert httpx.post(submit, json=body, headers={"x-key": "cli-key-3"}).status_code == 403
        assert httpx.get(f"{url}/v1/credits").status_code == 403
        assert httpx.post(submit, json=body, headers={"x-key": "cli-key-1"}).status_code == 200
        assert httpx.get(f"{url}/v1/credits", headers={"x-key": "cli-key-2"}).status_code == 200


@pytest.mark.slow
def test_serve_without_keys_accepts_any_request() -> None:
    with serving(env={"FLUX_NB_SERVER_KEYS": ""}) as url:
        assert httpx.get(f"{url}/v1/credits").status_code == 200


@pytest.mark.slow
def test_serve_with_a_poll_port_points_polling_urls_at_a_second_listener() -> None:
    announced: list[str] = []
    with serving("--poll-port", "0", env={"FLUX_NB_SERVER_KEYS": ""}, announced=announced) as url:
        main, polls = (httpx.URL(address) for address in announced)
        assert polls.host == "localhost" and polls.port != main.port
        body = httpx.post(f"{url}/v1/flux-2-klein-4b", json={"prompt": "x", "width": 64, "height": 64}).json()
        polling_url = httpx.URL(body["polling_url"])
        assert (polling_url.host, polling_url.port, polling_url.path) == (polls.host, polls.port, "/v1/get_result")
        deadline = time.monotonic() + 10
        while (answer := httpx.get(polling_url).json())["status"] != "Ready" and time.monotonic() < deadline:
            time.sleep(0.05)
        sample = answer["result"]["sample"]
        assert sample.startswith(f"{url}/delivery/")  # delivery stays on the main address
        assert Image.open(io.BytesIO(httpx.get(sample).content)).size == (64, 64)
        stats = httpx.get(f"{url}/_flux/stats").json()
        assert stats["poll_listener_requests"] == {"GET /v1/get_result": stats["polls"]}


def test_generate_copies_the_image_and_history_lists_it(server: Any, tmp_path: Path) -> None:
    out = flux_nb(
        "generate",
        "a kite over the dunes",
        "--seed",
        "3",
        "-W",
        "128",
        "-H",
        "96",
        "-o",
        "kite.jpeg",
        "--endpoint",
        server.url,
        cwd=tmp_path,
        own_process=True,  # once as the command really runs: python -m flux_nb in a process of its own
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("kite.jpeg  (seed 3 · 128×96 · flux-2-klein-4b")
    assert Image.open(tmp_path / "kite.jpeg").size == (128, 96)
    history = flux_nb("history", "-n", "5", cwd=tmp_path)
    assert history.returncode == 0 and "a kite over the dunes" in history.stdout and "ready" in history.stdout


def test_generate_with_bad_input_is_one_line_and_exit_2(server: Any, tmp_path: Path) -> None:
    out = flux_nb("generate", "x", "-W", "60", "--endpoint", server.url, cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == "flux-nb: width 60 is below the minimum of 64 pixels"
    assert server.stats()["http_requests"] == {}


def test_history_of_an_empty_folder(tmp_path: Path) -> None:
    out = flux_nb("history", "--history-dir", "nothing-here", cwd=tmp_path)
    assert out.returncode == 0 and "no history in nothing-here" in out.stdout


def test_serve_require_key_refuses_to_start_without_keys(tmp_path: Path) -> None:
    out = flux_nb("serve", "--port", "0", "--require-key", cwd=tmp_path, env={"FLUX_NB_SERVER_KEYS": ""})
    assert out.returncode == 2 and "FLUX_NB_SERVER_KEYS" in out.stderr


@pytest.mark.slow
def test_serve_with_an_unavailable_engine_says_why(tmp_path: Path) -> None:
    out = flux_nb(
        "serve",
        "--port",
        "0",
        "--engine",
        "diffusers",
        "--model",
        str(tmp_path / "none"),
        "--device",
        "cpu",
        cwd=tmp_path,
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 2
    assert "flux-nb serve:" in out.stderr and ("Download them first" in out.stderr or "pip install" in out.stderr)
