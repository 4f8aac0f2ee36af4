"""The panel as a newcomer sees it in JupyterLab, light and dark: measured from the rendered page.

Reuses test_browser's server, browser and page fixtures (one JupyterLab, headless Debian chromium).
"""

from __future__ import annotations

import pytest

from tests.test_browser import (  # noqa: F401  (fixtures)
    CONTRAST_JS,
    Lab,
    browser,
    browser_requirements,
    error_text,
    lab,
    open_and_run_all,
    page,
    write_notebook,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(900)]

#: Each star's glyph colour against the background behind the button, and which glyph class it draws.
STARS_JS = """
() => {
 const behind = (element) => {
   for (let e = element; e; e = e.parentElement) {
     const c = getComputedStyle(e).backgroundColor;
     if (c !== 'transparent' && !c.endsWith(', 0)')) return c;
   }
   return 'rgb(255, 255, 255)';
 };
 return [...document.querySelectorAll('.flux-card .flux-star')].map((b) => {
  const glyph = b.querySelector('i');
  return {glyph: [...glyph.classList].filter((c) => c.startsWith('fa-')).join(' '),
          drawn: getComputedStyle(glyph, '::before').content,
          fontWeight: getComputedStyle(glyph, '::before').fontWeight,
          color: getComputedStyle(glyph).color, background: behind(b)};
 });
}
"""
#: Whether the text of the W and H boxes fits inside them (their spin buttons left aside).
SIZE_FITS_JS = """
() => [...document.querySelectorAll('.flux-panel .widget-inline-hbox')]
  .filter((box) => ['W', 'H'].includes(box.querySelector('label')?.innerText.trim()))
  .map((box) => {
    const input = box.querySelector('input'), style = getComputedStyle(input);
    const ruler = document.createElement('canvas').getContext('2d');
    ruler.font = `${style.fontWeight} ${style.fontSize} ${style.fontFamily}`;
    const room = input.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight) - 16;
    return {value: input.value, text: ruler.measureText(input.value).width, room};
  })
"""
STARS_SETTLED = """
() => { const look = (n) => { const b = document.querySelector(`.flux-card .flux-star-${n}`);
  return [...b.classList].filter((c) => c.startsWith('mod-')).join(' ') + b.querySelector('i').className; };
  return look(1) === look(3) && look(3) !== look(5); }
"""
LINES_JS = """
(selector) => [...document.querySelectorAll(selector)].map((e) =>
  Math.round(e.getBoundingClientRect().height / parseFloat(getComputedStyle(e).lineHeight)))
"""
# ipywidgets' own page stylesheet (as nbclassic loads it) sets this, 3.68:1 on white.
NBCLASSIC_ERROR_COLOUR = ":root, body { --jp-error-color1: #f44336 !important; }"


def box(tab: object, selector: str) -> dict[str, float]:
    return tab.eval_on_selector(
        selector, "e => { const r = e.getBoundingClientRect(); return {w: r.width, h: r.height}; }"
    )


def luminance(rgb: tuple[float, float, float]) -> float:
    def channel(v: float) -> float:
        v /= 255
        return v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(v) for v in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def rgb(css: str, over: str = "rgb(255, 255, 255)") -> tuple[float, float, float]:
    """ "rgb(1, 2, 3)", or "rgba(1, 2, 3, 0.8)" painted over the opaque colour ``over``, as three numbers."""
    parts = [float(v) for v in css[css.index("(") + 1 : -1].replace("/", ",").split(",")]
    alpha = parts[3] if len(parts) > 3 else 1.0
    below = rgb(over) if alpha < 1 else (0.0, 0.0, 0.0)
    r, g, b = (top * alpha + under * (1 - alpha) for top, under in zip(parts[:3], below, strict=True))
    return r, g, b


def contrast(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
    x, y = luminance(a), luminance(b)
    return (max(x, y) + 0.05) / (min(x, y) + 0.05)


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_the_panel_reads_clearly_for_a_newcomer(lab: Lab, page: object, theme: str) -> None:  # noqa: F811
    lab.theme(theme)
    write_notebook(lab, f"first-{theme}.ipynb", "%load_ext flux_nb", "flux.panel()")
    open_and_run_all(page, lab, f"first-{theme}.ipynb")
    page.wait_for_selector(".flux-panel .flux-prompt textarea", state="visible", timeout=90_000)

    problems: list[str] = []  # every check is made, so one run names all that is wrong
    generate = box(page, ".flux-panel button.flux-generate")
    formats = page.eval_on_selector_all(
        ".flux-panel .widget-toggle-buttons button", "bs => bs.map(b => b.getBoundingClientRect().width)"
    )
    if len(formats) != 3 or sum(formats) > 2 * generate["w"]:
        problems.append(f"format buttons {formats} px wide beside Generate's {generate['w']} px")
    fits = page.evaluate(SIZE_FITS_JS)
    if len(fits) != 2 or any(f["text"] > f["room"] for f in fits):
        problems.append(f"W/H text clipped: {fits}")

    page.click(".flux-panel button.flux-generate")  # no prompt yet: the error line
    page.wait_for_function("() => document.querySelector('.flux-panel .flux-error').innerText.includes('prompt')")
    page.add_style_tag(content=NBCLASSIC_ERROR_COLOUR)
    [error] = page.evaluate(CONTRAST_JS, ".flux-panel .flux-error .widget-html-content > div")
    if error["ratio"] < 4.5:
        problems.append(f"error line at {error['ratio']:.2f}:1 under nbclassic's --jp-error-color1")

    page.fill(".flux-panel .flux-prompt textarea", "a lighthouse at dusk, first hour")
    page.click(".flux-panel button.flux-generate")
    page.wait_for_selector(".flux-gallery .flux-card img.flux-result-image", timeout=90_000)
    page.wait_for_function("() => document.querySelector('.flux-panel .flux-status').innerText.startsWith('done')")
    assert error_text(page) == ""
    lines = page.evaluate(LINES_JS, ".flux-card .flux-caption")
    if not lines or any(n > 2 for n in lines):
        problems.append(f"card caption lines: {lines}")

    page.click(".flux-card .flux-star-3")
    page.wait_for_function("() => document.querySelector('.flux-panel .flux-status').innerText.includes('rated')")
    status = page.inner_text(".flux-panel .flux-status")
    if not status.startswith("done"):
        problems.append(f"status after a rating: {status!r}")
    page.wait_for_function(STARS_SETTLED)  # the lit stars' new look has reached the page
    stars = page.evaluate(STARS_JS)
    lit, unlit = stars[0], stars[4]
    if (lit["glyph"], lit["drawn"], lit["fontWeight"]) == (unlit["glyph"], unlit["drawn"], unlit["fontWeight"]):
        problems.append(f"lit and unlit stars draw the same glyph: {lit}")
    for star in (lit, unlit):
        ratio = contrast(rgb(star["color"], star["background"]), rgb(star["background"]))
        if ratio < 3.0:
            problems.append(f"star glyph at {ratio:.2f}:1 on its button: {star}")
    ratios = [f"{contrast(rgb(s['color'], s['background']), rgb(s['background'])):.2f}" for s in (lit, unlit)]
    print(
        f"\n{theme}: format buttons {formats} px (Generate {generate['w']} px); W/H text {fits[0]['text']:.1f} px"
        f" in {fits[0]['room']:.0f} px; error line {error['ratio']:.2f}:1; caption lines {lines}; stars {ratios}:1"
    )
    assert not problems, "\n".join(problems)
