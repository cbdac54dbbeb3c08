"""Training throughput of one from-scratch model in one numeric setting, over real epochs, and its FLOPs per image.

    python -m bench.throughput --architecture residual --profile profiles/scratch_residual.yaml \
        --precision mixed_bfloat16 --batch-size 512 --images 10240 --epochs 3

    python -m bench.throughput --extraction ../shared/models/efficientnet_lite0_imagenet_notop.keras \
        --mode compiled --input-size 128 --batch-size 128   # the features stage's forward pass instead

Prints one JSON line. Training: one warm-up epoch (tracing, compilation, first-touch allocations; not timed),
then `--epochs` timed epochs, each the whole generated set of `--images` images (at least 20 steps: 10,240 images
are 20 steps of 512 or 160 of 64), timed by the clock around each epoch; images/s is timed images over timed
seconds, with each epoch's rate beside it (their spread is the noise of the figure). No share of the CPU's peak:
that needs the clock the cores ran at under load, which nothing here measures (the nominal clock of
/proc/cpuinfo gave "shares" above 100%).

Run one setting per process: Keras' dtype policy is global and XLA's compiled steps stay cached, so settings
measured in one process would leak into each other. The images are generated: the cost of a training step does
not depend on pixel values. `python -m bench.training throughput` runs the matrix (`matrix` below, one process
per setting) and writes bench/results/throughput-epochs.json with its provenance.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench import common
from bench.common import BACKBONE, ROOT

# Training costs about three forward passes: the forward pass, and twice its work backwards (the gradient
# with respect to the inputs and with respect to the weights).
TRAINING_FLOPS_PER_FORWARD_FLOP = 3


def forward_flops(model) -> int:
    """Multiply-adds x 2 of every Conv2D and Dense layer for one image (the layers that do the arithmetic;
    BatchNorm, activations and pooling add well under 1% here)."""
    import keras

    total = 0
    for layer in _leaf_layers(model):
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            height, width, channels = layer.output.shape[1:]
            kernel_height, kernel_width = layer.kernel.shape[:2]
            total += 2 * kernel_height * kernel_width * channels * height * width
        elif isinstance(layer, keras.layers.Conv2D):
            height, width, channels_out = layer.output.shape[1:]
            kernel_height, kernel_width, channels_in, _ = layer.kernel.shape
            total += 2 * kernel_height * kernel_width * channels_in * channels_out * height * width
        elif isinstance(layer, keras.layers.Dense):
            inputs, outputs = layer.kernel.shape
            total += 2 * inputs * outputs
    return int(total)


def _leaf_layers(model):
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer)
        else:
            yield layer


MIN_STEPS_PER_EPOCH = 20


def measure(*, architecture: str, precision: str, jit_compile: bool, images: int, batch_size: int,
            epochs: int, profile: Path | None) -> dict:
    import keras
    import numpy as np

    from imgclf.training import fitting, scratch_model

    steps = images // batch_size
    if steps < MIN_STEPS_PER_EPOCH:
        raise SystemExit(f"--images {images} at batch {batch_size} is {steps} steps per epoch: give at least "
                         f"{MIN_STEPS_PER_EPOCH * batch_size} images, so an epoch is more than a few calls")
    images = steps * batch_size  # whole batches only: every step the same size
    keras.mixed_precision.set_dtype_policy(precision)
    keras.utils.set_random_seed(0)
    params = common.profile_params(profile)
    scratch = params.scratch.model_copy(update={"architecture": architecture, "batch_size": batch_size})
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(images, 32, 32, 3)).astype("float32")
    labels = keras.utils.to_categorical(rng.integers(0, 10, size=images), 10)
    model = scratch_model.build_scratch_model(scratch, input_shape=(32, 32, 3), num_classes=10)
    if architecture == "residual":
        scratch_model.set_patch_whitening(model, pixels)
    model.compile(optimizer=fitting.make_optimizer(scratch, steps_per_epoch=steps), loss=fitting.make_loss(scratch),
                  metrics=["accuracy"], jit_compile=jit_compile)

    class Clock(keras.callbacks.Callback):
        """Each epoch's seconds; the first (tracing, compilation, first-touch allocations) is not timed."""

        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.started)

    clock = Clock()
    started = time.perf_counter()
    model.fit(pixels, labels, batch_size=batch_size, epochs=1 + epochs, verbose=0, callbacks=[clock], shuffle=True)
    timed = clock.seconds[1:]
    rate = epochs * images / sum(timed)
    flops = forward_flops(model)
    return {"architecture": architecture, "precision": precision, "jit_compile": jit_compile,
            "batch_size": batch_size, "images_per_epoch": images, "steps_per_epoch": steps, "timed_epochs": epochs,
            "parameter_count": int(model.count_params()), "warm_up_epoch_seconds": round(clock.seconds[0], 1),
            "epoch_seconds": [round(value, 2) for value in timed], "timed_seconds": round(sum(timed), 1),
            "wall_seconds": round(time.perf_counter() - started, 1), "images_per_second": round(rate, 1),
            "epoch_images_per_second": [round(images / value, 1) for value in timed],
            "forward_flops_per_image": flops, "training_flops_per_image": TRAINING_FLOPS_PER_FORWARD_FLOP * flops,
            "training_gflops_per_second": round(TRAINING_FLOPS_PER_FORWARD_FLOP * flops * rate / 1e9, 2),
            "threads": os.cpu_count()}


def with_dtype_policy(model, policy: str):
    """A copy of `model` whose every layer computes under `policy`, with the same weights. A saved backbone's
    layers carry their own float32 policies, which the global policy does not override."""
    import keras

    def rebuilt(layer):
        return layer.__class__.from_config({**layer.get_config(), "dtype": policy})

    copy = keras.models.clone_model(model, clone_function=rebuilt)
    copy.set_weights(model.get_weights())
    return copy


def measure_extraction(*, backbone: Path, mode: str, jit_compile: bool, input_size: int, images: int,
                       batch_size: int, seconds: float, precision: str = "float32") -> dict:
    """Feature extraction (forward only) through the features stage's extractor: `mode` "eager" calls it per
    batch (as `features.run_extractor` did before this measurement); "compiled" goes through `predict_on_batch`
    (one traced function), as it does now. Under `mixed_bfloat16` the backbone's layers compute in bfloat16, and
    the result carries how far its features are from float32's on the first batch."""
    import keras
    import numpy as np

    from imgclf.training import backbones, features, transfer_model

    keras.utils.set_random_seed(0)
    config = common.profile_params().transfer
    config = config.model_copy(update={"backbone": str(backbone), "input_size": input_size})
    network, preprocessing = features.load_backbone(backbones.resolve(config), config)
    network.trainable = False
    pixels = np.random.default_rng(0).integers(0, 256, size=(images, 32, 32, 3)).astype("float32")
    batches = [pixels[start:start + batch_size] for start in range(0, images, batch_size)]
    feature_error = None
    if precision != "float32":
        reference = transfer_model.build_feature_extractor(network, preprocessing, input_shape=(32, 32, 3),
                                                   input_size=input_size).predict_on_batch(batches[0])
        network = with_dtype_policy(network, precision)
    extractor = transfer_model.build_feature_extractor(network, preprocessing, input_shape=(32, 32, 3),
                                                       input_size=input_size)
    if mode == "compiled":
        extractor.compile(jit_compile=jit_compile)
    if precision != "float32":
        # Relative L2 distance of each image's feature vector from float32's, the worst and the mean.
        features = np.asarray(extractor.predict_on_batch(batches[0]), dtype="float64").reshape(len(batches[0]), -1)
        reference = np.asarray(reference, dtype="float64").reshape(len(batches[0]), -1)
        distance = np.linalg.norm(features - reference, axis=1) / np.linalg.norm(reference, axis=1)
        feature_error = {"max": round(float(distance.max()), 4), "mean": round(float(distance.mean()), 4)}

    def forward(batch):
        return extractor.predict_on_batch(batch) if mode == "compiled" else np.asarray(extractor(batch, training=False))

    started = time.perf_counter()
    forward(batches[0])  # tracing, compilation, first-touch allocations
    timed, count, clock = 0.0, 0, time.perf_counter()
    while timed < seconds:
        for batch in batches:
            forward(batch)
            count += len(batch)
        timed = time.perf_counter() - clock
    rate = count / timed
    # The backbone file takes any image size, so its layers' shapes are unknown: count on a copy built for this one.
    flops = forward_flops(keras.models.clone_model(network, input_tensors=keras.Input((input_size, input_size, 3))))
    return {"architecture": f"{backbone.stem} extraction", "mode": mode, "precision": precision,
            "feature_relative_error": feature_error,
            "jit_compile": jit_compile, "input_size": input_size, "batch_size": batch_size, "images": images,
            "timed_seconds": round(timed, 1), "wall_seconds": round(time.perf_counter() - started, 1),
            "images_per_second": round(rate, 1), "forward_flops_per_image": flops,
            "training_flops_per_image": flops,  # forward only: what the stage computes per image
            "training_gflops_per_second": round(flops * rate / 1e9, 2), "threads": os.cpu_count()}


def matrix(*, epochs: int, images: int, with_xla: bool = False) -> dict:
    """`measure` for each model x precision (x XLA with `with_xla`) setting, one process each, then the features
    stage's forward pass (`extraction_matrix`)."""
    profile = ROOT / "profiles" / "scratch_residual.yaml"
    runs = []
    for architecture, batch_size in (("residual", 512), ("seed_cnn", 64)):
        for precision in ("float32", "mixed_bfloat16"):
            for jit_compile in (False, True) if with_xla else (False,):
                command = [sys.executable, "-m", "bench.throughput", "--architecture", architecture,
                           "--precision", precision, "--batch-size", str(batch_size), "--images", str(images),
                           "--epochs", str(epochs)]
                if architecture == "residual":
                    command += ["--profile", str(profile)]
                if jit_compile:
                    command.append("--jit-compile")
                runs.append(measured_setting(command, {"architecture": architecture, "precision": precision,
                                                       "jit_compile": jit_compile}))
    return {"epochs": epochs, "images_per_epoch": images, "runs": runs}


def extraction_matrix(*, seconds: float, with_xla: bool = True) -> list[dict]:
    """The features stage's forward pass (shared EfficientNet-Lite0, 128 px): called eagerly per batch as the
    stage did, through one compiled function, and compiled with XLA; one process each."""
    if not BACKBONE.is_file():
        return []
    runs = []
    for mode, precision, jit_compile in (("eager", "float32", False), ("compiled", "float32", False),
                                         ("compiled", "float32", True), ("compiled", "mixed_bfloat16", False),
                                         ("compiled", "mixed_bfloat16", True)):
        if jit_compile and not with_xla:
            continue
        command = [sys.executable, "-m", "bench.throughput", "--extraction", str(BACKBONE),
                   "--mode", mode, "--precision", precision, "--input-size", "128", "--batch-size", "128",
                   "--images", "512", "--seconds", str(seconds), *(["--jit-compile"] if jit_compile else [])]
        runs.append(measured_setting(command, {"architecture": "extraction", "mode": mode,
                                               "precision": precision, "jit_compile": jit_compile}))
    return runs


def measured_setting(command: list[str], setting: dict) -> dict:
    """One `python -m bench.throughput` process: its JSON line, or `setting` with the error that ended it (the
    matrix goes on)."""
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return {**setting, "error": result.stderr.strip().splitlines()[-1:]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", choices=["seed_cnn", "residual"], default="residual")
    parser.add_argument("--extraction", type=Path, metavar="BACKBONE",
                        help="measure feature extraction with this .keras backbone instead of training")
    parser.add_argument("--mode", choices=["eager", "compiled"], default="eager", help="extraction: how it is called")
    parser.add_argument("--input-size", type=int, default=128, help="extraction: the backbone's input side")
    parser.add_argument("--precision", choices=["float32", "mixed_bfloat16"], default="float32")
    parser.add_argument("--jit-compile", action="store_true")
    parser.add_argument("--images", type=int, default=10240,
                        help=f"generated images in one epoch (training: at least {MIN_STEPS_PER_EPOCH} batches)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3, help="training: timed epochs after the warm-up epoch")
    parser.add_argument("--seconds", type=float, default=30.0, help="extraction: timed seconds")
    parser.add_argument("--profile", type=Path, help="params overrides (e.g. profiles/scratch_residual.yaml)")
    arguments = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if arguments.extraction:
        print(json.dumps(measure_extraction(backbone=arguments.extraction, mode=arguments.mode,
                                            jit_compile=arguments.jit_compile, input_size=arguments.input_size,
                                            images=arguments.images, batch_size=arguments.batch_size,
                                            seconds=arguments.seconds, precision=arguments.precision)))
        return
    print(json.dumps(measure(architecture=arguments.architecture, precision=arguments.precision,
                             jit_compile=arguments.jit_compile, images=arguments.images,
                             batch_size=arguments.batch_size, epochs=arguments.epochs,
                             profile=arguments.profile)))


if __name__ == "__main__":
    main()
