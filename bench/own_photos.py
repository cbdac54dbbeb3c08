"""The README's own-photos recipe, end to end: `dvc repro` on a small folder of real photos, both models.

    python -m bench.own_photos [--classes 4] [--per-class 150] [--dir /tmp/bench-own-photos]
    python -m bench.own_photos --profile profiles/own_photos.yaml [--set scratch.pool_after=[2,3]]

The photos are the first `--per-class` training JPEGs of the first `--classes` CIFAR-10 classes of the shared
archive, laid out as a user's folder (`photos/<class>/*.jpg`, no train/test split: preprocess holds out test and
validation). The transfer model uses the shared EfficientNet-Lite0 file (the offline stand-in for
`weights="imagenet"`) at 96 px. `--profile` applies a params profile first (the README's recipe:
profiles/own_photos.yaml), `--set KEY=VALUE` (YAML value) replaces a param after it. Writes
bench/results/own-photos[-<profile>][-<key>-<value>][-<classes>x<per class>].json: both models' test accuracy,
chance, the degenerate-model flags and the training and validation accuracies they weigh, the scratch model's
parameters and the stage's wall time.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tarfile
import time
from pathlib import Path

import yaml

from bench import provenance
from bench.common import RESULTS, ROOT, SHARED
from imgclf import artifacts, smoke_copy

ARCHIVE = Path("data") / "cifar10-jpg.tar.gz"  # in the shared folder (--shared)
BACKBONE = Path("models") / "efficientnet_lite0_imagenet_notop.keras"
DEFAULT_CLASSES, DEFAULT_PER_CLASS = 4, 150  # other values add `-<classes>x<per class>` to the result's name


def write_photos(archive_path: Path, folder: Path, *, classes: int, per_class: int) -> list[str]:
    """`folder/<class>/<name>.jpg` from the archive's training images; returns the class names."""
    wanted: dict[str, int] = {}
    with tarfile.open(archive_path) as archive:
        for member in archive:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 3 or "train" not in parts:
                continue
            name = parts[-2]
            if name not in wanted and len(wanted) == classes:
                continue
            if wanted.setdefault(name, 0) >= per_class:
                continue
            target = folder / name / parts[-1]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.extractfile(member).read())
            wanted[name] += 1
    return sorted(wanted)


def main() -> None:
    run = provenance.start()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=DEFAULT_CLASSES)
    parser.add_argument("--per-class", type=int, default=DEFAULT_PER_CLASS)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/bench-own-photos"))
    parser.add_argument("--shared", type=Path, default=SHARED, help="the folder with data/ and models/ (../shared)")
    parser.add_argument("--profile", type=Path, help="a params profile applied before the overrides below")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a param, after the profile")
    arguments = parser.parse_args()
    archive, backbone = arguments.shared / ARCHIVE, arguments.shared / BACKBONE
    if not (archive.is_file() and backbone.is_file()):
        sys.exit(f"skipped: {archive} or {backbone} is absent (this benchmark needs ../shared, or --shared)")
    photos = arguments.dir / "photos"
    if not photos.is_dir():
        write_photos(archive, photos, classes=arguments.classes, per_class=arguments.per_class)
    overrides = {"data": {"source": "image_folder", "path": str(photos)},
                 "transfer": {"backbone": str(backbone), "weights": None, "input_size": 96},
                 "mlflow": {"experiment": "imgclf-own-photos"}}
    name = "own-photos"
    if arguments.profile:
        overrides = smoke_copy.merge(yaml.safe_load(arguments.profile.read_text(encoding="utf-8")), overrides)
        stem = arguments.profile.stem.replace("_", "-")
        name += "-profile" if stem == name else f"-{stem}"  # the README's recipe: own-photos-profile
    for assignment in arguments.set:
        key, _, value = assignment.partition("=")
        *sections, leaf = key.split(".")
        overrides = smoke_copy.merge(overrides, _nested(sections, {leaf: yaml.safe_load(value)}))
        name += f"-{leaf}-" + re.sub(r"[^A-Za-z0-9._]+", "-", value).strip("-")
    if (arguments.classes, arguments.per_class) != (DEFAULT_CLASSES, DEFAULT_PER_CLASS):
        name += f"-{arguments.classes}x{arguments.per_class}"  # another folder: never the default run's file
    project = smoke_copy.create(arguments.dir / "project", source_root=ROOT, overrides=overrides)
    started = time.perf_counter()
    smoke_copy.dvc(project, "repro")
    seconds = time.perf_counter() - started
    evaluation = project / "results" / "evaluate"
    metrics = json.loads((evaluation / artifacts.METRICS_FILE).read_text())
    flagged = json.loads((evaluation / artifacts.DEGENERATE_FILE).read_text())
    meta = artifacts.read_prepared_meta(project / artifacts.PREPARED_DIR)
    histories = {model: artifacts.read_history(project / "models" / model / artifacts.HISTORY_FILE)
                 for model in metrics}
    registered = json.loads((evaluation / artifacts.RUNS_FILE).read_text())["registry"]["models"]
    result = {
        "benchmark": "own-photos",
        "classes": meta.num_classes, "counts": meta.counts, "chance": round(1 / meta.num_classes, 4),
        "dvc_repro_seconds": round(seconds, 1),
        "overrides": {key: value for key, value in overrides.items() if key != "data"},
        "scratch_parameters": json.loads((project / "models" / "scratch" / artifacts.SUMMARY_FILE).read_text())[
            "parameter_count"],
        **{f"{model}_test_accuracy": round(metrics[model]["accuracy"], 4) for model in metrics},
        # What the degenerate-model guard weighs (evaluate.degenerate_reasons): the last epoch's training accuracy
        # and the saved model's accuracy on the validation split, as the evaluate stage scored it (runs.json).
        **{f"{model}_final_training_accuracy": round(histories[model][-1]["accuracy"], 4) for model in metrics},
        **{f"{model}_validation_accuracy": round(registered[model]["val_accuracy"], 4) for model in metrics},
        **{f"{model}_degenerate": flagged[model] for model in flagged},
    }
    print(json.dumps(provenance.write(RESULTS / f"{name}.json", result, run), indent=2))


def _nested(sections: list[str], leaf: dict) -> dict:
    for section in reversed(sections):
        leaf = {section: leaf}
    return leaf


if __name__ == "__main__":
    main()
