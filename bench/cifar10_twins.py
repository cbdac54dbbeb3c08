"""Benchmark: both of the pipeline's models on CIFAR-10, with and without the test images that have a training twin.

The real pipeline (`dvc repro`, every stage) in a scratch copy on the shared CIFAR-10 JPEG archive, the transfer
model on the shared EfficientNet-Lite0 at 96 px (offline), `duplicates.policy: report` (the default): the analyze
stage's summary says how many test images have a twin in training (find_duplicates) and both models' accuracy and
McNemar's test with and without them. `--scratch-epochs` shortens the seed CNN's 25-epoch recipe to fit a session
(the result records it). Writes bench/results/cifar10-twins-models.json with its provenance.

Usage: .venv/bin/python -m bench.cifar10_twins [--dir /tmp/bench-cifar10-twins] [--scratch-epochs 5]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench import provenance
from bench.common import ARCHIVE, BACKBONE, CIFAR10_OVERRIDES, RESULTS, ROOT
from imgclf import smoke_copy

SUMMARY_KEYS = ("test_images", "scratch_accuracy", "transfer_accuracy", "accuracy_difference", "mcnemar",
                "train_test_duplicates", "duplicates_within_train", "duplicates_within_test", "deduplicated")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/bench-cifar10-twins"))
    parser.add_argument("--scratch-epochs", type=int, default=5)
    arguments = parser.parse_args()
    if not ARCHIVE.is_file() or not BACKBONE.is_file():
        raise SystemExit("skipped: the shared CIFAR-10 archive or Lite0 backbone is absent")
    run = provenance.start()
    overrides = smoke_copy.merge(CIFAR10_OVERRIDES, {
        "scratch": {"epochs": arguments.scratch_epochs},
        "transfer": {"backbone": str(BACKBONE), "input_size": 96},
        "duplicates": {"policy": "report"}})
    root = arguments.dir / "project"
    if not root.is_dir():
        smoke_copy.create(root, source_root=ROOT, overrides=overrides)
    smoke_copy.dvc(root, "repro")
    summary = json.loads((root / "results" / "analysis" / "summary.json").read_text())
    result = {"overrides": overrides, "summary": {key: summary[key] for key in SUMMARY_KEYS if key in summary},
              "per_model": {key: value for key, value in summary.items() if "deduplicated" in key}}
    provenance.write(RESULTS / "cifar10-twins-models.json", result, run)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
