"""Training shared by both models: per-epoch logging, atomic model files, MLflow model logging; the scratch stage."""

from __future__ import annotations

import csv
import io
import logging
import os
import tempfile
import time
import types
from pathlib import Path

import keras
import mlflow
import numpy as np

from imgclf import fileio, models, tracking
from imgclf.config import Params

log = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
HISTORY_FILE = "history.csv"
SUMMARY_FILE = "train_summary.json"


class EpochLogger(keras.callbacks.Callback):
    """After each epoch: metrics, learning rate, epoch time and images/s to MLflow and to a CSV for DVC plots."""

    def __init__(self, csv_path: Path, *, examples_per_epoch: int, step_offset: int = 0):
        super().__init__()
        self.csv_path = Path(csv_path)
        self.examples_per_epoch = examples_per_epoch
        self.step_offset = step_offset
        self.rows: list[dict[str, float]] = []
        self._started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._started
        row = {"epoch": epoch + 1 + self.step_offset}
        row.update({key: float(value) for key, value in (logs or {}).items()})
        row["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        row["epoch_seconds"] = seconds
        row["images_per_second"] = self.examples_per_epoch / seconds if seconds > 0 else 0.0
        self.rows.append(row)
        mlflow.log_metrics({key: value for key, value in row.items() if key != "epoch"},
                           step=int(row["epoch"]))
        write_history(self.csv_path, self.rows)


def write_history(path: Path, rows: list[dict[str, float]]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    fileio.atomic_write_text(path, buffer.getvalue())


def save_model(model: keras.Model, path: Path) -> None:
    """Save to a temporary `.keras` file beside `path`, then rename: a killed stage leaves no broken model."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".keras", dir=path.parent)
    os.close(descriptor)
    try:
        model.save(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _save_keras_flavor(path: str, **kwargs) -> None:
    # MLflow 3.17's keras flavor writes the input example before creating the model directory
    # (FileNotFoundError); creating it first is the only change to the stock `mlflow.keras.save_model`.
    os.makedirs(path, exist_ok=True)
    mlflow.keras.save_model(path=path, **kwargs)


_KERAS_FLAVOR = types.SimpleNamespace(__name__="mlflow.keras", save_model=_save_keras_flavor)


def log_model(model: keras.Model, example_images: np.ndarray) -> None:
    """Log the model to the active MLflow run with a signature and an input example (raw pixels)."""
    example = example_images[:2].astype(np.float32)
    signature = mlflow.models.infer_signature(example, model.predict(example, verbose=0))
    mlflow.models.Model.log(artifact_path=None, name="model", flavor=_KERAS_FLAVOR, model=model, signature=signature,
                            input_example=example, pip_requirements=tracking.pip_requirements())


def read_meta(prepared_dir: Path) -> dict:
    return fileio.read_json(Path(prepared_dir) / "meta.json")


def image_shape(meta: dict) -> tuple[int, int, int]:
    return (meta["image_size"], meta["image_size"], meta["channels"])


def first_images(dataset, count: int = 2) -> np.ndarray:
    for images, _ in dataset.take(1):
        return np.asarray(images)[:count]
    raise ValueError("empty dataset")


def train_scratch(params: Params, *, prepared_dir: Path, out_dir: Path, project_root: Path) -> dict:
    """The train-from-scratch stage: fit the seed CNN on the prepared data and save `model.keras`."""
    from imgclf import augment, tfdata

    tfdata.configure(seed=params.seed, deterministic=params.deterministic)
    meta = read_meta(prepared_dir)
    shape, num_classes = image_shape(meta), meta["num_classes"]
    config = params.scratch
    augmentation = augment.build_augmentation(params.augment, seed=params.seed) if params.augment.enabled else None
    train_data = tfdata.make_dataset(prepared_dir, "train", image_shape=shape, num_classes=num_classes,
                                     batch_size=config.batch_size, training=True, seed=params.seed,
                                     augment=augmentation, example_count=meta["counts"]["train"])
    val_data = tfdata.make_dataset(prepared_dir, "val", image_shape=shape, num_classes=num_classes,
                                   batch_size=config.batch_size, example_count=meta["counts"]["val"])

    model = models.build_scratch_model(config, input_shape=shape, num_classes=num_classes)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                  loss=keras.losses.CategoricalCrossentropy(), metrics=["accuracy"])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tracking.training_run(params, model="scratch", project_root=project_root, out_dir=out_dir,
                               data_sha256=meta.get("source_sha256"),
                               logged_params=tracking.stage_params(params, "data", "preprocess", "augment",
                                                                   "scratch")):
        mlflow.log_params({"parameter_count": model.count_params(), "train_images": meta["counts"]["train"]})
        logger = EpochLogger(out_dir / HISTORY_FILE, examples_per_epoch=meta["counts"]["train"])
        model.fit(train_data, validation_data=val_data, epochs=config.epochs, callbacks=[logger], verbose=2)
        save_model(model, out_dir / MODEL_FILE)
        log_model(model, first_images(val_data))
        summary = summarize(logger.rows, model)
        mlflow.log_dict(summary, "train_summary.json")
    fileio.atomic_write_json(out_dir / SUMMARY_FILE, summary)
    return summary


def summarize(rows: list[dict[str, float]], model: keras.Model) -> dict:
    last = rows[-1]
    return {
        "epochs": int(last["epoch"]),
        "parameter_count": int(model.count_params()),
        "final": {key: value for key, value in last.items() if key != "epoch"},
        "best_val_accuracy": max(row.get("val_accuracy", 0.0) for row in rows),
        "mean_epoch_seconds": float(np.mean([row["epoch_seconds"] for row in rows])),
    }
