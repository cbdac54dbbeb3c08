"""fastai's learning-rate finder: raise the rate exponentially batch by batch, record the loss, plot it.

A short throwaway run from fresh weights; the stage models are not touched. The suggestion is the rate at
the steepest descent of the smoothed loss (fastai's `steep`); `min_loss / 10` is printed beside it.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import keras
import numpy as np

from imgclf import artifacts, fileio
from imgclf.data import tfdata
from imgclf.training import recipe, scratch_model, transfer_model


class LearningRateSweep(keras.callbacks.Callback):
    """Set an exponentially growing learning rate before each batch; stop once the loss diverges."""

    def __init__(self, *, start: float, end: float, steps: int, smoothing: float = 0.98, diverge: float = 4.0):
        super().__init__()
        self.rates = np.geomspace(start, end, steps)
        self.smoothing, self.diverge = smoothing, diverge
        self.recorded_rates: list[float] = []
        self.losses: list[float] = []
        self._average, self._best, self._previous_mean = 0.0, math.inf, 0.0

    def on_train_batch_begin(self, batch, logs=None):
        step = len(self.recorded_rates)
        if step >= len(self.rates):
            self.model.stop_training = True
            return
        self.model.optimizer.learning_rate = float(self.rates[step])

    def on_train_batch_end(self, batch, logs=None):
        step = len(self.recorded_rates)
        if step >= len(self.rates) or logs is None or "loss" not in logs:
            return
        # Keras reports the running mean over the epoch so far; undo it to get this batch's own loss.
        running_mean = float(logs["loss"])
        batch_loss = running_mean * (batch + 1) - self._previous_mean * batch
        self._previous_mean = running_mean
        self._average = self.smoothing * self._average + (1 - self.smoothing) * batch_loss
        smoothed = self._average / (1 - self.smoothing ** (step + 1))  # bias correction for the first steps
        self.recorded_rates.append(float(self.rates[step]))
        self.losses.append(smoothed)
        self._best = min(self._best, smoothed)
        if not math.isfinite(smoothed) or smoothed > self.diverge * self._best:
            self.model.stop_training = True

    def on_epoch_begin(self, epoch, logs=None):
        self._previous_mean = 0.0


def suggest(rates: list[float], losses: list[float]) -> dict[str, float]:
    """The steepest-descent rate and a tenth of the minimum-loss rate.

    Like fastai, the first and last few points are left out of the search: the start is noise, the end
    is divergence.
    """
    rates_array, values = np.asarray(rates), np.asarray(losses)
    keep = slice(min(10, len(values) // 5), max(len(values) - 5, min(10, len(values) // 5) + 1))
    rates_array, values = rates_array[keep], values[keep]
    gradients = np.gradient(values, np.log10(rates_array)) if len(values) > 2 else np.zeros_like(values)
    return {"steepest": float(rates_array[int(np.argmin(gradients))]),
            "min_loss_over_10": float(rates_array[int(np.argmin(values))] / 10)}


def write_results(out_dir: Path, name: str, rates: list[float], losses: list[float]) -> dict[str, float]:
    """`lr_find_<name>.csv` and `.png` (loss against log learning rate, suggestions marked)."""
    from imgclf import figures

    out_dir = Path(out_dir)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["learning_rate", "loss"])
    writer.writerows(zip(rates, losses, strict=True))
    fileio.atomic_write_text(out_dir / artifacts.lr_find_file(name, ".csv"), buffer.getvalue())
    suggestions = suggest(rates, losses)
    figure, axis = figures.plt.subplots(figsize=(7, 4.5))
    axis.plot(rates, losses)
    for label, rate in suggestions.items():
        axis.axvline(rate, linestyle="--", color="tab:red" if label == "steepest" else "tab:gray",
                     label=f"{label}: {rate:.2e}")
    axis.set_xscale("log")
    axis.set_xlabel("learning rate")
    axis.set_ylabel("loss (smoothed)")
    axis.set_title(f"Learning-rate finder: {name}")
    axis.legend()
    figures.save_figure(figure, out_dir / artifacts.lr_find_file(name, ".png"))
    return suggestions


def run(params, *, model_name: str, prepared_dir: Path, features_dir: Path, out_dir: Path, steps: int = 100,
        start: float = 1e-7, end: float = 10.0) -> dict[str, float]:
    """Sweep the learning rate for the scratch model (on images) or the transfer head (on cached features)."""
    tfdata.configure(seed=params.seed, deterministic=params.deterministic)
    meta = artifacts.read_prepared_meta(prepared_dir)
    sweep = LearningRateSweep(start=start, end=end, steps=steps)
    if model_name == "scratch":
        config = params.scratch
        count = meta.counts["train"]
        per_epoch = tfdata.steps_per_epoch(count, config.batch_size)
        epochs = -(-steps // per_epoch)
        data = tfdata.make_dataset(prepared_dir, "train", image_shape=meta.image_shape,
                                   num_classes=meta.num_classes, batch_size=config.batch_size, training=True,
                                   seed=params.seed, example_count=count, epochs=epochs)
        model = scratch_model.build_scratch_model(config, input_shape=meta.image_shape, num_classes=meta.num_classes)
        fit_args = {"x": data, "steps_per_epoch": per_epoch, "shuffle": False}  # tf.data shuffles, per epoch seed
    else:
        config = params.transfer
        train_x, train_y = recipe.training_features(features_dir)
        per_epoch = -(-len(train_y) // config.batch_size)
        epochs = -(-steps // per_epoch)
        model = transfer_model.build_head(config, train_features=train_x, num_classes=meta.num_classes)
        fit_args = {"x": train_x, "y": keras.utils.to_categorical(train_y, meta.num_classes),
                    "batch_size": config.batch_size, "shuffle": True}
    # The stage's own compile path (configured optimizer, weight decay, label smoothing); a constant rate,
    # since the sweep sets the rate itself before every batch.
    recipe.compile_model(model, config.model_copy(update={"lr_schedule": "constant"}), steps_per_epoch=per_epoch,
                         jit_compile=False, learning_rate=start)
    model.fit(**fit_args, epochs=epochs, callbacks=[sweep], verbose=0)
    return write_results(out_dir, model_name, sweep.recorded_rates, sweep.losses)
