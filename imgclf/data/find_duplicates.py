"""The find_duplicates stage: which test images have a copy in training, and which training images to leave out.

Where it sits, and why: after extract_features, because the cached backbone features are half of what tells a
resized, re-encoded, cropped or colour-tweaked copy from a merely similar photo, and they already exist (every
image went through the backbone once); a pixel thumbnail alone pairs every two photos of blue sky. The other half
(thumbnails) and the exact copies (a digest of the pixels) come from the prepared shards, read without TensorFlow
(imgclf/data/duplicates.py says how the two combine). It writes three files to data/duplicates/:

- `pairs.csv`: every (test, training) pair at or above `duplicates.similarity_threshold`, files named as
  `manifest.csv` names them (the analyze stage reports on it: it never changes a training);
- `duplicates.json`: the counts (test images with a training twin, copies within training and within test);
- `exclude.json`: the training ids the trainers leave out, an empty list under `duplicates.policy: report`. The
  trainers depend on this file alone, so a new threshold under `report` leaves them up to date (DVC sees the
  same bytes) and the test split never changes under either policy.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from pathlib import Path

import numpy as np

from imgclf import artifacts, fileio, progress
from imgclf.config import Params
from imgclf.data import duplicates, exclusions, records
from imgclf.errors import CorruptFileError

log = logging.getLogger(__name__)

PAIR_COLUMNS = ("test_id", "test_file", "train_id", "train_file", "similarity", "exact")


def read_manifest(prepared_dir: Path) -> dict[str, list[tuple[int, str]]]:
    """Per split, (manifest id, original file) in manifest order: the order of its shards and features."""
    splits: dict[str, list[tuple[int, str]]] = {}
    with open(Path(prepared_dir) / artifacts.MANIFEST_FILE, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            splits.setdefault(row["split"], []).append((int(row["id"]), row["original"]))
    return splits


def split_pixels(prepared_dir: Path, split: str, *, image_shape: tuple[int, int, int],
                 count: int) -> tuple[list[str], np.ndarray]:
    """The pixel digest and thumbnail of every image of a split, in shard order. The records' data checksums go
    unchecked here (a pure-Python CRC of 60,000 images would take minutes): no pixels are kept, and a damaged
    record at worst pairs wrongly in a list a person reads."""
    digests, thumbnails = [], []
    with progress.step(f"duplicates: read {split} pixels", total=count, summary=False) as counter:
        for record in records.read_records(records.split_files(prepared_dir, split)):
            pixels = record.example().pixels
            digests.append(duplicates.pixel_digest(pixels))
            thumbnails.append(duplicates.thumbnail(np.frombuffer(pixels, np.uint8).reshape(image_shape)))
            counter.update(1)
    return digests, np.stack(thumbnails) if thumbnails else np.zeros((0, 1), np.float32)


def load_split_features(features_dir: Path, split: str) -> np.ndarray:
    path = Path(features_dir) / artifacts.features_file(split)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run the extract_features stage first (dvc repro)")
    with np.load(path) as data:
        return data["features"]


def pair_rows(twins: duplicates.Twins, manifest: dict[str, list[tuple[int, str]]]) -> list[dict]:
    test, train = manifest["test"], manifest["train"]
    return [{"test_id": test[t][0], "test_file": test[t][1], "train_id": train[r][0], "train_file": train[r][1],
             "similarity": f"{s:.4f}", "exact": int(e)}
            for t, r, s, e in zip(twins.test, twins.train, twins.similarity, twins.exact, strict=True)]


def write_pairs(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=PAIR_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    fileio.atomic_write_text(path, buffer.getvalue())


def run(params: Params, *, prepared_dir: Path, features_dir: Path, out_dir: Path) -> dict:
    """Find the twins, write pairs.csv, duplicates.json and exclude.json to out_dir."""
    settings, out_dir = params.duplicates, Path(out_dir)
    started = time.perf_counter()
    manifest = read_manifest(prepared_dir)
    shape = artifacts.read_prepared_meta(prepared_dir).image_shape
    features = {split: load_split_features(features_dir, split) for split in ("train", "test")}
    digests, thumbnails = {}, {}
    for split in ("train", "test"):
        digests[split], thumbnails[split] = split_pixels(prepared_dir, split, image_shape=shape,
                                                         count=len(manifest.get(split, [])))
    for split in ("train", "test"):
        if not len(features[split]) == len(digests[split]) == len(manifest.get(split, [])):
            raise CorruptFileError(f"the {split} features ({len(features[split])}) and prepared images "
                                    f"({len(digests[split])}) differ in number: they come from different runs; "
                                    "extract the features again (dvc repro --force extract_features)")
    threshold = settings.similarity_threshold
    views = {split: [features[split], thumbnails[split]] for split in ("train", "test")}
    twins = duplicates.cross_twins(views["test"], views["train"], test_digests=digests["test"],
                                   train_digests=digests["train"], threshold=threshold)
    centres = [view.mean(axis=0) for view in views["train"]]
    within = {split: duplicates.images_with_twin_within(views[split], digests=digests[split],
                                                        threshold=threshold, centres=centres)
              for split in ("train", "test")}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_pairs(out_dir / artifacts.DUPLICATE_PAIRS_FILE, pair_rows(twins, manifest))
    train_ids = [manifest["train"][row][0] for row in twins.train_rows]
    excluded = train_ids if settings.policy == "exclude_from_training" else []
    exclusions.write(out_dir / artifacts.EXCLUDE_FILE, excluded)
    if twins.capped:
        log.warning("duplicates: %d test images have more than %d training images at least %g similar; only the "
                    "%d most similar are listed (and excluded): a threshold this low finds look-alikes, not copies "
                    "(duplicates.similarity_threshold)", twins.capped, duplicates.MAX_TWINS, threshold,
                    duplicates.MAX_TWINS)
    summary = {
        "similarity_threshold": threshold, "policy": settings.policy,
        "test_images": len(digests["test"]), "train_images": len(digests["train"]),
        "train_test_duplicates": len(twins.test_rows),  # test images with at least one twin in training
        "train_test_exact": len(np.unique(twins.test[twins.exact])),
        "train_test_pairs": len(twins.test),
        "capped": twins.capped,  # test images with more than duplicates.MAX_TWINS twins: the best are listed
        "train_twins": len(train_ids),  # training images that are a twin of some test image
        "excluded_from_training": len(excluded),
        "within_train": len(within["train"]),  # training images with a copy elsewhere in training
        "within_test": len(within["test"]),
        "seconds": round(time.perf_counter() - started, 1),
    }
    fileio.atomic_write_json(out_dir / artifacts.DUPLICATES_SUMMARY_FILE, summary)
    share = summary["train_test_duplicates"] / max(summary["test_images"], 1)
    log.info("duplicates: %d of %d test images (%.1f%%) have a twin in training (%d exact); %d training images "
             "have a copy within training, %d test images within test; policy %s%s",
             summary["train_test_duplicates"], summary["test_images"], 100 * share, summary["train_test_exact"],
             summary["within_train"], summary["within_test"], settings.policy,
             f": {len(excluded)} training images left out" if excluded else "")
    return summary
