"""What the residual net's norms cost per training step: Keras' BatchNorm + ScaledBias against ShiftedBatchNorm.

    python -m bench.norm_cost [--repeats 6]    # writes bench/results/norm-cost.json; BENCHMARKS.md

The norm sites of profiles/scratch_residual.yaml's net (their shapes read off the built model), at its batch size,
each followed by the net's activation, run forward and backward in one compiled function as a training step runs
them, in float32 and in mixed_bfloat16. Three chains: Keras' `BatchNormalization(center=False, scale=False)` then
`ScaledBias` (the net before ShiftedBatchNorm), `ShiftedBatchNorm` (one fused kernel on TensorFlow), and
`ShiftedBatchNorm` without the activation (what the activation itself costs). The chains take turns, `repeats`
timed calls each per round, over `rounds` rounds, so a change of host speed lands on all of them. Only the norms
and activations: the convolutions between them are the same either way, so the difference is what a step saves.
"""

from __future__ import annotations

import argparse
import statistics
import time

import keras
import numpy as np
import tensorflow as tf

from bench import common, provenance
from bench.common import RESULTS, ROOT
from imgclf import model_io
from imgclf.training import scratch_model

PROFILE = ROOT / "profiles" / "scratch_residual.yaml"
PRECISIONS = ("float32", "mixed_bfloat16")
CHAINS = ("keras_batchnorm_then_shift", "shifted_batchnorm", "shifted_batchnorm_no_activation")


def norm_site_shapes(config) -> list[tuple[int, ...]]:
    """The input shape (without the batch) of every norm of the residual net `config` builds."""
    model = scratch_model.build_residual_model(config, input_shape=(32, 32, 3), num_classes=10)
    return [tuple(layer.input.shape[1:]) for layer in model.layers if isinstance(layer, model_io.ShiftedBatchNorm)]


def chain(name: str, shape: tuple[int, ...], config) -> keras.Model:
    """One norm site as the chain `name` builds it, under the global dtype policy."""
    multiplier = float(np.sqrt(config.residual_bias_lr_scale))
    settings = {"momentum": scratch_model.RESIDUAL_BATCH_NORM_MOMENTUM,
                "epsilon": scratch_model.RESIDUAL_BATCH_NORM_EPSILON}
    inputs = keras.Input(shape)
    if name == "keras_batchnorm_then_shift":
        x = keras.layers.BatchNormalization(center=False, scale=False, **settings)(inputs)
        x = model_io.ScaledBias(multiplier)(x)
    else:
        x = model_io.ShiftedBatchNorm(multiplier, **settings)(inputs)
    if name != "shifted_batchnorm_no_activation":
        x = keras.layers.Activation(config.residual_activation)(x)
    return keras.Model(inputs, x)


def step_function(name: str, shapes: list[tuple[int, ...]], config):
    """A compiled forward and backward pass through every site's chain on fixed random inputs."""
    models = [chain(name, shape, config) for shape in shapes]
    dtype = keras.mixed_precision.dtype_policy().compute_dtype
    rng = np.random.default_rng(0)
    inputs = [tf.constant(rng.normal(size=(config.batch_size, *shape)), dtype=dtype) for shape in shapes]

    @tf.function
    def step():
        total = tf.constant(0.0)
        for model, x in zip(models, inputs, strict=True):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_mean(tf.cast(model(x, training=True), "float32"))
            gradients = tape.gradient(loss, [x, *model.trainable_variables])
            total += tf.add_n([tf.reduce_sum(tf.cast(gradient, "float32")) for gradient in gradients])
        return total

    step()  # tracing and first-touch allocations, not timed
    return step


def measure(precision: str, shapes: list[tuple[int, ...]], config, *, repeats: int, rounds: int) -> dict:
    keras.mixed_precision.set_dtype_policy(precision)
    try:
        steps = {name: step_function(name, shapes, config) for name in CHAINS}
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    seconds: dict[str, list[float]] = {name: [] for name in CHAINS}
    for _ in range(rounds):
        for name in CHAINS:
            for _ in range(repeats):
                started = time.perf_counter()
                float(steps[name]())
                seconds[name].append(round(time.perf_counter() - started, 4))
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    return {"precision": precision, "seconds_per_step": seconds, "median_seconds_per_step": medians,
            "fused_saves_per_step_seconds": round(medians[CHAINS[0]] - medians[CHAINS[1]], 4),
            "activation_seconds_per_step": round(medians[CHAINS[1]] - medians[CHAINS[2]], 4),
            "keras_over_fused": round(medians[CHAINS[0]] / medians[CHAINS[1]], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=6, help="timed calls of each chain per round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds in which the chains take turns")
    arguments = parser.parse_args()
    if arguments.repeats < 1 or arguments.rounds < 1:  # a median of no timings is no measurement
        parser.error(f"--repeats {arguments.repeats} --rounds {arguments.rounds}: give 1 or more of each")
    run = provenance.start()
    params = common.profile_params(PROFILE)
    config = params.scratch
    shapes = norm_site_shapes(config)
    train_images = round(common.CIFAR10_TRAINING_IMAGES * (1 - params.data.val_fraction))  # the profile's split
    steps_per_epoch = -(-train_images // config.batch_size)
    runs = [measure(precision, shapes, config, repeats=arguments.repeats, rounds=arguments.rounds)
            for precision in PRECISIONS]
    for entry in runs:
        entry["fused_saves_per_epoch_seconds"] = round(entry["fused_saves_per_step_seconds"] * steps_per_epoch, 1)
    provenance.write(RESULTS / "norm-cost.json", {
        "benchmark": "norm-cost", "profile": str(PROFILE.relative_to(ROOT)), "batch_size": config.batch_size,
        "activation": config.residual_activation, "site_shapes": [list(shape) for shape in shapes],
        "steps_per_epoch": steps_per_epoch, "train_images": train_images, "chains": list(CHAINS),
        "repeats": arguments.repeats, "rounds": arguments.rounds, "runs": runs}, run)


if __name__ == "__main__":
    main()
