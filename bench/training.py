"""Training benchmarks on the shared CIFAR-10 JPEGs (CPU). Results go to bench/results/<name>.json.

    .venv/bin/python bench/training.py pipeline-ratio    # tf.data input pipeline vs in-memory tensors
    .venv/bin/python bench/training.py transfer --size 96   # EfficientNet-Lite0: extraction, head, cached/in-loop
    .venv/bin/python bench/training.py small-data        # max_per_class 100: scratch vs transfer
    .venv/bin/python bench/training.py determinism       # what deterministic: true costs, and that it holds
    .venv/bin/python bench/training.py seed-recipe       # the write-up's CNN, 10 epochs, full training set
    .venv/bin/python bench/training.py best-scratch      # profiles/scratch_best.yaml under the same wall time
    .venv/bin/python bench/training.py small-finetune    # max_per_class 100: transfer head, then 3 unfrozen epochs
    .venv/bin/python bench/training.py small-report      # evaluate + analyze of the small-data models (run it after)
    .venv/bin/python bench/training.py seed-recipe-25    # the write-up's recipe exactly: all 25 epochs
    .venv/bin/python bench/training.py seed-recipe-25 --val-fraction 0.01  # the same on 49,500 training images
    .venv/bin/python bench/training.py residual          # profiles/scratch_residual.yaml (target: >= 93% in 60 min)
    .venv/bin/python bench/training.py residual --lookahead  # the same with scratch.lookahead: true
    .venv/bin/python bench/training.py residual --set scratch.epochs=12  # the profile with params replaced
    .venv/bin/python bench/training.py residual --reencode-quality 50  # on the images JPEG-encoded once more
    .venv/bin/python bench/training.py transfer-finetune  # profiles/transfer_finetune.yaml (target: >= 92%)
    .venv/bin/python bench/training.py transfer-finetune --input-size 160 --finetune-epochs 3  # a variant of it
    .venv/bin/python bench/training.py transfer-finetune --finetune-learning-rate 3e-4  # another (0: the profile's)
    .venv/bin/python bench/training.py throughput        # images/s: float32 vs mixed_bfloat16, XLA off/on, % of peak
    .venv/bin/python bench/training.py extraction-throughput  # the features stage: eager, compiled, XLA, bfloat16

The long runs write per-epoch validation accuracy with epoch and cumulative seconds (`per_epoch`) next to the
final test accuracy; run them on an otherwise idle machine, one at a time, or the seconds mean nothing.

Every experiment runs the real stage code (`python -m stages.<name>`) on data prepared by the real
download and preprocess stages in a scratch copy of the project (--dir, default /tmp/bench-imgclf).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imgclf import fileio, smoke_copy  # noqa: E402

SHARED = ROOT.parent / "shared"
ARCHIVE = SHARED / "data" / "cifar10-jpg.tar.gz"
ARCHIVE_SHA256 = "d34c68f61cca57aa9144c8f25bda427abb9921bd642d5857a2fc1a6b4416f965"
BACKBONE = SHARED / "models" / "efficientnet_lite0_imagenet_notop.keras"
RESULTS = ROOT / "bench" / "results"


def project(directory: Path) -> Path:
    """The scratch copy with CIFAR-10 downloaded and preprocessed (the data reused when already there, the code
    always this checkout's)."""
    if not ARCHIVE.is_file():
        sys.exit(f"skipped: {ARCHIVE} is absent (these benchmarks need the shared CIFAR-10 archive)")
    if not (directory / "data" / "prepared" / "meta.json").is_file():
        overrides = {"data": {"source": "image_folder", "path": str(ARCHIVE), "sha256": ARCHIVE_SHA256},
                     "mlflow": {"experiment": "imgclf-bench"}}
        smoke_copy.create(directory, source_root=ROOT, overrides=overrides)
        smoke_copy.dvc(directory, "repro", "preprocess")
    smoke_copy.refresh_code(directory, source_root=ROOT)
    return directory


def prepare_variant(directory: Path, name: str, data_overrides: dict, raw: Path | None = None) -> Path:
    """The preprocess stage's output under `data/prepared-<name>` with `data:` params replaced, from the downloaded
    images or from `raw` (reused when there)."""
    prepared = directory / "data" / f"prepared-{name}"
    if not (prepared / "meta.json").is_file():
        params = write_params(directory, name, {"data": data_overrides})
        stage(directory, "preprocess", "--params", str(params), "--raw", str(raw or directory / "data" / "raw"),
              "--out", str(prepared))
    return prepared


def prepare_reencoded(directory: Path, quality: int, split: float | None = None) -> Path:
    """The dataset with every image JPEG-encoded once more at `quality` (4:2:0 chroma, as the archive's), through
    the real preprocess stage, with `data.val_fraction: split` if given: how much a further generation of lossy
    compression costs a model measures how much the archive's own compression is likely to cost against the
    lossless original (not available offline)."""
    from PIL import Image

    name = f"jpeg-{quality}"
    raw = directory / "data" / f"raw-{name}"
    if not (raw / "source.json").is_file():  # written last: a run killed half-way re-encodes every file again
        source = directory / "data" / "raw"
        for path in sorted((source / "images").rglob("*")):
            if path.is_file():
                target = raw / path.relative_to(source)
                target.parent.mkdir(parents=True, exist_ok=True)
                with Image.open(path) as image:
                    image.convert("RGB").save(target, "JPEG", quality=quality, subsampling="4:2:0")
        (raw / "source.json").write_text((source / "source.json").read_text())
    if split is None:
        return prepare_variant(directory, name, {}, raw=raw)
    return prepare_variant(directory, f"{name}-val-{split:g}", {"val_fraction": split}, raw=raw)


def prepare_small(directory: Path) -> Path:
    """The small-data split (at most 100 training images per class; validation and test unchanged)."""
    return prepare_variant(directory, "small", {"max_per_class": 100})


def write_params(directory: Path, name: str, overrides: dict) -> Path:
    params = smoke_copy.merge(yaml.safe_load((directory / "params.yaml").read_text()), overrides)
    path = directory / f"bench-{name}.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def stage(directory: Path, name: str, *args: str) -> float:
    """Run one stage module in the copy; return its wall time in seconds."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", f"stages.{name}", *args], cwd=directory,
                            env=smoke_copy.environment(directory), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"stage {name} failed:\n{result.stderr[-4000:]}")
    return time.perf_counter() - started


def test_accuracy(directory: Path, model_path: Path, prepared: Path, *, features: Path | None = None,
                  tta_flip: bool = False) -> float:
    """Test accuracy of a saved model; for transfer, its head on the cached test features (same computation).
    `tta_flip`: scores averaged with the mirror image's, as the evaluate stage does with `evaluate.tta_flip`."""
    code = f"""
import json, numpy as np
from imgclf.data import tfdata
from imgclf import artifacts
from imgclf import model_io
from imgclf.training import scratch_model
from imgclf.training import transfer_model
from imgclf.training import features
from imgclf.training import backbones
model = model_io.load_model({str(model_path)!r})
if {str(features) if features else None!r}:
    from imgclf.training import recipe
    x, y = recipe.load_features({str(features)!r}, "test")
    head = model.get_layer("head")
    print(json.dumps(float((np.argmax(head.predict(x, batch_size=1024, verbose=0), 1) == y).mean())))
else:
    meta = artifacts.read_prepared_meta({str(prepared)!r})
    data = tfdata.make_dataset({str(prepared)!r}, "test", image_shape=meta.image_shape,
                               num_classes=meta.num_classes, batch_size=512)
    right = total = 0
    for images, targets in data:
        scores = model.predict(images, verbose=0)
        if {tta_flip!r}:
            scores = (scores + model.predict(images.numpy()[:, :, ::-1], verbose=0)) / 2
        right += int((np.argmax(scores, 1) == np.argmax(targets, 1)).sum())
        total += len(targets)
    print(json.dumps(right / total))
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=directory, env=smoke_copy.environment(directory),
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def history(out: Path) -> list[dict]:
    import csv

    with open(out / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def per_epoch(rows: list[dict]) -> list[dict]:
    """Validation accuracy at each epoch end against that epoch's and the cumulative training seconds."""
    cumulative, table = 0.0, []
    for row in rows:
        cumulative += float(row["epoch_seconds"])
        table.append({"epoch": int(row["epoch"]), "phase": row.get("phase") or "fit",
                      "val_accuracy": round(float(row["val_accuracy"]), 4),
                      "epoch_seconds": round(float(row["epoch_seconds"]), 1),
                      "cumulative_seconds": round(cumulative, 1)})
    return table


def train_scratch(directory: Path, name: str, overrides: dict, prepared: Path) -> dict:
    params = write_params(directory, name, overrides)
    out = directory / "bench" / name
    seconds = stage(directory, "train_scratch", "--params", str(params), "--data", str(prepared), "--out", str(out))
    rows = history(out)
    tta_flip = bool(overrides.get("evaluate", {}).get("tta_flip", False))
    return {"stage_seconds": round(seconds, 1), "epochs": len(rows),
            "seconds_per_epoch": round(sum(float(row["epoch_seconds"]) for row in rows) / len(rows), 1),
            "train_images_per_second": round(sum(float(row["images_per_second"]) for row in rows) / len(rows), 1),
            "final_val_accuracy": round(float(rows[-1]["val_accuracy"]), 4),
            "test_accuracy": round(test_accuracy(directory, out / "model.keras", prepared, tta_flip=tta_flip), 4),
            "tta_flip": tta_flip, "per_epoch": per_epoch(rows)}


def train_transfer(directory: Path, name: str, overrides: dict, prepared: Path, *, features_test: bool = True,
                   features_name: str = "") -> dict:
    """Features stage, then transfer stage. `features_test`: score the head on the cached test features (same
    computation as the saved model, much faster); off when fine-tuning changed the backbone. `features_name`:
    a features directory shared by variants that differ only after extraction, reused when it is complete (the
    backbone never runs twice on the same image; its input size is checked)."""
    params = write_params(directory, name, overrides)
    features = directory / "bench" / f"{features_name or name}-features"
    out = directory / "bench" / name
    cached = features / "features.json"
    if features_name and cached.is_file() and (
            json.loads(cached.read_text())["input_size"] == overrides["transfer"]["input_size"]):
        extraction = None  # reused: its seconds are those of the run that made it (`timings` below)
    else:
        extraction = stage(directory, "extract_features", "--params", str(params), "--data", str(prepared),
                           "--out", str(features))
    fitting_seconds = stage(directory, "train_transfer", "--params", str(params), "--data", str(prepared),
                            "--features", str(features), "--out", str(out))
    timings = json.loads((features / "features.json").read_text())["timings"]
    images = sum(split["images"] for split in timings.values())
    backbone_seconds = sum(split["seconds"] for split in timings.values())
    rows = history(out)
    tta_flip = bool(overrides.get("evaluate", {}).get("tta_flip", False))
    return {"extract_stage_seconds": None if extraction is None else round(extraction, 1),
            "features_reused": extraction is None, "extraction_images": images,
            "extraction_images_per_second": round(images / backbone_seconds, 1),
            "transfer_stage_seconds": round(fitting_seconds, 1),
            "head_epoch_seconds": round(sum(float(r["epoch_seconds"]) for r in rows if r.get("phase") == "head")
                                        / max(1, sum(1 for r in rows if r.get("phase") == "head")), 3),
            "final_val_accuracy": round(float(rows[-1]["val_accuracy"]), 4),
            "test_accuracy": round(test_accuracy(directory, out / "model.keras", prepared,
                                                 features=features if features_test else None,
                                                 tta_flip=tta_flip and not features_test), 4),
            "tta_flip": tta_flip and not features_test, "per_epoch": per_epoch(rows),
            "features_dir": str(features)}


def backbone_in_loop_epoch_seconds(directory: Path, prepared: Path, size: int, images: int) -> float:
    """One epoch of the head with the frozen backbone in the loop, timed on `images` training images."""
    code = f"""
import json, time, keras, numpy as np
from imgclf.data import tfdata
from imgclf import artifacts
from imgclf import model_io
from imgclf.training import scratch_model
from imgclf.training import transfer_model
from imgclf.training import features
from imgclf.config import TransferConfig
meta = artifacts.read_prepared_meta({str(prepared)!r})
config = TransferConfig(backbone={str(BACKBONE)!r}, input_size={size})
backbone, mode = features.load_backbone(backbones.resolve(config), config)
backbone.trainable = False
extractor = transfer_model.build_feature_extractor(backbone, mode, input_shape=meta.image_shape, input_size={size})
head = transfer_model.build_head(config, train_features=np.zeros((2, extractor.output_shape[-1]), "float32"),
                         num_classes=meta.num_classes)
model = transfer_model.assemble_transfer_model(extractor, head)
model.compile(optimizer="adam", loss="categorical_crossentropy")
data = tfdata.make_dataset({str(prepared)!r}, "train", image_shape=meta.image_shape,
                           num_classes=meta.num_classes, batch_size=64, training=True, example_count=64000)
steps = {images} // 64
model.fit(data, steps_per_epoch=3, epochs=1, verbose=0)  # trace and warm up
started = time.perf_counter()
model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
print(json.dumps((time.perf_counter() - started) / (steps * 64) * meta.counts["train"]))
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=directory, env=smoke_copy.environment(directory),
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def pipeline_ratio(directory: Path, prepared: Path, steps: int = 150) -> dict:
    """Training images/s of the seed CNN fed by the tf.data pipeline vs. by in-memory tensors."""
    code = f"""
import json, time, keras, numpy as np
from imgclf.data import tfdata
from imgclf import artifacts
from imgclf import model_io
from imgclf.training import scratch_model
from imgclf.training import transfer_model
from imgclf.training import features
from imgclf.config import Params
meta = artifacts.read_prepared_meta({str(prepared)!r})
shape, classes, count = meta.image_shape, meta.num_classes, meta.counts["train"]
def model():
    m = scratch_model.build_scratch_model(Params().scratch, input_shape=shape, num_classes=classes)
    m.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy", metrics=["accuracy"])
    return m
pipeline = tfdata.make_dataset({str(prepared)!r}, "train", image_shape=shape, num_classes=classes, batch_size=64,
                               training=True, example_count=count, epochs=20)
x, y = [], []
for images, labels in pipeline.take({steps}):
    x.append(images.numpy()); y.append(labels.numpy())
x, y = np.concatenate(x), np.concatenate(y)
class EpochTimer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()
    def on_epoch_end(self, epoch, logs=None):
        self.seconds = time.perf_counter() - self.started
result = {{}}
# Two epochs of {steps} steps in one fit call; the second is timed: steady state, tracing and the first fill
# of the shuffle buffer excluded, for both inputs alike.
for name in ["in_memory", "pipeline", "in_memory_again", "pipeline_again"]:
    m, timer = model(), EpochTimer()
    if name.startswith("pipeline"):
        m.fit(pipeline, steps_per_epoch={steps}, epochs=2, verbose=0, callbacks=[timer])
    else:
        m.fit(x, y, batch_size=64, epochs=2, verbose=0, shuffle=True, callbacks=[timer])
    result[name] = {steps} * 64 / timer.seconds
print(json.dumps(result))
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=directory, env=smoke_copy.environment(directory),
                            capture_output=True, text=True, check=True)
    rates = json.loads(result.stdout.strip().splitlines()[-1])
    pipeline = (rates["pipeline"] + rates["pipeline_again"]) / 2
    memory = (rates["in_memory"] + rates["in_memory_again"]) / 2
    return {"images_per_step": 64, "steps": steps, "pipeline_images_per_second": round(pipeline, 1),
            "in_memory_images_per_second": round(memory, 1), "ratio": round(pipeline / memory, 3), "runs": rates}


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


def throughput(*, seconds: float, flops_per_cycle: int | None) -> dict:
    """bench/throughput.py for each model x precision x XLA setting, one process each; share of the peak."""
    peak = arithmetic_peak_gflops(flops_per_cycle)
    profile = ROOT / "profiles" / "scratch_residual.yaml"
    runs = []
    for architecture, batch_size in (("residual", 512), ("seed_cnn", 64)):
        for precision in ("float32", "mixed_bfloat16"):
            for jit_compile in (False, True):
                command = [sys.executable, str(ROOT / "bench" / "throughput.py"), "--architecture", architecture,
                           "--precision", precision, "--batch-size", str(batch_size), "--images", "512",
                           "--seconds", str(seconds)]
                if architecture == "residual":
                    command += ["--profile", str(profile)]
                if jit_compile:
                    command.append("--jit-compile")
                runs.append(measured_setting(command, peak, {"architecture": architecture, "precision": precision,
                                                             "jit_compile": jit_compile}))
    runs += extraction_runs(seconds=seconds, peak=peak)
    return {"peak": peak, "seconds_per_setting": seconds, "runs": runs}


def extraction_runs(*, seconds: float, peak: dict) -> list[dict]:
    """The features stage's forward pass (shared EfficientNet-Lite0, 128 px): called eagerly per batch as the
    stage did, through one compiled function, and compiled with XLA; one process each."""
    if not BACKBONE.is_file():
        return []
    runs = []
    for mode, precision, jit_compile in (("eager", "float32", False), ("compiled", "float32", False),
                                         ("compiled", "float32", True), ("compiled", "mixed_bfloat16", False),
                                         ("compiled", "mixed_bfloat16", True)):
        command = [sys.executable, str(ROOT / "bench" / "throughput.py"), "--extraction", str(BACKBONE),
                   "--mode", mode, "--precision", precision, "--input-size", "128", "--batch-size", "128",
                   "--images", "512", "--seconds", str(seconds), *(["--jit-compile"] if jit_compile else [])]
        runs.append(measured_setting(command, peak, {"architecture": "extraction", "mode": mode,
                                                     "precision": precision, "jit_compile": jit_compile}))
    return runs


def measured_setting(command: list[str], peak: dict, setting: dict) -> dict:
    """One bench/throughput.py process: its JSON line with its share of the CPU's peak, or `setting` with the
    error that ended it (the matrix goes on)."""
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return {**setting, "error": result.stderr.strip().splitlines()[-1:]}
    run = json.loads(result.stdout.strip().splitlines()[-1])
    run["share_of_peak"] = round(run["training_gflops_per_second"] / peak["peak_gflops"], 4)
    if setting.get("precision") == "mixed_bfloat16":  # against the bfloat16 peak too, where there is one
        run["share_of_bfloat16_peak"] = round(run["training_gflops_per_second"] / peak["peak_bfloat16_gflops"], 4)
    return run


def with_assignments(params: dict, name: str, assignments: list[str]) -> tuple[dict, str]:
    """`params` with each `KEY=VALUE` of --set applied (dotted key, YAML value), and the run's name extended by
    the keys and values it replaces: a variant is saved under its own name."""
    for assignment in assignments:
        key, separator, value = assignment.partition("=")
        if not separator:
            sys.exit(f"--set {assignment!r}: expected KEY=VALUE, e.g. scratch.epochs=12")
        *sections, leaf = key.split(".")
        target = params
        for section in sections:
            target = target.setdefault(section, {})
            if not isinstance(target, dict):
                sys.exit(f"--set {assignment!r}: {section} is a value, not a section of params")
        target[leaf] = yaml.safe_load(value)
        # A list value ([128,384,384]) names the file as 128-384-384: no brackets, commas or spaces in file names.
        name += f"-{leaf}-" + re.sub(r"[^A-Za-z0-9._]+", "-", value).strip("-")
    return params, name


def scratch_variant(directory: Path, name: str, overrides: dict, arguments: argparse.Namespace) -> None:
    """Train and save one train_scratch run of `overrides` with --val-fraction, --set and --reencode-quality
    applied, each extending its name. The split the run's params name (the overrides', --val-fraction's or --set
    data.val_fraction's) is the split it trains on, re-encoded or not: prepared for it, never params.yaml's under
    another name."""
    if arguments.val_fraction:  # more training images, the same recipe: separates data size from the rest
        name += f"-val-{arguments.val_fraction:g}"
        overrides["data"] = {**overrides.get("data", {}), "val_fraction": arguments.val_fraction}
    overrides, name = with_assignments(overrides, name, arguments.set)
    split = overrides.get("data", {}).get("val_fraction")
    prepared = directory / "data" / "prepared"
    if arguments.reencode_quality is not None:
        prepared = prepare_reencoded(directory, arguments.reencode_quality, split)
        name += f"-jpeg-{arguments.reencode_quality}"
    elif split is not None:
        prepared = prepare_variant(directory, f"val-{split:g}", {"val_fraction": split})
    result = train_scratch(directory, name, overrides, prepared)
    result["train_images"] = json.loads((prepared / "meta.json").read_text())["counts"]["train"]
    save(name, result)


def save(name: str, result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": name, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "date": time.strftime("%Y-%m-%d %H:%M"),
              "command": " ".join([".venv/bin/python", "bench/training.py", *sys.argv[1:]]), **result}
    fileio.atomic_write_json(RESULTS / f"{name}.json", result)  # a killed run leaves no half-written result
    print(json.dumps(result, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("benchmark", choices=["pipeline-ratio", "transfer", "small-data", "determinism",
                                              "seed-recipe", "best-scratch", "small-finetune", "small-report",
                                              "seed-recipe-25", "residual", "transfer-finetune", "throughput",
                                              "extraction-throughput"])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/bench-imgclf"))
    parser.add_argument("--size", type=int, default=96, help="transfer input size")
    parser.add_argument("--finetune-epochs", type=int, default=0,
                        help="transfer: unfrozen epochs; transfer-finetune: replaces the profile's")
    parser.add_argument("--input-size", type=int, default=0, help="transfer-finetune: replaces the profile's")
    parser.add_argument("--finetune-learning-rate", type=float, default=0.0,
                        help="transfer-finetune: replaces the profile's")
    parser.add_argument("--lookahead", action="store_true", help="residual: turn on scratch.lookahead")
    parser.add_argument("--reencode-quality", type=int, default=None,
                        help="residual, seed-recipe-25: train and test on every image JPEG-encoded once more")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="residual, seed-recipe-25: replace one params key (dotted, YAML value); repeatable")
    parser.add_argument("--val-fraction", type=float, default=0.0,
                        help="seed-recipe-25, residual: data.val_fraction for the run (default: params.yaml's)")
    parser.add_argument("--seconds", type=float, default=60.0, help="throughput: timed seconds per setting")
    parser.add_argument("--flops-per-cycle", type=int, default=None,
                        help="throughput: float32 FLOPs per cycle per core (default: from /proc/cpuinfo)")
    arguments = parser.parse_args()
    # Checked before any preparation, so a wrong combination costs nothing and never passes silently.
    reencode = arguments.reencode_quality is not None
    if (arguments.set or reencode) and arguments.benchmark not in ("residual", "seed-recipe-25"):
        parser.error("--set and --reencode-quality apply to residual and seed-recipe-25 only")
    if reencode and not 1 <= arguments.reencode_quality <= 95:
        parser.error(f"--reencode-quality {arguments.reencode_quality}: a JPEG quality from 1 to 95")
    if reencode and arguments.val_fraction:
        parser.error("--reencode-quality with --val-fraction: give the split as --set data.val_fraction=... instead")
    if arguments.val_fraction and arguments.benchmark not in ("residual", "seed-recipe-25"):
        parser.error("--val-fraction applies to residual and seed-recipe-25 only")
    if arguments.benchmark == "throughput":  # generated images: no data preparation needed
        save("throughput", throughput(seconds=arguments.seconds, flops_per_cycle=arguments.flops_per_cycle))
        return
    if arguments.benchmark == "extraction-throughput":
        peak = arithmetic_peak_gflops(arguments.flops_per_cycle)
        save("extraction-throughput", {"peak": peak, "seconds_per_setting": arguments.seconds,
                                       "runs": extraction_runs(seconds=arguments.seconds, peak=peak)})
        return
    directory = project(arguments.dir)
    prepared = directory / "data" / "prepared"
    lite0 = {"backbone": str(BACKBONE), "epochs": 15, "batch_size": 256}

    if arguments.benchmark == "pipeline-ratio":
        save("pipeline-ratio", pipeline_ratio(directory, prepared))
    elif arguments.benchmark == "transfer":
        name = f"transfer-lite0-{arguments.size}"
        transfer = {**lite0, "input_size": arguments.size, "finetune_epochs": arguments.finetune_epochs}
        result = train_transfer(directory, name, {"transfer": transfer}, prepared)
        in_loop = backbone_in_loop_epoch_seconds(directory, prepared, arguments.size, images=2048)
        result["head_epoch_seconds_backbone_in_loop"] = round(in_loop, 1)
        result["cached_speedup"] = round(in_loop / max(result["head_epoch_seconds"], 1e-9), 1)
        save(name, result)
    elif arguments.benchmark == "small-data":
        small = prepare_small(directory)
        scratch = train_scratch(directory, "small-scratch", {"data": {"max_per_class": 100}}, small)
        transfer = train_transfer(directory, "small-transfer",
                                  {"data": {"max_per_class": 100}, "transfer": {**lite0, "input_size": 96}}, small)
        save("small-data", {"train_images": 1000, "scratch": scratch, "transfer_lite0_96": transfer})
    elif arguments.benchmark == "small-finetune":
        # Phase 2 on the small set: the backbone in the loop costs ~100x a cached head epoch, so a subset.
        small = prepare_small(directory)
        finetune = {"data": {"max_per_class": 100},
                    "transfer": {**lite0, "input_size": 96, "finetune_epochs": 3, "finetune_layers": 0,
                                 "finetune_learning_rate": 1e-4}}
        result = train_transfer(directory, "small-finetune", finetune, prepared=small, features_test=False)
        rows = history(directory / "bench" / "small-finetune")
        result["head_only_final_val_accuracy"] = round(
            float([row for row in rows if row.get("phase") == "head"][-1]["val_accuracy"]), 4)
        result["finetune_epoch_seconds"] = round(
            sum(float(row["epoch_seconds"]) for row in rows if row.get("phase") == "finetune") / 3, 1)
        save("small-finetune", {"train_images": 1000, **result})
    elif arguments.benchmark == "small-report":
        # The evaluate and analyze stages on the small-data models: all 10,000 CIFAR-10 test images.
        small = prepare_small(directory)
        params = write_params(directory, "small-report", {"data": {"max_per_class": 100}})
        evaluation, analysis = directory / "bench" / "small-evaluate", directory / "bench" / "small-analysis"
        evaluate_seconds = stage(directory, "evaluate", "--params", str(params), "--data", str(small),
                                 "--scratch", str(directory / "bench" / "small-scratch"),
                                 "--transfer", str(directory / "bench" / "small-transfer"), "--out", str(evaluation))
        analyze_seconds = stage(directory, "analyze", "--params", str(params), "--data", str(small),
                                "--evaluation", str(evaluation),
                                "--scratch-history", str(directory / "bench" / "small-scratch" / "history.csv"),
                                "--transfer-history", str(directory / "bench" / "small-transfer" / "history.csv"),
                                "--out", str(analysis))
        details = json.loads((evaluation / "details.json").read_text())
        summary = json.loads((analysis / "summary.json").read_text())
        save("small-report", {
            "evaluate_stage_seconds": round(evaluate_seconds, 1), "analyze_stage_seconds": round(analyze_seconds, 1),
            **{f"{model}_test_images": details[model]["test_images"] for model in ("scratch", "transfer")},
            **{f"{model}_images_per_second": round(details[model]["images_per_second"], 1)
               for model in ("scratch", "transfer")},
            **{f"{model}_accuracy": round(details[model]["accuracy"], 4) for model in ("scratch", "transfer")},
            "mcnemar_p_value": summary["mcnemar"]["p_value"],
            "report_html_megabytes": round((analysis / "report.html").stat().st_size / 1e6, 2),
            "summary_md_bytes": (analysis / "summary.md").stat().st_size})
    elif arguments.benchmark == "determinism":
        # The seed CNN for 3 epochs on 5,000 training images, without and twice with deterministic ops.
        subset = {"data": {"max_per_class": 500}}
        small = directory / "data" / "prepared-500"
        params = write_params(directory, "subset-500", subset)
        stage(directory, "preprocess", "--params", str(params), "--raw", str(directory / "data" / "raw"),
              "--out", str(small))
        runs = {name: train_scratch(directory, f"determinism-{name}",
                                    {**subset, "deterministic": name != "off", "scratch": {"epochs": 3}}, small)
                for name in ("off", "on", "on_again")}
        identical = all(runs["on"][key] == runs["on_again"][key] for key in ("final_val_accuracy", "test_accuracy"))
        save("determinism", {"train_images": 5000, "epochs": 3, **runs, "identical_when_on": identical,
                             "seconds_per_epoch_cost": round(runs["on"]["seconds_per_epoch"]
                                                             / runs["off"]["seconds_per_epoch"], 3)})
    elif arguments.benchmark == "seed-recipe":
        save("seed-recipe", train_scratch(directory, "seed-recipe", {"scratch": {"epochs": 10}}, prepared))
    elif arguments.benchmark == "seed-recipe-25":
        scratch_variant(directory, "seed-recipe-25", {"scratch": {"epochs": 25}}, arguments)
    elif arguments.benchmark == "residual":
        profile = yaml.safe_load((ROOT / "profiles" / "scratch_residual.yaml").read_text())
        name = "residual"
        if arguments.lookahead:  # a variant of the profile, saved under its own name
            profile["scratch"]["lookahead"], name = True, "residual-lookahead"
        scratch_variant(directory, name, profile, arguments)
    elif arguments.benchmark == "transfer-finetune":
        profile = yaml.safe_load((ROOT / "profiles" / "transfer_finetune.yaml").read_text())
        profile["transfer"]["backbone"] = str(BACKBONE)  # the profile's path is relative to a project checkout
        name = "transfer-finetune"
        if arguments.input_size or arguments.finetune_epochs or arguments.finetune_learning_rate:
            # A variant of the profile, saved under its own name.
            variant = {"input_size": arguments.input_size or profile["transfer"]["input_size"],
                       "finetune_epochs": arguments.finetune_epochs or profile["transfer"]["finetune_epochs"]}
            name = f"transfer-finetune-{variant['input_size']}px-{variant['finetune_epochs']}-epochs"
            if arguments.finetune_learning_rate:
                variant["finetune_learning_rate"] = arguments.finetune_learning_rate
                name += f"-lr-{arguments.finetune_learning_rate:g}"
            profile["transfer"].update(variant)
        # The cached features depend only on the input size here: the profile and its variants share them.
        result = train_transfer(directory, name, profile, prepared, features_test=False,
                                features_name=f"transfer-finetune-{profile['transfer']['input_size']}px")
        phases = [row for row in result["per_epoch"] if row["phase"] == "head"]
        result["head_only_final_val_accuracy"] = phases[-1]["val_accuracy"] if phases else None
        result["transfer_settings"] = {key: profile["transfer"][key]
                                       for key in ("input_size", "finetune_epochs", "finetune_learning_rate")}
        save(name, result)
    elif arguments.benchmark == "best-scratch":
        profile = yaml.safe_load((ROOT / "profiles" / "scratch_best.yaml").read_text())
        save("best-scratch", train_scratch(directory, "best-scratch", profile, prepared))


if __name__ == "__main__":
    main()
