"""Tiny generated inputs for the evaluate / analysis / report tests: prepared data (real TFRecord shards),
model predictions with a chosen accuracy, and the evaluate stage's output files."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from scipy import special

from imgclf import artifacts, fileio
from imgclf.evaluation import evaluate


def write_prepared(root: Path, *, class_names: list[str], per_class: dict[str, int], size: int = 8,
                   seed: int = 0) -> dict:
    """`root` as the preprocess stage leaves it: shards per split, meta.json and manifest.csv."""
    from imgclf.data import tfdata

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows, counts, shards, next_id = [], {}, {}, 0
    for split, count in per_class.items():
        labels = np.repeat(np.arange(len(class_names)), count)
        ids = np.arange(next_id, next_id + len(labels))
        next_id += len(labels)
        colours = (np.arange(len(class_names))[:, None] * np.array([70, 130, 200]) % 256).astype(np.int64)
        pixels = [np.clip(colours[label] + rng.integers(-20, 20, (size, size, 3)), 0, 255).astype(np.uint8)
                  for label in labels]
        shards[split] = tfdata.write_shards(root, split, zip(pixels, labels, ids, strict=True), count=len(labels),
                            examples_per_shard=1000)
        rows += [{"id": int(i), "split": split, "label": int(label), "class_name": class_names[label],
                  "original": f"{class_names[label]}/{i}.png"} for i, label in zip(ids, labels, strict=True)]
        counts[split] = [count] * len(class_names)
    with open(root / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "split", "label", "class_name", "original"])
        writer.writeheader()
        writer.writerows(rows)
    meta = {"source": "synthetic", "class_names": class_names, "num_classes": len(class_names), "image_size": size,
            "channels": 3, "resize": "pad", "counts": {split: int(sum(value)) for split, value in counts.items()},
            "counts_per_class": counts, "source_sha256": None, "skipped": 0, "shards": shards}
    fileio.atomic_write_json(root / artifacts.META_FILE, meta)
    return meta


def fake_probabilities(labels: np.ndarray, *, num_classes: int, accuracy: float, seed: int,
                       sharpness: float = 3.0) -> np.ndarray:
    """Softmax scores that are right on about `accuracy` of the images (wrong ones pick another class)."""
    rng = np.random.default_rng(seed)
    predicted = labels.copy()
    wrong = rng.random(len(labels)) > accuracy
    predicted[wrong] = (labels[wrong] + rng.integers(1, num_classes, wrong.sum())) % num_classes
    logits = rng.normal(size=(len(labels), num_classes))
    logits[np.arange(len(labels)), predicted] += sharpness
    return special.softmax(logits, axis=1).astype(np.float32)


def write_evaluation(evaluate_dir: Path, *, ids: np.ndarray, labels: np.ndarray,
                     probabilities: dict[str, np.ndarray], class_names: list[str]) -> None:
    """The files the analysis stage reads, as the evaluate stage writes them (no models, no MLflow)."""
    details = {"class_names": class_names}
    for model, scores in probabilities.items():
        predictions = evaluate.Predictions(ids=ids, labels=labels, probabilities=scores, images_per_second=100.0)
        evaluate.write_predictions(evaluate_dir / evaluate.predictions_file(model), predictions, class_names,
                                   top_k=5)
        evaluate.write_probabilities(evaluate_dir / evaluate.probabilities_file(model), predictions)
        result = evaluate.classification_metrics(labels, scores, class_names)
        result.update(evaluate.calibration_metrics(labels=labels, probabilities=scores, validation_labels=labels,
                                                   validation_probabilities=scores, bins=15))
        result.update({"test_images": len(labels), "images_per_second": 100.0, "parameter_count": 1000,
                       "model_size_mb": 0.1})
        details[model] = result
    fileio.atomic_write_json(evaluate_dir / evaluate.DETAILS_FILE, details)
