"""Training throughput of one from-scratch model in one numeric setting, and its FLOPs per image.

    python -m bench.throughput --architecture residual --precision mixed_bfloat16 --jit-compile

    python -m bench.throughput --extraction ../shared/models/efficientnet_lite0_imagenet_notop.keras \
        --mode compiled --input-size 128 --batch-size 128   # the features stage's forward pass instead

Prints one JSON line. Run one setting per process: Keras' dtype policy is global and XLA's compiled steps
stay cached, so settings measured in one process would leak into each other. The images are generated: the
cost of a training step does not depend on pixel values. `python -m bench.training throughput` runs the matrix
(`matrix` below, one process per setting).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

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


def measure(*, architecture: str, precision: str, jit_compile: bool, images: int, batch_size: int,
            seconds: float, profile: Path | None) -> dict:
    import keras
    import numpy as np
    import yaml

    from imgclf import config, sandbox
    from imgclf.training import fitting, models

    keras.mixed_precision.set_dtype_policy(precision)
    keras.utils.set_random_seed(0)
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    overrides = yaml.safe_load(profile.read_text()) if profile else {}
    params = config.params_from_dict(sandbox.merge(base, overrides))
    scratch = params.scratch.model_copy(update={"architecture": architecture, "batch_size": batch_size})
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(images, 32, 32, 3)).astype("float32")
    labels = keras.utils.to_categorical(rng.integers(0, 10, size=images), 10)
    model = models.build_scratch_model(scratch, input_shape=(32, 32, 3), num_classes=10)
    if architecture == "residual":
        models.set_patch_whitening(model, pixels)
    steps = max(1, images // batch_size)
    model.compile(optimizer=fitting.make_optimizer(scratch, steps_per_epoch=steps), loss=fitting.make_loss(scratch),
                  metrics=["accuracy"], jit_compile=jit_compile)

    class Clock(keras.callbacks.Callback):
        """Times every epoch after the first (tracing, compilation, first-touch allocations)."""

        def __init__(self):
            super().__init__()
            self.timed_seconds, self.timed_epochs = 0.0, 0

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            if epoch > 0:
                self.timed_seconds += time.perf_counter() - self.started
                self.timed_epochs += 1
            if self.timed_seconds >= seconds:
                self.model.stop_training = True

    clock = Clock()
    started = time.perf_counter()
    model.fit(pixels, labels, batch_size=batch_size, epochs=1_000_000, verbose=0, callbacks=[clock], shuffle=True)
    rate = clock.timed_epochs * steps * batch_size / clock.timed_seconds
    flops = forward_flops(model)
    return {"architecture": architecture, "precision": precision, "jit_compile": jit_compile,
            "batch_size": batch_size, "images": images, "parameter_count": int(model.count_params()),
            "timed_seconds": round(clock.timed_seconds, 1), "wall_seconds": round(time.perf_counter() - started, 1),
            "images_per_second": round(rate, 1), "forward_flops_per_image": flops,
            "training_flops_per_image": TRAINING_FLOPS_PER_FORWARD_FLOP * flops,
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
    import yaml

    from imgclf.config import params_from_dict
    from imgclf.training import models

    keras.utils.set_random_seed(0)
    config = params_from_dict(yaml.safe_load((ROOT / "params.yaml").read_text())).transfer
    config = config.model_copy(update={"backbone": str(backbone), "input_size": input_size})
    network, preprocessing = models.load_backbone(config)
    network.trainable = False
    pixels = np.random.default_rng(0).integers(0, 256, size=(images, 32, 32, 3)).astype("float32")
    batches = [pixels[start:start + batch_size] for start in range(0, images, batch_size)]
    feature_error = None
    if precision != "float32":
        reference = models.build_feature_extractor(network, preprocessing, input_shape=(32, 32, 3),
                                                   input_size=input_size).predict_on_batch(batches[0])
        network = with_dtype_policy(network, precision)
    extractor = models.build_feature_extractor(network, preprocessing, input_shape=(32, 32, 3), input_size=input_size)
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


def float32_flops_per_cycle(flags: list[str], family: int) -> int:
    """float32 FLOPs per cycle per core: two FMA pipes x float32 lanes x 2 (multiply and add). AVX2 pipes hold 8
    lanes; AMD Zen 5 (family 26) and Intel server cores execute AVX-512 on full 512-bit pipes (16 lanes), while
    Zen 4 (family 25) splits each AVX-512 instruction into two 256-bit halves. Pass --flops-per-cycle otherwise."""
    if "avx512f" in flags and family != 25:
        return 64
    return 32 if "fma" in flags else 8


def arithmetic_peak_gflops(flops_per_cycle: int | None = None) -> dict:
    """The CPU's peaks: cores x clock x FLOPs per cycle (the clock as /proc/cpuinfo reports it), for float32 and,
    where the CPU has AVX-512 BF16 (`vdpbf16ps`: two bfloat16 products per float32 lane), for bfloat16."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    def field(name: str, default: str) -> str:
        return next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith(name)), default)
    megahertz, family = float(field("cpu MHz", "0")), int(field("cpu family", "0"))
    flags = field("flags", "").split()
    vector_flags = sorted(flag for flag in flags if flag.startswith(("avx", "fma", "amx")) or "bf16" in flag)
    cores = os.cpu_count() or 1
    flops_per_cycle = flops_per_cycle or float32_flops_per_cycle(flags, family)
    peak = round(cores * megahertz / 1000 * flops_per_cycle, 1)
    return {"model": field("model name", "unknown"), "cpu_family": family, "cores": cores, "megahertz": megahertz,
            "flops_per_cycle": flops_per_cycle, "vector_flags": vector_flags, "peak_gflops": peak,
            "peak_bfloat16_gflops": 2 * peak if "avx512_bf16" in flags else peak}


def matrix(*, seconds: float, flops_per_cycle: int | None) -> dict:
    """`measure` for each model x precision x XLA setting, one process each; share of the peak."""
    peak = arithmetic_peak_gflops(flops_per_cycle)
    profile = ROOT / "profiles" / "scratch_residual.yaml"
    runs = []
    for architecture, batch_size in (("residual", 512), ("seed_cnn", 64)):
        for precision in ("float32", "mixed_bfloat16"):
            for jit_compile in (False, True):
                command = [sys.executable, "-m", "bench.throughput", "--architecture", architecture,
                           "--precision", precision, "--batch-size", str(batch_size), "--images", "512",
                           "--seconds", str(seconds)]
                if architecture == "residual":
                    command += ["--profile", str(profile)]
                if jit_compile:
                    command.append("--jit-compile")
                runs.append(measured_setting(command, peak, {"architecture": architecture, "precision": precision,
                                                             "jit_compile": jit_compile}))
    runs += extraction_matrix(seconds=seconds, peak=peak)
    return {"peak": peak, "seconds_per_setting": seconds, "runs": runs}


def extraction_matrix(*, seconds: float, peak: dict) -> list[dict]:
    """The features stage's forward pass (shared EfficientNet-Lite0, 128 px): called eagerly per batch as the
    stage did, through one compiled function, and compiled with XLA; one process each."""
    if not BACKBONE.is_file():
        return []
    runs = []
    for mode, precision, jit_compile in (("eager", "float32", False), ("compiled", "float32", False),
                                         ("compiled", "float32", True), ("compiled", "mixed_bfloat16", False),
                                         ("compiled", "mixed_bfloat16", True)):
        command = [sys.executable, "-m", "bench.throughput", "--extraction", str(BACKBONE),
                   "--mode", mode, "--precision", precision, "--input-size", "128", "--batch-size", "128",
                   "--images", "512", "--seconds", str(seconds), *(["--jit-compile"] if jit_compile else [])]
        runs.append(measured_setting(command, peak, {"architecture": "extraction", "mode": mode,
                                                     "precision": precision, "jit_compile": jit_compile}))
    return runs


def measured_setting(command: list[str], peak: dict, setting: dict) -> dict:
    """One `python -m bench.throughput` process: its JSON line with its share of the CPU's peak, or `setting` with the
    error that ended it (the matrix goes on)."""
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return {**setting, "error": result.stderr.strip().splitlines()[-1:]}
    run = json.loads(result.stdout.strip().splitlines()[-1])
    run["share_of_peak"] = round(run["training_gflops_per_second"] / peak["peak_gflops"], 4)
    if setting.get("precision") == "mixed_bfloat16":  # against the bfloat16 peak too, where there is one
        run["share_of_bfloat16_peak"] = round(run["training_gflops_per_second"] / peak["peak_bfloat16_gflops"], 4)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", choices=["seed_cnn", "residual"], default="residual")
    parser.add_argument("--extraction", type=Path, metavar="BACKBONE",
                        help="measure feature extraction with this .keras backbone instead of training")
    parser.add_argument("--mode", choices=["eager", "compiled"], default="eager", help="extraction: how it is called")
    parser.add_argument("--input-size", type=int, default=128, help="extraction: the backbone's input side")
    parser.add_argument("--precision", choices=["float32", "mixed_bfloat16"], default="float32")
    parser.add_argument("--jit-compile", action="store_true")
    parser.add_argument("--images", type=int, default=512, help="generated training images (one epoch)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=30.0, help="timed training seconds (after a warm-up epoch)")
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
                             batch_size=arguments.batch_size, seconds=arguments.seconds,
                             profile=arguments.profile)))


if __name__ == "__main__":
    main()
