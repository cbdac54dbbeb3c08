"""The README's own-photos recipe, end to end: `dvc repro` on a small folder of real photos, both models.

    .venv/bin/python bench/own_photos.py [--classes 4] [--per-class 150] [--dir /tmp/bench-own-photos]

The photos are the first `--per-class` training JPEGs of the first `--classes` CIFAR-10 classes of the shared
archive, laid out as a user's folder (`photos/<class>/*.jpg`, no train/test split: preprocess holds out test and
validation). The transfer model uses the shared EfficientNet-Lite0 file (the offline stand-in for
`weights="imagenet"`) at 96 px. Writes bench/results/own-photos.json: both models' test accuracy, chance, the
degenerate-model flags and the stage's wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imgclf import artifacts, sandbox  # noqa: E402

SHARED = ROOT.parent / "shared"
ARCHIVE = SHARED / "data" / "cifar10-jpg.tar.gz"
BACKBONE = SHARED / "models" / "efficientnet_lite0_imagenet_notop.keras"
RESULTS = ROOT / "bench" / "results"


def write_photos(folder: Path, *, classes: int, per_class: int) -> list[str]:
    """`folder/<class>/<name>.jpg` from the archive's training images; returns the class names."""
    wanted: dict[str, int] = {}
    with tarfile.open(ARCHIVE) as archive:
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--per-class", type=int, default=150)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/bench-own-photos"))
    arguments = parser.parse_args()
    if not (ARCHIVE.is_file() and BACKBONE.is_file()):
        sys.exit(f"skipped: {ARCHIVE} or {BACKBONE} is absent (this benchmark needs ../shared)")
    photos = arguments.dir / "photos"
    if not photos.is_dir():
        write_photos(photos, classes=arguments.classes, per_class=arguments.per_class)
    overrides = {"data": {"source": "image_folder", "path": str(photos)},
                 "transfer": {"backbone": str(BACKBONE), "weights": None, "input_size": 96},
                 "mlflow": {"experiment": "imgclf-own-photos"}}
    project = sandbox.create(arguments.dir / "project", source_root=ROOT, overrides=overrides)
    started = time.perf_counter()
    sandbox.dvc(project, "repro")
    seconds = time.perf_counter() - started
    evaluation = project / "results" / "evaluate"
    metrics = json.loads((evaluation / artifacts.METRICS_FILE).read_text())
    flagged = json.loads((evaluation / artifacts.DEGENERATE_FILE).read_text())
    meta = artifacts.read_prepared_meta(project / artifacts.PREPARED_DIR)
    result = {
        "benchmark": "own-photos", "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d %H:%M"), "command": "bench/own_photos.py " + " ".join(sys.argv[1:]),
        "classes": meta.num_classes, "counts": meta.counts, "chance": round(1 / meta.num_classes, 4),
        "dvc_repro_seconds": round(seconds, 1),
        **{f"{model}_test_accuracy": round(metrics[model]["accuracy"], 4) for model in metrics},
        **{f"{model}_degenerate": flagged[model] for model in flagged},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "own-photos.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
