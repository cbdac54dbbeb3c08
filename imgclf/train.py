"""The train-from-scratch stage, and what both training stages share: model files, precision, callbacks."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np

from imgclf import fileio, fitting, models, serving, tracking
from imgclf.config import FitConfig, Params

log = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
HISTORY_FILE = "history.csv"
SUMMARY_FILE = "train_summary.json"
RESUME_DIR = "resume"


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


def read_meta(prepared_dir: Path) -> dict:
    return fileio.read_json(Path(prepared_dir) / "meta.json")


def image_shape(meta: dict) -> tuple[int, int, int]:
    return (meta["image_size"], meta["image_size"], meta["channels"])


def first_images(dataset, count: int = 2) -> np.ndarray:
    for batch in dataset.take(1):
        return np.asarray(batch[0])[:count]
    raise ValueError("empty dataset")


def set_precision(precision: str) -> None:
    """The global dtype policy; call before building models."""
    keras.mixed_precision.set_dtype_policy(precision)


def compile_model(model: keras.Model, config: FitConfig, *, steps_per_epoch: int, jit_compile: bool,
                  epochs: int | None = None, learning_rate: float | None = None) -> None:
    model.compile(optimizer=fitting.make_optimizer(config, steps_per_epoch=steps_per_epoch, epochs=epochs,
                                                   initial_learning_rate=learning_rate),
                  loss=fitting.make_loss(config), metrics=["accuracy"], jit_compile=jit_compile)


def extra_callbacks(params: Params, *, model_name: str, run_id: str, project_root: Path) -> list:
    if not params.training.tensorboard:
        return []
    log_dir = Path(project_root) / "logs" / "tensorboard" / model_name / run_id
    log.info("TensorBoard logs in %s (tensorboard --logdir logs/tensorboard)", log_dir)
    return [keras.callbacks.TensorBoard(log_dir=str(log_dir))]


def fingerprint(params: Params, meta: dict, *sections: str) -> dict[str, Any]:
    """Everything that shapes a training run: a resume backup from another fingerprint is discarded."""
    return {"params": tracking.stage_params(params, *sections), "data": meta}


def train_scratch(params: Params, *, prepared_dir: Path, out_dir: Path, project_root: Path) -> dict:
    """The train-from-scratch stage: fit the seed CNN on the prepared data and save `model.keras`."""
    from imgclf import augment, tfdata

    # First: a multi-worker strategy must configure collective ops before any TensorFlow op (and a refused one
    # stops the stage before any work).
    strategy = tfdata.distribution_strategy(params.training.distribute)
    tfdata.configure(seed=params.seed, deterministic=params.deterministic)
    set_precision(params.training.precision)
    meta = read_meta(prepared_dir)
    shape, num_classes, train_count = image_shape(meta), meta["num_classes"], meta["counts"]["train"]
    config = params.scratch
    out_dir = Path(out_dir)
    resume = fitting.ResumeState(out_dir / RESUME_DIR, enabled=params.training.resume,
                                 fingerprint=fingerprint(params, meta, "augment", "scratch", "training"))
    first_epoch = resume.completed_epochs("fit")
    if first_epoch:
        log.info("resuming from the end of epoch %d of %d", first_epoch, config.epochs)
    steps = tfdata.steps_per_epoch(train_count, config.batch_size)
    augmentation = augment.build_augmentation(params.augment, seed=params.seed) if params.augment.enabled else None
    train_data = tfdata.make_dataset(prepared_dir, "train", image_shape=shape, num_classes=num_classes,
                                     batch_size=config.batch_size, training=True, seed=params.seed,
                                     augment=augmentation, example_count=train_count, epochs=config.epochs,
                                     first_epoch=first_epoch)
    val_data = tfdata.make_dataset(prepared_dir, "val", image_shape=shape, num_classes=num_classes,
                                   batch_size=config.batch_size, example_count=meta["counts"]["val"])

    with strategy.scope():
        model = models.build_scratch_model(config, input_shape=shape, num_classes=num_classes)
        if config.architecture == "residual":
            models.set_patch_whitening(model, training_pixels(prepared_dir, image_shape=shape, num_classes=num_classes,
                                                              seed=params.seed))
        compile_model(model, config, steps_per_epoch=steps, jit_compile=params.training.jit_compile)
    logged = tracking.stage_params(params, "data", "preprocess", "augment", "scratch", "training")
    with tracking.training_run(params, model="scratch", project_root=project_root, out_dir=out_dir,
                               data_sha256=meta.get("source_sha256"), logged_params=logged,
                               run_id=resume.run_id()) as run:
        resume.remember_run(run.info.run_id)
        mlflow.log_params({"parameter_count": model.count_params(), "train_images": train_count})
        history = resume.history("fit")
        logger = fitting.EpochLogger([out_dir / HISTORY_FILE, resume.history_path("fit")],
                                     examples_per_epoch=train_count, rows=history)
        callbacks = [*fitting.standard_callbacks(config, seed=params.seed, checkpoint_dir=resume.phase_dir("fit"),
                                                 history=history),
                     logger, *extra_callbacks(params, model_name="scratch", run_id=run.info.run_id,
                                              project_root=project_root),
                     *resume.callbacks("fit")]
        model.fit(train_data, validation_data=val_data, epochs=config.epochs, steps_per_epoch=steps,
                  callbacks=callbacks, verbose=2)
        fitting.restore_best(model, config, resume.phase_dir("fit"))
        save_model(model, out_dir / MODEL_FILE)
        serving.log_model(out_dir / MODEL_FILE, meta, first_images(val_data, count=1)[0])
        summary = summarize(logger.rows, model)
        mlflow.log_dict(summary, "train_summary.json")
    fileio.atomic_write_json(out_dir / SUMMARY_FILE, summary)
    resume.clear()
    return summary


WHITENING_IMAGES = 5000  # airbench's sample: the 12x12 patch covariance is settled long before this


def training_pixels(prepared_dir: Path, *, image_shape: tuple[int, int, int], num_classes: int, seed: int,
                    count: int = WHITENING_IMAGES) -> np.ndarray:
    """A seeded random sample of raw training pixels, unaugmented (for data-dependent initialisation)."""
    from imgclf import tfdata

    dataset = tfdata.make_dataset(prepared_dir, "train", image_shape=image_shape, num_classes=num_classes,
                                  batch_size=count, training=True, seed=seed)
    return first_images(dataset, count=count)


def summarize(rows: list[dict[str, Any]], model: keras.Model) -> dict:
    last = rows[-1]
    return {
        "epochs": int(last["epoch"]),
        "parameter_count": int(model.count_params()),
        "final": {key: value for key, value in last.items() if isinstance(value, float)},
        "best_val_accuracy": max(row.get("val_accuracy", 0.0) for row in rows),
        "mean_epoch_seconds": float(np.mean([row["epoch_seconds"] for row in rows])),
    }
