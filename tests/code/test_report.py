"""The HTML report and Markdown summary: self-contained, headline first, escaped; rendered by a real browser."""

from __future__ import annotations

import base64
import dataclasses
import io
import re
import subprocess

import jinja2
import numpy as np
import pytest
from PIL import Image

from imgclf import figures
from imgclf.evaluation import evaluate, paired_tests, report

pytestmark = pytest.mark.duration(seconds=6)  # about, under make test: orders the modules

CLASSES = ["cat", "dog", "<b>ship</b>"]
SECTIONS = ("headline", "metrics", "calibration", "galleries", "both-wrong", "only-transfer-right",
            "only-scratch-right", "top-losses", "most-uncertain", "most-confused", "label-errors", "score-bars",
            "training")


def _tile(image_id: int, size: int = 32) -> report.Tile:
    pixels = np.random.default_rng(image_id).integers(0, 255, (size, size, 3), dtype=np.uint8)
    guesses = {"scratch": report.Guess("dog", 0.8, False), "transfer": report.Guess("cat", 0.6, True)}
    return report.Tile(image_id=image_id, image=pixels, true_class=CLASSES[image_id % 3],
                       original=f"x/{image_id}.jpg", predictions=guesses)


def _inputs(tmp_path, fake_probabilities) -> report.ReportInputs:
    labels = np.arange(30) % 3
    metrics = {}
    for model, accuracy in (("scratch", 0.6), ("transfer", 0.9)):
        scores = fake_probabilities(labels, num_classes=3, accuracy=accuracy, seed=len(model))
        metrics[model] = {**evaluate.classification_metrics(labels, scores, CLASSES),
                          **evaluate.calibration_metrics(labels=labels, probabilities=scores, validation_labels=labels,
                                                         validation_probabilities=scores, bins=15),
                          "images_per_second": 1234.5, "parameter_count": 10_000, "model_size_mb": 1.5}
    figures.reliability_diagrams(metrics, tmp_path / "reliability.png")
    summary = paired_tests.significance(labels % 2 == 0, labels < 3, resamples=200, confidence_level=0.95, seed=0)
    galleries = [report.Gallery(anchor=anchor, title=anchor.replace("-", " "), description="about <these>",
                                groups=[("", [_tile(i) for i in range(4)])], total=9)
                 for anchor in ("both-wrong", "only-transfer-right", "only-scratch-right", "top-losses",
                                "most-uncertain", "label-errors")]
    galleries.insert(5, report.Gallery(anchor="most-confused", title="Most confused", description="pairs",
                                       groups=[("scratch: cat → dog: 3 images", [_tile(1)])], rows=True))
    return report.ReportInputs(
        data={"source": "synthetic", "image_size": 32, "counts": {"train": 10, "val": 5, "test": 30}},
        class_names=CLASSES, metrics=metrics, summary=summary,
        training={"scratch": {"epochs": 3, "training_seconds": 12.0, "phases": {"fit": 3}}, "transfer": {}},
        figures={"reliability": (tmp_path / "reliability.png").read_bytes()}, galleries=galleries,
        score_bars=[report.ScoreBars(tile=_tile(7), classes=CLASSES, scores={"scratch": [0.2, 0.7, 0.1],
                                                                              "transfer": [0.6, 0.3, 0.1]})])


def test_report_is_self_contained_headline_first_and_escaped(tmp_path, fake_probabilities):
    page = report.render_html(_inputs(tmp_path, fake_probabilities))
    positions = [page.index(f'id="{section}"') for section in SECTIONS]
    assert positions == sorted(positions), "reading order: headline, metrics, calibration, galleries, training"
    for section in SECTIONS:
        assert f'href="#{section}"' in page, f"table of contents links {section}"
    assert "<script" not in page and "<link" not in page
    assert not re.search(r'(src|href)="(?!data:|#)', page), "every image embedded, every link in the page"
    assert "<b>ship</b>" not in page and "&lt;b&gt;ship&lt;/b&gt;" in page
    assert "The transfer model" in page[: page.index('id="metrics"')]
    assert "(4 of 9 shown)" in page and "cat → dog: 3 images" in page


def test_thumbnails_shrink_large_images_and_leave_small_ones_for_the_browser_to_enlarge():
    uri, width, height = report.thumbnail(np.zeros((400, 200, 3), np.uint8), size=96)
    assert (width, height) == (48, 96)
    decoded = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert decoded.size == (48, 96)
    uri, width, height = report.thumbnail(np.zeros((32, 32, 1), np.uint8), size=96)
    assert (width, height) == (96, 96) and len(uri) < 400


def test_markdown_summary_is_short_and_leads_with_the_verdict(tmp_path, fake_probabilities):
    inputs = _inputs(tmp_path, fake_probabilities)
    text = report.render_markdown(inputs)
    assert paired_tests.verdict(inputs.summary) in text.splitlines()[2]
    assert len(text.splitlines()) < 20 and "| accuracy |" in text and "report.html" in text


def test_verdict_names_the_winner_and_says_whether_it_is_significant():
    def summary(scratch, transfer, p_value):
        return {"scratch_accuracy": scratch, "transfer_accuracy": transfer, "accuracy_difference": transfer - scratch,
                "accuracy_difference_ci": {"low": -0.01, "high": 0.05, "level": 0.95},
                "mcnemar": {"p_value": p_value, "exact": False}}

    assert paired_tests.verdict(summary(0.6, 0.9, 1e-6)).startswith("The transfer model is better")
    assert "not significant" in paired_tests.verdict(summary(0.7, 0.6, 0.3))
    assert paired_tests.verdict(summary(0.7, 0.6, 0.3)).startswith("The scratch model scores higher")
    assert paired_tests.verdict(summary(0.7, 0.7, 1.0)).startswith("The models tie")


@pytest.mark.browser
def test_report_renders_in_headless_chromium(tmp_path, fake_probabilities, chromium):
    browser = chromium
    path = tmp_path / "report.html"
    path.write_text(report.render_html(_inputs(tmp_path, fake_probabilities)), encoding="utf-8")
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2000"]
    screenshot = tmp_path / "report.png"
    subprocess.run([*common, f"--screenshot={screenshot}", path.as_uri()], capture_output=True, timeout=120,
                   check=False)
    assert screenshot.is_file(), "chromium wrote no screenshot"
    pixels = np.asarray(Image.open(screenshot).convert("L"), dtype=float)
    assert pixels.shape == (2000, 1280)
    assert pixels.std() > 10 and (pixels < 128).mean() > 0.005, "the page rendered text and images, not a blank"
    dom = subprocess.run([*common, "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120,
                         check=False).stdout
    for section in SECTIONS:
        assert f'id="{section}"' in dom, section
    assert dom.count('class="tile"') >= 20 and "The transfer model" in dom


def test_a_degenerate_model_means_no_winner_in_the_headline_and_the_markdown(tmp_path, fake_probabilities):
    inputs = _inputs(tmp_path, fake_probabilities)
    reasons = ["predicts 'dog' for 98% of the test images (33% of them are)"]
    inputs.metrics["scratch"].update(degenerate=1, degenerate_reasons=reasons)
    page = report.render_html(inputs)
    headline = page[page.index('id="headline"'):page.index('id="metrics"')]
    assert "No winner: the comparison is not meaningful" in headline and "the scratch model predicts" in headline
    assert "is better" not in headline and "scores higher" not in headline
    markdown = report.render_markdown(inputs)
    assert markdown.splitlines()[2].startswith("No winner: the comparison is not meaningful")
    inputs.metrics["scratch"].update(degenerate=0, degenerate_reasons=[])
    assert "No winner" not in report.render_html(inputs)


def test_report_says_when_temperature_scaling_made_calibration_worse(tmp_path, fake_probabilities):
    inputs = _inputs(tmp_path, fake_probabilities)
    inputs.metrics["scratch"].update(ece=0.05, ece_calibrated=0.12)
    inputs.metrics["transfer"].update(ece=0.10, ece_calibrated=0.04)
    page = report.render_html(inputs)
    assert "Temperature scaling did not help" in page and "scratch: ECE 0.050 → 0.120" in page
    assert "transfer: ECE" not in page.split("Temperature scaling did not help")[1].split("</p>")[0]
    assert "fitted on 5 validation images" in page
    inputs.metrics["scratch"].update(ece_calibrated=0.01)
    assert "Temperature scaling did not help" not in report.render_html(inputs)


def test_hostile_class_and_file_names_are_escaped_everywhere(tmp_path, fake_probabilities):
    inputs = _inputs(tmp_path, fake_probabilities)
    hostile = "<script>alert(1)</script>"
    tile = dataclasses.replace(_tile(0), true_class=hostile, original='x/"><img src=x onerror=alert(1)>.jpg',
                               predictions={"scratch": report.Guess(hostile, 0.9, False),
                                            "transfer": report.Guess("cat", 0.6, True)})
    inputs.galleries[0] = dataclasses.replace(inputs.galleries[0], title=hostile, groups=[(hostile, [tile])])
    page = report.render_html(inputs)
    assert "<script" not in page and "<img src=x" not in page
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert f"true: {escaped}" in page and f"S: {escaped} 0.90" in page and f"<h4>{escaped}</h4>" in page
    assert f'<a href="#both-wrong">{escaped}</a>' in page
    assert 'title="#0 x/&#34;&gt;&lt;img src=x onerror=alert(1)&gt;.jpg"' in page


def test_a_value_missing_from_the_view_model_fails_loudly(tmp_path, fake_probabilities):
    view = report.report_view(_inputs(tmp_path, fake_probabilities))
    assert report.render_view(view) == report.render_html(_inputs(tmp_path, fake_probabilities))
    del view["headline"]["verdict"]
    with pytest.raises(jinja2.UndefinedError, match="verdict"):
        report.render_view(view)
    # a typo in the template is no blank either
    with pytest.raises(jinja2.UndefinedError, match="verdikt"):
        report.ENVIRONMENT.from_string("<p>{{ headline.verdikt }}</p>").render(report.report_view(
            _inputs(tmp_path, fake_probabilities)))
