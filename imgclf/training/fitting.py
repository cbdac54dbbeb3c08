"""Fitting a Keras model from params: optimizer, schedule, callbacks, and resuming a killed run.

Resume: a `keras.callbacks.BackupAndRestore` directory holds the weights and optimizer state (hence the
schedule position) at the end of each epoch. Randomness is made a pure function of (seed, epoch) — every
dropout/augmentation seed-generator state is reset at the start of each epoch, and the training data is
shuffled with a per-epoch seed — so a resumed run replays exactly the epochs an uninterrupted run would.
A fingerprint of the params and data guards against resuming from a stale backup.

BatchNorm's inference statistics: see `reestimate_batch_norm` and `ValidateWithPopulationStatistics`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from imgclf import artifacts, fileio
from imgclf.config import FitConfig

log = logging.getLogger(__name__)

BACKUP_SUBDIR = "backup"


@keras.saving.register_keras_serializable(package="imgclf")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """fastai's one-cycle policy: linear warm-up from peak/25 to peak, then cosine annealing to peak/1e4."""

    def __init__(self, peak: float, total_steps: int, warmup_fraction: float = 0.3):
        self.peak = peak
        self.total_steps = total_steps
        self.warmup_fraction = warmup_fraction

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warmup = max(1.0, self.total_steps * self.warmup_fraction)
        start, end = self.peak / 25.0, self.peak / 1e4
        rising = start + (self.peak - start) * step / warmup
        progress = keras.ops.clip((step - warmup) / max(1.0, self.total_steps - warmup), 0.0, 1.0)
        falling = end + (self.peak - end) * 0.5 * (1.0 + keras.ops.cos(math.pi * progress))
        return keras.ops.where(step < warmup, rising, falling)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup_fraction": self.warmup_fraction}


@keras.saving.register_keras_serializable(package="imgclf")
class LinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """`peak` until `start_step`, then linear decay to 0 at `total_steps`.

    With a warm-up over the first `start_step` steps this is airbench's triangle: the rate climbs to `peak`, then
    falls. Decaying from step 0 instead would cap the warmed-up rate at (1 - warm-up share) of `peak`.
    """

    def __init__(self, peak: float, total_steps: int, start_step: int = 0):
        self.peak = peak
        self.total_steps = total_steps
        self.start_step = start_step

    def __call__(self, step):
        decaying = keras.ops.cast(step, "float32") - float(self.start_step)
        remaining = 1.0 - decaying / float(max(1, self.total_steps - self.start_step))
        return self.peak * keras.ops.clip(remaining, 0.0, 1.0)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps, "start_step": self.start_step}


@keras.saving.register_keras_serializable(package="imgclf")
class Warmup(keras.optimizers.schedules.LearningRateSchedule):
    """Scale another schedule (or a constant) linearly from 0 to 1 over the first `warmup_steps` steps.

    A short warm-up lets high-rate SGD start without the early updates that blow up freshly initialised
    BatchNorm statistics; after it the wrapped schedule runs on the same step axis, untouched.
    """

    def __init__(self, schedule, warmup_steps: int):
        self.schedule = schedule
        self.warmup_steps = warmup_steps

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        base = self.schedule(step) if callable(self.schedule) else self.schedule
        return base * keras.ops.minimum(1.0, (step + 1.0) / float(max(1, self.warmup_steps)))

    def get_config(self):
        schedule = (keras.saving.serialize_keras_object(self.schedule) if callable(self.schedule)
                    else self.schedule)
        return {"schedule": schedule, "warmup_steps": self.warmup_steps}

    @classmethod
    def from_config(cls, config):
        schedule = config["schedule"]
        if isinstance(schedule, dict):
            schedule = keras.saving.deserialize_keras_object(schedule)
        return cls(schedule, config["warmup_steps"])


def learning_rate(config: FitConfig, *, steps_per_epoch: int, epochs: int | None = None,
                  initial: float | None = None):
    """A float or a `LearningRateSchedule` for the configured schedule (per-step, so it resumes exactly)."""
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    schedule = _schedule(config, steps_per_epoch=steps_per_epoch, epochs=epochs, initial=initial,
                         warmup_steps=warmup_steps)
    # one_cycle warms up by itself; plateau lowers a plain float from a callback, which a wrapper would hide.
    if warmup_steps > 0 and config.lr_schedule not in ("one_cycle", "plateau"):
        return Warmup(schedule, warmup_steps)
    return schedule


def _schedule(config: FitConfig, *, steps_per_epoch: int, epochs: int | None, initial: float | None,
              warmup_steps: int):
    rate = config.learning_rate if initial is None else initial
    total_steps = steps_per_epoch * (epochs or config.epochs)
    if config.lr_schedule == "linear":
        return LinearDecay(rate, total_steps=max(1, total_steps), start_step=min(warmup_steps, total_steps))
    if config.lr_schedule == "step":
        return keras.optimizers.schedules.ExponentialDecay(rate, decay_steps=steps_per_epoch * config.lr_step_epochs,
                                                           decay_rate=config.lr_decay_factor, staircase=True)
    if config.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(rate, decay_steps=max(1, total_steps))
    if config.lr_schedule == "one_cycle":
        return OneCycle(rate, total_steps=max(1, total_steps))
    return rate  # constant, and plateau (a callback lowers it)


def make_optimizer(config: FitConfig, *, steps_per_epoch: int, epochs: int | None = None,
                   initial_learning_rate: float | None = None) -> keras.optimizers.Optimizer:
    rate = learning_rate(config, steps_per_epoch=steps_per_epoch, epochs=epochs, initial=initial_learning_rate)
    decay = config.weight_decay or None
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(rate, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(rate, momentum=config.momentum, nesterov=config.nesterov, weight_decay=decay)
    return keras.optimizers.Adam(rate, weight_decay=decay)


def make_loss(config: FitConfig) -> keras.losses.Loss:
    return keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)


class EpochSeeds(keras.callbacks.Callback):
    """Reset every seed-generator state (dropout, random layers) to a function of (seed, epoch).

    Keras does not save seed-generator states with the weights; making them depend on the epoch alone is
    what lets a resumed run draw the same dropout masks as an uninterrupted one.
    """

    def __init__(self, seed: int):
        super().__init__()
        self.seed = seed

    def on_epoch_begin(self, epoch, logs=None):
        states = [variable for variable in self.model.variables if variable.name == "seed_generator_state"]
        for index, state in enumerate(states):
            state.assign(np.array([self.seed * 7919 + index, epoch * 1_000_003], dtype=state.dtype))


class Lookahead(keras.callbacks.Callback):
    """airbench's lookahead: every `interval` steps the weights become an average of themselves and their past.

    The slow copy follows the weights with a decay of `base_decay * (step / total_steps) ** 3`: nothing early on,
    when progress matters, up to heavy averaging at the end of the schedule, when noise does. At the last step the
    weights become the slow copy. A resumed run starts its slow copy from the restored weights (the average of
    the killed run is not kept), which differs from an uninterrupted run only in late, small corrections. The
    copy is taken before the first step, not at train begin: BackupAndRestore restores the weights in its own
    `on_train_begin`, which may run after this one's.
    """

    def __init__(self, total_steps: int, *, interval: int = 5, base_decay: float = 0.95 ** 5):
        super().__init__()
        self.total_steps = total_steps
        self.interval = interval
        self.base_decay = base_decay
        self._slow: list[np.ndarray] = []

    def on_train_begin(self, logs=None):
        self._slow = []

    def on_train_batch_begin(self, batch, logs=None):
        if not self._slow:
            self._slow = [keras.ops.convert_to_numpy(variable).copy() for variable in self.model.trainable_variables]

    def on_train_batch_end(self, batch, logs=None):
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        if step % self.interval == 0:
            decay = self.base_decay * (min(step, self.total_steps) / self.total_steps) ** 3
            for slow, variable in zip(self._slow, self.model.trainable_variables, strict=True):
                slow *= decay
                slow += (1.0 - decay) * keras.ops.convert_to_numpy(variable)
                variable.assign(slow)
        elif step >= self.total_steps:  # the last step: end on the average, not on the last few noisy steps
            for slow, variable in zip(self._slow, self.model.trainable_variables, strict=True):
                variable.assign(slow)


def trainable_batch_norm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every BatchNormalization layer that normalises with batch statistics in training, nested ones included.

    A frozen BatchNorm (`trainable=False`, as in a fine-tuned backbone) always uses its moving statistics in
    Keras 3, in training as at inference, so it has nothing to re-estimate.
    """
    return [layer for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]


def reestimate_batch_norm(model: keras.Model, batches: Iterable) -> int:
    """Set every trainable BatchNorm's moving mean and variance to the average of its batch statistics over
    `batches` (image batches, or `(images, ...)` tuples), computed with the rest of the model in inference
    mode; return the number of images used.

    Why: BatchNorm normalises with batch statistics in training but with moving averages at inference. With
    momentum 0.99, after a few dozen steps those averages are still mostly their initial 0/1, and in the seed
    CNN each BatchNorm follows a Dropout, which in training inflates the variance BatchNorm sees (Li et al.,
    CVPR 2019, "Understanding the disharmony between dropout and batch normalization"). On small data sets
    the model then predicts one class for every image at inference while training accuracy is high. The fix
    measures the statistics the trained weights really produce, with dropout off, as inference runs it.

    How (pure keras, any backend, sequential, functional or nested models, mixed precision): the model runs
    with `training=False`, so Dropout and random layers are off, while each BatchNorm layer temporarily runs
    Keras' own training branch (batch moments, then `moving = moving * momentum + batch * (1 - momentum)`)
    with momentum `seen / (seen + batch_size)`: after the last batch, the moving statistics are the
    image-weighted average of the batch statistics. A BatchNorm layer called with an explicit
    `training=False` inside a trainable model would be re-estimated too; this project has none.
    """
    layers = trainable_batch_norm_layers(model)
    if not layers:
        return 0
    momenta = {id(layer): layer.momentum for layer in layers}
    for layer in layers:
        # An instance attribute shadows the class's `call`; Keras' `Layer.__call__` looks it up at each call.
        layer.call = _batch_statistics_call(layer)
    seen = 0
    try:
        for batch in batches:
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            count = int(keras.ops.shape(images)[0])
            if not count:
                continue
            for layer in layers:
                layer.momentum = seen / (seen + count)
            model(images, training=False)
            seen += count
    finally:
        for layer in layers:
            del layer.call
            layer.momentum = momenta[id(layer)]
    return seen


def _batch_statistics_call(layer: keras.layers.BatchNormalization) -> Callable:
    original = type(layer).call.__get__(layer)

    def call(inputs, training=None, mask=None):
        return original(inputs, training=True, mask=mask)

    return call


class ValidateWithPopulationStatistics(keras.callbacks.Callback):
    """At each epoch end: re-estimate BatchNorm's inference statistics, then evaluate the validation data.

    Put it first among the callbacks, and do not pass `validation_data` to `fit`: the `val_*` values it
    writes into the epoch's logs are what every later callback reads (early stopping, best checkpoint,
    plateau schedule, history, MLflow), and they are measured with the statistics the saved model carries
    (a checkpoint or a restored best epoch holds the statistics of its own epoch; the resume backup too).
    `batchnorm_seconds` in the logs is the re-estimation's cost.
    """

    def __init__(self, validation_data, *, statistics_batches: Callable[[], Iterable]):
        super().__init__()
        self.validation_data = validation_data
        self.statistics_batches = statistics_batches

    def on_epoch_end(self, epoch, logs=None):
        started = time.perf_counter()
        images = reestimate_batch_norm(self.model, self.statistics_batches())
        seconds = time.perf_counter() - started
        if images:
            log.info("epoch %d: BatchNorm statistics re-estimated on %d training images in %.2f s", epoch + 1,
                     images, seconds)
        results = self.model.evaluate(self.validation_data, verbose=0, return_dict=True)
        if logs is not None:
            logs.update({f"val_{name}": float(value) for name, value in results.items()})
            logs["batchnorm_seconds"] = seconds


class EpochLogger(keras.callbacks.Callback):
    """After each epoch: metrics, learning rate, epoch time and images/s to MLflow and to CSV files (Keras's metric
    names in the CSV, `train_accuracy`-style names in MLflow: `runs.epoch_metrics`)."""

    def __init__(self, csv_paths: list[Path], *, examples_per_epoch: int, rows: list[dict] | None = None,
                 phase: str = ""):
        super().__init__()
        self.csv_paths = [Path(path) for path in csv_paths]
        self.examples_per_epoch = examples_per_epoch
        self.rows: list[dict[str, Any]] = list(rows or [])
        self.phase = phase
        self._started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        import mlflow

        from imgclf.tracking import runs

        seconds = time.perf_counter() - self._started
        row: dict[str, Any] = {"epoch": epoch + 1}
        row.update({key: float(value) for key, value in (logs or {}).items() if key != "learning_rate"})
        row["learning_rate"] = current_learning_rate(self.model.optimizer)
        row["epoch_seconds"] = seconds
        row["images_per_second"] = self.examples_per_epoch / seconds if seconds > 0 else 0.0
        if self.phase:
            row["phase"] = self.phase
        self.rows.append(row)
        mlflow.log_metrics(runs.epoch_metrics(row), step=int(row["epoch"]))  # train_accuracy, val_accuracy, ...
        for path in self.csv_paths:
            write_history(path, self.rows)


def current_learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    """The rate in force now: Keras evaluates a schedule at the optimizer's step count."""
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    import io

    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    fileio.atomic_write_text(path, buffer.getvalue())


def standard_callbacks(config: FitConfig, *, seed: int, checkpoint_dir: Path,
                       history: list[dict[str, Any]]) -> list[keras.callbacks.Callback]:
    """Seeded randomness always; schedule-on-plateau, early stopping and best-only checkpoint as configured."""
    callbacks: list[keras.callbacks.Callback] = [EpochSeeds(seed)]
    if config.checkpoint_best:
        previous_best = max((row.get("val_accuracy", 0.0) for row in history), default=None)
        callbacks.append(keras.callbacks.ModelCheckpoint(
            str(best_weights_path(checkpoint_dir)), monitor="val_accuracy", mode="max", save_best_only=True,
            save_weights_only=True, initial_value_threshold=previous_best))
    if config.lr_schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=config.lr_decay_factor,
                                                           patience=config.lr_plateau_patience, verbose=1))
    if config.early_stopping:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.early_stopping_patience,
                                                       min_delta=config.early_stopping_min_delta,
                                                       restore_best_weights=config.restore_best_weights,
                                                       verbose=1))
    return callbacks


def best_weights_path(checkpoint_dir: Path) -> Path:
    return Path(checkpoint_dir) / "best.weights.h5"


def restore_best(model: keras.Model, config: FitConfig, checkpoint_dir: Path) -> None:
    """With `checkpoint_best`, end with the best validation epoch's weights."""
    path = best_weights_path(checkpoint_dir)
    if config.checkpoint_best and path.is_file():
        model.load_weights(path)
        log.info("restored the best validation epoch's weights from %s", path)


class ResumeState:
    """The directory that lets a killed training stage continue where it stopped.

    Holds Keras' BackupAndRestore checkpoint, the history so far, the MLflow run id and a fingerprint of
    everything that shapes training. A different fingerprint discards the directory: never resume into
    a different configuration.
    """

    def __init__(self, directory: Path, *, fingerprint: dict[str, Any], enabled: bool):
        self.directory = Path(directory)
        self.enabled = enabled
        self.fingerprint = hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()
        stored = self.directory / artifacts.RESUME_FINGERPRINT_FILE
        stale = stored.is_file() and fileio.read_json(stored).get("sha256") != self.fingerprint
        # The MLflow run of the discarded state: ended as KILLED once the store is configured (remember_run).
        self.abandoned_run_id: str | None = None
        if self.directory.exists() and (stale or not enabled):
            log.info("discarding resume state in %s (%s)", self.directory,
                     "params or data changed" if stale else "training.resume is off")
            self.abandoned_run_id = self.run_id()
            shutil.rmtree(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        fileio.atomic_write_json(stored, {"sha256": self.fingerprint})

    def backup_dir(self, phase: str) -> Path:
        return self.directory / phase / BACKUP_SUBDIR

    def completed_epochs(self, phase: str) -> int:
        """Epochs whose end-of-epoch backup exists (0 when starting fresh)."""
        metadata = self.backup_dir(phase) / "training_metadata.json"
        if not self.enabled or not metadata.is_file():
            return 0
        return int(json.loads(metadata.read_text())["epoch"])  # Keras records the count of finished epochs

    def history(self, phase: str) -> list[dict[str, Any]]:
        """History rows up to the last backed-up epoch (a kill between the two writes drops the extra row)."""
        done = self.completed_epochs(phase)
        rows = artifacts.read_history(self.directory / phase / artifacts.HISTORY_FILE)
        return [row for row in rows if row["epoch"] <= done]

    def history_path(self, phase: str) -> Path:
        return self.phase_dir(phase) / artifacts.HISTORY_FILE

    def callbacks(self, phase: str) -> list[keras.callbacks.Callback]:
        """The backup callback; put it last, so the history row of an epoch is written before its backup."""
        if not self.enabled:
            return []
        return [keras.callbacks.BackupAndRestore(str(self.backup_dir(phase)), delete_checkpoint=False)]

    def run_id(self) -> str | None:
        path = self.directory / artifacts.RUN_FILE
        return fileio.read_json(path)["run_id"] if path.is_file() else None

    def remember_run(self, run_id: str) -> None:
        if self.abandoned_run_id not in (None, run_id):
            from imgclf.tracking import store  # here, not at the top: the lr finder uses this module without MLflow

            store.end_abandoned_run(self.abandoned_run_id)  # else it stays RUNNING forever
            self.abandoned_run_id = None
        fileio.atomic_write_json(self.directory / artifacts.RUN_FILE, {"run_id": run_id})

    def mark_phase_done(self, phase: str) -> None:
        fileio.atomic_write_json(self.directory / phase / artifacts.PHASE_DONE_FILE, {})

    def phase_done(self, phase: str) -> bool:
        return (self.directory / phase / artifacts.PHASE_DONE_FILE).is_file()

    def phase_dir(self, phase: str) -> Path:
        path = self.directory / phase
        path.mkdir(parents=True, exist_ok=True)
        return path

    def clear(self) -> None:
        """Training finished and its outputs are written: nothing left to resume."""
        shutil.rmtree(self.directory, ignore_errors=True)
