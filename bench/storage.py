"""Bytes on disk per run of the own-photos recipe: DVC cache, workspace outputs and MLflow store, after each run.

    python -m bench.storage --rev HEAD [--dir /tmp/bench-storage] [--set scratch.pool_after=[2,3]]

A fresh `git clone` of this repository at `--rev` (the environment linked in as .venv), a folder of 4 classes x 30
CIFAR-10 training JPEGs upscaled to 192 px (quality 90) as photos, then three `dvc exp run`s of the README's
own-photos recipe (`imgclf exp-args profiles/own_photos.yaml`, the shared EfficientNet-Lite0 file as backbone, 2
scratch and 2 head epochs), each committed: the first builds everything, the second changes a scratch param
(`scratch.learning_rate` 0.0005), the third switches augmentation on. After each, `du -sb` of `.dvc/cache`, `data`,
`models`, `results`, `mlartifacts` and `mlflow.db`, and of all of them in one `du` (a hard-linked file counted once:
the bytes really on disk). Writes bench/results/storage-<rev>.json.

    python -m bench.storage --model-sizes

The seed CNN's parameters and `.keras` file bytes (4 classes) at image sizes and poolings, saved by Keras with
Adam's state and by `model_io.save_model`; writes bench/results/storage-model-sizes.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from bench import provenance
from bench.common import RESULTS, ROOT, SHARED

CLASSES, PER_CLASS, SIDE = ("airplane", "cat", "dog", "ship"), 30, 192
PLACES = (".dvc/cache", "data", "models", "results", "mlartifacts", "mlflow.db")
RUNS = ((("scratch.learning_rate", "0.001"), ("augment.enabled", "false")),
        (("scratch.learning_rate", "0.0005"), ("augment.enabled", "false")),
        (("scratch.learning_rate", "0.0005"), ("augment.enabled", "true")))


def write_photos(archive: Path, folder: Path) -> int:
    """`folder/<class>/<name>.jpg`: the first PER_CLASS training JPEGs of each class, upscaled like photos."""
    from PIL import Image

    taken = dict.fromkeys(CLASSES, 0)
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = member.name.split("/")
            if len(parts) != 3 or parts[0] != "train" or taken.get(parts[1], PER_CLASS) >= PER_CLASS:
                continue
            image = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")
            target = folder / parts[1] / parts[2]
            target.parent.mkdir(parents=True, exist_ok=True)
            image.resize((SIDE, SIDE), Image.BICUBIC).save(target, quality=90)
            taken[parts[1]] += 1
            if min(taken.values()) >= PER_CLASS:
                break
    return sum(taken.values())


MODEL_SIZES = ((32, [2, 3]), (64, [2, 3]), (96, [2, 3]), (64, [1, 2, 3]), (96, [1, 2, 3]), (96, [1, 2, 3, 4]),
               (128, [1, 2, 3, 4]))


def model_sizes() -> list[dict]:
    """Parameters and file bytes of the seed CNN (params.yaml's scratch recipe) for each of MODEL_SIZES."""
    import tempfile

    import keras
    import numpy as np

    from imgclf import model_io, smoke_copy
    from imgclf.config import params_from_dict, read_params_yaml
    from imgclf.training import recipe, scratch_model

    rows = []
    for side, pool_after in MODEL_SIZES:
        params = params_from_dict(smoke_copy.merge(read_params_yaml(ROOT / "params.yaml"),
                                                {"scratch": {"pool_after": pool_after}}))
        model = scratch_model.build_scratch_model(params.scratch, input_shape=(side, side, 3), num_classes=len(CLASSES))
        recipe.compile_model(model, params.scratch, steps_per_epoch=1, jit_compile=False)
        model.fit(np.zeros((8, side, side, 3), "float32"), keras.utils.to_categorical(np.arange(8) % 4, 4), verbose=0)
        with tempfile.TemporaryDirectory() as folder:
            keras_file, saved = Path(folder) / "keras.keras", Path(folder) / "model.keras"
            model.save(keras_file)  # Keras' own: the weights and Adam's two moments of each
            model_io.save_model(model, saved)
            rows.append({"image_size": side, "pool_after": pool_after, "parameters": model.count_params(),
                         "keras_save_bytes": keras_file.stat().st_size, "save_model_bytes": saved.stat().st_size})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def du(project: Path, *paths: str) -> int:
    """`du -sb` of the paths together (bytes; a file with several names counted once)."""
    present = [path for path in paths if (project / path).exists()]
    if not present:
        return 0
    output = subprocess.run(["du", "-scb", *present], cwd=project, capture_output=True, text=True, check=True).stdout
    return int(output.strip().splitlines()[-1].split()[0])


def run(command: list[str], project: Path, environment: dict[str, str]) -> str:
    result = subprocess.run(command, cwd=project, env=environment, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"`{' '.join(command)}` failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                 f"{result.stderr[-3000:]}")
    return result.stdout + result.stderr


def main() -> None:
    run = provenance.start()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default="HEAD", help="commit of this repository to measure")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/bench-storage"))
    parser.add_argument("--archive", type=Path, default=SHARED / "data" / "cifar10-jpg.tar.gz")
    parser.add_argument("--backbone", type=Path, default=SHARED / "models" / "efficientnet_lite0_imagenet_notop.keras")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra -S for every run")
    parser.add_argument("--model-sizes", action="store_true", help="only the seed CNN's sizes (no runs)")
    arguments = parser.parse_args()
    if arguments.model_sizes:
        provenance.write(RESULTS / "storage-model-sizes.json",
                         {"benchmark": "storage-model-sizes", "rows": model_sizes()}, run)
        return
    if not (arguments.archive.is_file() and arguments.backbone.is_file()):
        sys.exit(f"skipped: {arguments.archive} or {arguments.backbone} is absent (pass --archive and --backbone)")
    rev = subprocess.run(["git", "rev-parse", "--short", arguments.rev], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    photos, project = arguments.dir / "photos", arguments.dir / f"project-{rev}"
    if not photos.is_dir():
        write_photos(arguments.archive, photos)
    shutil.rmtree(project, ignore_errors=True)
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(project)], check=True)
    subprocess.run(["git", "checkout", "--quiet", rev], cwd=project, check=True)
    (project / ".venv").symlink_to((ROOT / ".venv").resolve())
    with open(project / ".git" / "info" / "exclude", "a", encoding="utf-8") as exclude:
        exclude.write(".venv\n")  # a link: .gitignore's `.venv/` matches only a directory
    environment = {**os.environ, "PYTHONPATH": str(project), "IMGCLF_PROGRESS": "lines",
                   "PATH": f"{project / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}",
                   "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@imgclf.invalid",
                   "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@imgclf.invalid"}
    python = str(project / ".venv" / "bin" / "python")
    profile = run([python, "-m", "imgclf", "exp-args", "profiles/own_photos.yaml"], project, environment).split()
    common = [*profile, "-S", "data.source=image_folder", "-S", f"data.path={photos.resolve()}",
              "-S", f"transfer.backbone={arguments.backbone.resolve()}", "-S", "scratch.epochs=2",
              "-S", "transfer.epochs=2", "-S", "transfer.finetune_epochs=0",
              *(item for setting in arguments.set for item in ("-S", setting))]
    runs = []
    for number, changes in enumerate(RUNS, start=1):
        command = ["dvc", "exp", "run", *common, *(item for key, value in changes for item in ("-S", f"{key}={value}"))]
        started = time.perf_counter()
        output = run(command, project, environment)
        seconds = time.perf_counter() - started
        # Each run's result committed, as a user keeping it would: the next run's experiment starts from it.
        run(["git", "add", "--all"], project, environment)
        run(["git", "commit", "--quiet", "-m", f"run {number}"], project, environment)
        runs.append({"run": number, "changes": dict(changes), "seconds": round(seconds, 1),
                     "stages_run": re.findall(r"Running stage '(\w+)'", output),
                     "bytes": {place: du(project, place) for place in PLACES},
                     "workspace_bytes": du(project, "data", "models", "results"),
                     "total_bytes": du(project, *PLACES, "mlflow.db-wal", "mlflow.db-shm")})
        print(json.dumps(runs[-1]), flush=True)
    result = {"benchmark": "storage", "rev": rev,
              "photos": {"files": sum(1 for path in photos.rglob("*.jpg")), "bytes": du(photos.parent, "photos")},
              "runs": runs,
              "large_files": sorted(f"{path.stat().st_size} {path.stat().st_nlink} {path.relative_to(project)}"
                                    for place in PLACES[:5] for path in (project / place).rglob("*")
                                    if path.is_file() and path.stat().st_size > 1 << 20)}
    name = "-".join(["storage", rev, *(re.sub(r"[^\w.]+", "-", setting).strip("-") for setting in arguments.set)])
    provenance.write(RESULTS / f"{name}.json", result, run)


if __name__ == "__main__":
    main()
