"""Is the test honest? The comparison again without the test images that have a copy in training.

A test image whose twin (the same photo, resized, re-encoded, cropped or colour-tweaked) is in the training set
rewards memorisation: the model that memorises more looks better than it is. The find_duplicates stage lists the
pairs (data/duplicates/pairs.csv); this module, for the analyze stage, counts them, scores both models on the
test images without a twin (`accuracy_deduplicated`, McNemar on that set), says in one sentence whether the
winner or the significance changes, and builds the report's gallery of pairs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from imgclf import artifacts, fileio
from imgclf.evaluation import paired_tests, report

MODELS = artifacts.MODEL_NAMES


@dataclasses.dataclass(frozen=True)
class Duplicates:
    """The find_duplicates stage's pair list and counts."""

    pairs: pd.DataFrame  # test_id, test_file, train_id, train_file, similarity, exact; best twin first per test
    counts: dict


def load(duplicates_dir: Path) -> Duplicates:
    duplicates_dir = Path(duplicates_dir)
    pairs = pd.read_csv(duplicates_dir / artifacts.DUPLICATE_PAIRS_FILE, dtype={"test_file": str, "train_file": str},
                        keep_default_na=False)
    return Duplicates(pairs=pairs, counts=fileio.read_json(duplicates_dir / artifacts.DUPLICATES_SUMMARY_FILE))


def best_twins(pairs: pd.DataFrame) -> pd.DataFrame:
    """One row per test image with a twin: its most similar training image."""
    return (pairs.sort_values(["test_id", "similarity", "train_id"], ascending=[True, False, True])
            .drop_duplicates("test_id").sort_values(["similarity", "test_id"], ascending=[False, True]))


def summarise(table: pd.DataFrame, duplicates: Duplicates, *, full: dict, resamples: int, confidence_level: float,
              seed: int) -> dict:
    """The summary.json entries: how many test images have a training twin, copies within each split, each
    model's accuracy without them and the whole comparison on that set (`deduplicated`)."""
    twinned = table["id"].isin(set(duplicates.pairs["test_id"].astype(int)))
    clean = table[~twinned]
    result = paired_tests.significance(clean["right_scratch"].to_numpy(), clean["right_transfer"].to_numpy(),
                                       resamples=resamples, confidence_level=confidence_level, seed=seed)
    counts = duplicates.counts
    return {"train_test_duplicates": int(twinned.sum()),
            "duplicates_within_train": int(counts.get("within_train", 0)),
            "duplicates_within_test": int(counts.get("within_test", 0)),
            "excluded_from_training": int(counts.get("excluded_from_training", 0)),
            "accuracy_deduplicated": {model: result[f"{model}_accuracy"] for model in MODELS},
            "accuracy_on_duplicates": {model: float(table.loc[twinned, f"right_{model}"].mean()) if twinned.any()
                                       else 0.0 for model in MODELS},
            "deduplicated": {**result, **changes(full, result)}}


def _winner(summary: dict) -> str:
    difference = summary["accuracy_difference"]
    return "tie" if difference == 0 else ("transfer" if difference > 0 else "scratch")


def _significant(summary: dict) -> bool:
    return summary["mcnemar"]["p_value"] < paired_tests.SIGNIFICANCE_LEVEL


def changes(full: dict, deduplicated: dict) -> dict:
    """Whether leaving out the twinned test images changes the leader or the significance (booleans for DVC)."""
    return {"winner_changes": _winner(full) != _winner(deduplicated),
            "significance_changes": _significant(full) != _significant(deduplicated)}


def sentence(summary: dict) -> str:
    """One line for the log and the report: how many twins, the accuracies without them, what changes."""
    count, total = summary["train_test_duplicates"], summary["test_images"]
    if not count:
        return (f"No test image has a copy in training ({summary['duplicates_within_train']} training images have one "
                f"within training, {summary['duplicates_within_test']} test images within test): the test is honest "
                "in that respect.")
    without = summary["deduplicated"]
    accuracies = ", ".join(f"{model} {100 * summary[f'{model}_accuracy']:.1f}% → "
                           f"{100 * summary['accuracy_deduplicated'][model]:.1f}%" for model in MODELS)
    p_value = without["mcnemar"]["p_value"]
    p_text = "p < 0.001" if p_value < 0.001 else f"p = {p_value:.3g}"
    if without["winner_changes"]:
        outcome = f"the leader changes to {_winner(without)}"
    elif without["significance_changes"]:
        outcome = "the winner stays but the difference is " + (
            "now significant" if _significant(without) else "no longer significant")
    else:
        outcome = "neither the winner nor the significance changes"
    return (f"{count} of {total} test images ({100 * count / max(total, 1):.1f}%) have a copy in training; without "
            f"them ({without['test_images']} images): {accuracies}; McNemar {p_text}: {outcome}.")


def pair_table(table: pd.DataFrame, duplicates: Duplicates) -> pd.DataFrame:
    """`duplicates.csv` of the analysis: every pair, with both models' right/wrong on the test image."""
    columns = ["id", "true_class", *(f"right_{model}" for model in MODELS), *(f"predicted_class_{model}"
                                                                             for model in MODELS)]
    merged = duplicates.pairs.merge(table[columns].rename(columns={"id": "test_id"}), on="test_id", how="left")
    return merged.sort_values(["similarity", "test_id", "train_id"], ascending=[False, True, True])


def gallery_view(table: pd.DataFrame, duplicates: Duplicates, *, test_pixels: dict[int, np.ndarray],
                 train_pixels: dict[int, np.ndarray], size: int, thumbnail_size: int) -> list[dict]:
    """The report's pairs, most similar first: both thumbnails, the similarity, each model's result on the test
    image."""
    rows = table.set_index("id")
    view = []
    for pair in best_twins(duplicates.pairs).head(size).itertuples():
        test_uri, width, height = report.thumbnail(test_pixels[int(pair.test_id)], size=thumbnail_size)
        train_uri, _, _ = report.thumbnail(train_pixels[int(pair.train_id)], size=thumbnail_size)
        row = rows.loc[int(pair.test_id)]
        view.append({"test_uri": test_uri, "train_uri": train_uri, "width": width, "height": height,
                     "test_id": int(pair.test_id), "train_id": int(pair.train_id), "test_file": pair.test_file,
                     "train_file": pair.train_file, "similarity": f"{pair.similarity:.3f}",
                     "exact": bool(pair.exact), "true_class": str(row["true_class"]),
                     "results": [{"short": report.SHORT[model], "right": bool(row[f"right_{model}"])}
                                 for model in MODELS]})
    return view


def report_view(summary: dict, gallery: list[dict]) -> dict:
    """The report section's view model."""
    without = summary["deduplicated"]
    rows = [["test images", f"{summary['test_images']:,}", f"{without['test_images']:,}"],
            *([f"{model} accuracy", f"{100 * summary[f'{model}_accuracy']:.1f}%",
               f"{100 * summary['accuracy_deduplicated'][model]:.1f}%"] for model in MODELS),
            ["transfer − scratch", f"{100 * summary['accuracy_difference']:+.1f} pts",
             f"{100 * without['accuracy_difference']:+.1f} pts"],
            ["McNemar p-value", f"{summary['mcnemar']['p_value']:.3g}", f"{without['mcnemar']['p_value']:.3g}"]]
    return {"sentence": sentence(summary), "count": summary["train_test_duplicates"],
            "within_train": summary["duplicates_within_train"], "within_test": summary["duplicates_within_test"],
            "excluded": summary["excluded_from_training"],
            "table": {"header": ["", "all test images", "without those with a training twin"], "rows": rows,
                      "best": None},
            "pairs": gallery}
