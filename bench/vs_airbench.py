"""The residual profile against airbench95's own code, like for like (issue 29, item 2).

    python -m bench.vs_airbench keras --seed 1       # profiles/scratch_residual.yaml, as the pipeline runs it
    python -m bench.vs_airbench reference --seed 1 --python /tmp/torchref/bin/python   # airbench95's own code
    python -m bench.vs_airbench summary              # bench/results/vs-airbench95.json from every run so far

Each run is one seed of one side, saved as bench/results/vs-airbench95-<side>-seed-<seed>.json; run them one at a
time on an otherwise idle machine (the provenance says whether it was). Seeds can be added over several sessions:
`summary` combines the runs of one CPU model and one configuration per side, and lists what it left out and why.

What makes it like for like:
- the same images: the 49,500 training images of the profile's split (`data.val_fraction: 0.01`), prepared once by
  the pipeline's own stages from the shared JPEG archive; both sides score the same 10,000 test images, once;
- the same test-time augmentation: the mean of each image's and its mirror's scores (`evaluate.tta_flip`;
  airbench's level 1);
- one timing boundary: this script's wall clock from launching a side's first process to the final test accuracy,
  process start-up, imports, loading the prepared shards, validation and evaluation all included (the reference
  scores the test split only at the end: `--no-epoch-test`). Preparing the shards is outside it, for both.

`time_ratio` is the Keras minutes to reach the reference's mean accuracy over the reference's mean minutes: the
Keras mean minutes when its mean accuracy reaches the reference's (an upper bound: the test split is scored once
per run, so when it got there is not known), none when it does not (that configuration never reached it).
The target is `time_ratio` <= 1.0.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench import common, provenance

NAME = "vs-airbench95"
SIDES = ("keras", "reference")
TTA = "flip"
# The profile's split: 49,500 training images, 500 validation, the 10,000 test images.
VAL_FRACTION = 0.01
RECIPE = "airbench95"
# The residual net's norm layer, in each Keras run's configuration: a change of layer (not of params) is a new
# configuration, whose seeds the summary must not mix with the old one's. Runs before 2026-12-07 ran Keras'
# BatchNormalization then ScaledBias and record no norm. (A string: the parent process never imports Keras.)
KERAS_NORM = "ShiftedBatchNorm"
MIN_SEEDS = 3


def run_name(side: str, seed: int) -> str:
    return f"{NAME}-{side}-seed-{seed}"


def prepared_split(directory: Path) -> Path:
    common.project(directory)
    return common.prepare_variant(directory, f"val-{VAL_FRACTION:g}", {"val_fraction": VAL_FRACTION})


def keras_run(directory: Path, seed: int) -> dict:
    """The residual profile with `seed`, through the train_scratch stage, then its test accuracy with flip TTA."""
    profile = yaml.safe_load((common.ROOT / "profiles" / "scratch_residual.yaml").read_text())
    profile["seed"] = seed
    profile.setdefault("evaluate", {})["tta_flip"] = True
    prepared = prepared_split(directory)
    started = time.perf_counter()
    result = common.train_scratch(directory, run_name("keras", seed), profile, prepared)
    seconds = time.perf_counter() - started
    return {"test_accuracy": result["test_accuracy"], "seconds": round(seconds, 1),
            "configuration": {**{key: profile[key] for key in ("data", "augment", "scratch", "training", "evaluate")},
                              "norm": KERAS_NORM},
            "epochs": result["epochs"], "train_images": common.split_counts(prepared)["train"], "detail": result}


def reference_run(directory: Path, seed: int, python: str) -> dict:
    """airbench95's own training (bench/airbench_reference.py) on the same training images, run by `python` (an
    environment with PyTorch), scored once at the end."""
    prepared = prepared_split(directory)
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "reference.json"
        command = [python, "-m", "bench.airbench_reference", "--recipe", RECIPE, "--bfloat16", "--prepared",
                   str(prepared), "--train-splits", "train", "--seed", str(seed), "--no-epoch-test", "--out", str(out)]
        started = time.perf_counter()
        finished = subprocess.run(command, cwd=common.ROOT, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
        if finished.returncode != 0:
            sys.exit(f"the reference failed (exit {finished.returncode}): {finished.stderr.strip()[-2000:]}\n"
                     f"--python must name an environment with PyTorch: see bench/airbench_reference.py")
        detail = json.loads(out.read_text())
    return {"test_accuracy": detail["test_accuracy"][TTA], "seconds": round(seconds, 1),
            "configuration": {"recipe": RECIPE, "epochs": detail["epochs"], "precision": detail["precision"]},
            "epochs": detail["epochs"], "train_images": detail["train_images"], "detail": detail}


# ---- the summary: pure functions of the saved runs ----

def cpu_of(record: dict) -> str:
    return f"{provenance.cpu_name(record['provenance'])}, {record['provenance']['cpu']['cores']} cores"


def _spread(values: list[float]) -> float | None:
    return round(statistics.stdev(values), 4) if len(values) > 1 else None


def side_summary(runs: list[tuple[str, dict]]) -> dict:
    accuracies = [record["test_accuracy"] for _, record in runs]
    minutes = [record["seconds"] / 60 for _, record in runs]
    return {"runs": [{"result": name, "seed": record["seed"], "accuracy": record["test_accuracy"],
                      "minutes": round(record["seconds"] / 60, 2),
                      "host_gflops": record["provenance"].get("host_gflops")} for name, record in runs],
            "configuration": runs[0][1]["configuration"] if runs else None,
            "accuracy_mean": round(statistics.fmean(accuracies), 4) if runs else None,
            "accuracy_sd": _spread(accuracies),
            "minutes_mean": round(statistics.fmean(minutes), 2) if runs else None,
            "minutes_sd": _spread([round(value, 4) for value in minutes])}


def summarize(records: dict[str, dict]) -> dict:
    """vs-airbench95.json's content from the per-seed runs (file stem -> record). The comparison is made on the CPU
    model of the newest run: only runs that had the machine to themselves, on that CPU, with each side's newest
    configuration, count; every other run is listed under `left_out` with the reason. The runs of every other CPU
    are summarized apart, under `other_cpus` (newest first): a time ratio never mixes two machines."""
    if not records:
        raise ValueError(f"no {NAME}-<side>-seed-<n>.json runs yet: run `python -m bench.vs_airbench keras` and "
                         "`... reference` first")
    newest_first = sorted(records.values(), key=lambda record: record["provenance"]["date"], reverse=True)
    cpus = list(dict.fromkeys(cpu_of(record) for record in newest_first))  # each CPU once, by its newest run
    summary = summarize_cpu(records, cpus[0])
    summary["other_cpus"] = [{key: value for key, value in summarize_cpu(records, cpu).items() if key != "left_out"}
                             for cpu in cpus[1:]]
    return summary


def summarize_cpu(records: dict[str, dict], cpu: str) -> dict:
    """The comparison among the runs measured on `cpu` (as `cpu_of` names it)."""
    left_out, kept = [], {side: [] for side in SIDES}
    for side in SIDES:
        mine = sorted(((name, record) for name, record in records.items() if record["side"] == side),
                      key=lambda item: item[1]["provenance"]["date"])
        # the side's newest configuration on this CPU: another machine's newer one must not empty this one's set
        on_cpu = [record for _, record in mine if cpu_of(record) == cpu]
        configuration = on_cpu[-1]["configuration"] if on_cpu else None
        for name, record in mine:
            if record["provenance"]["contended"]:
                left_out.append({"result": name, "why": "contended: the machine was not idle"})
            elif cpu_of(record) != cpu:
                left_out.append({"result": name, "why": f"another CPU: {cpu_of(record)}"})
            elif record["configuration"] != configuration:
                left_out.append({"result": name, "why": f"an earlier {side} configuration"})
            else:
                kept[side].append((name, record))
    keras, reference = side_summary(kept["keras"]), side_summary(kept["reference"])
    both = keras["runs"] and reference["runs"]
    reaches = both and keras["accuracy_mean"] >= reference["accuracy_mean"]
    ratio = round(keras["minutes_mean"] / reference["minutes_mean"], 3) if both else None
    return {"tta": TTA, "cpu": cpu,
            "boundary": "wall clock from a side's first process launch to its final test accuracy",
            "keras": keras, "reference": reference,
            "keras_reaches_reference_accuracy": bool(reaches) if both else None,
            "time_ratio": ratio if reaches else None, "minutes_ratio": ratio,
            "accuracy_difference": round(keras["accuracy_mean"] - reference["accuracy_mean"], 4) if both else None,
            "seeds_each": min(len(keras["runs"]), len(reference["runs"])),
            "complete": min(len(keras["runs"]), len(reference["runs"])) >= MIN_SEEDS, "left_out": left_out}


def overwrite_refusal(path: Path) -> str | None:
    """Why a new run must not replace the seed saved at `path`, or None when nothing is there. A seed measured on
    another CPU (or before a change) is part of that set's record: replacing it by accident would drop it from that
    CPU's summary, so it is replaced only on request."""
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    return (f"{path.name} already holds this seed, measured {saved['provenance']['date']} on {cpu_of(saved)}; "
            "pick a seed not yet measured (`ls bench/results/`), or pass --replace to measure it again")


def saved_runs(results: Path = common.RESULTS) -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(results.glob(f"{NAME}-*-seed-*.json"))}


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=[*SIDES, "summary"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/bench-imgclf"),
                        help="the scratch project copy holding the prepared data (as bench.training's)")
    parser.add_argument("--python", default="",
                        help="reference: the Python of an environment with PyTorch (bench/airbench_reference.py)")
    parser.add_argument("--replace", action="store_true",
                        help="measure a seed that already has a result file again, replacing that file")
    return parser


def main() -> None:
    run = provenance.start()
    arguments = parser().parse_args()
    if arguments.what == "summary":
        try:
            summary = summarize(saved_runs())
        except ValueError as error:
            sys.exit(f"error: {error}")
        common.save(NAME, summary, run)
        return
    refusal = overwrite_refusal(common.RESULTS / f"{run_name(arguments.what, arguments.seed)}.json")
    if refusal and not arguments.replace:
        sys.exit(f"error: {refusal}")
    if arguments.what == "reference" and not (arguments.python and shutil.which(arguments.python)):
        # checked before any preparation: a wrong interpreter must cost nothing and say what to give
        given = f" ({arguments.python!r} is not an executable)" if arguments.python else ""
        sys.exit(f"error: reference needs --python, the interpreter of an environment with PyTorch{given}; see "
                 "bench/airbench_reference.py for how to make one")
    if arguments.what == "keras":
        result = keras_run(arguments.dir, arguments.seed)
    else:
        result = reference_run(arguments.dir, arguments.seed, arguments.python)
    common.save(run_name(arguments.what, arguments.seed),
                {"side": arguments.what, "seed": arguments.seed, "tta": TTA, **result}, run)


if __name__ == "__main__":
    main()
