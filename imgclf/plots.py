"""PNG figures for people: class distribution, image grids, confusion matrices, training curves."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: stages run in CI and over SSH

import matplotlib.pyplot as plt
import numpy as np

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
    axis.legend(loc="lower right")
    save_figure(figure, path)


def image_grid(images: Sequence[np.ndarray], captions: Sequence[str], path: Path, *, title: str = "",
               columns: int = 8, caption_colors: Sequence[str] | None = None) -> None:
    """A grid of uint8 images (HxWx1 or HxWx3) with a caption under each."""
    count = max(len(images), 1)
    columns = min(columns, count)
    rows = -(-count // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(1.9 * columns, 2.1 * rows + 0.4), squeeze=False)
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


def confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: Path, *, title: str) -> None:
    """Confusion matrix with counts in the cells (cells are left blank beyond 30 classes to stay legible)."""
    size = max(4.0, 0.35 * len(class_names) + 2)
    figure, axis = plt.subplots(figsize=(size + 1, size))
    image = axis.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
    ticks = np.arange(len(class_names))
    font = 8 if len(class_names) <= 30 else 5
    axis.set_xticks(ticks, labels=class_names, rotation=90, fontsize=font)
    axis.set_yticks(ticks, labels=class_names, fontsize=font)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    if len(class_names) <= 30:
        threshold = matrix.max() / 2 if matrix.size else 0
        for row in range(matrix.shape[0]):
            for column in range(matrix.shape[1]):
                value = int(matrix[row, column])
                axis.text(column, row, str(value), ha="center", va="center", fontsize=7,
                          color="white" if value > threshold else "black")
    save_figure(figure, path)
