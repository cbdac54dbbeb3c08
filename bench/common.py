"""What the training benchmarks share: the scratch project copy, running its stages, reading what they wrote,
and saving a result with its provenance.

Every helper runs real code in a subprocess: a stage as `python -m stages.<name>` in the copy, a measurement as
`python -m bench.probes <probe>` (this checkout's bench/ on PYTHONPATH, the copy's imgclf first). Run the bench
scripts from the repository root as `python -m bench.<script>`.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bench import provenance
from imgclf import smoke_copy
from imgclf.config import Params, params_from_dict

ROOT = Path(__file__).resolve().parents[1]
# The shared data and models: ../shared beside the checkout, or where IMGCLF_SHARED says (a git worktree elsewhere).
SHARED = Path(os.environ.get("IMGCLF_SHARED") or ROOT.parent / "shared")
ARCHIVE = SHARED / "data" / "cifar10-jpg.tar.gz"
ARCHIVE_SHA256 = "d34c68f61cca57aa9144c8f25bda427abb9921bd642d5857a2fc1a6b4416f965"
BACKBONE = SHARED / "models" / "efficientnet_lite0_imagenet_notop.keras"
RESULTS = ROOT / "bench" / "results"
CIFAR10_TRAINING_IMAGES = 50000
CIFAR10_OVERRIDES = {"data": {"source": "image_folder", "path": str(ARCHIVE), "sha256": ARCHIVE_SHA256},
                     "mlflow": {"experiment": "imgclf-bench"}}


def project(directory: Path, overrides: dict | None = None, *, needs: Path = ARCHIVE) -> Path:
    """The scratch copy with its data downloaded and preprocessed (the data reused when already there, the code
    always this checkout's). Default: CIFAR-10 from the shared JPEG archive."""
    if not needs.exists():
        sys.exit(f"skipped: {needs} is absent (these benchmarks need the shared data)")
    if not (directory / "data" / "prepared" / "meta.json").is_file():
        smoke_copy.create(directory, source_root=ROOT, overrides=CIFAR10_OVERRIDES if overrides is None else overrides)
        smoke_copy.dvc(directory, "repro", "preprocess")
    smoke_copy.refresh_code(directory, source_root=ROOT)
    return directory


def environment(directory: Path) -> dict[str, str]:
    """The copy's environment with this checkout's root after the copy on PYTHONPATH: `bench` importable, the
    copy's `imgclf` (the same code, refreshed) found first."""
    env = smoke_copy.environment(directory)
    env["PYTHONPATH"] = os.pathsep.join([str(directory), str(ROOT)])
    return env


def profile_params(profile: Path | None = None) -> Params:
    """This checkout's params.yaml with `profile`'s overrides (a profiles/*.yaml file) merged in, validated."""
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    overrides = yaml.safe_load(profile.read_text()) if profile else {}
    return params_from_dict(smoke_copy.merge(base, overrides), source=str(profile or ROOT / "params.yaml"))


def write_params(directory: Path, name: str, overrides: dict) -> Path:
    params = smoke_copy.merge(yaml.safe_load((directory / "params.yaml").read_text()), overrides)
    path = directory / f"bench-{name}.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def stage(directory: Path, name: str, *args: str) -> float:
    """Run one stage module in the copy; return its wall time in seconds."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", f"stages.{name}", *args], cwd=directory,
                            env=environment(directory), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"stage {name} failed:\n{result.stderr[-4000:]}")
    return time.perf_counter() - started


def probe(directory: Path, name: str, **arguments: object) -> object:
    """Run `python -m bench.probes <name> --<key> <value>...` in the copy; return the JSON of its last line."""
    command = [sys.executable, "-m", "bench.probes", name]
    for key, value in arguments.items():
        if value is None or value is False:
            continue
        command.append(f"--{key.replace('_', '-')}")
        if value is not True:
            command.append(str(value))
    result = subprocess.run(command, cwd=directory, env=environment(directory), capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise RuntimeError(f"probe {name} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def prepare_variant(directory: Path, name: str, data_overrides: dict, raw: Path | None = None) -> Path:
    """The preprocess stage's output under `data/prepared-<name>` with `data:` params replaced, from the downloaded
    images or from `raw` (reused when there)."""
    prepared = directory / "data" / f"prepared-{name}"
    if not (prepared / "meta.json").is_file():
        params = write_params(directory, name, {"data": data_overrides})
        stage(directory, "preprocess", "--params", str(params), "--raw", str(raw or directory / "data" / "raw"),
              "--out", str(prepared))
    return prepared


def split_counts(prepared: Path) -> dict[str, int]:
    """Images per split of a preprocess stage's output, from its meta.json."""
    return json.loads((prepared / "meta.json").read_text())["counts"]


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


def test_accuracy(directory: Path, model_path: Path, prepared: Path, *, features: Path | None = None,
                  tta_flip: bool = False) -> float:
    """Test accuracy of a saved model; for transfer, its head on the cached test features (same computation).
    `tta_flip`: scores averaged with the mirror image's, as the evaluate stage does with `evaluate.tta_flip`."""
    return float(probe(directory, "test-accuracy", model=model_path, prepared=prepared, features=features,
                       tta_flip=tta_flip))


def history(out: Path) -> list[dict]:
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


def fresh_output(out: Path) -> Path:
    """`out` emptied for a new run. A run killed before (by hand, by a deadline) leaves resume backups there, and
    the stage would resume from them: the benchmark would then time only the epochs that were left."""
    shutil.rmtree(out, ignore_errors=True)
    return out


def train_scratch(directory: Path, name: str, overrides: dict, prepared: Path, *, score_test: bool = True) -> dict:
    """One train_scratch run. `score_test` False (a run that helps choose a configuration): the test split is not
    touched, `test_accuracy` is None; choices are made on the validation split, and the test split is scored once,
    by the final configuration's own run."""
    params = write_params(directory, name, overrides)
    out = fresh_output(directory / "bench" / name)
    seconds = stage(directory, "train_scratch", "--params", str(params), "--data", str(prepared), "--out", str(out))
    rows = history(out)
    tta_flip = bool(overrides.get("evaluate", {}).get("tta_flip", False))
    return {"stage_seconds": round(seconds, 1), "epochs": len(rows),
            "seconds_per_epoch": round(sum(float(row["epoch_seconds"]) for row in rows) / len(rows), 1),
            "train_images_per_second": round(sum(float(row["images_per_second"]) for row in rows) / len(rows), 1),
            "final_val_accuracy": round(float(rows[-1]["val_accuracy"]), 4),
            "test_accuracy": (round(test_accuracy(directory, out / "model.keras", prepared, tta_flip=tta_flip), 4)
                              if score_test else None),
            "test_scored": score_test, "tta_flip": tta_flip, "per_epoch": per_epoch(rows)}


def train_transfer(directory: Path, name: str, overrides: dict, prepared: Path, *, features_test: bool = True,
                   features_name: str = "") -> dict:
    """Features stage, then transfer stage. `features_test`: score the head on the cached test features (same
    computation as the saved model, much faster); off when fine-tuning changed the backbone. `features_name`:
    a features directory shared by variants that differ only after extraction, reused when it is complete (the
    backbone never runs twice on the same image; its input size is checked)."""
    params = write_params(directory, name, overrides)
    features = directory / "bench" / f"{features_name or name}-features"
    out = fresh_output(directory / "bench" / name)
    cached = features / "features.json"
    if features_name and cached.is_file() and (
            json.loads(cached.read_text())["input_size"] == overrides["transfer"]["input_size"]):
        extraction = None  # reused: its seconds are those of the run that made it (`timings` below)
    else:
        backbone = directory / "bench" / f"{name}-backbone.json"  # check_params resolves transfer.backbone
        stage(directory, "check_params", "--params", str(params), "--out", str(backbone.with_suffix(".checked")),
              "--backbone", str(backbone))
        extraction = stage(directory, "extract_features", "--params", str(params), "--data", str(prepared),
                           "--backbone", str(backbone), "--out", str(features))
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
        name += f"-{file_name_part(leaf)}-{file_name_part(value)}"
    return params, name


def file_name_part(text: str) -> str:
    """`text` as one piece of a file name: a list value ([128,384,384]) becomes 128-384-384, and no slash, bracket,
    comma or space survives. A key is named too (`--set 'scratch.a/b=1'` gave bench/results/residual-a/b-1.json, a
    file in a folder of its own)."""
    return re.sub(r"[^A-Za-z0-9._]+", "-", text).strip("-")


def save(name: str, result: dict, run: provenance.Run) -> dict:
    """bench/results/<name>.json: `result` under its benchmark name, with the provenance of `run`."""
    record = provenance.write(RESULTS / f"{name}.json", {"benchmark": name, **result}, run)
    print(json.dumps(record, indent=2))
    return record
