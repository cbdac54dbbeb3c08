"""Accuracy against wall time for every CIFAR-10 profile, from the raw results of `bench/training.py`.

    .venv/bin/python bench/accuracy_vs_time.py

Reads bench/results/<benchmark>.json, prints one markdown table per profile (validation accuracy at each epoch
end against cumulative seconds, then the final test accuracy) and draws them in one plot,
bench/results/accuracy-vs-time.png. A transfer profile's clock starts with its feature extraction, which it
pays before its first head epoch. Results written before `per_epoch` was recorded give their final point only.
No training happens here: rerun the benchmarks themselves (their commands are in the JSON files) for new figures.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PLOT = RESULTS / "accuracy-vs-time.png"
# (benchmark, label): every profile the headline-numbers issue names, in reading order.
PROFILES = (
    ("seed-recipe", "seed CNN, 10 epochs"),
    ("seed-recipe-25", "seed CNN, 25 epochs (the recipe)"),
    ("seed-recipe-25-val-0.01", "seed CNN, 25 epochs on 49,500 training images"),
    ("best-scratch", "best seed-CNN profile"),
    ("residual-8-epochs-float32", "residual net, 8 epochs, float32 (the profile until 2026-12-05)"),
    ("residual-widths-64-256-256-20-epochs", "residual net, widths 64/256/256, 20 epochs, bfloat16"),
    ("residual-widths-128-384-384-17-epochs", "residual net, widths 128/384/384, 17 epochs, bfloat16"),
    ("residual", "residual net (profiles/scratch_residual.yaml: widths 128/384/384, 21 epochs, bfloat16)"),
    ("transfer-lite0-160", "transfer, head only (Lite0, 160 px)"),
    ("transfer-finetune-3-epochs", "transfer, fine-tuned, 3 unfrozen epochs (the profile's first run)"),
    ("transfer-finetune-160px-3-epochs", "transfer, fine-tuned at 160 px, 3 unfrozen epochs"),
    ("transfer-finetune-128px-5-epochs-lr-0.0001", "transfer, fine-tuned at rate 1e-4 (the profile's second run)"),
    ("transfer-finetune", "transfer, fine-tuned (profiles/transfer_finetune.yaml, rate 3e-4)"),
)


def extraction_seconds(result: dict) -> float:
    """What a transfer run paid for its features before the first head epoch. A run that reused another run's
    cached features (`features_reused`) is charged that extraction's backbone time, since a user running the
    profile alone pays it."""
    if result.get("extract_stage_seconds") is not None:
        return float(result["extract_stage_seconds"])
    if result.get("features_reused"):
        return result["extraction_images"] / result["extraction_images_per_second"]
    return 0.0


def curve(result: dict) -> tuple[list[float], list[float]]:
    """(cumulative minutes, validation accuracy) at each epoch end, extraction first for transfer."""
    offset = extraction_seconds(result)
    rows = result.get("per_epoch") or []
    return ([(offset + row["cumulative_seconds"]) / 60 for row in rows], [row["val_accuracy"] for row in rows])


def total_seconds(result: dict) -> float:
    return extraction_seconds(result) + float(
        result.get("stage_seconds", result.get("transfer_stage_seconds", 0.0)))


def table(label: str, result: dict) -> str:
    command = f"`{result['command']}`" if "command" in result else f"bench/results/{result['benchmark']}.json"
    lines = [f"**{label}** ({command}, "
             f"{result.get('date', '?')}): test accuracy **{result['test_accuracy']:.1%}** after "
             f"{total_seconds(result) / 60:.1f} min", ""]
    minutes, accuracy = curve(result)
    if minutes:
        lines += ["| epoch | " + " | ".join(str(row["epoch"]) for row in result["per_epoch"]) + " |",
                  "|---|" + "---|" * len(minutes),
                  "| val accuracy | " + " | ".join(f"{value:.1%}" for value in accuracy) + " |",
                  "| minutes | " + " | ".join(f"{value:.1f}" for value in minutes) + " |"]
    else:
        lines.append("(final point only: this run predates the per-epoch record)")
    return "\n".join(lines)


def main() -> None:
    found = [(label, json.loads((RESULTS / f"{name}.json").read_text())) for name, label in PROFILES
             if (RESULTS / f"{name}.json").is_file()]
    if not found:
        sys.exit(f"no results in {RESULTS}: run bench/training.py first")
    figure, axes = plt.subplots(figsize=(8, 5))
    for index, (label, result) in enumerate(found):
        minutes, accuracy = curve(result)
        # One colour and line style per profile, shared by its curve and its final star: the ten colours of the
        # default cycle, then dashed lines, so no two profiles look alike.
        colour, line_style = f"C{index % 10}", ("-", "--", ":")[index // 10 % 3]
        if minutes:
            axes.plot(minutes, accuracy, marker="o", markersize=3, color=colour, linestyle=line_style, label=label)
        axes.scatter([total_seconds(result) / 60], [result["test_accuracy"]], marker="*", s=120, zorder=3,
                     color=colour, label=None if minutes else f"{label} (final only)")
        print(table(label, result), end="\n\n")
    axes.set_xlabel("cumulative wall time, minutes (2-core CPU)")
    axes.set_ylabel("accuracy (lines: validation per epoch; stars: final test)")
    axes.set_title("CIFAR-10: accuracy against training time")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(PLOT, dpi=120)
    print(f"plot: {PLOT.relative_to(Path.cwd()) if PLOT.is_relative_to(Path.cwd()) else PLOT}")


if __name__ == "__main__":
    main()
