"""`dvc plots show` / `dvc plots diff` on a real pipeline run, opened in headless Chromium with the network cut."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclf import smoke_copy

# Both cases run DVC in the shared `trained_project`: one after the other, the module on one worker (`--dist
# loadfile`, Makefile); no other module runs DVC there.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.browser]

LINE_PLOT_AXIS_TITLES = {"epoch", "accuracy", "cross-entropy loss", "learning rate"}


def _render(browser: str, page: Path, tmp_path: Path) -> tuple[str, Path]:
    """The page's DOM after its scripts ran, and a screenshot. Every request goes to a proxy on a closed port, so a
    plot that needs a CDN script stays blank here."""
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
              f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1900", "--virtual-time-budget=20000"]
    dom = subprocess.run([*common, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180,
                         check=False).stdout
    screenshot = page.with_suffix(".png")  # kept in pytest's temporary directory for a look
    subprocess.run([*common, f"--screenshot={screenshot}", page.as_uri()], capture_output=True, timeout=180,
                   check=False)
    return dom, screenshot


def _texts(dom: str, role: str) -> list[str]:
    """The text of every SVG element Vega drew in groups of `role` (axis-title, axis-label, ...)."""
    groups = re.findall(rf'<g class="mark-text role-{role}[^"]*"[^>]*>(.*?)</g>', dom, flags=re.S)
    return [re.sub(r"<[^>]+>", "", text) for group in groups for text in re.findall(r"<text[^>]*>(.*?)</text>", group)]


def _axis_labels(dom: str) -> list[list[str]]:
    """Each axis's tick labels, blanks (ticks drawn without a label) left out."""
    groups = re.findall(r'<g class="mark-text role-axis-label[^"]*"[^>]*>(.*?)</g>', dom, flags=re.S)
    return [[label for text in re.findall(r"<text[^>]*>(.*?)</text>", group) if (label := re.sub(r"<[^>]+>", "", text))]
            for group in groups]


def _line_colours(dom: str) -> set[str]:
    groups = re.findall(r'<g class="mark-line role-mark[^"]*"[^>]*>(.*?)</g>', dom, flags=re.S)
    return {colour for group in groups for colour in re.findall(r'<path[^>]*stroke="([^"]+)"', group)}


@pytest.mark.parametrize("command", [["plots", "show"], ["plots", "diff", "HEAD"]], ids=["show", "diff"])
def test_plots_page_draws_offline_with_labelled_axes_and_a_colour_per_model(trained_project, tmp_path, command,
                                                                            chromium):
    browser = chromium
    out = tmp_path / "dvc_plots"
    smoke_copy.dvc(trained_project, *command, "--out", str(out))
    page = out / "index.html"
    html = page.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?https?:""", html), "the page loads something from the network"

    dom, screenshot = _render(browser, page, tmp_path)
    assert dom.count('class="mark-line role-mark') >= 4, "the four training-curve plots drew no lines"
    assert dom.count('class="mark-rect role-mark') >= 2, "the confusion matrices drew no cells"
    axis_titles = set(_texts(dom, "axis-title"))
    assert axis_titles >= LINE_PLOT_AXIS_TITLES, f"axis titles: {sorted(axis_titles)}"
    assert not {"y", "dvc_inferred_y_value"} & axis_titles
    assert {"Loss per epoch, both models", "Learning rate per epoch (log scale)"} <= set(_texts(dom, "title-text"))
    # The learning rate (1e-3 constant in the smoke run) must show as a value, not as "0".
    assert any(re.fullmatch(r"\de-\d", label) for label in _texts(dom, "axis-label")), "no 1e-3-style tick"
    assert len(_line_colours(dom)) >= 2, "both models' lines are drawn in one colour"
    # Half-epoch ticks formatted as whole numbers read "1 2 2 3 3" on a 3-epoch axis: only whole epochs are labelled.
    assert all(len(labels) == len(set(labels)) for labels in _axis_labels(dom)), _axis_labels(dom)
    # Vega-Lite draws a strokeDash legend's symbols in a transparent stroke: "training"/"validation" had no line.
    symbols = re.findall(r'<g class="mark-symbol role-legend-symbol[^"]*"[^>]*>(.*?)</g>', dom, flags=re.S)
    strokes = [stroke for group in symbols for stroke in re.findall(r'<path[^>]*\bstroke="([^"]+)"', group)]
    assert strokes and "transparent" not in strokes, f"legend symbols drawn in {strokes}"
    pixels = np.asarray(Image.open(screenshot).convert("L"), dtype=float)
    assert pixels.std() > 10, "the plots page rendered blank"
