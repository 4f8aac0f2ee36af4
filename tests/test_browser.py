"""The panel and the quickstart in a real JupyterLab and Notebook 7, driven through headless Chromium.

One Jupyter server serves both front ends (JupyterLab at ``/lab``, Notebook 7 at ``/notebooks``);
the theme is switched between tests through the user settings the server reads on every page load,
so no test pays for a second server. flux_nb's own text (captions, errors, progress lines, the sweep
summary, the panel's credit line) must reach 4.5:1 contrast, computed from the rendered styles.

Needs Debian's chromium (``.ci/run`` installs it) and the Python ``playwright`` package;
skipped with the reason when either is missing, except under CI (``CI`` set), where a missing
one fails the tests. Screenshots go to a temporary folder, or to ``FLUX_NB_SCREENSHOTS`` when set
(``FLUX_NB_SCREENSHOTS=docs/screenshots`` refreshes the README's pictures).
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
SCREENSHOTS_ENV = "FLUX_NB_SCREENSHOTS"
THEMES = {"light": "JupyterLab Light", "dark": "JupyterLab Dark"}
#: Where each front end opens a notebook (both served by the one server).
FRONT_ENDS = {"jupyterlab": "/lab/tree/{}", "notebook7": "/notebooks/{}"}
#: flux_nb's own text; each must read at 4.5:1 or more (WCAG AA for normal text).
OWN_TEXT = (".flux-caption", ".flux-error", ".flux-summary", ".flux-credits")
MIN_CONTRAST = 4.5
# The contrast of each element's text against what is painted behind it (WCAG 2 relative luminance);
# translucent colours are composited over the backgrounds below them, up to the page.
CONTRAST_JS = """
(selector) => {
  const parse = (c) => {
    const p = c.match(/rgba?\\(([^)]+)\\)/)[1].split(/[\\s,\\/]+/).filter(Boolean).map(Number);
    return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1];
  };
  const over = (top, below) => [0, 1, 2].map((i) => top[i] * top[3] + below[i] * (1 - top[3])).concat([1]);
  const behind = (element) => {
    const layers = [];
    for (let e = element; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c[3] > 0) { layers.push(c); if (c[3] >= 1) break; }
    }
    return layers.reverse().reduce((below, layer) => over(layer, below), [255, 255, 255, 1]);
  };
  const luminance = (c) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]);
  };
  return [...document.querySelectorAll(selector)].filter((e) => e.innerText.trim()).map((e) => {
    const background = behind(e);
    const a = luminance(over(parse(getComputedStyle(e).color), background)), b = luminance(background);
    return {ratio: (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05), text: e.innerText.slice(0, 50),
            color: getComputedStyle(e).color, background: background.slice(0, 3)};
  });
}
"""
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
    """A Jupyter server (JupyterLab and Notebook 7) on 127.0.0.1 with a token and a temporary root folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.token = secrets.token_hex(16)
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("BFL_API_KEY", "FLUX_NB_ENDPOINT")}
        env["JUPYTER_CONFIG_DIR"] = str(root / ".jupyter-config")
        # Answer JupyterLab's "get notified about news?" question up front, so it never covers the page.
        self.settings = root / ".lab-settings"
        notification = self.settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
        notification.parent.mkdir(parents=True, exist_ok=True)
        notification.write_text('{"fetchNews": "false", "checkForUpdates": false}')
        self.theme("light")
        env["JUPYTERLAB_SETTINGS_DIR"] = str(self.settings)
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

    def theme(self, name: str) -> None:
        """Use ``name`` ("light" or "dark") from the next page load on (both front ends read this setting)."""
        themes = self.settings / "@jupyterlab" / "apputils-extension" / "themes.jupyterlab-settings"
        themes.parent.mkdir(parents=True, exist_ok=True)
        themes.write_text(json.dumps({"theme": THEMES[name]}))

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, notebook: str, front_end: str = "jupyterlab") -> str:
        reset = "&reset" if front_end == "jupyterlab" else ""
        return f"{self.base}{FRONT_ENDS[front_end].format(notebook)}?token={self.token}{reset}"

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


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: ``FLUX_NB_SCREENSHOTS`` when set, else a temporary folder (never the source tree)."""
    chosen = os.environ.get(SCREENSHOTS_ENV)
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def page(browser: object) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    context.close()


def shot(page: object, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    return path


def write_notebook(lab: Lab, name: str, *cells: str) -> None:
    source = new_notebook(cells=[new_code_cell(cell) for cell in cells])
    source.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(source, lab.root / name)


# True once the first code cell is queued or has run: its prompt reads [*] or [1], not [ ].
FIRST_CELL_STARTED = (
    "() => /\\[(\\*|\\d+)\\]/.test(document.querySelector('.jp-Notebook .jp-CodeCell .jp-InputPrompt').innerText)"
)


def open_and_run_all(page: object, lab: Lab, notebook: str, front_end: str = "jupyterlab") -> None:
    """Open ``notebook`` and run all its cells from the menu bar, again if a busy page swallowed the click."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    page.goto(lab.url(notebook, front_end))
    page.wait_for_selector(".jp-Notebook .jp-Cell", state="visible")
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)
    for _ in range(3):
        try:
            accept_dialogs(page)
            page.click(".jp-Notebook .jp-Cell >> nth=0", timeout=20_000)
            page.get_by_role("menuitem", name="Run", exact=True).click(timeout=20_000)  # the menu bar's, not a cell's
            page.locator("li[data-command='runmenu:run-all']").click(timeout=20_000)
            page.wait_for_function(FIRST_CELL_STARTED, timeout=20_000)
            return
        except PlaywrightTimeoutError:
            if not accept_dialogs(page):
                page.keyboard.press("Escape")  # a menu left open
    raise AssertionError(f"Run All never started the cells of {notebook}")


def accept_dialogs(page: object) -> bool:
    """Accept what a slow page put over the notebook (JupyterLab's kernel choice: its default kernel)."""
    buttons = page.locator(".jp-Dialog .jp-mod-accept").all()
    for button in buttons:
        button.click()
    return bool(buttons)


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


def test_panel_generates_remixes_and_edits(lab: Lab, page: object, tmp_path: Path, screenshots: Path) -> None:
    from playwright.sync_api import expect

    sketch = "from PIL import Image\nsketch = Image.new('RGB', (64, 64), 'navy')  # a variable to take as a reference"
    write_notebook(lab, "panel.ipynb", "%load_ext flux_nb", "panel = flux.panel()\npanel", sketch)
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
    shot(page, screenshots, "panel-generated")

    page.fill(".flux-panel .flux-prompt textarea", "something else entirely")
    page.click(".flux-card button.flux-remix")
    page.wait_for_function(
        "() => document.querySelector('.flux-panel .flux-prompt textarea').value.includes('lighthouse')"
    )
    seed_box = page.locator(".flux-panel .widget-inline-hbox:has(label:text('Seed')) input")
    expect(seed_box).to_have_value(str(seed))  # the form's fields arrive one by one: wait for the seed's

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
    shot(page, screenshots, "panel-edited")

    page.fill(".flux-panel .flux-variable input", "sketch")  # a variable of the notebook's namespace
    page.click(".flux-panel button.flux-add-variable")
    page.wait_for_function("() => document.querySelectorAll('.flux-panel .flux-slot img').length == 2")
    page.wait_for_function(f"{upload_label}.endsWith('References (2)')")
    assert error_text(page) == "" and page.input_value(".flux-panel .flux-variable input") == ""
    print(f"\npanel browser test: {time.monotonic() - started:.1f} s")


def test_quickstart_renders_its_images_in_the_browser(lab: Lab, page: object, screenshots: Path) -> None:
    import nbformat

    notebook = nbformat.read(ROOT / "notebooks" / "01_quickstart.ipynb", as_version=4)
    for cell in notebook.cells:  # the committed outputs go: every image seen below is made by this run
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(notebook, lab.root / "01_quickstart.ipynb")
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
    shot(page, screenshots, "quickstart")
    print(f"\nquickstart browser test: {time.monotonic() - started:.1f} s")


# The top-left pixel of the first grid shown, once it has loaded.
GRID_CORNER_JS = """
() => {
  const img = document.querySelector('.jp-OutputArea-output img.flux-grid');
  if (!img || !img.complete || !img.naturalWidth) return null;
  const canvas = document.createElement('canvas');
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  const context = canvas.getContext('2d');
  context.drawImage(img, 0, 0);
  return Array.from(context.getImageData(1, 1, 1, 1).data).slice(0, 3);
}
"""


def contrast(page: object, selector: str) -> list[dict[str, object]]:
    """The contrast ratio of each visible element matching ``selector`` (see CONTRAST_JS)."""
    return page.evaluate(CONTRAST_JS, selector)


@pytest.fixture
def themed(lab: Lab, request: pytest.FixtureRequest) -> Iterator[str]:
    """The theme the test asks for (its ``theme`` parameter), back to light afterwards."""
    theme = request.getfixturevalue("theme")
    lab.theme(theme)
    yield theme
    lab.theme("light")


THEMED_CELLS = (
    "%load_ext flux_nb",
    # A server whose tasks take 3 s, so the live line has time to move.
    "from flux_nb.server.config import ServerConfig\n"
    "from flux_nb.server.embedded import EmbeddedServer\n"
    "slow = EmbeddedServer(ServerConfig(latency=3.0)).start()\n"
    "flux.endpoint = slow.url",
    "%%flux --seed 7 --size 512x512\na lighthouse at dusk, {label}",
    "%%flux --seed 1,2 --size 256x256\na harbour at dawn, {label}",
    "flux.panel()",
    "%%flux --size 40x40\nsomething too small to draw",  # last: a failing cell stops Run All
)


@pytest.mark.parametrize("theme", ["light", "dark"])
@pytest.mark.parametrize("front_end", ["jupyterlab", "notebook7"])
def test_own_text_reads_and_progress_moves_in_each_front_end_and_theme(
    lab: Lab, page: object, front_end: str, theme: str, themed: str, screenshots: Path
) -> None:
    label = f"{front_end} {theme}"  # a prompt of its own: never a cache hit of another run
    name = f"themed-{front_end}-{theme}.ipynb"
    write_notebook(lab, name, *(cell.format(label=label) for cell in THEMED_CELLS))
    started = time.monotonic()
    open_and_run_all(page, lab, name, front_end)
    assert page.evaluate("() => document.body.dataset.jpThemeLight") == ("true" if theme == "light" else "false")

    # The single request's live line (third cell): read it, then see it change while the request still runs.
    line = "document.querySelectorAll('.jp-Notebook .jp-Cell')[2]?.querySelector('.flux-progress')"
    first = page.wait_for_function(f"() => {line}?.innerText", timeout=90_000).json_value()
    later = page.wait_for_function(
        f"(first) => {{ const text = {line}?.innerText; return text && text !== first && text; }}",
        arg=first,
        timeout=30_000,
    ).json_value()
    spinning = page.evaluate(f"() => !!{line}?.querySelector('.flux-spinner')")  # CSS, no emoji font needed
    progress_contrast = contrast(page, ".jp-Notebook .flux-progress")
    assert later and later != first and spinning, (first, later)
    assert "⏳" not in page.inner_text(".jp-Notebook")

    page.wait_for_selector(".jp-OutputArea-output .flux-summary", timeout=90_000)
    corner = page.wait_for_function(GRID_CORNER_JS).json_value()
    page.wait_for_selector(".flux-panel .flux-credits", timeout=90_000)
    page.wait_for_selector(".jp-OutputArea-output .flux-error >> visible=true", timeout=30_000)
    measured = {selector: contrast(page, selector) for selector in OWN_TEXT}
    measured[".flux-progress"] = progress_contrast
    shot(page, screenshots, f"themed-{front_end}-{theme}")
    lowest = {selector: min((m["ratio"] for m in found), default=None) for selector, found in measured.items()}
    print(f"\n{label}: contrast " + ", ".join(f"{k} {v:.2f}" for k, v in lowest.items() if v is not None))
    print(f"{label}: live line {first!r} -> {later!r}; {time.monotonic() - started:.1f} s")
    assert (sum(corner) < 3 * 64) == (theme == "dark"), corner  # the sweep's grid follows the notebook's theme
    assert all(found for found in measured.values()), {k: len(v) for k, v in measured.items()}
    for selector, found in measured.items():
        for item in found:
            assert item["ratio"] >= MIN_CONTRAST, (selector, item)


def test_a_star_click_in_the_panel_rates_the_result_in_flux_history(lab: Lab, page: object) -> None:
    write_notebook(lab, "review.ipynb", "%load_ext flux_nb", "panel = flux.panel()\npanel")
    open_and_run_all(page, lab, "review.ipynb")
    page.wait_for_selector(".flux-panel .flux-prompt textarea", state="visible", timeout=90_000)
    page.fill(".flux-panel .flux-prompt textarea", "a kite to be rated, browser test")
    page.click(".flux-panel button.flux-generate")
    page.wait_for_selector(".flux-card .flux-review button.flux-star-4", timeout=60_000)
    # The batch has ended (Generate is usable again): its closing status line cannot overwrite the rating's.
    page.wait_for_selector(".flux-panel button.flux-generate:not([disabled])", timeout=60_000)
    page.click(".flux-card .flux-review button.flux-star-4")
    page.wait_for_function("() => document.querySelector('.flux-panel .flux-status').innerText.includes('rated')")
    assert error_text(page) == ""
    record_id = newest_record(lab.root)["record_id"]
    # The kernel's own view: flux_history, refreshed after the rating, read back from a new cell.
    page.click(".jp-Notebook .jp-Cell >> nth=-1")
    page.keyboard.press("Escape")
    page.keyboard.press("b")
    page.keyboard.press("Enter")
    page.keyboard.type(f"print('rating', int(flux_history.set_index('record_id').loc['{record_id}', 'rating']))")
    page.keyboard.press("Shift+Enter")
    page.wait_for_function("() => document.querySelector('.jp-Notebook').innerText.includes('rating 4')")
