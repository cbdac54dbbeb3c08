"""PNG figures for people: class distribution, image grids, confusion matrices, reliability diagrams,
class-score bars and training curves. Every figure stays legible from 2 to 100+ classes."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # headless: stages run in CI and over SSH

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from imgclf import fileio


def save_figure(figure: plt.Figure, path: Path, *, dpi: int = 110) -> None:
    """Render `figure` to PNG and write it atomically; the figure is closed."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    fileio.atomic_write_bytes(Path(path), buffer.getvalue())


def class_distribution(counts_by_split: dict[str, Sequence[int]], class_names: Sequence[str],
                       path: Path) -> None:
    """Horizontal stacked bars: images per class in each split (readable up to 100+ classes)."""
    height = max(3.0, 0.22 * len(class_names) + 1.2)
    figure, axis = plt.subplots(figsize=(8, height))
    positions = np.arange(len(class_names))
    left = np.zeros(len(class_names))
    for split, counts in counts_by_split.items():
        values = np.asarray(counts, dtype=float)
        axis.barh(positions, values, left=left, label=f"{split} ({int(values.sum())})")
        left += values
    axis.set_yticks(positions, labels=class_names, fontsize=8 if len(class_names) > 30 else 10)
    axis.invert_yaxis()
    axis.set_xlabel("images")
    axis.set_title("Images per class and split")
    # Beside the axes, not inside: any corner inside the plot can sit on a long bar.
    axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    save_figure(figure, path)


def image_grid(images: Sequence[np.ndarray], captions: Sequence[str], path: Path, *, title: str = "",
               columns: int = 8, caption_colors: Sequence[str] | None = None) -> None:
    """A grid of uint8 images (HxWx1 or HxWx3) with a caption under each."""
    count = max(len(images), 1)
    columns = min(columns, count)
    rows = -(-count // columns)
    lines = max((caption.count("\n") + 1 for caption in captions), default=1)
    figure, axes = plt.subplots(rows, columns, figsize=(1.9 * columns, (1.8 + 0.14 * lines) * rows + 0.4),
                                squeeze=False, gridspec_kw={"hspace": 0.1 + 0.1 * lines})
    for position, axis in enumerate(axes.flat):
        axis.axis("off")
        if position >= len(images):
            continue
        image = np.asarray(images[position])
        if image.ndim == 3 and image.shape[-1] == 1:
            axis.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255)
        else:
            axis.imshow(image.astype(np.uint8))
        color = caption_colors[position] if caption_colors else "black"
        axis.set_title(captions[position], fontsize=7, color=color)
    if not images:
        axes.flat[0].text(0.5, 0.5, "no images", ha="center", va="center")
    if title:
        figure.suptitle(title)
    save_figure(figure, path)


MAX_COUNTED_CLASSES = 30  # confusion matrices show counts in the cells up to this many classes


def confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: Path, *, title: str) -> None:
    """Confusion matrix with counts in the cells (beyond 30 classes, colour only, so it stays legible)."""
    size = min(max(4.0, 0.35 * len(class_names) + 2), 16.0)
    figure, axis = plt.subplots(figsize=(size + 1, size))
    image = axis.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
    ticks = np.arange(len(class_names))
    font = 8 if len(class_names) <= MAX_COUNTED_CLASSES else 4
    axis.set_xticks(ticks, labels=class_names, rotation=90, fontsize=font)
    axis.set_yticks(ticks, labels=class_names, fontsize=font)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    if len(class_names) <= MAX_COUNTED_CLASSES:
        threshold = matrix.max() / 2 if matrix.size else 0
        for row in range(matrix.shape[0]):
            for column in range(matrix.shape[1]):
                value = int(matrix[row, column])
                axis.text(column, row, str(value), ha="center", va="center", fontsize=7,
                          color="white" if value > threshold else "black")
    save_figure(figure, path)


def _show_image(axis: plt.Axes, image: np.ndarray) -> None:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        axis.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255)
    else:
        axis.imshow(image.astype(np.uint8))
    axis.axis("off")


def image_rows(rows: Sequence[tuple[str, Sequence[np.ndarray], Sequence[str]]], path: Path, *, title: str = "",
               columns: int = 4) -> None:
    """Labelled rows of images (one row per class pair, say): `(row label, images, captions)`."""
    count = max(len(rows), 1)
    columns = max(columns, 3)
    lines = max((caption.count("\n") + 1 for _, _, captions in rows for caption in captions), default=1)
    figure, axes = plt.subplots(count, columns + 1, figsize=(2.0 * columns + 2.2, (1.8 + 0.14 * lines) * count + 0.4),
                                squeeze=False, gridspec_kw={"width_ratios": [1.1] + [1.0] * columns,
                                                            "hspace": 0.1 + 0.1 * lines})
    for axis in axes.flat:
        axis.axis("off")
    for row, (label, images, captions) in enumerate(rows):
        axes[row, 0].text(1.0, 0.5, label, ha="right", va="center", fontsize=9, wrap=True,
                          transform=axes[row, 0].transAxes)
        for column, (image, caption) in enumerate(zip(images[:columns], captions[:columns], strict=True)):
            _show_image(axes[row, column + 1], image)
            axes[row, column + 1].set_title(caption, fontsize=7)
    if not rows:
        axes[0, 0].text(0.5, 0.5, "nothing to show", ha="center", va="center")
    if title:
        figure.suptitle(title)
    save_figure(figure, path)


def reliability_diagrams(results: dict[str, dict], path: Path) -> None:
    """One reliability diagram per model: accuracy per confidence bin before (bars) and after (line)
    temperature scaling, against the diagonal of perfect calibration. `results[model]` holds `reliability`
    (bins as written by the evaluate stage), `ece`, `ece_calibrated` and `temperature`."""
    figure, axes = plt.subplots(1, len(results), figsize=(4.6 * len(results), 4.4), squeeze=False)
    for axis, (name, result) in zip(axes.flat, results.items(), strict=True):
        bins = result["reliability"]
        edges = np.asarray(bins["edges"], dtype=float)

        def values(key: str, bins=bins) -> np.ndarray:
            return np.array([np.nan if value is None else value for value in bins[key]], dtype=float)

        axis.bar(edges[:-1], np.nan_to_num(values("accuracy")), width=np.diff(edges), align="edge", alpha=0.55,
                 edgecolor="white", color="C0", label=f"before: ECE {result['ece']:.3f}")
        after_confidence, after_accuracy = values("confidence_calibrated"), values("accuracy_calibrated")
        shown = ~np.isnan(after_accuracy)
        axis.plot(after_confidence[shown], after_accuracy[shown], "o-", color="C3", markersize=4,
                  label=f"after T={result['temperature']:.2f}: ECE {result['ece_calibrated']:.3f}")
        axis.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfectly calibrated")
        axis.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="confidence (top-1 probability)", ylabel="accuracy",
                 title=name)
        axis.legend(loc="upper left", fontsize=8)
    save_figure(figure, path)


def score_bars(items: Sequence[dict], path: Path, *, models: Sequence[str]) -> None:
    """Per image: the image and, side by side, each model's score for the shown classes (true class in green).

    Each item has `image`, `title`, `classes` (names shown, in order), `true_class` and `scores`
    (model -> scores of the shown classes)."""
    count = max(len(items), 1)
    heights = [max(1.6, 0.22 * len(item["classes"]) + 0.6) for item in items] or [1.6]
    figure, axes = plt.subplots(count, 2, figsize=(9.5, sum(heights) + 0.3), squeeze=False,
                                gridspec_kw={"width_ratios": [1, 3.2], "height_ratios": heights, "wspace": 0.75})
    for row, item in enumerate(items):
        _show_image(axes[row, 0], item["image"])
        axes[row, 0].set_title(item["title"], fontsize=7)
        axis = axes[row, 1]
        positions = np.arange(len(item["classes"]))
        height = 0.8 / len(models)
        for offset, model in enumerate(models):
            axis.barh(positions + (offset - (len(models) - 1) / 2) * height, item["scores"][model], height=height,
                      color=f"C{offset}", label=model)
        axis.set_yticks(positions, labels=[shorten(name) for name in item["classes"]], fontsize=7)
        for tick, name in zip(axis.get_yticklabels(), item["classes"], strict=True):
            if name == item["true_class"]:
                tick.set_color("green")
                tick.set_fontweight("bold")
        axis.invert_yaxis()
        axis.set_xlim(0, 1)
        axis.tick_params(axis="x", labelsize=7)
        if row == 0:
            axis.legend(loc="lower right", fontsize=7)
    if not items:
        axes[0, 0].axis("off")
        axes[0, 1].axis("off")
        axes[0, 1].text(0.5, 0.5, "no images selected", ha="center", va="center")
    save_figure(figure, path)


def shorten(text: str, limit: int = 24) -> str:
    """`text`, cut with an ellipsis beyond `limit` characters (long class names in captions and ticks)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def training_curves(histories: dict[str, pd.DataFrame], path: Path) -> None:
    """Accuracy and loss per epoch of each model (training dashed, validation solid); a dotted line where
    a `phase` column changes (fine-tuning after the head). Loss is on a log scale: epochs differ by orders."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for color, (name, history) in enumerate(histories.items()):
        if history.empty or "epoch" not in history:
            continue
        for axis, metric in zip(axes, ("accuracy", "loss"), strict=True):
            for column, style in ((metric, "--"), (f"val_{metric}", "-")):
                if column in history:
                    label = f"{name} {'validation' if column.startswith('val_') else 'training'}"
                    axis.plot(history["epoch"], history[column], style, color=f"C{color}", label=label)
            if "phase" in history:
                changes = history["epoch"][history["phase"].ne(history["phase"].shift()) & (history.index > 0)]
                for epoch in changes:
                    axis.axvline(epoch - 0.5, color=f"C{color}", linestyle=":", linewidth=1)
    axes[0].set(xlabel="epoch", ylabel="accuracy", title="Accuracy", ylim=(0, 1.02))
    axes[1].set(xlabel="epoch", ylabel="loss (log scale)", title="Loss")
    losses = [np.asarray(line.get_ydata(), dtype=float) for line in axes[1].get_lines()]
    if losses and all(values.size and np.nanmin(values) > 0 for values in losses):
        axes[1].set_yscale("log")
        for formatter in (axes[1].yaxis.set_major_formatter, axes[1].yaxis.set_minor_formatter):
            formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    for axis in axes:
        if axis.get_lines():
            axis.legend(fontsize=8)
        axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # epochs are whole numbers
        axis.grid(alpha=0.3)
    save_figure(figure, path)
