"""The analysis report: one self-contained HTML file (inline CSS, images embedded as data URIs, no scripts,
nothing fetched) and a short Markdown summary for CI comments.

Reading order: the headline (which model wins, by how much, is it significant), metrics, calibration,
the error galleries, class-score bars, training curves. Pure functions of `ReportInputs`, so tests can
render a report from a few generated numbers and images.
"""

from __future__ import annotations

import base64
import dataclasses
import io

import jinja2
import numpy as np
from PIL import Image

from imgclf.artifacts import MODEL_NAMES
from imgclf.evaluation import paired_tests
from imgclf.evaluation.metric_definitions import MODEL_METRICS

MODELS = MODEL_NAMES
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
    duplicates: dict | None = None  # the train/test twins section's view (deduplicated.report_view); None: not run


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
# The page's markup lives in templates/report.html.j2; the functions below compute its view model: plain dicts,
# lists and already formatted strings. Autoescape escapes every value (class and file names are user data);
# StrictUndefined makes a name the template uses but the view model lacks an error, not a blank.

TEMPLATE = "report.html.j2"
ENVIRONMENT = jinja2.Environment(loader=jinja2.PackageLoader("imgclf.evaluation", "templates"), autoescape=True,
                                 undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                                 keep_trailing_newline=True)


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def _table(header: list[str], rows: list[list[str]], best: list[int | None] | None = None) -> dict:
    """A table for the template's `table` macro: the first column left-aligned, `best` the bold cell of each row."""
    return {"header": header, "rows": rows, "best": best}


def _tile_view(tile: Tile, *, size: int) -> dict:
    uri, width, height = thumbnail(tile.image, size=size)
    return {"uri": uri, "width": width, "height": height, "id": tile.image_id, "true_class": tile.true_class,
            "hover": f"#{tile.image_id}" + (f" {tile.original}" if tile.original else ""),
            "predictions": [{"model": model, "short": SHORT.get(model, model), "right": guess.right,
                             "class_name": guess.class_name, "probability": f"{guess.probability:.2f}"}
                            for model, guess in tile.predictions.items()]}


def _gallery_view(gallery: Gallery, *, size: int) -> dict:
    shown = sum(len(tiles) for _, tiles in gallery.groups)
    count = None
    if gallery.total is not None:
        count = f"{shown} of {gallery.total} shown" if gallery.total else "none"
    return {"anchor": gallery.anchor, "title": gallery.title, "description": gallery.description, "count": count,
            "rows": gallery.rows, "empty": gallery.empty,
            "groups": [{"heading": heading, "tiles": [_tile_view(tile, size=size) for tile in tiles]}
                       for heading, tiles in gallery.groups]}


def _score_bars_view(items: list[ScoreBars], *, size: int, num_classes: int) -> dict:
    views = []
    for item in items:
        rows = [{"name": name, "true": name == item.tile.true_class,
                 "cells": [{"model": model, "width": f"{160 * scores[index]:.0f}", "score": f"{scores[index]:.2f}"}
                           for model, scores in item.scores.items()]}
                for index, name in enumerate(item.classes)]
        views.append({"tile": _tile_view(item.tile, size=size), "models": list(item.scores), "rows": rows})
    top_of = num_classes if items and len(items[0].classes) < num_classes else None
    return {"items": views, "top_of": top_of}


def _metric_rows(metrics: dict[str, dict], training: dict[str, dict]) -> list[tuple[str, list[str], int | None]]:
    """(label, formatted values per model, index of the better model or None)."""
    rows = []
    for metric in MODEL_METRICS:
        values = [metrics[model].get(metric.key) for model in MODELS]
        if any(value is None for value in values):
            continue
        best = None
        if metric.better is not None and values[0] != values[1]:
            best = values.index(metric.better(values))
        rows.append((metric.label, [metric.format(value) for value in values], best))
    epochs = [training.get(model, {}).get("epochs") for model in MODELS]
    if all(value is not None for value in epochs):
        rows.append(("training epochs", [str(value) for value in epochs], None))
    seconds = [training.get(model, {}).get("training_seconds") for model in MODELS]
    if all(value is not None for value in seconds):
        rows.append(("training time (s)", [f"{value:,.0f}" for value in seconds], None))
    return rows


def degenerate_models(metrics: dict[str, dict]) -> dict[str, list[str]]:
    """Model -> why the evaluate stage found it degenerate (models it did not flag are left out)."""
    return {model: list(metrics[model].get("degenerate_reasons") or []) for model in MODELS
            if metrics.get(model, {}).get("degenerate_reasons")}


def _headline_view(inputs: ReportInputs) -> dict:
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
    two_by_two = _table(["", "transfer right", "transfer wrong"], [
        ["scratch right", str(summary["both_right"]), str(summary["only_scratch_right"])],
        ["scratch wrong", str(summary["only_transfer_right"]), str(summary["both_wrong"])]])
    data = inputs.data
    counts = data.get("counts", {})
    support = {name: inputs.metrics["scratch"]["per_class"][name]["support"] for name in inputs.class_names}
    small = [name for name, count in support.items() if count < NOISY_SUPPORT]
    noisy = None
    if small:
        listed = ", ".join(f"{name} ({support[name]})" for name in small[:12]) + (" ..." if len(small) > 12 else "")
        noisy = {"count": len(small), "threshold": NOISY_SUPPORT, "listed": listed}
    degenerate = degenerate_models(inputs.metrics)
    return {"verdict": paired_tests.verdict(summary, degenerate=degenerate),
            "verdict_css": "verdict warn" if degenerate else "verdict",
            "cards": [{"value": value, "label": label} for value, label in cards], "two_by_two": two_by_two,
            "data": {"source": data.get("source", ""), "classes": len(inputs.class_names),
                     "image_size": data.get("image_size", ""),
                     "splits": ", ".join(f"{count:,} {split}" for split, count in counts.items())},
            "noisy": noisy, "registry": registry_sentence(inputs.registry)}


def _metrics_view(inputs: ReportInputs) -> dict:
    rows = _metric_rows(inputs.metrics, inputs.training)
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
    return {"table": _table(["metric", *MODELS], [[label, *values] for label, values, _ in rows],
                            best=[best for _, _, best in rows]),
            "classes": _table(header, class_rows), "class_count": len(inputs.class_names),
            "classes_open": len(inputs.class_names) <= OPEN_CLASS_TABLE_UP_TO,
            "confusion": [{"model": model, "uri": png_uri(inputs.figures[f"confusion_{model}"])}
                          for model in MODELS if f"confusion_{model}" in inputs.figures]}


def _calibration_view(inputs: ReportInputs) -> dict:
    rows = [[model, f"{inputs.metrics[model]['ece']:.4f}", f"{inputs.metrics[model]['ece_calibrated']:.4f}",
             f"{inputs.metrics[model]['temperature']:.3f}", f"{inputs.metrics[model]['loss']:.4f}",
             f"{inputs.metrics[model]['loss_calibrated']:.4f}", f"{inputs.metrics[model]['accuracy']:.4f}"]
            for model in MODELS]
    return {"table": _table(["model", "ECE", "ECE after scaling", "temperature T", "loss", "loss after scaling",
                             "accuracy (unchanged)"], rows),
            "figure": png_uri(inputs.figures["reliability"]) if "reliability" in inputs.figures else None,
            "not_helped": _calibration_warning(inputs)}


def calibration_not_helped(metrics: dict[str, dict]) -> list[str]:
    """The models whose test ECE temperature scaling made worse (a temperature fitted on too few or unlike
    validation images)."""
    return [model for model in MODELS if metrics[model]["ece_calibrated"] > metrics[model]["ece"]]


def _calibration_warning(inputs: ReportInputs) -> dict | None:
    worse = calibration_not_helped(inputs.metrics)
    if not worse:
        return None
    validation = inputs.data.get("counts", {}).get("val")
    fitted_on = f"{validation} validation images" if validation is not None else "the validation split"
    changes = "; ".join(f"{model}: ECE {metrics['ece']:.3f} → {metrics['ece_calibrated']:.3f}"
                        for model, metrics in ((model, inputs.metrics[model]) for model in worse))
    return {"changes": changes, "fitted_on": fitted_on}


def _training_view(inputs: ReportInputs) -> dict:
    rows = []
    for model in MODELS:
        info = inputs.training.get(model, {})
        phases = ", ".join(f"{phase}: {count}" for phase, count in info.get("phases", {}).items())
        rows.append([model, str(info.get("epochs", "–")),
                     f"{info['training_seconds']:,.0f}" if "training_seconds" in info else "–",
                     f"{info['best_val_accuracy']:.4f}" if "best_val_accuracy" in info else "–", phases or "–"])
    return {"table": _table(["model", "epochs", "seconds", "best validation accuracy", "epochs per phase"], rows),
            "figure": png_uri(inputs.figures["training_curves"]) if "training_curves" in inputs.figures else None}


def report_view(inputs: ReportInputs) -> dict:
    """The template's view model: every value the page shows, computed and formatted, nothing escaped yet."""
    size = inputs.thumbnail_size
    return {"title": inputs.title, "test_images": f"{inputs.summary['test_images']:,}",
            "headline": _headline_view(inputs), "metrics": _metrics_view(inputs),
            "calibration": _calibration_view(inputs),
            "galleries": [_gallery_view(gallery, size=size) for gallery in inputs.galleries],
            "score_bars": _score_bars_view(inputs.score_bars, size=size, num_classes=len(inputs.class_names)),
            "training": _training_view(inputs), "duplicates": inputs.duplicates}


def render_view(view: dict) -> str:
    """The report page from a view model (`report_view`); a name the template needs and `view` lacks raises
    jinja2.UndefinedError."""
    return ENVIRONMENT.get_template(TEMPLATE).render(view)


def render_html(inputs: ReportInputs) -> str:
    """The whole report as one HTML document with everything embedded."""
    return render_view(report_view(inputs))


def render_markdown(inputs: ReportInputs, *, report_name: str = "report.html") -> str:
    """A few lines for a CI comment: the verdict, the key numbers, where the full report is."""
    summary, metrics = inputs.summary, inputs.metrics
    lines = [f"### {inputs.title}", "", paired_tests.verdict(summary, degenerate=degenerate_models(metrics)), "",
             "| | scratch | transfer |",
             "|---|---:|---:|"]
    lines += [f"| {metric.label} | {' | '.join(metric.format(metrics[model][metric.key]) for model in MODELS)} |"
              for metric in MODEL_METRICS if metric.summary]
    label_errors = next((g.total for g in inputs.galleries if g.anchor == "label-errors"), None)
    lines += ["", f"On {summary['test_images']:,} test images: both right {summary['both_right']}, only scratch "
              f"right {summary['only_scratch_right']}, only transfer right {summary['only_transfer_right']}, both "
              f"wrong {summary['both_wrong']}."
              + (f" Possible label errors: {label_errors}." if label_errors is not None else ""),
              *(["", sentence] if (sentence := registry_sentence(inputs.registry)) else []),
              *(["", f"Train/test duplicates: {inputs.duplicates['sentence']}"] if inputs.duplicates else []),
              "", f"Full report with galleries: `{report_name}` (also an MLflow artifact of the comparison run).", ""]
    return "\n".join(lines)
