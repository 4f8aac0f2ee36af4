"""The panel and the quickstart in a real JupyterLab, driven through headless Chromium.

Needs Debian's chromium (``.ci/run`` installs it) and the Python ``playwright`` package;
skipped with the reason when either is missing, except under CI (``CI`` set), where a missing
one fails the tests. Screenshots go to ``artifacts/``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-dev-shm-usage",
]

# A slow, shared machine can need minutes for JupyterLab, the kernel and Chromium together.
pytestmark = [pytest.mark.browser, pytest.mark.timeout(900)]


def missing_requirement() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed"
    if not Path(CHROMIUM).exists():
        return "Debian's chromium is not installed (apt-get install chromium)"
    return None


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="module", autouse=True)
def browser_requirements() -> None:
    """Skip without chromium or playwright; under CI, fail instead: the suite must not pass by skipping."""
    missing = missing_requirement()
    if missing is None:
        return
    if under_ci():
        pytest.fail(f"{missing}; CI must run the browser tests, not skip them", pytrace=False)
    pytest.skip(missing)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Lab:
    """A JupyterLab server on 127.0.0.1 with a token and a temporary root folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.token = secrets.token_hex(16)
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("BFL_API_KEY", "FLUX_NB_ENDPOINT")}
        env["JUPYTER_CONFIG_DIR"] = str(root / ".jupyter-config")
        # Answer JupyterLab's "get notified about news?" question up front, so it never covers the page.
        settings = root / ".lab-settings"
        notification = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
        notification.parent.mkdir(parents=True, exist_ok=True)
        notification.write_text('{"fetchNews": "false", "checkForUpdates": false}')
        env["JUPYTERLAB_SETTINGS_DIR"] = str(settings)
        self.log = open(root / "lab.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyterlab",
                "--no-browser",
                "--ip=127.0.0.1",
                f"--port={self.port}",
                f"--IdentityProvider.token={self.token}",
                f"--ServerApp.root_dir={root}",
                "--allow-root",
                "--LabApp.news_url=",
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=root,
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(f"{self.base}/api/status?token={self.token}", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"JupyterLab did not start: {(root / 'lab.log').read_text()[-2000:]}")

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, notebook: str) -> str:
        return f"{self.base}/lab/tree/{notebook}?token={self.token}&reset"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("lab")
    server = Lab(root)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: object) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    context.close()


def shot(page: object, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    return path


def open_and_run_all(page: object, lab: Lab, notebook: str) -> None:
    page.goto(lab.url(notebook))
    page.wait_for_selector(".jp-Notebook .jp-Cell", state="visible")
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)
    page.click(".jp-Notebook .jp-Cell >> nth=0")
    page.get_by_role("menuitem", name="Run", exact=True).click()  # the menu bar's Run, not a cell's text
    page.locator("li[data-command='runmenu:run-all']").click()


def loaded_images(page: object, selector: str) -> list[dict[str, int]]:
    return page.eval_on_selector_all(
        selector, "els => els.map(e => ({w: e.naturalWidth, h: e.naturalHeight, done: e.complete ? 1 : 0}))"
    )


def newest_record(root: Path) -> dict[str, object]:
    """The newest row of the kernel's history (``.flux/history.sqlite`` in the notebook folder), read-only."""
    with sqlite3.connect(f"file:{root / '.flux' / 'history.sqlite'}?mode=ro", uri=True) as db:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM records ORDER BY created_at DESC, rowid DESC LIMIT 1").fetchone()
    assert row is not None, "the history is empty"
    return dict(row)


def error_text(page: object) -> str:
    """The panel's error area: empty unless the panel shows an error or a warning."""
    return page.inner_text(".flux-panel .flux-error").strip()


def test_panel_generates_remixes_and_edits(lab: Lab, page: object, tmp_path: Path) -> None:
    setup = "from PIL import Image\nsketch = Image.new('RGB', (64, 64), 'navy')\npanel = flux.panel()\npanel"
    source = new_notebook(cells=[new_code_cell("%load_ext flux_nb"), new_code_cell(setup)])
    source.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(source, lab.root / "panel.ipynb")
    started = time.monotonic()
    open_and_run_all(page, lab, "panel.ipynb")
    page.wait_for_selector(".flux-panel .flux-prompt textarea", state="visible", timeout=90_000)
    page.fill(".flux-panel .flux-prompt textarea", "a lighthouse at dusk, browser test")
    page.click(".flux-panel button.flux-generate")
    page.wait_for_selector(".flux-gallery .flux-card img.flux-result-image", timeout=60_000)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.flux-card img.flux-result-image')].every(i => i.naturalWidth > 0)"
    )
    images = loaded_images(page, ".flux-card img.flux-result-image")
    assert len(images) == 1 and images[0]["w"] > 0 and images[0]["done"] == 1
    caption = page.inner_text(".flux-card .flux-caption")
    assert caption.startswith("seed ") and "1024×1024" in caption
    seed = int(caption.split()[1])
    assert error_text(page) == ""
    assert json.loads(newest_record(lab.root)["input_hashes"]) == []
    shot(page, "panel-generated")

    page.fill(".flux-panel .flux-prompt textarea", "something else entirely")
    page.click(".flux-card button.flux-remix")
    page.wait_for_function(
        "() => document.querySelector('.flux-panel .flux-prompt textarea').value.includes('lighthouse')"
    )
    seed_value = page.input_value(".flux-panel .widget-inline-hbox:has(label:text('Seed')) input")
    assert int(seed_value) == seed

    reference = tmp_path / "reference.png"
    Image.new("RGB", (320, 240), (230, 40, 40)).save(reference)
    with page.expect_file_chooser() as chooser:
        page.click(".flux-panel .flux-upload")
    chooser.value.set_files(str(reference))
    page.wait_for_selector(".flux-panel .flux-slot img", timeout=30_000)
    upload_label = "() => document.querySelector('.flux-panel .flux-upload').textContent.trim()"
    page.wait_for_function(f"{upload_label}.endsWith('References (1)')")  # the attached count, not "(0)"
    page.fill(".flux-panel .flux-prompt textarea", "the same lighthouse, as an edit of the red reference")
    page.click(".flux-panel button.flux-generate")
    page.wait_for_function("() => document.querySelectorAll('.flux-card img.flux-result-image').length == 2")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.flux-card img.flux-result-image')].every(i => i.naturalWidth > 0)"
    )
    newest = page.inner_text(".flux-card .flux-caption >> nth=0")
    assert newest.startswith(f"seed {seed}")  # the remix locked the seed
    assert error_text(page) == ""  # no error and no warning (e.g. "could not reach")
    record = newest_record(lab.root)
    assert record["prompt"] == "the same lighthouse, as an edit of the red reference" and record["status"] == "ready"
    sent = json.loads(record["input_hashes"])
    assert sent == [hashlib.sha256(reference.read_bytes()).hexdigest()]  # the upload, byte for byte
    assert (lab.root / ".flux" / "inputs" / f"{sent[0]}.png").read_bytes() == reference.read_bytes()
    assert "(not billed: local server)" in page.inner_text(".flux-panel")
    shot(page, "panel-edited")

    page.fill(".flux-panel .flux-variable input", "sketch")  # a variable of the notebook's namespace
    page.click(".flux-panel button.flux-add-variable")
    page.wait_for_function("() => document.querySelectorAll('.flux-panel .flux-slot img').length == 2")
    page.wait_for_function(f"{upload_label}.endsWith('References (2)')")
    assert error_text(page) == "" and page.input_value(".flux-panel .flux-variable input") == ""
    print(f"\npanel browser test: {time.monotonic() - started:.1f} s")


def test_quickstart_renders_its_images_in_the_browser(lab: Lab, page: object) -> None:
    shutil.copy(ROOT / "notebooks" / "01_quickstart.ipynb", lab.root / "01_quickstart.ipynb")
    started = time.monotonic()
    open_and_run_all(page, lab, "01_quickstart.ipynb")
    page.wait_for_function(
        "() => document.querySelectorAll('.jp-OutputArea-output .flux-result img').length >= 5", timeout=120_000
    )
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
    images = loaded_images(page, ".jp-OutputArea-output .flux-result img")
    assert len(images) >= 5 and all(i["w"] > 0 and i["done"] for i in images)
    assert page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").count() == 0
    assert page.locator(".flux-error").count() == 0
    shot(page, "quickstart")
    print(f"\nquickstart browser test: {time.monotonic() - started:.1f} s")
