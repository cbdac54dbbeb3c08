"""The training images a run leaves out (`duplicates.policy: exclude_from_training`), as the trainers read them.

Its own small module, apart from the detector (imgclf/data/duplicates.py): the training stages import this one
only, so an edit to the detection code does not rerun them, and the file it reads (`data/duplicates/exclude.json`)
is the same bytes whenever the excluded set is the same. Under `report`, whatever the threshold, the file holds
an empty list and DVC's early cutoff leaves both trainings up to date.

Ids are manifest ids; the training split's features (data/features/train.npz and every augmented view) hold its
images in manifest order, so position p of a view is the p-th training id.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from imgclf import fileio


def write(path: Path, train_ids: Iterable[int]) -> None:
    """The exclusions file: sorted ids, nothing else (no threshold, no timing), so equal sets give equal bytes."""
    fileio.atomic_write_text(Path(path), json.dumps({"train_ids": sorted({int(i) for i in train_ids})}) + "\n")


def read(path: Path | None) -> frozenset[int]:
    """The excluded training ids; none when `path` is None (a caller without the find_duplicates stage)."""
    if path is None:
        return frozenset()
    ids = fileio.read_json(Path(path)).get("train_ids", [])
    return frozenset(int(i) for i in ids)


def kept_rows(train_count: int, excluded: frozenset[int]) -> np.ndarray:
    """Boolean mask over the training split's rows: True where the image stays. The preprocess stage numbers the
    training split first, so the p-th training image has manifest id p."""
    return ~np.isin(np.arange(train_count), np.fromiter(excluded, dtype=np.int64, count=len(excluded)))


def kept_views(features: np.ndarray, labels: np.ndarray, *, train_count: int,
               excluded: frozenset[int]) -> tuple[np.ndarray, np.ndarray]:
    """The training features of every view (the plain split, then each augmented view, `train_count` rows each)
    without the excluded images."""
    if not excluded:
        return features, labels
    mask = np.tile(kept_rows(train_count, excluded), len(labels) // train_count)
    return features[mask], labels[mask]
