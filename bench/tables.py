"""BENCHMARKS.md's tables, generated from bench/results/*.json: no figure in a table is typed by hand.

    python -m bench.tables           # rewrite every marked region of BENCHMARKS.md
    python -m bench.tables --check   # exit 1 if a region differs from what the results give (CI, tests)

A region is the text between `<!-- table: NAME -->` and `<!-- /table -->`; NAME is one of TABLES below. Text
outside the regions is left as it is. A result recorded before the scripts wrote provenance (bench/provenance.py)
is marked "provenance incomplete (recorded before PROVENANCE_SINCE)" wherever it appears; its CPU model was
never recorded, so none is given.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

from bench import provenance
from bench.accuracy_vs_time import extraction_seconds, final_accuracy, seeded, total_seconds

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOCUMENT = ROOT / "BENCHMARKS.md"
PROVENANCE_SINCE = "2026-12-06"
REGION = re.compile(r"(<!-- table: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.DOTALL)


def load(results: Path = RESULTS) -> dict[str, dict]:
    """Every result by file stem."""
    return {path.stem: json.loads(path.read_text(encoding="utf-8")) for path in sorted(results.glob("*.json"))}


# ---- what every table says about where a figure comes from ----

def incomplete(result: dict) -> bool:
    return "provenance" not in result


def date(result: dict) -> str:
    if not incomplete(result):
        return result["provenance"]["date"][:16]
    return result.get("date", "no date")


def command(result: dict) -> str | None:
    return result["provenance"]["command"] if not incomplete(result) else result.get("command")


def machine(result: dict) -> str:
    """The CPU as recorded, whether the run had the machine to itself; or the provenance marker."""
    if incomplete(result):
        return f"provenance incomplete (recorded before {PROVENANCE_SINCE})"
    record = result["provenance"]
    load = record["load_average"]
    state = (f"contended: load {load['before'][0]:g} before, {load['after'][0]:g} after, other processes "
             f"{record['other_processes_cpu_share']:.0%} of the CPU" if record["contended"] else "idle")
    return f"{provenance.cpu_name(record)}, {record['cpu']['cores']} cores, {state}"


def raw(name: str) -> str:
    return f"`{name}.json`"


def percent(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}%}"


def minutes(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds / 60:.1f} min"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def per_epoch(result: dict, width: int = 13) -> str:
    """Validation accuracy and cumulative minutes (extraction first for transfer) at each epoch end, in tables of
    at most `width` epochs."""
    rows = result.get("per_epoch") or []
    if not rows:
        return "(no per-epoch record in this result)\n"
    offset = extraction_seconds(result)
    parts = []
    for start in range(0, len(rows), width):
        chunk = rows[start:start + width]
        labels = [f"{row['phase']} {row['epoch']}" if row.get("phase", "fit") != "fit" else str(row["epoch"])
                  for row in chunk]
        parts.append(table(["epoch", *labels], [
            ["val accuracy", *(percent(row["val_accuracy"]) for row in chunk)],
            ["cumulative minutes", *(f"{(offset + row['cumulative_seconds']) / 60:.1f}" for row in chunk)]]))
    return "\n".join(parts)


def runs(results: dict[str, dict], names: list[str]) -> str:
    """One row per training run: epochs, final validation, test accuracy, wall time, when, where, raw file."""
    rows = []
    for name in names:
        result = results[name]
        test = result["test_accuracy"]
        epochs = len(result.get("per_epoch") or []) or result.get("epochs", "—")
        rows.append([f"`{command(result) or name}`", str(epochs),
                     percent(result.get("final_val_accuracy")), f"**{percent(test, 2)}**",
                     minutes(total_seconds(result)), date(result), machine(result), raw(name)])
    return table(["run", "epochs", "final val", "test", "wall time", "date", "machine", "raw"], rows)


# ---- the tables ----

def results_index(results: dict[str, dict]) -> str:
    rows = [[raw(name), date(result), machine(result), f"`{command(result)}`" if command(result) else "not recorded"]
            for name, result in results.items()]
    return table(["result", "date", "machine", "command"], rows)


def seed_runs(results: dict[str, dict]) -> str:
    return runs(results, ["seed-recipe", "seed-recipe-25", "seed-recipe-25-val-0.01", "seed-recipe-25-val-0.01-seed-43",
                          "seed-recipe-25-jpeg-50", "best-scratch"])


def preprocess(results: dict[str, dict]) -> str:
    if "preprocess-cifar10" not in results:
        return "(not measured with provenance yet: `bench/results/preprocess-cifar10.json` is absent)\n"
    result = results["preprocess-cifar10"]
    return table(["stage (real `dvc repro` in a scratch copy)", "wall time", "throughput"], [
        ["download: verify sha256, safe-extract 60,000 JPEGs, DVC hashing", f"{result['download_seconds']:.1f} s", "—"],
        [f"preprocess: decode {result['images']:,} images once, split, TFRecord shards, meta/manifest",
         f"{result['preprocess_seconds']:.1f} s", f"**{result['preprocess_images_per_second']:,.0f} images/s**"],
    ]) + (f"\nSplit {result['counts']['train']:,} train / {result['counts']['val']:,} validation / "
           f"{result['counts']['test']:,} test; {date(result)}; {machine(result)}; raw {raw('preprocess-cifar10')}.\n")


def pipeline_ratio(results: dict[str, dict]) -> str:
    result = results["pipeline-ratio"]
    speeds = result["runs"]
    return table(["", "images/s (two runs)", "mean"], [
        ["tf.data pipeline", f"{speeds['pipeline']:.1f}, {speeds['pipeline_again']:.1f}",
         f"{result['pipeline_images_per_second']:.1f}"],
        ["in-memory tensors", f"{speeds['in_memory']:.1f}, {speeds['in_memory_again']:.1f}",
         f"{result['in_memory_images_per_second']:.1f}"],
        ["**ratio** (target ≥ 0.95)", "", f"**{result['ratio']:.3f}**"]]) + f"\n{date(result)}; {machine(result)}.\n"


def transfer_head(results: dict[str, dict]) -> str:
    rows = []
    for size in (96, 160):
        name = f"transfer-lite0-{size}"
        result = results[name]
        rows.append([f"{size} px", f"{result['extraction_images_per_second']:.1f}",
                     f"{result['extract_stage_seconds']:.0f} s", f"{result['head_epoch_seconds']:.2f} s",
                     f"{result['head_epoch_seconds_backbone_in_loop']:.1f} s", f"**{result['cached_speedup']:.0f}x**",
                     f"**{percent(result['test_accuracy'])}**", date(result), machine(result), raw(name)])
    return table(["input size", "extraction images/s", "extraction", "head epoch (cached)",
                  "head epoch (backbone in the loop)", "speed-up (target ≥ 20x)", "head-only test accuracy", "date",
                  "machine", "raw"], rows)


FINETUNE_RUNS = ["transfer-finetune-3-epochs", "transfer-finetune-128px-5-epochs-lr-0.0001",
                 "transfer-finetune-160px-3-epochs", "transfer-finetune"]


def finetune_runs(results: dict[str, dict]) -> str:
    rows = []
    for name in FINETUNE_RUNS:
        result = results[name]
        settings = result.get("transfer_settings") or {}
        unfrozen = [row for row in result["per_epoch"] if row["phase"] == "finetune"]
        rate = settings.get("finetune_learning_rate")
        rows.append([str(settings.get("input_size", "not recorded")), str(len(unfrozen)),
                     "not recorded" if rate is None else f"{rate:g}",
                     percent(result.get("head_only_final_val_accuracy")), percent(result["final_val_accuracy"]),
                     f"**{percent(result['test_accuracy'])}**", minutes(total_seconds(result)),
                     f"{extraction_seconds(result) / 60:.1f} min", date(result), machine(result), raw(name)])
    return table(["input px", "unfrozen epochs", "fine-tuning rate", "head val", "val after fine-tuning",
                  "test (flip TTA)", "wall time", "of it extraction", "date", "machine", "raw"], rows)


def finetune_peer(results: dict[str, dict]) -> str:
    """The fine-tuning profile and keras-io's recipe (`python -m bench.training transfer-finetune|transfer-peer
    --seed N`), one row per seed, then each recipe's mean ± sd."""
    recipes = (("transfer-finetune-seed-", "profiles/transfer_finetune.yaml"),
               ("transfer-peer-keras-io-seed-", "keras-io's EfficientNet fine-tuning recipe"))
    rows = []
    for prefix, label in recipes:
        names = seeded(results, prefix)
        for name in names:
            result = results[name]
            own = ("" if "test_accuracy_tta_flip" not in result
                   else f" (no TTA, as the recipe scores: {percent(result['test_accuracy'], 2)})")
            rows.append([label, str(result["seed"]), percent(final_accuracy(result), 2) + own,
                         minutes(total_seconds(result)), f"{date(result)}; {machine(result)}", raw(name)])
        if len(names) > 1:
            flips = [final_accuracy(results[name]) for name in names]
            times = [total_seconds(results[name]) / 60 for name in names]
            rows.append([f"**{label}: mean ± sd over {len(names)}**", "",
                         f"**{percent(statistics.fmean(flips), 2)}** ± {statistics.stdev(flips):.2%}",
                         f"**{statistics.fmean(times):.1f} min** ± {statistics.stdev(times):.1f}", "", ""])
    if not rows:
        return "No run yet.\n"
    return table(["recipe", "seed", "test (flip TTA)", "wall time", "when, where", "raw"], rows)


def finetune_epochs(results: dict[str, dict]) -> str:
    return "\n".join(f"{raw(name)}:\n\n{per_epoch(results[name], width=20)}" for name in FINETUNE_RUNS)


def small_data(results: dict[str, dict]) -> str:
    result = results["small-data"]
    scratch, transfer = result["scratch"], result["transfer_lite0_96"]
    return table(["", "training", "final val", "**test accuracy**"], [
        ["scratch (seed CNN)", f"{scratch['epochs']} epochs, {scratch['seconds_per_epoch']:.1f} s each",
         percent(scratch["final_val_accuracy"]), f"**{percent(scratch['test_accuracy'])}**"],
        ["transfer (Lite0, 96 px, frozen)",
         f"extraction {transfer['extract_stage_seconds']:.0f} s ({transfer['extraction_images']:,} images, "
         f"{transfer['extraction_images_per_second']:.0f} images/s), "
         f"head epochs of {transfer['head_epoch_seconds']:.1f} s",
         percent(transfer["final_val_accuracy"]), f"**{percent(transfer['test_accuracy'])}**"],
    ]) + f"\n{date(result)}; {machine(result)}; raw {raw('small-data')}.\n"


def batchnorm_cost(results: dict[str, dict]) -> str:
    result = results["batchnorm_reestimate_cost"]
    epoch = result["epoch_seconds_estimate"]
    steps = -(-result["train_images"] // result["batch_size"])
    return table(["", "seconds"], [
        [f"one training epoch ({steps} steps of {result['train_step_seconds']:.2f} s)", f"{epoch:.0f}"],
        [f"re-estimation, {result['batch_norm_images']:,} images",
         f"{result['reestimate_seconds']:.1f} (**{result['reestimate_fraction_of_epoch']:.1%}** of the epoch)"],
        ["validation, 5,000 images (paid before the fix too)", f"{result['validation_5000_seconds_estimate']:.1f}"],
    ]) + f"\n{date(result)}; {machine(result)}; raw {raw('batchnorm_reestimate_cost')}.\n"


def _median_and_range(run: dict, chain: str) -> str:
    seconds = run["seconds_per_step"][chain]
    return f"{run['median_seconds_per_step'][chain]:.2f} ({min(seconds):.2f}-{max(seconds):.2f})"


def norm_cost(results: dict[str, dict]) -> str:
    """The residual net's norms per training step (`python -m bench.norm_cost`): median seconds of each chain."""
    result = results["norm-cost"]
    rows = []
    for run in result["runs"]:
        rows.append([run["precision"], _median_and_range(run, "keras_batchnorm_then_shift"),
                     _median_and_range(run, "shifted_batchnorm"),
                     f"**{run['keras_over_fused']:.2f}x**",
                     f"{run['fused_saves_per_step_seconds']:.2f} s ({run['fused_saves_per_epoch_seconds']:.0f} s)",
                     f"{run['activation_seconds_per_step']:.2f}",
                     f"{len(run['seconds_per_step']['shifted_batchnorm'])}"])
    sites = ", ".join("x".join(str(side) for side in shape) for shape in result["site_shapes"])
    return table(["precision", "Keras BatchNorm + ScaledBias, s/step: median (min-max)",
                  "ShiftedBatchNorm, s/step: median (min-max)", "ratio of medians",
                  f"saved per step (per epoch of {result['steps_per_epoch']} steps)",
                  f"the {result['activation']} inside, s/step", "timed calls each"], rows) + (
        f"\nNorm sites ({sites}) at batch {result['batch_size']}, forward and backward, each followed by "
        f"{result['activation']}; host speed before / after: {host_speed(result['provenance'].get('host_gflops'))} "
        f"GFLOP/s. {date(result)}; {machine(result)}; raw {raw('norm-cost')}.\n")


def determinism(results: dict[str, dict]) -> str:
    result = results["determinism"]
    labels = {"off": "`deterministic: false`", "on": "`deterministic: true`",
              "on_again": "`deterministic: true`, again"}
    rows = [[labels[key], f"{result[key]['seconds_per_epoch']:.1f}", percent(result[key]["final_val_accuracy"], 2),
             percent(result[key]["test_accuracy"], 2)] for key in ("off", "on", "on_again")]
    return table(["", "seconds/epoch", "final val", "test accuracy"], rows) + (
        f"\nThe two deterministic runs identical: **{'yes' if result['identical_when_on'] else 'no'}**. "
        f"{date(result)}; {machine(result)}; raw {raw('determinism')}.\n")


def own_photos(results: dict[str, dict]) -> str:
    rows = []
    for name in ("own-photos", "own-photos-profile", "own-photos-profile-pool_after-2-3", "own-photos-profile-10x150"):
        result = results[name]
        flagged = [model for model in ("scratch", "transfer") if result[f"{model}_degenerate"]["degenerate"]]
        rows.append([f"`{command(result)}`", f"{result['classes']} ({percent(result['chance'])})",
                     str(result.get("scratch_parameters", "—")),
                     f"**{percent(result['scratch_test_accuracy'])}**", percent(result["transfer_test_accuracy"]),
                     ", ".join(flagged) or "none", f"{result['dvc_repro_seconds']:.0f} s", date(result),
                     machine(result), raw(name)])
    return table(["run", "classes (chance)", "scratch parameters", "scratch test", "transfer test", "degenerate",
                  "`dvc repro`", "date", "machine", "raw"], rows)


def throughput_matrix(results: dict[str, dict], name: str) -> str:
    """Images/s per setting. No share of peak: the clock under load was never measured, and the nominal clock
    gave shares above 100%."""
    result = results[name]
    rows = []
    for run in result["runs"]:
        if "error" in run:
            rows.append([run.get("architecture", "?"), run.get("precision", "?"), "on" if run.get("jit_compile") else
                         "off", "error", "—", "—", "—"])
            continue
        label = run["architecture"] + (f", {run['mode']}" if "mode" in run else "") + f" (batch {run['batch_size']})"
        per_epoch_rates = run.get("epoch_images_per_second")
        rows.append([label, run["precision"], "on" if run["jit_compile"] else "off",
                     f"{run['images_per_second']:.1f}", f"{run['timed_seconds']:.0f} s",
                     f"{run['steps_per_epoch']} x {run['timed_epochs']}" if "steps_per_epoch" in run else "—",
                     ", ".join(f"{rate:.1f}" for rate in per_epoch_rates) if per_epoch_rates else "—"])
    peak = result.get("peak", {})
    cpu = ""
    if peak:
        model = (f"{peak['model']}, family {peak['cpu_family']}" if "model" in peak else
                 f"model not recorded, flags {', '.join(peak['vector_flags'])}")
        cpu = f"CPU as the script read it: {model}, {peak['cores']} cores; "
    return table(["model", "precision", "XLA", "images/s", "timed", "steps per epoch x timed epochs",
                  "each timed epoch, images/s"], rows) + (
        f"\n{date(result)}; {machine(result)}; {cpu}raw {raw(name)}.\n")


def throughput_now(results: dict[str, dict]) -> str:
    return throughput_matrix(results, "throughput")


def throughput_epochs(results: dict[str, dict]) -> str:
    if "throughput-epochs" not in results:
        return "(not measured yet: `bench/results/throughput-epochs.json` is absent)\n"
    return throughput_matrix(results, "throughput-epochs")


def throughput_avx2(results: dict[str, dict]) -> str:
    return throughput_matrix(results, "throughput-avx2-2026-11-26")


def extraction_now(results: dict[str, dict]) -> str:
    return throughput_matrix(results, "extraction-throughput")


def extraction_avx2(results: dict[str, dict]) -> str:
    return throughput_matrix(results, "extraction-throughput-avx2-2026-11-26")


RESIDUAL_RUNS = ["residual-first-recipe", "residual-8-epochs-float32", "residual-precision-mixed_bfloat16",
                 "residual-precision-mixed_bfloat16-interpolation-nearest", "residual-widths-64-256-256-8-epochs",
                 "residual-epochs-8-warmup_epochs-1.6-jpeg-50", "residual-widths-64-256-256-20-epochs",
                 "residual-lookahead", "residual-widths-128-384-384-17-epochs", "residual", "residual-seed-43"]


def residual_runs(results: dict[str, dict]) -> str:
    return runs(results, RESIDUAL_RUNS)


def residual_epochs(results: dict[str, dict]) -> str:
    return per_epoch(results["residual"])


def airbench(results: dict[str, dict]) -> str:
    rows = []
    for name in ("airbench94-reference", "airbench94-reference-45k-8-epochs", "airbench94-reference-float32",
                 "airbench95-reference"):
        result = results[name]
        accuracy = result["test_accuracy"]
        rows.append([f"`{command(result)}`", f"{result['train_images']:,}", f"{result['epochs']:g}",
                     result["precision"], percent(accuracy["none"], 2), percent(accuracy["flip"], 2),
                     f"**{percent(accuracy['flip_translate'], 2)}**", minutes(result["train_seconds"]), date(result),
                     machine(result), raw(name)])
    return table(["run", "training images", "epochs", "precision", "test, no TTA", "flip TTA",
                  "airbench's TTA (flip + 1-px shifts)", "training time", "date", "machine", "raw"], rows)


def mnist_model(result: dict) -> str:
    """What ran, from the settings recorded (the first head variant's `model` text called its head linear)."""
    settings = result.get("transfer_settings")
    if not settings:
        return result["model"]
    head = f"{settings['head_units']} hidden units" if settings.get("head_units") else "linear"
    return f"EfficientNet-Lite0 at {settings['input_size']} px, frozen; head: {head}, on cached features"


def mnist(results: dict[str, dict]) -> str:
    rows = []
    names = ["mnist-scratch", "mnist-transfer", *sorted(name for name in results
                                                         if name.startswith("mnist-transfer-"))]
    for name in names:
        if name not in results:
            rows.append([name.split("-")[1], "not run yet", "", "", "", "", "", raw(name)])
            continue
        result = results[name]
        counts = result["counts"]
        rows.append([mnist_model(result), str(result["epochs"]),
                     f"{percent(result['final_val_accuracy'], 2)} of {counts['val']:,}",
                     f"**{percent(result['test_accuracy'], 2)}** of {counts['test']:,}",
                     f"{percent(result['write_up_accuracy'], 0)}", f"{result['minutes']:.1f} min",
                     f"{date(result)}; {machine(result)}", raw(name)])
    return table(["model", "epochs", "final val", "test (scored once)", "write-ups", "wall time", "when, where",
                  "raw"], rows)


def storage_model_sizes(results: dict[str, dict]) -> str:
    result = results["storage-model-sizes"]
    rows = [[str(row["image_size"]), str(row["pool_after"]), f"{row['parameters']:,}",
             f"{row['keras_save_bytes'] / 1e6:.1f} MB", f"{row['save_model_bytes'] / 1e6:.1f} MB"]
            for row in result["rows"]]
    return table(["image size", "`scratch.pool_after`", "parameters", "file, Keras' own save (with Adam)",
                  "file, `model_io.save_model`"], rows) + f"\n{date(result)}; raw {raw('storage-model-sizes')}.\n"


def storage_runs(results: dict[str, dict]) -> str:
    """Bytes after the third run, by place, for each measured revision (MB, 10^6 bytes)."""
    names = [("storage-5d7eaa4", "before (5d7eaa4)"),
             ("storage-0029c5a-scratch.pool_after-2-3",
              "the code changes, old pooling (0029c5a, `--set scratch.pool_after=[2,3]`)"),
             ("storage-0029c5a", "after (0029c5a)")]
    found = [(results[name], label) for name, label in names]

    def megabytes(value: float) -> str:
        return f"{value / 1e6:,.1f}"

    def row(label: str, value: Callable[[dict], str]) -> list[str]:
        return [label, *(value(result) for result, _ in found)]

    last = lambda result: result["runs"][-1]  # noqa: E731
    totals = lambda result: [run["total_bytes"] for run in result["runs"]]  # noqa: E731
    rows = [row("DVC cache (`.dvc/cache`)", lambda result: megabytes(last(result)["bytes"][".dvc/cache"])),
            row("workspace (`data`, `models`, `results`)", lambda result: megabytes(last(result)["workspace_bytes"])),
            row("MLflow artifacts (`mlartifacts`)", lambda result: megabytes(last(result)["bytes"]["mlartifacts"])),
            row("`mlflow.db`", lambda result: megabytes(last(result)["bytes"]["mlflow.db"])),
            row("**on disk, all of them**", lambda result: f"**{megabytes(last(result)['total_bytes'])}**"),
            row("**per run** (on disk / 3)", lambda result: f"**{megabytes(last(result)['total_bytes'] / 3)}**"),
            row("added by run 1 / 2 / 3", lambda result: " / ".join(
                megabytes(b - a) for a, b in zip([0, *totals(result)], totals(result), strict=False)))]
    return table(["after 3 runs", *(label for _, label in found)], rows) + "\n" + "; ".join(
        f"{raw(name)}: {date(results[name])}, {machine(results[name])}" for name, _ in names) + ".\n"


def accuracy_vs_time(results: dict[str, dict]) -> str:
    from bench.accuracy_vs_time import PROFILES

    rows = []
    for name, label in PROFILES:
        if name not in results:
            continue
        result = results[name]
        head = sum(1 for row in result.get("per_epoch") or [] if row.get("phase") == "head")
        epochs = len(result.get("per_epoch") or []) or result.get("epochs", "—")
        rows.append([label, f"{head} head + {epochs - head} unfrozen" if head else str(epochs),
                     minutes(total_seconds(result)), f"**{percent(result['test_accuracy'], 2)}**",
                     "per epoch" if result.get("per_epoch") else "final only", date(result), machine(result),
                     raw(name)])
    return table(["profile", "epochs", "wall time", "test accuracy", "record", "date", "machine", "raw"], rows)


def accuracy_plots(results: dict[str, dict]) -> str:
    """The plots `python -m bench.accuracy_vs_time` draws, one per machine."""
    from bench.accuracy_vs_time import by_machine, caption, machine, plot_path

    return "\n".join(f"![{caption(name, machine(runs[0][1])[1])}](bench/results/{plot_path(name).name})\n"
                     for name, runs in by_machine(results).items())


def selection_runs(results: dict[str, dict]) -> str:
    """The runs that choose between configurations (`--validation-only`, saved as select-*): validation accuracy
    with its standard error, the test split untouched."""
    names = sorted(name for name in results if name.startswith("select-"))
    if not names:
        return "None yet.\n"
    rows = []
    for name in names:
        result = results[name]
        accuracy, images = result["final_val_accuracy"], result["val_images"]
        error = (accuracy * (1 - accuracy) / images) ** 0.5
        rows.append([f"`{command(result) or name}`", str(len(result["per_epoch"])), f"{images:,}",
                     f"**{percent(accuracy, 2)}** ± {percent(error, 2)}", "not scored", minutes(total_seconds(result)),
                     f"{date(result)}; {machine(result)}", raw(name)])
    return table(["run", "epochs", "validation images", "final val ± standard error", "test", "wall time",
                  "when, where", "raw"], rows)


DISTRIBUTED_CONFIGURATIONS = {
    "tensorflow x1": "TensorFlow, 1 process (`distribute: none`)",
    "jax x1": "JAX, 1 process (`KERAS_BACKEND=jax`)",
    "jax x2": "JAX, 2 processes (`multi_worker`, `workers: 2`, gloo on 127.0.0.1)",
}


def distributed(results: dict[str, dict], name: str) -> str:
    """One row per run of `python -m bench.distributed` (configuration and seed), then the result's provenance."""
    if name not in results:
        return f"Not run yet ({raw(name)}).\n"
    result = results[name]
    rows = [[DISTRIBUTED_CONFIGURATIONS[run["configuration"]], str(run.get("seed", "not recorded")),
             f"{run['first_epoch_seconds']:.1f} s", ", ".join(f"{value:.1f}" for value in
                                                         run["images_per_second_each_epoch"]),
             f"**{run['images_per_second_after_first_epoch']:.1f}**", percent(run["val_accuracy"]),
             f"{run['load_average_1min_before']:g} / {run['load_average_1min_after']:g}"]
            for run in result["runs"]]
    rows.append(["TensorFlow, 2 processes", "not possible: Keras 3's `model.fit` under MultiWorkerMirroredStrategy "
                 "(tensorflow/tensorflow#72388)", "", "", "", "", ""])
    text = table(["configuration", "seed", "first epoch (compiles)", "images/s, each epoch", "steady images/s",
                  "final val accuracy", "1-min load before / after"], rows)
    summary = result.get("summary")
    if summary and any(entry["runs"] > 1 for entry in summary.values()):
        text += "\n" + table(["configuration", "runs", "final val accuracy, mean ± sd", "steady images/s, mean"],
                             [[DISTRIBUTED_CONFIGURATIONS[key], str(entry["runs"]),
                               f"{percent(entry['val_accuracy_mean'], 2)} ± {percent(entry['val_accuracy_sd'], 2)}",
                               f"{entry['images_per_second_mean']:.1f}"] for key, entry in summary.items()])
    data = result.get("data", "synthetic")
    counts = result.get("images")
    what = (f"{data}: {counts['train']:,} training and {counts['val']:,} validation images" if counts
            else f"{result['per_class']} synthetic images a class")
    return text + (f"\n{what}, {result['classes']} classes, {result['epochs']} epochs at batch {result['batch_size']}; "
                   f"{date(result)}; {machine(result)}; `{command(result) or 'command not recorded'}`; raw "
                   f"{raw(name)}.\n")


def host_speed(gflops: dict | None) -> str:
    """The host-speed probe around a run (bench.provenance.host_gflops); "not recorded" before the probe existed."""
    if not gflops or gflops.get("before") is None:
        return "not recorded"
    return f"{gflops['before']:.0f} / {gflops['after']:.0f}"


def vs_airbench95(results: dict[str, dict]) -> str:
    """The per-seed runs `python -m bench.vs_airbench summary` combined, each side's mean and spread, and the time
    ratio, on the newest run's CPU; then the runs it left out; then each other CPU's runs, in a table of their own
    (a ratio never mixes machines)."""
    summary = results.get("vs-airbench95")
    if summary is None:
        return "No run yet.\n"
    lines = [_vs_airbench95_block(summary) + f"; summary {date(summary)}, `vs-airbench95.json`.\n"]
    others = summary.get("other_cpus", [])
    shown_below = {run["result"] for other in others for side in ("keras", "reference") for run in other[side]["runs"]}
    lines += [f"- left out: `{left['result']}.json`, {left['why']}\n" for left in summary["left_out"]
              if left["result"] not in shown_below]
    for other in others:
        lines.append(f"On another CPU, {other['cpu']}:\n")
        lines.append(_vs_airbench95_block(other) + ".\n")
    return "\n".join(lines)


def _vs_airbench95_block(summary: dict) -> str:
    def spread(value: float | None, unit: str) -> str:
        return "" if value is None else f" ± {value:.2%}" if unit == "%" else f" ± {value:.1f}"

    rows = []
    for side, label in (("keras", "Keras, profiles/scratch_residual.yaml"), ("reference", "airbench95's own code")):
        part = summary[side]
        for run in part["runs"]:
            rows.append([label, str(run["seed"]), percent(run["accuracy"], 2), f"{run['minutes']:.1f}",
                         host_speed(run.get("host_gflops")), raw(run["result"])])
        if part["runs"]:
            rows.append([f"**{label}: mean ± sd over {len(part['runs'])}**", "",
                         f"**{percent(part['accuracy_mean'], 2)}**{spread(part['accuracy_sd'], '%')}",
                         f"**{part['minutes_mean']:.1f}**{spread(part['minutes_sd'], 'min')}", "", ""])
    ratio = summary["time_ratio"]
    verdict = (f"`time_ratio` **{ratio:.2f}** (Keras mean minutes over the reference's; the Keras mean reaches the "
               f"reference's mean accuracy)" if ratio is not None else
               "`time_ratio`: none, the Keras mean does not reach the reference's mean accuracy"
               if summary["keras_reaches_reference_accuracy"] is False else "`time_ratio`: not yet, a side has no run")
    return (table(["side", "seed", f"test ({summary['tta']} TTA)", "minutes, process start to test accuracy",
                   "host GFLOP/s, before / after", "raw"], rows)
            + f"\n{verdict}; {seed_counts(summary)}"
            + ("" if summary["complete"] else " (fewer than the 3 a side the comparison needs)")
            + f"; {summary['cpu']}")


def seed_counts(summary: dict) -> str:
    keras, reference = (len(summary[side]["runs"]) for side in ("keras", "reference"))
    return (f"{keras} seed{'s' * (keras != 1)} each" if keras == reference
            else f"{keras} Keras seed{'s' * (keras != 1)}, {reference} reference seed{'s' * (reference != 1)}")


TABLES: dict[str, Callable[[dict[str, dict]], str]] = {
    "results-index": results_index, "preprocess": preprocess, "seed-runs": seed_runs, "pipeline-ratio": pipeline_ratio,
    "transfer-head": transfer_head, "finetune-runs": finetune_runs, "finetune-epochs": finetune_epochs,
    "small-data": small_data, "batchnorm-cost": batchnorm_cost, "norm-cost": norm_cost, "determinism": determinism,
    "own-photos": own_photos,
    "throughput-now": throughput_now, "throughput-epochs": throughput_epochs, "throughput-avx2": throughput_avx2,
    "extraction-now": extraction_now,
    "extraction-avx2": extraction_avx2, "residual-runs": residual_runs, "residual-epochs": residual_epochs,
    "airbench": airbench, "mnist": mnist, "storage-model-sizes": storage_model_sizes, "storage-runs": storage_runs,
    "accuracy-vs-time": accuracy_vs_time, "accuracy-vs-time-plots": accuracy_plots,
    "seed-recipe-25-epochs": lambda results: per_epoch(results["seed-recipe-25"]),
    "selection-runs": selection_runs, "vs-airbench95": vs_airbench95, "finetune-peer": finetune_peer,
    "distributed-throughput": lambda results: distributed(results, "distributed-throughput"),
    "distributed-accuracy": lambda results: distributed(results, "distributed-accuracy"),
}


def render(text: str, results: dict[str, dict]) -> str:
    """`text` with every marked region's body replaced by its table; an unknown name is an error."""
    def replace(match: re.Match) -> str:
        name = match["name"]
        if name not in TABLES:
            raise KeyError(f"BENCHMARKS.md names a table bench/tables.py does not know: {name!r}")
        return f"{match[1]}\n{TABLES[name](results).rstrip()}\n\n{match[4]}"

    return REGION.sub(replace, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table is out of date")
    arguments = parser.parse_args()
    text = DOCUMENT.read_text(encoding="utf-8")
    rendered = render(text, load())
    if arguments.check:
        if rendered != text:
            sys.exit("BENCHMARKS.md's tables differ from bench/results: run `python -m bench.tables`")
        return
    if rendered != text:
        DOCUMENT.write_text(rendered, encoding="utf-8")
    print(f"{len(REGION.findall(rendered))} tables in {DOCUMENT.name}")


if __name__ == "__main__":
    main()
