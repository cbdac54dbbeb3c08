"""MNIST: the seed CNN from scratch and the EfficientNet-Lite0 transfer model on the full MNIST, against the
write-ups' "about 99%".

    python -m bench.mnist scratch [--epochs 5]        # writes bench/results/mnist-scratch.json
    python -m bench.mnist transfer [--input-size 96]  # writes bench/results/mnist-transfer.json
    python -m bench.mnist transfer --head-units 512 --epochs 30  # a variant: mnist-transfer-head-512-30-epochs.json

The real pipeline in a scratch copy of the project (--dir, default /tmp/bench-mnist): the download and
preprocess stages on the four official IDX files of the shared MNIST (../shared/data/mnist, pinned by its
manifest digest), 28x28 grey, 10% of each training class held out for validation (6,000 images: every choice
is made on those), then train_scratch, or extract_features and train_transfer, with params.yaml's recipe and
the settings named here. The test split (10,000 images) is scored once per model, at the end.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import common, provenance

MNIST = common.SHARED / "data" / "mnist"
MNIST_SHA256 = "327c3173b268bca96668386a26e45c1cb567b741b175fda71102f136cb1c149f"  # ../shared/README.md
WRITE_UP_ACCURACY = 0.99  # what the seed notebooks report on MNIST ("about 99%")
MIN_VALIDATION_IMAGES = 5000


def overrides() -> dict:
    return {"data": {"source": "mnist", "path": str(MNIST), "sha256": MNIST_SHA256, "val_fraction": 0.1},
            "preprocess": {"image_size": 28},
            "mlflow": {"experiment": "imgclf-bench-mnist"}}


def prepared_counts(prepared: Path) -> dict:
    counts = common.split_counts(prepared)
    if counts.get("val", counts.get("validation", 0)) < MIN_VALIDATION_IMAGES:
        sys.exit(f"the validation split holds {counts}: fewer than {MIN_VALIDATION_IMAGES} images")
    return counts


def scratch(directory: Path, epochs: int) -> dict:
    prepared = directory / "data" / "prepared"
    counts = prepared_counts(prepared)
    result = common.train_scratch(directory, "mnist-scratch", {"scratch": {"epochs": epochs}}, prepared)
    return {"model": "seed CNN (params.yaml's scratch recipe)", "counts": counts,
            "minutes": round(result["stage_seconds"] / 60, 1), "write_up_accuracy": WRITE_UP_ACCURACY, **result}


def transfer(directory: Path, name: str, input_size: int, epochs: int, head_units: int) -> dict:
    """The transfer stages; variants that differ only in the head share the features of one extraction (the
    first run's, at the same input size)."""
    prepared = directory / "data" / "prepared"
    counts = prepared_counts(prepared)
    settings = {"backbone": str(common.BACKBONE), "weights": None, "input_size": input_size, "epochs": epochs,
                "feature_batch_size": 128, "finetune_epochs": 0, "head_units": head_units}
    result = common.train_transfer(directory, name, {"transfer": settings}, prepared, features_name="mnist-transfer")
    # A variant that reused the features is charged their extraction's backbone time: a user running it alone pays it.
    extraction = result["extract_stage_seconds"]
    if extraction is None:
        extraction = result["extraction_images"] / result["extraction_images_per_second"]
    seconds = extraction + result["transfer_stage_seconds"]
    head = f"a head with {head_units} hidden units" if head_units else "a linear head"
    return {"model": f"EfficientNet-Lite0 (ImageNet, frozen) + {head} on cached features", "counts": counts,
            "transfer_settings": settings, "epochs": len(result["per_epoch"]), "minutes": round(seconds / 60, 1),
            "write_up_accuracy": WRITE_UP_ACCURACY, **result}


def main() -> None:
    run = provenance.start()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=["scratch", "transfer"])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/bench-mnist"))
    parser.add_argument("--epochs", type=int, default=0, help="training epochs (default: scratch 5, transfer 10)")
    parser.add_argument("--input-size", type=int, default=96, help="transfer: the backbone's input side")
    parser.add_argument("--head-units", type=int, default=0, help="transfer: hidden units in the head (0: linear)")
    arguments = parser.parse_args()
    if not common.BACKBONE.is_file() and arguments.model == "transfer":
        sys.exit(f"skipped: {common.BACKBONE} is absent")
    directory = common.project(arguments.dir, overrides(), needs=MNIST)
    name = f"mnist-{arguments.model}"
    if arguments.model == "scratch":
        result = scratch(directory, arguments.epochs or 5)
    else:
        epochs = arguments.epochs or 10
        if arguments.head_units or arguments.input_size != 96 or epochs != 10:  # a variant, under its own name
            name += f"-{arguments.input_size}px" * (arguments.input_size != 96)
            name += f"-head-{arguments.head_units}" * bool(arguments.head_units) + f"-{epochs}-epochs"
        result = transfer(directory, name, arguments.input_size, epochs, arguments.head_units)
    common.save(name, result, run)


if __name__ == "__main__":
    main()
