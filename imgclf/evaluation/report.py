"""The analysis report: one self-contained HTML file (inline CSS, images embedded as data URIs, no scripts,
nothing fetched) and a short Markdown summary for CI comments.

Reading order: the headline (which model wins, by how much, is it significant), metrics, calibration,
the error galleries, class-score bars, training curves. Pure functions of `ReportInputs`, so tests can
render a report from a few generated numbers and images.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io

import numpy as np
from PIL import Image

from imgclf.evaluation import comparison

MODELS = ("scratch", "transfer")
SHORT = {"scratch": "S", "transfer": "T"}
NOISY_SUPPORT = 5  # classes with fewer test images than this get a warning: their per-class numbers are noise
OPEN_CLASS_TABLE_UP_TO = 20  # the per-class table starts expanded up to this many classes


@dataclasses.dataclass(frozen=True)
class Guess:
    """One model's prediction for one image."""

    class_name: str
    probability: float
    right: bool


@dataclasses.dataclass(frozen=True)
class Tile:
    """One gallery image with its true class and each model's prediction."""

    image_id: int
    image: np.ndarray
    true_class: str
    predictions: dict[str, Guess]
    original: str = ""


@dataclasses.dataclass(frozen=True)
class Gallery:
    """A titled set of image groups (one untitled group for a plain gallery); `total` images qualify."""

    anchor: str
    title: str
    description: str
    groups: list[tuple[str, list[Tile]]]
    total: int | None = None
    rows: bool = False  # groups as compact rows (label beside its images), for many small groups
    empty: str = "No images."  # the sentence shown instead of a group that has no images


@dataclasses.dataclass(frozen=True)
class ScoreBars:
    """Both models' scores for the shown classes of one image."""

    tile: Tile
    classes: list[str]
    scores: dict[str, list[float]]


@dataclasses.dataclass(frozen=True)
class ReportInputs:
    data: dict
    class_names: list[str]
    metrics: dict[str, dict]
    summary: dict
    training: dict[str, dict]
    figures: dict[str, bytes]
    galleries: list[Gallery]
    score_bars: list[ScoreBars]
    thumbnail_size: int = 96
    title: str = "From scratch or transfer learning?"
    registry: dict | None = None  # runs.json's `registry`: the promotion decision and the champion after it


def registry_sentence(registry: dict | None) -> str | None:
    """One sentence on what the evaluate stage's promotion policy decided (imgclf.evaluation.promotion)."""
    if not registry or "decision" not in registry:
        return None
    decision, candidate = registry["decision"], registry.get("candidate")
    champion = (f"{registry['champion_uri']} (version {registry['champion_version']})" if registry.get("champion_uri")
                else "no model")
    if candidate is None:
        return f"Registry: {decision['reason']}; the champion is {champion}."
    entry = registry["models"][candidate]
    return (f"Registry decision for this run's better model on validation, {entry['name']} version "
            f"{entry['version']}: {decision['alias']} ({decision['reason']}). The champion served: {champion}.")


# ---------------------------------------------------------------------------------------------------- images


def thumbnail(image: np.ndarray, *, size: int) -> tuple[str, int, int]:
    """A data URI of the image scaled down to at most `size` pixels a side (never up: the browser enlarges
    small images, pixelated), as PNG or JPEG, whichever is smaller; and its display width and height."""
    pixels = np.asarray(image, dtype=np.uint8)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    picture = Image.fromarray(pixels)
    if max(picture.size) > size:
        picture.thumbnail((size, size), Image.Resampling.LANCZOS)
    encoded = {}
    for kind, options in (("png", {"optimize": True}), ("jpeg", {"quality": 85})):
        buffer = io.BytesIO()
        picture.save(buffer, format=kind.upper(), **options)
        encoded[kind] = buffer.getvalue()
    kind = min(encoded, key=lambda name: len(encoded[name]))
    scale = size / max(picture.size)
    width, height = round(picture.size[0] * scale), round(picture.size[1] * scale)
    return f"data:image/{kind};base64,{base64.b64encode(encoded[kind]).decode('ascii')}", width, height


def png_uri(data: bytes) -> str:
    return f"data:image/png;base64,{base64.b64encode(data).decode('ascii')}"


# ---------------------------------------------------------------------------------------------------- html

_CSS = """
:root { --ok: #1a7f37; --bad: #cf222e; --muted: #57606a; --line: #d0d7de; --soft: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328;
       display: grid; grid-template-columns: 230px minmax(0, 1fr); }
nav { position: sticky; top: 0; height: 100vh; overflow-y: auto; padding: 18px 14px; background: var(--soft);
      border-right: 1px solid var(--line); font-size: 14px; }
nav ol { padding-left: 18px; margin: 6px 0; } nav a { color: #0969da; text-decoration: none; }
main { padding: 8px 32px 48px; max-width: 1200px; }
h1 { font-size: 26px; margin: 16px 0 2px; } h2 { border-bottom: 1px solid var(--line); padding-bottom: 4px;
     margin-top: 36px; } h3 { margin: 22px 0 6px; }
.sub, .note { color: var(--muted); } .note { font-size: 13px; }
.verdict { font-size: 19px; font-weight: 600; padding: 12px 16px; border-left: 5px solid #0969da;
           background: #ddf4ff; border-radius: 4px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 14px 0; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 10px 14px; min-width: 150px; }
.card .value { font-size: 22px; font-weight: 600; } .card .label { color: var(--muted); font-size: 13px; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 14px; }
th, td { border: 1px solid var(--line); padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; } thead th { background: var(--soft); }
td.best { font-weight: 700; } .warn { color: #9a6700; }
.figures { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.figures figure { margin: 0; flex: 1 1 420px; max-width: 560px; }
.figures img, img.figure { max-width: 100%; height: auto; border: 1px solid var(--line); }
.gallery { display: flex; flex-wrap: wrap; gap: 10px; margin: 6px 0 12px; }
.tile { margin: 0; width: 124px; font-size: 12px; line-height: 1.3; }
.tile img { image-rendering: pixelated; display: block; border: 1px solid var(--line); }
.tile .truth { font-weight: 600; margin-top: 3px; overflow-wrap: anywhere; }
.ok { color: var(--ok); } .bad { color: var(--bad); } .tile .id { color: var(--muted); }
.scores { display: flex; gap: 16px; align-items: flex-start; border-top: 1px solid var(--line); padding: 10px 0; }
.scores table { margin: 0; font-size: 12px; } .scores td { border: none; padding: 1px 6px; }
.scores td.score, .scores th.score { text-align: left; width: 215px; }
.pair { display: flex; gap: 14px; align-items: flex-start; border-top: 1px solid var(--line); padding-top: 6px; }
.pair .label { width: 190px; flex: none; font-weight: 600; font-size: 13px; overflow-wrap: anywhere; }
h4 { margin: 14px 0 4px; }
.bar { display: inline-block; height: 10px; vertical-align: middle; margin-right: 4px; }
.bar.scratch { background: #1f77b4; } .bar.transfer { background: #ff7f0e; }
tr.true td { font-weight: 700; color: var(--ok); }
details summary { cursor: pointer; font-weight: 600; margin: 8px 0; }
@media (max-width: 800px) { body { display: block; } nav { position: static; height: auto; }
                            main { padding: 8px 14px; } }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def _tile_html(tile: Tile, *, size: int) -> str:
    uri, width, height = thumbnail(tile.image, size=size)
    hover = f"#{tile.image_id}" + (f" {tile.original}" if tile.original else "")
    lines = [f'<div class="truth">true: {_e(tile.true_class)}</div>']
    for model, guess in tile.predictions.items():
        mark, css = ("✓", "ok") if guess.right else ("✗", "bad")
        lines.append(f'<div class="{css}" title="{_e(model)}">{mark} {SHORT.get(model, model)}: '
                     f"{_e(guess.class_name)} {guess.probability:.2f}</div>")
    lines.append(f'<div class="id">#{tile.image_id}</div>')
    return (f'<figure class="tile"><img src="{uri}" width="{width}" height="{height}" alt="test image {tile.image_id}"'
            f' title="{_e(hover)}"><figcaption>{"".join(lines)}</figcaption></figure>')


def _gallery_html(gallery: Gallery, *, size: int) -> str:
    shown = sum(len(tiles) for _, tiles in gallery.groups)
    count = ""
    if gallery.total is not None:
        count = f" <span class=\"sub\">({f'{shown} of {gallery.total} shown' if gallery.total else 'none'})</span>"
    parts = [f'<section id="{_e(gallery.anchor)}"><h3>{_e(gallery.title)}{count}</h3>',
             f'<p class="note">{_e(gallery.description)}</p>']
    for heading, tiles in gallery.groups:
        if gallery.rows:
            images = ("".join(_tile_html(tile, size=size) for tile in tiles)
                      or f'<p class="note">{_e(gallery.empty)}</p>')
            parts.append(f'<div class="pair"><div class="label">{_e(heading)}</div><div class="gallery">{images}'
                         "</div></div>")
            continue
        if heading:
            parts.append(f"<h4>{_e(heading)}</h4>")
        if tiles:
            parts.append('<div class="gallery">' + "".join(_tile_html(tile, size=size) for tile in tiles) + "</div>")
        else:
            parts.append(f'<p class="note empty">{_e(gallery.empty)}</p>')
    parts.append("</section>")
    return "\n".join(parts)


def _score_bars_html(items: list[ScoreBars], *, size: int, num_classes: int) -> str:
    parts = ['<section id="score-bars"><h3>Class scores, side by side</h3>',
             '<p class="note">Each model\'s probability for each class (true class in green'
             + (f"; the top classes of either model out of {num_classes}" if items and
                len(items[0].classes) < num_classes else "") +
             "). Pick the images with <code>analysis.score_bar_ids</code>; by default, images the models disagree "
             "on.</p>"]
    if not items:
        parts.append('<p class="note">No images selected.</p>')
    for item in items:
        rows = []
        for index, name in enumerate(item.classes):
            css = ' class="true"' if name == item.tile.true_class else ""
            cells = "".join(
                f'<td class="score"><span class="bar {model}" style="width:{160 * scores[index]:.0f}px"></span>'
                f"{scores[index]:.2f}</td>" for model, scores in item.scores.items())
            rows.append(f"<tr{css}><td>{_e(name)}</td>{cells}</tr>")
        header = "".join(f'<th class="score">{_e(model)}</th>' for model in item.scores)
        parts.append(f'<div class="scores">{_tile_html(item.tile, size=size)}<table><thead><tr><th>class</th>'
                     f'{header}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>')
    parts.append("</section>")
    return "\n".join(parts)


def _metric_rows(metrics: dict[str, dict], training: dict[str, dict]) -> list[tuple[str, list[str], int | None]]:
    """(label, formatted values per model, index of the better model or None)."""
    spec = [
        ("accuracy", "accuracy", "{:.4f}", max), ("top-5 accuracy", "top5_accuracy", "{:.4f}", max),
        ("loss (cross-entropy)", "loss", "{:.4f}", min), ("macro precision", "macro_precision", "{:.4f}", max),
        ("macro recall", "macro_recall", "{:.4f}", max), ("macro F1", "macro_f1", "{:.4f}", max),
        ("weighted precision", "weighted_precision", "{:.4f}", max),
        ("weighted recall", "weighted_recall", "{:.4f}", max), ("weighted F1", "weighted_f1", "{:.4f}", max),
        ("ECE (calibration error)", "ece", "{:.4f}", min),
        ("ECE after temperature scaling", "ece_calibrated", "{:.4f}", min),
        ("inference images/s", "images_per_second", "{:,.0f}", max),
        ("parameters", "parameter_count", "{:,}", None), ("model file (MB)", "model_size_mb", "{:.1f}", None),
    ]
    rows = []
    for label, key, style, better in spec:
        values = [metrics[model].get(key) for model in MODELS]
        if any(value is None for value in values):
            continue
        best = None
        if better is not None and values[0] != values[1]:
            best = values.index(better(values))
        rows.append((label, [style.format(value) for value in values], best))
    epochs = [training.get(model, {}).get("epochs") for model in MODELS]
    if all(value is not None for value in epochs):
        rows.append(("training epochs", [str(value) for value in epochs], None))
    seconds = [training.get(model, {}).get("training_seconds") for model in MODELS]
    if all(value is not None for value in seconds):
        rows.append(("training time (s)", [f"{value:,.0f}" for value in seconds], None))
    return rows


def _table(header: list[str], rows: list[list[str]], *, best: list[int | None] | None = None) -> str:
    head = "".join(f"<th>{_e(cell)}</th>" for cell in header)
    body = []
    for number, row in enumerate(rows):
        cells = [f"<td>{_e(row[0])}</td>"]
        for index, cell in enumerate(row[1:]):
            css = ' class="best"' if best and best[number] == index else ""
            cells.append(f"<td{css}>{_e(cell)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def degenerate_models(metrics: dict[str, dict]) -> dict[str, list[str]]:
    """Model -> why the evaluate stage found it degenerate (models it did not flag are left out)."""
    return {model: list(metrics[model].get("degenerate_reasons") or []) for model in MODELS
            if metrics.get(model, {}).get("degenerate_reasons")}


def _headline_html(inputs: ReportInputs) -> str:
    summary = inputs.summary
    interval = summary["accuracy_difference_ci"]
    p_value = summary["mcnemar"]["p_value"]
    cards = [
        (_percent(summary["scratch_accuracy"]), "scratch accuracy"),
        (_percent(summary["transfer_accuracy"]), "transfer accuracy"),
        (f"{100 * summary['accuracy_difference']:+.1f} pts", "transfer − scratch"),
        (f"{100 * interval['low']:+.1f} to {100 * interval['high']:+.1f}",
         f"{round(100 * interval['level'])}% bootstrap interval (pts)"),
        ("< 0.001" if p_value < 0.001 else f"{p_value:.3g}",
         f"McNemar p-value ({'exact' if summary['mcnemar']['exact'] else 'chi-square'})"),
    ]
    card_html = "".join(f'<div class="card"><div class="value">{_e(value)}</div><div class="label">{_e(label)}'
                        "</div></div>" for value, label in cards)
    two_by_two = _table(["", "transfer right", "transfer wrong"], [
        ["scratch right", str(summary["both_right"]), str(summary["only_scratch_right"])],
        ["scratch wrong", str(summary["only_transfer_right"]), str(summary["both_wrong"])]])
    data = inputs.data
    counts = data.get("counts", {})
    split_text = ", ".join(f"{count:,} {split}" for split, count in counts.items())
    support = {name: inputs.metrics["scratch"]["per_class"][name]["support"] for name in inputs.class_names}
    small = [name for name, count in support.items() if count < NOISY_SUPPORT]
    warning = ""
    if small:
        listed = ", ".join(f"{name} ({support[name]})" for name in small[:12]) + (" ..." if len(small) > 12 else "")
        warning = (f'<p class="warn">{len(small)} class(es) have fewer than {NOISY_SUPPORT} test images, so their '
                   f"per-class numbers are noisy: {_e(listed)}. Macro averages weigh them like the large ones; "
                   "weighted averages do not.</p>")
    verdict = comparison.verdict(summary, degenerate=degenerate_models(inputs.metrics))
    css = "verdict warn" if degenerate_models(inputs.metrics) else "verdict"
    return (f'<section id="headline"><h2>Headline</h2><p class="{css}">{_e(verdict)}</p>'
            f'<div class="cards">{card_html}</div>'
            f"<h3>Same {summary['test_images']:,} test images, 2×2</h3>{two_by_two}"
            '<p class="note">McNemar\'s test uses only the images exactly one model gets right (the off-diagonal '
            "cells); the interval is a paired bootstrap over test images.</p>"
            f'<p class="note">Data: {_e(data.get("source", ""))}, {len(inputs.class_names)} classes, '
            f'{_e(data.get("image_size", ""))} px images; {_e(split_text)}.</p>{warning}'
            + (f'<p class="note" id="registry">{_e(sentence)}</p>' if (sentence := registry_sentence(inputs.registry))
               else "") + "</section>")


def _metrics_html(inputs: ReportInputs) -> str:
    rows = _metric_rows(inputs.metrics, inputs.training)
    table = _table(["metric", *MODELS], [[label, *values] for label, values, _ in rows],
                   best=[best for _, _, best in rows])
    class_rows = []
    for name in inputs.class_names:
        cells = [name, str(inputs.metrics["scratch"]["per_class"][name]["support"])]
        for model in MODELS:
            entry = inputs.metrics[model]["per_class"][name]
            cells += [f"{entry['precision']:.3f}", f"{entry['recall']:.3f}", f"{entry['f1']:.3f}"]
        delta = (inputs.metrics["transfer"]["per_class"][name]["f1"]
                 - inputs.metrics["scratch"]["per_class"][name]["f1"])
        class_rows.append([*cells, f"{delta:+.3f}"])
    header = ["class", "test images", "S precision", "S recall", "S F1", "T precision", "T recall", "T F1",
              "F1 T − S"]
    is_open = " open" if len(inputs.class_names) <= OPEN_CLASS_TABLE_UP_TO else ""
    figures = "".join(f'<figure><img src="{png_uri(inputs.figures[f"confusion_{model}"])}" alt="{model} confusion '
                      f'matrix"><figcaption class="note">{model}</figcaption></figure>'
                      for model in MODELS if f"confusion_{model}" in inputs.figures)
    return (f'<section id="metrics"><h2>Metrics on the test split</h2>{table}'
            '<p class="note">Bold: the better value. Images/s is model inference only, after a warm-up batch. '
            "Training time sums the epochs in each history; for the transfer model that is the head on cached "
            "backbone features (the one-off feature extraction is not included).</p>"
            f'<details{is_open}><summary>Per-class precision, recall and F1 ({len(inputs.class_names)} classes; '
            f"S = scratch, T = transfer)</summary>{_table(header, class_rows)}</details>"
            f'<h3 id="confusion">Confusion matrices</h3><div class="figures">{figures}</div></section>')


def _calibration_html(inputs: ReportInputs) -> str:
    rows = [[model, f"{inputs.metrics[model]['ece']:.4f}", f"{inputs.metrics[model]['ece_calibrated']:.4f}",
             f"{inputs.metrics[model]['temperature']:.3f}", f"{inputs.metrics[model]['loss']:.4f}",
             f"{inputs.metrics[model]['loss_calibrated']:.4f}", f"{inputs.metrics[model]['accuracy']:.4f}"]
            for model in MODELS]
    table = _table(["model", "ECE", "ECE after scaling", "temperature T", "loss", "loss after scaling",
                    "accuracy (unchanged)"], rows)
    figure = (f'<img class="figure" src="{png_uri(inputs.figures["reliability"])}" alt="reliability diagrams">'
              if "reliability" in inputs.figures else "")
    return ('<section id="calibration"><h2>Calibration</h2><p>Does a model that says 90% get 90% right? The '
            "expected calibration error (ECE) is the average gap between confidence and accuracy over confidence "
            "bins. Temperature scaling divides the log-probabilities by one number T fitted on the validation split "
            "(T &gt; 1: the model was over-confident); it never changes a prediction, only its confidence.</p>"
            f"{_calibration_warning(inputs)}{table}{figure}</section>")


def calibration_not_helped(metrics: dict[str, dict]) -> list[str]:
    """The models whose test ECE temperature scaling made worse (a temperature fitted on too few or unlike
    validation images)."""
    return [model for model in MODELS if metrics[model]["ece_calibrated"] > metrics[model]["ece"]]


def _calibration_warning(inputs: ReportInputs) -> str:
    worse = calibration_not_helped(inputs.metrics)
    if not worse:
        return ""
    validation = inputs.data.get("counts", {}).get("val")
    fitted_on = f"{validation} validation images" if validation is not None else "the validation split"
    changes = "; ".join(f"{model}: ECE {metrics['ece']:.3f} → {metrics['ece_calibrated']:.3f}"
                        for model, metrics in ((model, inputs.metrics[model]) for model in worse))
    return (f'<p class="note"><b>Temperature scaling did not help</b> ({changes}). T was fitted on {fitted_on}, '
            "too few (or too unlike the test images) to estimate it: read the unscaled numbers, or calibrate on a "
            "larger validation split (<code>preprocess.val_fraction</code>).</p>")


def _training_html(inputs: ReportInputs) -> str:
    rows = []
    for model in MODELS:
        info = inputs.training.get(model, {})
        phases = ", ".join(f"{phase}: {count}" for phase, count in info.get("phases", {}).items())
        rows.append([model, str(info.get("epochs", "–")),
                     f"{info['training_seconds']:,.0f}" if "training_seconds" in info else "–",
                     f"{info['best_val_accuracy']:.4f}" if "best_val_accuracy" in info else "–", phases or "–"])
    figure = (f'<img class="figure" src="{png_uri(inputs.figures["training_curves"])}" alt="training curves">'
              if "training_curves" in inputs.figures else '<p class="note">No training history found.</p>')
    return (f'<section id="training"><h2>Training curves</h2>'
            f'{_table(["model", "epochs", "seconds", "best validation accuracy", "epochs per phase"], rows)}'
            f"{figure}</section>")


def render_html(inputs: ReportInputs) -> str:
    """The whole report as one HTML document with everything embedded."""
    size = inputs.thumbnail_size
    toc_galleries = "".join(f'<li><a href="#{_e(g.anchor)}">{_e(g.title)}</a></li>' for g in inputs.galleries)
    toc = ('<nav id="toc"><strong>Contents</strong><ol><li><a href="#headline">Headline</a></li>'
           '<li><a href="#metrics">Metrics</a></li><li><a href="#calibration">Calibration</a></li>'
           f'<li><a href="#galleries">Where each model fails</a><ol>{toc_galleries}'
           '<li><a href="#score-bars">Class scores</a></li></ol></li>'
           '<li><a href="#training">Training curves</a></li></ol></nav>')
    legend = ('<p class="note">Under each image: the true class, then each model\'s prediction and probability '
              '(S = scratch, T = transfer; <span class="ok">✓ right</span>, <span class="bad">✗ wrong</span>) and '
              "the test image id (hover for the original file).</p>")
    galleries = "\n".join(_gallery_html(gallery, size=size) for gallery in inputs.galleries)
    body = "\n".join([
        f"<header><h1>{_e(inputs.title)}</h1><p class=\"sub\">A CNN trained from scratch and a transfer model (a "
        f"new classifier head on a backbone's features), on the same {inputs.summary['test_images']:,} test "
        "images.</p></header>",
        _headline_html(inputs), _metrics_html(inputs), _calibration_html(inputs),
        f'<section id="galleries"><h2>Where each model fails</h2>{legend}{galleries}'
        f"{_score_bars_html(inputs.score_bars, size=size, num_classes=len(inputs.class_names))}</section>",
        _training_html(inputs)])
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(inputs.title)}</title><style>{_CSS}</style></head>\n"
            f"<body>{toc}<main>\n{body}\n</main></body></html>\n")


def render_markdown(inputs: ReportInputs, *, report_name: str = "report.html") -> str:
    """A few lines for a CI comment: the verdict, the key numbers, where the full report is."""
    summary, metrics = inputs.summary, inputs.metrics
    rows = [("accuracy", "accuracy", "{:.4f}"), ("macro F1", "macro_f1", "{:.4f}"),
            ("ECE (after temperature scaling)", None, ""), ("inference images/s", "images_per_second", "{:,.0f}")]
    lines = [f"### {inputs.title}", "", comparison.verdict(summary, degenerate=degenerate_models(metrics)), "",
             "| | scratch | transfer |",
             "|---|---:|---:|"]
    for label, key, style in rows:
        if key is None:
            values = [f"{metrics[m]['ece']:.3f} ({metrics[m]['ece_calibrated']:.3f})" for m in MODELS]
        else:
            values = [style.format(metrics[m][key]) for m in MODELS]
        lines.append(f"| {label} | {values[0]} | {values[1]} |")
    label_errors = next((g.total for g in inputs.galleries if g.anchor == "label-errors"), None)
    lines += ["", f"On {summary['test_images']:,} test images: both right {summary['both_right']}, only scratch "
              f"right {summary['only_scratch_right']}, only transfer right {summary['only_transfer_right']}, both "
              f"wrong {summary['both_wrong']}."
              + (f" Possible label errors: {label_errors}." if label_errors is not None else ""),
              *(["", sentence] if (sentence := registry_sentence(inputs.registry)) else []),
              "", f"Full report with galleries: `{report_name}` (also an MLflow artifact of the comparison run).", ""]
    return "\n".join(lines)
