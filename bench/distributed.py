"""Images/s of the scratch training in one and two local processes, on each Keras backend (issue 28).

    .venv/bin/python -m bench.distributed                 # the seed CNN, 3 epochs, 10 synthetic classes
    .venv/bin/python -m bench.distributed --per-class 600 --epochs 4
    .venv/bin/python -m bench.distributed --image-folder /tmp/cifar-subset-800 --epochs 6 --seeds 1 2

`--image-folder`: real photos in class folders (above, the first 800 training images of each CIFAR-10 class from
../shared/data/cifar10-jpg.tar.gz), split by the pipeline's own download stage; the synthetic classes are learnt
to validation accuracy 1.0 in one epoch, so only real images show whether two processes reach the accuracy of one.
`--seeds`: each configuration once per seed (params `seed`), for the spread. Results:
bench/results/distributed-throughput.json, or distributed-accuracy.json with --image-folder.

Runs the real stage (`python -m stages.train_scratch`) in a scratch copy (--dir, default /tmp/bench-imgclf-dist)
on synthetic data made by the real download and preprocess stages, once per configuration:

    tensorflow x1: training.distribute none (the default)
    jax x1:        the same under KERAS_BACKEND=jax
    jax x2:        training.distribute multi_worker, training.workers 2 (two processes on 127.0.0.1, gloo)

(TensorFlow has no multi-process `model.fit` with Keras 3: tensorflow/tensorflow#72388.) Images/s is the
pipeline's own figure (history.csv `images_per_second`: training images / epoch seconds, validation and the
BatchNorm re-estimation included), averaged over the epochs after the first (which compiles). The 1-minute load
averages before and after each run go with it: above the core count, the run was contended. Results:
bench/results/distributed-throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bench import provenance
from bench.common import RESULTS, ROOT, fresh_output
from imgclf import artifacts, smoke_copy

CONFIGURATIONS = {
    "tensorflow x1": ({"KERAS_BACKEND": "tensorflow"}, {"distribute": "none"}),
    "jax x1": ({"KERAS_BACKEND": "jax"}, {"distribute": "none"}),
    "jax x2": ({}, {"distribute": "multi_worker", "workers": 2}),
}


def prepare(directory: Path, *, per_class: int, image_folder: Path | None) -> Path:
    data = ({"source": "image_folder", "path": str(image_folder.resolve())} if image_folder else
            {"source": "synthetic", "synthetic_classes": 10, "synthetic_per_class": per_class,
             "synthetic_image_size": 32})
    overrides = {"data": data, "preprocess": {"image_size": 32}, "mlflow": {"experiment": "bench-distributed"}}
    root = smoke_copy.create(directory, source_root=ROOT, overrides=overrides)
    smoke_copy.dvc(root, "repro", "preprocess")
    return root


def run(root: Path, name: str, *, epochs: int, batch_size: int, seed: int) -> dict:
    environment, training = CONFIGURATIONS[name]
    params_path = root / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["seed"] = seed
    params["scratch"].update(epochs=epochs, batch_size=batch_size)
    params["training"].update({"distribute": "none", "workers": 2, **training})
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    out = fresh_output(root / "models" / "scratch")
    load_before = os.getloadavg()
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "stages.train_scratch", "--data", "data/prepared", "--out",
                             "models/scratch"], cwd=root, env={**smoke_copy.environment(root), **environment},
                            capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{name} failed:\n{result.stderr[-4000:]}")
    rows = artifacts.read_history(out / "history.csv")
    steady = [row["images_per_second"] for row in rows[1:]]
    return {"configuration": name, "seed": seed, "wall_seconds": round(wall, 1),
            "images_per_second_after_first_epoch": round(statistics.mean(steady), 1),
            "images_per_second_each_epoch": [round(row["images_per_second"], 1) for row in rows],
            "first_epoch_seconds": round(rows[0]["epoch_seconds"], 1),
            "val_accuracy": rows[-1]["val_accuracy"], "best_val_accuracy": max(row["val_accuracy"] for row in rows),
            "load_average_1min_before": round(load_before[0], 2),
            "load_average_1min_after": round(os.getloadavg()[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/bench-imgclf-dist"))
    parser.add_argument("--per-class", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--only", nargs="*", choices=list(CONFIGURATIONS), default=list(CONFIGURATIONS))
    parser.add_argument("--image-folder", type=Path, help="class folders of real images instead of synthetic data")
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    arguments = parser.parse_args()
    started = provenance.start()
    root = prepare(arguments.dir, per_class=arguments.per_class, image_folder=arguments.image_folder)
    results = []
    for seed in arguments.seeds:
        for name in arguments.only:
            results.append(run(root, name, epochs=arguments.epochs, batch_size=arguments.batch_size, seed=seed))
            print(json.dumps(results[-1]), flush=True)
    meta = artifacts.read_prepared_meta(root / "data" / "prepared")
    record = {"data": str(arguments.image_folder) if arguments.image_folder else "synthetic",
              "per_class": None if arguments.image_folder else arguments.per_class, "classes": meta.num_classes,
              "images": meta.counts, "epochs": arguments.epochs, "batch_size": arguments.batch_size,
              "seeds": arguments.seeds, "runs": results, "summary": summarize(results)}
    name = "distributed-accuracy.json" if arguments.image_folder else "distributed-throughput.json"
    provenance.write(RESULTS / name, record, started)


def summarize(results: list[dict]) -> dict:
    """Per configuration: mean and spread (sample sd, over the seeds) of the final validation accuracy and of
    the images/s after the first epoch."""
    summary = {}
    for name in dict.fromkeys(result["configuration"] for result in results):
        runs = [result for result in results if result["configuration"] == name]
        accuracies = [result["val_accuracy"] for result in runs]
        speeds = [result["images_per_second_after_first_epoch"] for result in runs]
        summary[name] = {"runs": len(runs), "val_accuracy_mean": round(statistics.mean(accuracies), 4),
                         "val_accuracy_sd": round(statistics.stdev(accuracies), 4) if len(runs) > 1 else None,
                         "images_per_second_mean": round(statistics.mean(speeds), 1)}
    return summary


if __name__ == "__main__":
    main()
