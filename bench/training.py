"""Training benchmarks on the shared CIFAR-10 JPEGs (CPU). Results go to bench/results/<name>.json.

Run from the repository root:

    python -m bench.training pipeline-ratio    # tf.data input pipeline vs in-memory tensors
    python -m bench.training transfer --size 96   # EfficientNet-Lite0: extraction, head, cached/in-loop
    python -m bench.training small-data        # max_per_class 100: scratch vs transfer
    python -m bench.training determinism       # what deterministic: true costs, and that it holds
    python -m bench.training seed-recipe       # the write-up's CNN, 10 epochs, full training set
    python -m bench.training best-scratch      # profiles/scratch_best.yaml under the same wall time
    python -m bench.training small-finetune    # max_per_class 100: transfer head, then 3 unfrozen epochs
    python -m bench.training small-report      # evaluate + analyze of the small-data models (run it after)
    python -m bench.training seed-recipe-25    # the write-up's recipe exactly: all 25 epochs
    python -m bench.training seed-recipe-25 --val-fraction 0.01  # the same on 49,500 training images
    python -m bench.training residual          # profiles/scratch_residual.yaml (target: >= 93% in 60 min)
    python -m bench.training residual --lookahead  # scratch.lookahead: true, saved apart (in the profile since c3ae8b4)
    python -m bench.training residual --set scratch.epochs=12  # the profile with params replaced
    python -m bench.training residual --reencode-quality 50  # on the images JPEG-encoded once more
    python -m bench.training residual --validation-only --val-fraction 0.1 --set scratch.epochs=8  # a choice:
        # scored on a 5,000-image validation split only, the test split untouched (saved as select-<name>)
    python -m bench.training transfer-finetune  # profiles/transfer_finetune.yaml (target: >= 92%)
    python -m bench.training transfer-finetune --input-size 160 --finetune-epochs 3  # a variant of it
    python -m bench.training transfer-finetune --finetune-learning-rate 3e-4  # another (0: the profile's)
    python -m bench.training transfer-finetune --seed 1   # the profile with another seed (saved as ...-seed-1)
    python -m bench.training transfer-peer --seed 1      # keras-io's EfficientNet fine-tuning recipe, same budget
    python -m bench.training throughput        # images/s over real epochs: float32 vs mixed_bfloat16 [XLA]
    python -m bench.training extraction-throughput  # the features stage: eager, compiled, XLA, bfloat16

The long runs write per-epoch validation accuracy with epoch and cumulative seconds (`per_epoch`) next to the
final test accuracy; run them on an otherwise idle machine, one at a time, or the seconds mean nothing. Every
result carries its provenance (bench/provenance.py), `contended` among it.

Every experiment runs the real stage code (`python -m stages.<name>`) on data prepared by the real
download and preprocess stages in a scratch copy of the project (--dir, default /tmp/bench-imgclf); the shared
helpers are in bench/common.py, the measurements run in a process of their own in bench/probes.py.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from bench import common, provenance, throughput
from bench.common import BACKBONE, ROOT, history, stage, train_scratch, train_transfer, write_params
from imgclf import smoke_copy

LITE0 = {"backbone": str(BACKBONE), "epochs": 15, "batch_size": 256}
SMALL = {"data": {"max_per_class": 100}}
VARIANT_BENCHMARKS = ("residual", "seed-recipe-25")  # the ones --set, --val-fraction and --reencode-quality apply to
# A choice between configurations is made on a validation split this large (issue 29): at 90% accuracy, 5,000
# images give a standard error of 0.4 points, against 1.3 for the 500 the profiles validate on.
MIN_SELECTION_VAL_IMAGES = 5000
# The fine-tuning peer (issue 29, item 7): the settings of keras-io's "Image classification via fine-tuning with
# EfficientNet" (Yixing Fu; keras-team/keras-io, examples/vision/image_classification_efficientnet_fine_tuning.py):
# rotation 0.15, shifts 0.1, flips both ways (RandomFlip's default), contrast 0.1; a dropout-0.2 softmax head, Adam
# at 1e-2 for 25 epochs on the frozen backbone; then the last 20 layers unfrozen (BatchNorm kept frozen), Adam at
# 1e-5 for 4 epochs; batch 64, no schedule, no label smoothing, no TTA. It runs on the profile's backbone, input size
# and images (`transfer_peer`), so the comparison is of the recipes under one budget.
KERAS_IO_FINETUNE = {
    "augment": {"enabled": True, "flip": "horizontal_and_vertical", "translate": 0.1, "rotate": 0.15,
                "contrast": 0.1, "zoom": 0.0, "interpolation": "bilinear"},
    "transfer": {"optimizer": "adam", "learning_rate": 0.01, "weight_decay": 0.0, "label_smoothing": 0.0,
                 "lr_schedule": "constant", "epochs": 25, "batch_size": 64, "head_dropout": 0.2, "head_units": 0,
                 "finetune_layers": 20, "finetune_learning_rate": 1e-5, "finetune_epochs": 4},
    "evaluate": {"tta_flip": False},
}
SEEDED_BENCHMARKS = ("transfer-finetune", "transfer-peer")  # the ones --seed applies to


def pipeline_ratio(arguments: argparse.Namespace, directory: Path) -> tuple[str, dict]:
    """Training images/s of the seed CNN fed by the tf.data pipeline vs. by in-memory tensors."""
    steps = 150
    rates = common.probe(directory, "pipeline-ratio", prepared=directory / "data" / "prepared", steps=steps)
    pipeline = (rates["pipeline"] + rates["pipeline_again"]) / 2
    memory = (rates["in_memory"] + rates["in_memory_again"]) / 2
    return "pipeline-ratio", {"images_per_step": 64, "steps": steps, "pipeline_images_per_second": round(pipeline, 1),
                              "in_memory_images_per_second": round(memory, 1), "ratio": round(pipeline / memory, 3),
                              "runs": rates}


def transfer(arguments: argparse.Namespace, directory: Path) -> tuple[str, dict]:
    """EfficientNet-Lite0 at --size: extraction, the head on cached features, and one epoch with the backbone in
    the loop for comparison."""
    prepared = directory / "data" / "prepared"
    name = f"transfer-lite0-{arguments.size}"
    settings = {**LITE0, "input_size": arguments.size, "finetune_epochs": arguments.finetune_epochs}
    result = train_transfer(directory, name, {"transfer": settings}, prepared)
    in_loop = common.probe(directory, "backbone-in-loop", prepared=prepared, backbone=BACKBONE, size=arguments.size,
                           images=2048)
    result["head_epoch_seconds_backbone_in_loop"] = round(in_loop, 1)
    result["cached_speedup"] = round(in_loop / max(result["head_epoch_seconds"], 1e-9), 1)
    return name, result


def small_data(arguments: argparse.Namespace, directory: Path) -> tuple[str, dict]:
    """At most 100 training images per class: the seed CNN against the transfer head."""
    small = common.prepare_small(directory)
    scratch = train_scratch(directory, "small-scratch", SMALL, small)
    transferred = train_transfer(directory, "small-transfer", {**SMALL, "transfer": {**LITE0, "input_size": 96}},
                                 small)
    return "small-data", {"train_images": 1000, "scratch": scratch, "transfer_lite0_96": transferred}


def small_finetune(arguments: argparse.Namespace, directory: Path) -> tuple[str, dict]:
    """Phase 2 on the small set: the backbone in the loop costs ~100x a cached head epoch, so a subset."""
    small = common.prepare_small(directory)
    finetune = {**SMALL, "transfer": {**LITE0, "input_size": 96, "finetune_epochs": 3, "finetune_layers": 0,
                                      "finetune_learning_rate": 1e-4}}
    result = train_transfer(directory, "small-finetune", finetune, prepared=small, features_test=False)
    rows = history(directory / "bench" / "small-finetune")
    result["head_only_final_val_accuracy"] = round(
        float([row for row in rows if row.get("phase") == "head"][-1]["val_accuracy"]), 4)
    result["finetune_epoch_seconds"] = round(
        sum(float(row["epoch_seconds"]) for row in rows if row.get("phase") == "finetune") / 3, 1)
    return "small-finetune", {"train_images": 1000, **result}


def small_report(arguments: argparse.Namespace, directory: Path) -> tuple[str, dict]:
    """The evaluate and analyze stages on the small-data models: all 10,000 CIFAR-10 test images."""
    small = common.prepare_small(directory)
    params = write_params(directory, "small-report", SMALL)
    models = directory / "bench"
    evaluation, analysis = models / "small-evaluate", models / "small-analysis"
    evaluate_seconds = stage(directory, "evaluate", "--params", str(params), "--data", str(small),
                             "--scratch", str(models / "small-scratch"), "--transfer", str(models / "small-transfer"),
                             "--out", str(evaluation))
    analyze_seconds = stage(directory, "analyze", "--params", str(params), "--data", str(small),
                            "--evaluation", str(evaluation),
                            "--scratch-history", str(models / "small-scratch" / "history.csv"),
                            "--transfer-history", str(models / "small-transfer" / "history.csv"),
                            "--out", str(analysis))
    details = json.loads((evaluation / "details.json").read_text())
    summary = json.loads((analysis / "summary.json").read_text())
    return "small-report", {
        "evaluate_stage_seconds": round(evaluate_seconds, 1), "analyze_stage_seconds": round(analyze_seconds, 1),
        **{f"{model}_test_images": details[model]["test_images"] for model in ("scratch", "transfer")},
        **{f"{model}_images_per_second": round(details[model]["images_per_second"], 1)
           for model in ("scratch", "transfer")},
        **{f"{model}_accuracy": round(details[model]["accuracy"], 4) for model in ("scratch", "transfer")},
        "mcnemar_p_value": summary["mcnemar"]["p_value"],
        "report_html_megabytes": round((analysis / "report.html").stat().st_size / 1e6, 2),
        "summary_md_bytes": (analysis / "summary.md").stat().st_size}


def determinism(arguments: argparse.Namespace, directory: Path) -> tuple[str, dict]:
    """The seed CNN for 3 epochs on 5,000 training images, without and twice with deterministic ops."""
    subset = {"data": {"max_per_class": 500}}
    small = directory / "data" / "prepared-500"
    params = write_params(directory, "subset-500", subset)
    stage(directory, "preprocess", "--params", str(params), "--raw", str(directory / "data" / "raw"),
          "--out", str(small))
    runs = {name: train_scratch(directory, f"determinism-{name}",
                                {**subset, "deterministic": name != "off", "scratch": {"epochs": 3}}, small)
            for name in ("off", "on", "on_again")}
    identical = all(runs["on"][key] == runs["on_again"][key] for key in ("final_val_accuracy", "test_accuracy"))
    return "determinism", {"train_images": 5000, "epochs": 3, **runs, "identical_when_on": identical,
                           "seconds_per_epoch_cost": round(runs["on"]["seconds_per_epoch"]
                                                           / runs["off"]["seconds_per_epoch"], 3)}


def seed_recipe(arguments: argparse.Namespace, directory: Path) -> tuple[str, dict]:
    """The write-up's CNN, 10 epochs on the full training split."""
    return "seed-recipe", train_scratch(directory, "seed-recipe", {"scratch": {"epochs": 10}},
                                        directory / "data" / "prepared")


def seed_recipe_25(arguments: argparse.Namespace, directory: Path) -> tuple[str, dict]:
    """The write-up's recipe exactly: all 25 epochs (with --val-fraction, --set, --reencode-quality variants)."""
    return scratch_variant(directory, "seed-recipe-25", {"scratch": {"epochs": 25}}, arguments)


def residual(arguments: argparse.Namespace, directory: Path) -> tuple[str, dict]:
    """profiles/scratch_residual.yaml through train_scratch (with --lookahead and the variant options)."""
    profile = yaml.safe_load((ROOT / "profiles" / "scratch_residual.yaml").read_text())
    name = "residual"
    if arguments.lookahead:  # a variant of the profile, saved under its own name
        profile["scratch"]["lookahead"], name = True, "residual-lookahead"
    return scratch_variant(directory, name, profile, arguments)


def best_scratch(arguments: argparse.Namespace, directory: Path) -> tuple[str, dict]:
    """profiles/scratch_best.yaml under the same wall time as the seed recipe."""
    profile = yaml.safe_load((ROOT / "profiles" / "scratch_best.yaml").read_text())
    return "best-scratch", train_scratch(directory, "best-scratch", profile, directory / "data" / "prepared")


def transfer_finetune(arguments: argparse.Namespace, directory: Path) -> tuple[str, dict]:
    """profiles/transfer_finetune.yaml, or a variant of it with --input-size, --finetune-epochs and
    --finetune-learning-rate."""
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
    return finetuned(directory, name, profile, arguments.seed)


def transfer_peer(arguments: argparse.Namespace, directory: Path) -> tuple[str, dict]:
    """keras-io's EfficientNet fine-tuning recipe (KERAS_IO_FINETUNE) on the profile's backbone, input size and
    images: item 7's peer of profiles/transfer_finetune.yaml. Scored as the recipe scores (no TTA) and, for a
    like-for-like figure beside the profile's, with flip TTA too."""
    profile = yaml.safe_load((ROOT / "profiles" / "transfer_finetune.yaml").read_text())
    peer = smoke_copy.merge(KERAS_IO_FINETUNE, {"transfer": {
        key: profile["transfer"][key] for key in ("input_size", "feature_batch_size")}})
    peer["transfer"]["backbone"] = str(BACKBONE)
    name, result = finetuned(directory, "transfer-peer-keras-io", peer, arguments.seed)
    result["test_accuracy_tta_flip"] = round(common.test_accuracy(
        directory, directory / "bench" / name / "model.keras", directory / "data" / "prepared", tta_flip=True), 4)
    result["recipe"] = "keras-io image_classification_efficientnet_fine_tuning, settings in bench/training.py"
    return name, result


def finetuned(directory: Path, name: str, overrides: dict, seed: int | None) -> tuple[str, dict]:
    """One run of the features and transfer stages with `overrides` (and `seed`, saved as <name>-seed-<seed>),
    scored on the full model."""
    if seed is not None:
        overrides, name = {**overrides, "seed": seed}, f"{name}-seed-{seed}"
    # The cached features depend only on the input size here: the profile, its variants and the peer share them.
    result = train_transfer(directory, name, overrides, directory / "data" / "prepared", features_test=False,
                            features_name=f"transfer-finetune-{overrides['transfer']['input_size']}px")
    phases = [row for row in result["per_epoch"] if row["phase"] == "head"]
    result["head_only_final_val_accuracy"] = phases[-1]["val_accuracy"] if phases else None
    result["transfer_settings"] = {key: overrides["transfer"][key]
                                   for key in ("input_size", "finetune_epochs", "finetune_learning_rate")}
    result["seed"] = seed
    return name, result


def training_throughput(arguments: argparse.Namespace, directory: None) -> tuple[str, dict]:
    """Training images/s over real epochs for each model x precision (x XLA) setting, one process each, then the
    features stage's forward pass (generated images). Saved as throughput-epochs: the one-step harness's
    throughput.json stays what it measured."""
    result = throughput.matrix(epochs=arguments.epochs, images=arguments.images, with_xla=arguments.with_xla)
    result["runs"] += throughput.extraction_matrix(seconds=arguments.seconds, with_xla=arguments.with_xla)
    return "throughput-epochs", {**result, "seconds_per_extraction_setting": arguments.seconds}


def extraction_throughput(arguments: argparse.Namespace, directory: None) -> tuple[str, dict]:
    """The features stage's forward pass in five settings, one process each (generated images)."""
    return "extraction-throughput", {"seconds_per_setting": arguments.seconds,
                                     "runs": throughput.extraction_matrix(seconds=arguments.seconds)}


def scratch_variant(directory: Path, name: str, overrides: dict, arguments: argparse.Namespace) -> tuple[str, dict]:
    """One train_scratch run of `overrides` with --val-fraction, --set and --reencode-quality applied, each
    extending its name. The split the run's params name (the overrides', --val-fraction's or --set
    data.val_fraction's) is the split it trains on, re-encoded or not: prepared for it, never params.yaml's under
    another name."""
    if arguments.val_fraction:  # more training images, the same recipe: separates data size from the rest
        name += f"-val-{arguments.val_fraction:g}"
        overrides["data"] = {**overrides.get("data", {}), "val_fraction": arguments.val_fraction}
    overrides, name = common.with_assignments(overrides, name, arguments.set)
    split = overrides.get("data", {}).get("val_fraction")
    prepared = directory / "data" / "prepared"
    if arguments.reencode_quality is not None:
        prepared = common.prepare_reencoded(directory, arguments.reencode_quality, split)
        name += f"-jpeg-{arguments.reencode_quality}"
    elif split is not None:
        prepared = common.prepare_variant(directory, f"val-{split:g}", {"val_fraction": split})
    if arguments.validation_only:
        name = f"select-{name}"
    result = train_scratch(directory, name, overrides, prepared, score_test=not arguments.validation_only)
    counts = common.split_counts(prepared)
    result["train_images"], result["val_images"] = counts["train"], counts["val"]
    return name, result


# Each benchmark's function; those on generated images (no data preparation) are given no project.
BENCHMARKS = {"pipeline-ratio": pipeline_ratio, "transfer": transfer, "small-data": small_data,
              "determinism": determinism, "seed-recipe": seed_recipe, "best-scratch": best_scratch,
              "small-finetune": small_finetune, "small-report": small_report, "seed-recipe-25": seed_recipe_25,
              "residual": residual, "transfer-finetune": transfer_finetune, "transfer-peer": transfer_peer,
              "throughput": training_throughput,
              "extraction-throughput": extraction_throughput}
GENERATED_DATA = ("throughput", "extraction-throughput")


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("benchmark", choices=list(BENCHMARKS))
    parser.add_argument("--dir", type=Path, default=Path("/tmp/bench-imgclf"))
    parser.add_argument("--size", type=int, default=96, help="transfer input size")
    parser.add_argument("--finetune-epochs", type=int, default=0,
                        help="transfer: unfrozen epochs; transfer-finetune: replaces the profile's")
    parser.add_argument("--input-size", type=int, default=0, help="transfer-finetune: replaces the profile's")
    parser.add_argument("--finetune-learning-rate", type=float, default=0.0,
                        help="transfer-finetune: replaces the profile's")
    parser.add_argument("--lookahead", action="store_true", help="residual: turn on scratch.lookahead")
    parser.add_argument("--seed", type=int, default=None,
                        help="transfer-finetune, transfer-peer: params' seed for the run (default: params.yaml's)")
    parser.add_argument("--reencode-quality", type=int, default=None,
                        help="residual, seed-recipe-25: train and test on every image JPEG-encoded once more")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="residual, seed-recipe-25: replace one params key (dotted, YAML value); repeatable")
    parser.add_argument("--val-fraction", type=float, default=0.0,
                        help="seed-recipe-25, residual: data.val_fraction for the run (default: params.yaml's)")
    parser.add_argument("--validation-only", action="store_true",
                        help="residual, seed-recipe-25: a run that helps choose: validation only, the test split "
                             "never scored (give a validation split of 5,000 images or more: --val-fraction 0.1)")
    parser.add_argument("--epochs", type=int, default=3, help="throughput: timed epochs per training setting")
    parser.add_argument("--images", type=int, default=10240,
                        help="throughput: generated images per epoch (20 steps of 512, 160 of 64)")
    parser.add_argument("--with-xla", action="store_true",
                        help="throughput: XLA-compiled settings too (measured 2-20x slower on these CPUs)")
    parser.add_argument("--seconds", type=float, default=20.0, help="throughput, extraction: timed seconds per "
                        "extraction setting")
    return parser


def check(parser: argparse.ArgumentParser, arguments: argparse.Namespace) -> None:
    """Refuse a wrong combination before any preparation, so it costs nothing and never passes silently."""
    reencode = arguments.reencode_quality is not None
    if (arguments.set or reencode) and arguments.benchmark not in VARIANT_BENCHMARKS:
        parser.error("--set and --reencode-quality apply to residual and seed-recipe-25 only")
    if reencode and not 1 <= arguments.reencode_quality <= 95:
        parser.error(f"--reencode-quality {arguments.reencode_quality}: a JPEG quality from 1 to 95")
    if reencode and arguments.val_fraction:
        parser.error("--reencode-quality with --val-fraction: give the split as --set data.val_fraction=... instead")
    if arguments.seed is not None and arguments.benchmark not in SEEDED_BENCHMARKS:
        parser.error("--seed applies to transfer-finetune and transfer-peer only (residual: --set seed=N)")
    if arguments.val_fraction and arguments.benchmark not in VARIANT_BENCHMARKS:
        parser.error("--val-fraction applies to residual and seed-recipe-25 only")
    if arguments.validation_only and arguments.benchmark not in VARIANT_BENCHMARKS:
        parser.error("--validation-only applies to residual and seed-recipe-25 only")
    if not arguments.validation_only:
        return
    # --set parsed as the run will apply it (dotted key, YAML value)
    split = arguments.val_fraction or common.with_assignments({}, "", arguments.set)[0].get("data", {}).get(
        "val_fraction")
    if split is not None and (isinstance(split, bool) or not isinstance(split, (int, float))):
        parser.error(f"--validation-only: data.val_fraction {split!r}: give the validation split as a number, "
                     "e.g. --val-fraction 0.1")
    if split is None or split * common.CIFAR10_TRAINING_IMAGES < MIN_SELECTION_VAL_IMAGES:
        parser.error(f"--validation-only: choose on at least {MIN_SELECTION_VAL_IMAGES:,} validation images "
                     f"(--val-fraction 0.1 of CIFAR-10's {common.CIFAR10_TRAINING_IMAGES:,}); the profiles' 500 "
                     "cannot tell apart choices a point apart")


def main() -> None:
    run = provenance.start()
    arguments_parser = parser()
    arguments = arguments_parser.parse_args()
    check(arguments_parser, arguments)
    directory = None if arguments.benchmark in GENERATED_DATA else common.project(arguments.dir)
    name, result = BENCHMARKS[arguments.benchmark](arguments, directory)
    common.save(name, result, run)


if __name__ == "__main__":
    main()
