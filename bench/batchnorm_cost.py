"""What re-estimating BatchNorm's statistics costs per epoch on CIFAR-sized data (issue 9).

    python -m bench.batchnorm_cost    # writes bench/results/batchnorm_reestimate_cost.json; BENCHMARKS.md

The seed CNN with params.yaml's recipe on random 32x32x3 images: the time of a training step (extrapolated to
an epoch of 45,000 images at batch 64), of `fitting.reestimate_batch_norm` on `scratch.batch_norm_images`
images, and of validating 5,000 images (paid before the fix too).
"""

from __future__ import annotations

import time

import keras
import numpy as np
import yaml

from bench import provenance
from bench.common import RESULTS, ROOT
from imgclf.config import params_from_dict
from imgclf.training import fitting, recipe, scratch_model

TRAIN_IMAGES, BATCH, TIMED_STEPS = 45_000, 64, 40


def main() -> None:
    run = provenance.start()
    config = params_from_dict(yaml.safe_load((ROOT / "params.yaml").read_text())).scratch
    steps_per_epoch = -(-TRAIN_IMAGES // BATCH)
    model = scratch_model.build_scratch_model(config, input_shape=(32, 32, 3), num_classes=10)
    recipe.compile_model(model, config, steps_per_epoch=steps_per_epoch, jit_compile=False)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(BATCH * TIMED_STEPS, 32, 32, 3)).astype("float32")
    labels = keras.utils.to_categorical(rng.integers(0, 10, size=len(images)), 10)
    model.fit(images[:640], labels[:640], batch_size=BATCH, epochs=1, verbose=0)  # tracing, not timed
    started = time.perf_counter()
    model.fit(images, labels, batch_size=BATCH, epochs=1, verbose=0)
    step_seconds = (time.perf_counter() - started) / TIMED_STEPS
    batches = [images[start:start + BATCH] for start in range(0, len(images), BATCH)]
    batches = (batches * (1 + config.batch_norm_images // len(images)))[:config.batch_norm_images // BATCH]
    fitting.reestimate_batch_norm(model, batches[:2])  # warm-up
    started = time.perf_counter()
    used = fitting.reestimate_batch_norm(model, batches)
    reestimate_seconds = time.perf_counter() - started
    model.evaluate(images[:640], labels[:640], batch_size=BATCH, verbose=0)
    started = time.perf_counter()
    model.evaluate(images, labels, batch_size=BATCH, verbose=0)
    evaluate_per_image = (time.perf_counter() - started) / len(images)
    epoch_seconds = step_seconds * steps_per_epoch
    provenance.write(RESULTS / "batchnorm_reestimate_cost.json", {
        "benchmark": "batchnorm_reestimate_cost", "train_images": TRAIN_IMAGES, "batch_size": BATCH,
        "train_step_seconds": step_seconds,
        "epoch_seconds_estimate": epoch_seconds, "batch_norm_images": used, "reestimate_seconds": reestimate_seconds,
        "reestimate_fraction_of_epoch": reestimate_seconds / epoch_seconds,
        "validation_5000_seconds_estimate": evaluate_per_image * 5000}, run)


if __name__ == "__main__":
    main()
