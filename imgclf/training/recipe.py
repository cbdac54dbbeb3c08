"""What the training stages share, one floor below them: features, precision, compiling, callbacks, summaries.

No stage module is imported by another: scratch, transfer, features and lr_finder all build on this.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import keras
import numpy as np

from imgclf import artifacts
from imgclf.artifacts import PreparedMeta
from imgclf.config import FitConfig, Params
from imgclf.tracking import runs
from imgclf.training import fitting

log = logging.getLogger(__name__)


def load_features(features_dir: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    path = Path(features_dir) / artifacts.features_file(name)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run the extract_features stage first (dvc repro)")
    with np.load(path) as data:
        return data["features"], data["labels"]


def training_features(features_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The training features with every augmented view, if the features stage extracted any."""
    views = [load_features(features_dir, "train")]
    augmented = sorted(Path(features_dir).glob(artifacts.features_file(f"{artifacts.AUGMENTED_VIEW_PREFIX}*")))
    views += [load_features(features_dir, path.stem) for path in augmented]
    return np.concatenate([view[0] for view in views]), np.concatenate([view[1] for view in views])


def first_images(dataset, count: int = 2) -> np.ndarray:
    for batch in dataset.take(1):
        return np.asarray(batch[0])[:count]
    raise ValueError("empty dataset")


def set_precision(precision: str) -> None:
    """The global dtype policy; call before building models."""
    keras.mixed_precision.set_dtype_policy(precision)


def compile_model(model: keras.Model, config: FitConfig, *, steps_per_epoch: int, jit_compile: bool,
                  epochs: int | None = None, learning_rate: float | None = None) -> None:
    """The one compile path: configured optimizer and schedule, label-smoothed loss, accuracy.

    `training.jit_compile` is TensorFlow's choice (XLA or its own graph). On the JAX backend (multi_worker's
    workers) the step is always jitted: unjitted, JAX runs the step op by op, compiling each op on first use (17 s
    of a 3-epoch smoke run) and dispatching it alone."""
    jit_compile = jit_compile or keras.backend.backend() == "jax"
    model.compile(optimizer=fitting.make_optimizer(config, steps_per_epoch=steps_per_epoch, epochs=epochs,
                                                   initial_learning_rate=learning_rate),
                  loss=fitting.make_loss(config), metrics=["accuracy"], jit_compile=jit_compile)


def extra_callbacks(params: Params, *, model_name: str, run_id: str, project_root: Path) -> list:
    if not params.training.tensorboard:
        return []
    log_dir = Path(project_root) / "logs" / "tensorboard" / model_name / run_id
    log.info("TensorBoard logs in %s (tensorboard --logdir logs/tensorboard)", log_dir)
    return [keras.callbacks.TensorBoard(log_dir=str(log_dir))]


def training_callbacks(params: Params, config: FitConfig, *, resume: fitting.ResumeState, phase: str,
                       logger: fitting.EpochLogger, history: list[dict], model_name: str, run_id: str,
                       project_root: Path, validation: keras.callbacks.Callback | None = None) -> list:
    """Every callback of one training phase, in the order they must run (the one builder all phases use).

    `validation`, when given, computes the val_* logs itself (fitting.ValidateWithPopulationStatistics): it runs
    first, so checkpointing, early stopping, the schedule and the logger all read its figures.
    """
    return [*([validation] if validation else []),
            *fitting.standard_callbacks(config, seed=params.seed, checkpoint_dir=resume.phase_dir(phase),
                                        history=history),
            logger, *extra_callbacks(params, model_name=model_name, run_id=run_id, project_root=project_root),
            *resume.callbacks(phase)]


def fingerprint(params: Params, meta: PreparedMeta, *sections: str) -> dict[str, Any]:
    """Everything that shapes a training run: a resume backup from another fingerprint is discarded."""
    return {"params": runs.stage_params(params, *sections), "data": meta.to_dict()}


def summarize(rows: list[dict[str, Any]], model: keras.Model) -> dict:
    last = rows[-1]
    return {
        "epochs": int(last["epoch"]),
        "parameter_count": int(model.count_params()),
        "final": {key: value for key, value in last.items() if isinstance(value, float)},
        "best_val_accuracy": max(row.get("val_accuracy", 0.0) for row in rows),
        "mean_epoch_seconds": float(np.mean([row["epoch_seconds"] for row in rows])),
    }
