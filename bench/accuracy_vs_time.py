"""Accuracy against wall time for every CIFAR-10 profile and the airbench reference runs, one plot per machine.

    python -m bench.accuracy_vs_time

Reads bench/results/<benchmark>.json, prints one markdown table per run (validation accuracy at each epoch end
against cumulative minutes, then the final test accuracy) and draws one plot per machine,
bench/results/accuracy-vs-time-<machine>.png: runs timed on CPUs 4-6x apart never share a time axis. The machine
is the CPU model a result's provenance recorded; a result recorded before provenance is placed by its date on the
CPU the throughput runs of that period recorded (`PERIODS`), and its plot's title says so. A transfer profile's
clock starts with its feature extraction, which it pays before its first head epoch. The airbench reference runs
(PyTorch) are drawn where present: their per-epoch figure is test accuracy without TTA (they hold no validation
split), their final point the flip-TTA test accuracy, as for the Keras profiles. The recipes run with seeds
(`SEEDED`: the like-for-like comparison with airbench95, the fine-tuning profile and its peer) are drawn seed by
seed; a like-for-like run's final point sits at its one timing boundary, process start to test accuracy, while its
per-epoch points count from the start of fitting, and airbench's like-for-like runs, which score nothing before the
end, are final points only. Every recipe has its own colour and every run its own marker; the legend sits outside
the axes. No training happens here: rerun the benchmarks themselves (their commands are in the JSON files) for new
figures.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from bench import provenance

RESULTS = Path(__file__).resolve().parent / "results"
# (benchmark, label): every profile the headline-numbers issue names, in reading order.
PROFILES = (
    ("seed-recipe", "seed CNN, 10 epochs"),
    ("seed-recipe-25", "seed CNN, 25 epochs (the recipe)"),
    ("seed-recipe-25-val-0.01", "seed CNN, 25 epochs on 49,500 training images"),
    ("best-scratch", "best seed-CNN profile"),
    ("residual-8-epochs-float32", "residual net, 8 epochs, float32 (the profile until 2026-12-05)"),
    ("residual-widths-64-256-256-20-epochs", "residual net, widths 64/256/256, 20 epochs, bfloat16"),
    ("residual-widths-128-384-384-17-epochs", "residual net, widths 128/384/384, 17 epochs, bfloat16"),
    ("residual", "residual net (profiles/scratch_residual.yaml at the run's commit)"),
    ("transfer-lite0-160", "transfer, head only (Lite0, 160 px)"),
    ("transfer-finetune-3-epochs", "transfer, fine-tuned, 3 unfrozen epochs (the profile's first run)"),
    ("transfer-finetune-160px-3-epochs", "transfer, fine-tuned at 160 px, 3 unfrozen epochs"),
    ("transfer-finetune-128px-5-epochs-lr-0.0001", "transfer, fine-tuned at rate 1e-4 (the profile's second run)"),
    ("transfer-finetune", "transfer, fine-tuned (profiles/transfer_finetune.yaml, rate 3e-4)"),
)
REFERENCES = (
    ("airbench94-reference", "airbench94's own code (PyTorch), 50,000 images"),
    ("airbench94-reference-45k-8-epochs", "airbench94's own code (PyTorch), 45,000 images, 8 epochs"),
    ("airbench94-reference-float32", "airbench94's own code (PyTorch), float32"),
    ("airbench95-reference", "airbench95's own code (PyTorch)"),
)
# (prefix, label, is a reference run): the recipes run with seeds, saved as `<prefix><seed>`; each seed is drawn as
# its own run, so a plot shows the spread rather than one chosen run.
SEEDED = (
    ("vs-airbench95-keras-seed-", "residual profile, like for like with airbench95", False),
    ("vs-airbench95-reference-seed-", "airbench95's own code (PyTorch), like for like", True),
    ("transfer-finetune-seed-", "transfer, fine-tuned (profiles/transfer_finetune.yaml)", False),
    ("transfer-peer-keras-io-seed-", "keras-io's EfficientNet fine-tuning recipe", False),
)
# Results recorded before provenance carry no CPU model: (first day, last day, the CPU the throughput runs of those
# days recorded, the result that recorded it). Only days on which a run did read the CPU: earlier results (2026-11-24
# and 25, whose speeds differ 2x between days) are "CPU not recorded".
PERIODS = (
    ("2026-11-26", "2026-11-27", "an AVX2 CPU without AVX-512 (model not recorded)", "throughput-avx2-2026-11-26.json"),
    ("2026-12-05", "2026-12-05", "AMD EPYC, family 26, AVX-512 BF16", "throughput.json"),
)
UNKNOWN = "CPU not recorded"
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "*", "p", "d", "8", "H")


def machine(result: dict) -> tuple[str, bool]:
    """(the CPU the run used, whether that is inferred from its date rather than recorded by the run)."""
    if "provenance" in result:
        return provenance.cpu_name(result["provenance"]), False
    day = result.get("date", "")[:10]
    for first, last, cpu, _ in PERIODS:
        if first <= day <= last:
            return cpu, True
    return UNKNOWN, True


def caption(machine_name: str, inferred: bool) -> str:
    if machine_name == UNKNOWN:
        return "CIFAR-10, runs whose CPU was never recorded (their speeds differ between days: compare with care)"
    return f"CIFAR-10 on {machine_name}" + (" (CPU inferred from the run dates)" if inferred else "")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def plot_path(machine_name: str) -> Path:
    return RESULTS / f"accuracy-vs-time-{slug(machine_name)}.png"


def extraction_seconds(result: dict) -> float:
    """What a transfer run paid for its features before the first head epoch. A run that reused another run's
    cached features (`features_reused`) is charged that extraction's backbone time, since a user running the
    profile alone pays it."""
    if result.get("extract_stage_seconds") is not None:
        return float(result["extract_stage_seconds"])
    if result.get("features_reused"):
        return result["extraction_images"] / result["extraction_images_per_second"]
    return 0.0


def epoch_rows(result: dict) -> list[dict]:
    """The per-epoch record: at the top of a training result, in `detail` for a like-for-like (vs_airbench) one."""
    return result.get("per_epoch") or (result.get("detail") or {}).get("per_epoch") or []


def curve(result: dict) -> tuple[list[float], list[float]]:
    """(cumulative minutes, accuracy) at each epoch end, extraction first for transfer: validation accuracy for
    the pipeline's runs, test accuracy without TTA for the reference runs. Empty for a run that recorded neither
    (airbench's like-for-like runs score the test split once, at the end: training accuracy on augmented images is
    not drawn beside validation accuracy)."""
    offset = extraction_seconds(result)
    rows = epoch_rows(result)
    for key in ("val_accuracy", "test_accuracy"):
        if rows and all(key in row for row in rows):
            return [(offset + row["cumulative_seconds"]) / 60 for row in rows], [row[key] for row in rows]
    return [], []


def total_seconds(result: dict) -> float:
    if "side" in result:  # like for like (bench.vs_airbench): process start to final test accuracy, either side
        return float(result["seconds"])
    if "train_seconds" in result:  # a reference run: training only, evaluation excluded as airbench does
        return float(result["train_seconds"])
    return extraction_seconds(result) + float(
        result.get("stage_seconds", result.get("transfer_stage_seconds", 0.0)))


def final_accuracy(result: dict) -> float:
    """Test accuracy with flip TTA wherever the run recorded it (a peer recipe that scores without TTA records
    both), so that every final point on a plot is scored alike."""
    if "test_accuracy_tta_flip" in result:
        return result["test_accuracy_tta_flip"]
    accuracy = result["test_accuracy"]
    return accuracy["flip"] if isinstance(accuracy, dict) else accuracy


def table(label: str, result: dict) -> str:
    command = (result.get("provenance") or result).get("command")
    where, inferred = machine(result)
    lines = [f"**{label}** ({f'`{command}`' if command else 'command not recorded'}, "
             f"{result.get('date') or result['provenance']['date']}, {where}{' (inferred from the date)' * inferred}): "
             f"test accuracy **{final_accuracy(result):.1%}** after {total_seconds(result) / 60:.1f} min", ""]
    minutes, accuracy = curve(result)
    if minutes:
        lines += ["| epoch | " + " | ".join(str(row["epoch"]) for row in epoch_rows(result)) + " |",
                  "|---|" + "---|" * len(minutes),
                  "| accuracy | " + " | ".join(f"{value:.1%}" for value in accuracy) + " |",
                  "| minutes | " + " | ".join(f"{value:.1f}" for value in minutes) + " |"]
    else:
        lines.append("(final point only: the run recorded no per-epoch validation or test accuracy)")
    return "\n".join(lines)


def runs(results: dict[str, dict]) -> list[tuple[str, str, bool, str]]:
    """[(benchmark, label, is a reference run, recipe)] of every result to draw: profiles, reference runs, then each
    seeded recipe's seeds in order. A seeded run's recipe is shared by its seeds; any other run is its own recipe."""
    named = [(name, label, False, label) for name, label in PROFILES]
    named += [(name, label, True, label) for name, label in REFERENCES]
    for prefix, label, reference in SEEDED:
        named += [(name, f"{label}, seed {name.removeprefix(prefix)}", reference, label)
                  for name in seeded(results, prefix)]
    return [entry for entry in named if entry[0] in results]


def seeded(results: dict[str, dict], prefix: str) -> list[str]:
    """The results named `<prefix><seed>`, in seed order."""
    return sorted((name for name in results if name.startswith(prefix) and name.removeprefix(prefix).isdigit()),
                  key=lambda name: int(name.removeprefix(prefix)))


def by_machine(results: dict[str, dict]) -> dict[str, list[tuple[str, dict, bool, str]]]:
    """Machine -> [(label, result, is a reference run, recipe)], profiles first, in reading order."""
    groups: dict[str, list[tuple[str, dict, bool, str]]] = {}
    for name, label, reference, recipe in runs(results):
        groups.setdefault(machine(results[name])[0], []).append((label, results[name], reference, recipe))
    return groups


def draw(machine_name: str, runs: list[tuple[str, dict, bool, str]], inferred: bool, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recipes = list(dict.fromkeys(recipe for *_, recipe in runs))
    # One colour per recipe (its seeds share it; tab20 past ten recipes, so no two recipes share one) and one marker
    # per run, shared by its curve and its final point: no two runs look alike.
    palette = [f"C{index}" for index in range(10)] if len(recipes) <= 10 else list(plt.get_cmap("tab20").colors)
    figure, axes = plt.subplots(figsize=(9, 5))
    for index, (label, result, reference, recipe) in enumerate(runs):
        colour = palette[recipes.index(recipe) % len(palette)]
        marker = MARKERS[index % len(MARKERS)]
        style = "--" if reference else "-"
        minutes, accuracy = curve(result)
        suffix = " [per epoch: test, no TTA]" if reference else ""
        if minutes:
            axes.plot(minutes, accuracy, marker=marker, markersize=4, color=colour, linestyle=style,
                      label=label + suffix)
        axes.scatter([total_seconds(result) / 60], [final_accuracy(result)], marker=marker, s=110, zorder=3,
                     color=colour, edgecolors="black", label=None if minutes else f"{label} (final only)")
    axes.set_xlabel("cumulative wall time, minutes (2 cores)")
    axes.set_ylabel("accuracy (lines: per epoch; large markers: final test)")
    axes.set_title(caption(machine_name, inferred), fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)


def main() -> None:
    results = {path.stem: json.loads(path.read_text()) for path in sorted(RESULTS.glob("*.json"))}
    groups = by_machine(results)
    if not groups:
        sys.exit(f"no results in {RESULTS}: run `python -m bench.training` first")
    for old in RESULTS.glob("accuracy-vs-time*.png"):
        old.unlink()  # a machine with no run left keeps no stale plot
    for machine_name, runs in groups.items():
        inferred = machine(runs[0][1])[1]
        print(f"## {caption(machine_name, inferred)}\n")
        for label, result, *_ in runs:
            print(table(label, result), end="\n\n")
        path = plot_path(machine_name)
        draw(machine_name, runs, inferred, path)
        print(f"plot: {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}\n")


if __name__ == "__main__":
    main()
