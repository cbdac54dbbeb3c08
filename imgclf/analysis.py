"""Error analysis: per test image, which model is right, and galleries of where they fail."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from imgclf import evaluate, fileio, plots, train
from imgclf.config import Params

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
OUTCOMES = ("both_right", "only_scratch_right", "only_transfer_right", "both_wrong")


def load_predictions(evaluate_dir: Path, model: str) -> pd.DataFrame:
    path = Path(evaluate_dir) / f"{model}_predictions.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run the evaluate stage first (dvc repro evaluate)")
    return pd.read_csv(path)


def compare(scratch: pd.DataFrame, transfer: pd.DataFrame) -> pd.DataFrame:
    """One row per test image: both models' predictions and which outcome of the 2x2 table it falls in."""
    joined = scratch.merge(transfer, on=["id", "true_label", "true_class"], suffixes=("_scratch", "_transfer"),
                           validate="one_to_one")
    if len(joined) != len(scratch) or len(joined) != len(transfer):
        raise evaluate.EvaluationError("the two prediction files cover different test images; rerun the "
                                       "evaluate stage (dvc repro evaluate)")
    scratch_right = joined["predicted_label_scratch"] == joined["true_label"]
    transfer_right = joined["predicted_label_transfer"] == joined["true_label"]
    joined["scratch_right"] = scratch_right
    joined["transfer_right"] = transfer_right
    joined["outcome"] = np.select(
        [scratch_right & transfer_right, scratch_right & ~transfer_right, ~scratch_right & transfer_right],
        OUTCOMES[:3], default=OUTCOMES[3])
    return joined


def outcome_counts(comparison: pd.DataFrame) -> dict[str, int]:
    counts = comparison["outcome"].value_counts()
    return {outcome: int(counts.get(outcome, 0)) for outcome in OUTCOMES}


def test_images(prepared_dir: Path, ids: set[int], meta: dict) -> dict[int, np.ndarray]:
    """The uint8 pixels of the requested test images, read from the shards in one streaming pass."""
    from imgclf import tfdata

    wanted, found = set(ids), {}
    dataset = tfdata.make_dataset(prepared_dir, "test", image_shape=train.image_shape(meta),
                                  num_classes=meta["num_classes"], batch_size=256, with_index=True)
    for images, _, index in tfdata.iterate_numpy(dataset):
        for image, row_id in zip(images, index, strict=True):
            if int(row_id) in wanted:
                found[int(row_id)] = image.astype(np.uint8)
        if len(found) == len(wanted):
            break
    return found


def run(params: Params, *, prepared_dir: Path, evaluate_dir: Path, out_dir: Path) -> dict:
    """The error-analysis stage."""
    meta = train.read_meta(prepared_dir)
    comparison = compare(load_predictions(evaluate_dir, "scratch"), load_predictions(evaluate_dir, "transfer"))
    counts = outcome_counts(comparison)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    comparison[["id", "true_class", "predicted_class_scratch", "probability_scratch",
                "predicted_class_transfer", "probability_transfer", "outcome"]].to_csv(
        out_dir / "per_image.csv.tmp", index=False)
    (out_dir / "per_image.csv.tmp").replace(out_dir / "per_image.csv")

    both_wrong = comparison[comparison["outcome"] == "both_wrong"]
    both_wrong = both_wrong.assign(confidence=both_wrong[["probability_scratch", "probability_transfer"]].max(axis=1))
    shown = both_wrong.sort_values("confidence", ascending=False).head(params.analysis.gallery_size)
    pixels = test_images(prepared_dir, set(shown["id"].astype(int)), meta)
    captions = [f"true: {row.true_class}\nS: {row.predicted_class_scratch} {row.probability_scratch:.2f}\n"
                f"T: {row.predicted_class_transfer} {row.probability_transfer:.2f}" for row in shown.itertuples()]
    plots.image_grid([pixels[int(row_id)] for row_id in shown["id"]], captions, out_dir / "both_wrong.png",
                     title=f"Both models wrong: {counts['both_wrong']} of {len(comparison)} test images")
    summary = {"test_images": len(comparison), **counts,
               "scratch_accuracy": float(comparison["scratch_right"].mean()),
               "transfer_accuracy": float(comparison["transfer_right"].mean())}
    fileio.atomic_write_json(out_dir / SUMMARY_FILE, summary)
    log.info("2x2: %s", counts)
    return summary
